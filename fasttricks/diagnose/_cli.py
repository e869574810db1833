"""``python -m fasttricks.diagnose``: the data-curation loop from the shell.

Usage::

    python -m fasttricks.diagnose runs/digits                     # -> runs/digits/diagnosis/
    python -m fasttricks.diagnose runs/digits --split train       # + suspected label noise
    python -m fasttricks.diagnose runs/digits --unlabelled new.npy --classes 3 8
    python -m fasttricks.diagnose runs/digits/kfold --split train # out-of-fold label noise
    python -m fasttricks.diagnose --study runs/digits-hyperband --top 10
    python -m fasttricks.diagnose --ablate 3 digits --fractions 1 0.75 0.5

A bad folder, recipe or option prints one line ``error: ...`` and exits with status 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from fasttricks._errors import print_error

__all__ = ["main"]

_USER_ERRORS = (KeyError, TypeError, ValueError, FileNotFoundError)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fasttricks.diagnose",
        description="Diagnose a finished run (per-class report, confusions, top losses, label "
                    "noise, what to label next), check validation/test correlation of a study, "
                    "or ablate a class.")
    p.add_argument("run", nargs="?", help="a run folder (plain, k-fold, seed or snapshot "
                                          "ensemble), e.g. runs/digits")
    p.add_argument("--split", default="valid", choices=("valid", "test", "train"),
                   help="which split to diagnose (default valid; train reports label noise)")
    p.add_argument("--unlabelled", metavar="DATA",
                   help="unlabelled items to rank for labelling: a .npy file (array data), an "
                        "image folder, or a CSV (tabular data)")
    p.add_argument("--classes", nargs="+", metavar="CLASS",
                   help="rank only unlabelled items between these classes")
    p.add_argument("--top-k", type=_positive, default=20, metavar="N",
                   help="how many top losses to list (default 20)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="multi-label decision threshold (default 0.5)")
    p.add_argument("--recipe", help="the recipe of an ensemble folder that holds none")
    p.add_argument("--study", metavar="DIR",
                   help="a study folder (runs/<study>): correlate validation and test metric")
    p.add_argument("--top", type=_positive, default=None, metavar="N",
                   help="with --study: only the N best trials (default all finished trials)")
    p.add_argument("--ablate", nargs=2, metavar=("CLASS", "RECIPE"),
                   help="retrain RECIPE keeping part of CLASS's training items")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5],
                   help="with --ablate: shares of the class kept (default 1 0.75 0.5)")
    p.add_argument("--seeds", type=_positive, default=3,
                   help="with --ablate: seeds per fraction (default 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="with --ablate: override a recipe value")
    p.add_argument("--out", default=None,
                   help="with --ablate: output folder (default runs/<name>/ablation_<class>)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
    return p


def _diagnose(args: argparse.Namespace) -> int:
    from fasttricks.diagnose._folder import diagnose_run

    result = diagnose_run(args.run, args.split, unlabelled=args.unlabelled,
                          classes=args.classes, top_k=args.top_k, threshold=args.threshold,
                          recipe=args.recipe)
    o = result.overall
    line = (f"{args.split}: {o['items']} items, accuracy {o['accuracy']:.4f}, macro F1 "
            f"{o['macro_f1']:.4f}")
    if "mean_ap" in o:
        line += f", mean AP {o['mean_ap']:.4f}"
    print(f"{line} -> {result.report}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from fasttricks.diagnose._correlation import study_correlation

    result = study_correlation(args.study, top=args.top, progress=not args.no_progress)
    print(result.summary())
    print(f"-> {Path(args.study) / 'correlation.png'}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from fasttricks.diagnose._ablation import class_ablation
    from fasttricks.recipes import load_recipe

    cls, recipe_path = args.ablate
    recipe = load_recipe(recipe_path, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / recipe["name"] / f"ablation_{cls}"
    result = class_ablation(recipe, cls, fractions=args.fractions, seeds=args.seeds,
                            progress=not args.no_progress, out_dir=out)
    print(result.summary())
    print(f"-> {out / 'ablation.png'}")
    return 0


def _run(args: argparse.Namespace) -> int:
    modes = [m for m, on in (("RUN", args.run), ("--study", args.study),
                             ("--ablate", args.ablate)) if on]
    if len(modes) != 1:
        raise ValueError("give exactly one of RUN (a run folder), --study DIR or --ablate CLASS "
                         f"RECIPE, got {' and '.join(modes) if modes else 'none'}")
    if args.study:
        return _study(args)
    if args.ablate:
        return _ablate(args)
    return _diagnose(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fasttricks.diagnose``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except _USER_ERRORS as err:
        if args.debug:
            raise
        return print_error(err)
