"""``python -m fasttricks.tune``: tune a recipe from the command line (resumable)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fasttricks._errors import error_line

__all__ = ["build_parser", "main", "DEFAULT_RECIPE"]

DEFAULT_RECIPE = "digits"


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type`` that parses an integer and rejects values below ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def _gpu_list(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError(f"expected GPU ids like 0,1, got {text!r}")
    return gpus


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fasttricks.tune``."""
    parser = argparse.ArgumentParser(
        prog="python -m fasttricks.tune",
        description=(
            "Tune a fasttricks recipe with Optuna. Re-running the same command resumes the "
            "same study: trials already finished count toward --n-trials. Results go to "
            "runs/<study>/: best.yaml (train it with python -m fasttricks.train), trials.csv "
            "and PNG plots."
        ),
    )
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help="a built-in recipe name or a recipe YAML file (default "
                             f"{DEFAULT_RECIPE}; python -m fasttricks.recipes list)")
    parser.add_argument("--space", default=None,
                        help="search space YAML (default: <recipe>.space.yaml beside the recipe)")
    parser.add_argument("--pruner", default="hyperband",
                        help="hyperband (default), asha, median or none")
    parser.add_argument("--sampler", default="tpe",
                        help="tpe (default), random, or grid (every combination of a space of "
                             "categorical and stepped parameters, once)")
    parser.add_argument("--n-trials", type=_positive_int, default=None,
                        help="finished trials the study should hold (default 20; with "
                             "--sampler grid the number of grid points)")
    parser.add_argument("--subset", type=_fraction, default=None, metavar="FRACTION",
                        help="train trials on a stratified fraction of the training data, e.g. "
                             "0.25; best.yaml keeps all of it")
    parser.add_argument("--retrain-best", action=argparse.BooleanOptionalAction, default=None,
                        help="when the study ends, retrain the best trial(s) on all the "
                             "training data (default: on with --subset)")
    parser.add_argument("--retrain-top", type=_positive_int, default=1, metavar="K",
                        help="retrain the best K trials (default 1; K >= 3 also reports the "
                             "subset vs full rank correlation)")
    parser.add_argument("--timeout", type=_positive_float, default=None,
                        help="stop starting new trials after this many seconds")
    parser.add_argument("--metric", default=None,
                        help="recorder column to optimize (default: the recipe's first metric)")
    parser.add_argument("--direction", default=None,
                        help="maximize or minimize (default: from the metric)")
    parser.add_argument("--storage", default=None,
                        help="journal file path (default runs/<study>/journal.log), "
                             "postgresql://user:pass@host:port/db, or sqlite:///file.db")
    parser.add_argument("--study-name", default=None,
                        help="study name (default <recipe name>-<pruner>)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="worker processes (default 1, or one per --gpus id)")
    parser.add_argument("--gpus", type=_gpu_list, default=None,
                        help="GPU ids for the workers, e.g. 0,1 (one trial per GPU)")
    parser.add_argument("--heartbeat", type=_positive_int, default=None,
                        help="seconds between heartbeats of running trials (RDB storage only)")
    parser.add_argument("--max-retry", type=_non_negative_int, default=None,
                        help="re-queue a dead worker's trial up to K times (needs --heartbeat)")
    parser.add_argument("--max-failures", type=_positive_int, default=None,
                        help="stop after this many failed trials in this run "
                             "(default max(3, --n-trials))")
    parser.add_argument("--seed", type=int, default=0,
                        help="base sampler seed (default 0); each trial's seed is derived from "
                             "it, the study, the worker and the trial number")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="log every trial to this MLflow tracking URI (needs mlflow)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads per worker (default: half the cores / workers)")
    parser.add_argument("--report", action="store_true",
                        help="write best.yaml, trials.csv and the plots of an existing study "
                             "again, without running trials")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    parser.add_argument("--worker", type=_non_negative_int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-options", default=None, help=argparse.SUPPRESS)
    return parser


def _resolve_recipe(text: str) -> str:
    """The recipe file: a path as given, else a built-in recipe by name (its space beside it)."""
    from fasttricks.recipes import resolve_recipe

    return str(resolve_recipe(text))


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class _InputError(Exception):
    """Bad input found before any trial ran: one line, exit status 2."""


def _options_from_args(args: argparse.Namespace) -> Any:
    from fasttricks.tune._options import TuneOptions

    workers = args.workers if args.workers is not None else (len(args.gpus) if args.gpus else 1)
    return TuneOptions(
        pruner=args.pruner, sampler=args.sampler, n_trials=args.n_trials, timeout=args.timeout,
        metric=args.metric, direction=args.direction, storage=args.storage,
        study_name=args.study_name, seed=args.seed, workers=workers, gpus=args.gpus,
        heartbeat=args.heartbeat, max_retry=args.max_retry, max_failures=args.max_failures,
        mlflow=args.mlflow, threads=args.threads, subset=args.subset,
        retrain_best=args.retrain_best, retrain_top=args.retrain_top,
    )


def _check_mlflow(uri: str | None) -> None:
    if uri is None:
        return
    from fasttricks.tune._mlflow import check_tracking_uri

    check_tracking_uri(uri)


def _prepare(args: argparse.Namespace) -> Any:
    """The prepared study of a launcher or a worker; every input is checked here."""
    from fasttricks.tune._options import TuneOptions
    from fasttricks.tune._study import prepare_study

    if args.worker is not None:
        if args.worker_options is None:
            raise ValueError("--worker needs --worker-options (the launcher sets both)")
        options = TuneOptions.load(args.worker_options).replace(worker=args.worker)
        _check_mlflow(options.mlflow)
        return prepare_study(options.recipe_path, options.space_path, options)
    options = _options_from_args(args)
    _check_mlflow(options.mlflow)
    return prepare_study(_resolve_recipe(args.recipe), args.space, options)


def _report(args: argparse.Namespace) -> int:
    """``--report``: write the results of an existing study again from its folder."""
    import optuna

    from fasttricks.recipes import load_recipe
    from fasttricks.tune._options import OPTIONS_FILE, TuneOptions, check_study_name
    from fasttricks.tune._results import write_results
    from fasttricks.tune._space import load_space
    from fasttricks.tune._storage import make_storage
    from fasttricks.tune._study import print_summary

    name = args.study_name
    if name is None:
        name = f"{load_recipe(_resolve_recipe(args.recipe))['name']}-{args.pruner}"
    out = Path("runs") / check_study_name(name)
    saved = TuneOptions.load(out / OPTIONS_FILE) if (out / OPTIONS_FILE).is_file() else None
    storage = args.storage or (saved.storage if saved is not None else None)
    for needed in ("recipe.yaml", "space.yaml"):
        if not (out / needed).is_file():
            raise FileNotFoundError(f"no study folder for {name!r}: {str(out / needed)!r} not "
                                    "found (run the study first, or give its --study-name)")
    try:
        study = optuna.load_study(study_name=name, storage=make_storage(storage, name))
    except KeyError:
        raise KeyError(f"no study named {name!r} in its storage") from None
    written = write_results(study, load_recipe(out / "recipe.yaml"), out,
                            load_space(out / "space.yaml"))
    print_summary(study, study.user_attrs.get("metric", "value"), written)
    return 0


def _interrupted_message(prepared: Any) -> str:
    from fasttricks.tune._study import count_trials

    finished = count_trials(prepared.study)["finished"]
    storage = prepared.options.storage or str(Path(prepared.options.root)
                                              / prepared.study.study_name / "journal.log")
    where = storage if "://" not in storage else storage.split("://", 1)[0] + "://..."
    return (f"interrupted: {finished}/{prepared.options.n_trials} finished trials are saved in "
            f"{where} (running trials recorded as failed), results so far in "
            f"{prepared.out_dir}/; re-run the same command to resume")


def _fail(args: argparse.Namespace, err: BaseException, code: int,
          expected: bool = True) -> int:
    """Print ``err`` as one ``error: ...`` line (``--debug`` re-raises it) and return ``code``.

    ``expected=False`` marks an error nobody anticipated: its type is named, and the line says
    how to see the traceback.
    """
    if args.debug:
        raise err
    text = error_line(err)
    if not expected:
        text = f"{type(err).__name__}: {text} (--debug shows the traceback)"
    print(f"error: {text}", file=sys.stderr)
    return code


_INPUT_ERRORS = (KeyError, ValueError, TypeError, OSError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 done, 1 stopped (too many failed
    trials, or an error while running), 2 bad input (nothing ran), 130 interrupted."""
    import optuna
    import yaml

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from us
    is_worker = args.worker is not None
    # SIGTERM stops as cleanly as Ctrl-C. A worker also restores Python's Ctrl-C handler: a
    # process started in the background by a shell inherits SIGINT ignored, and the launcher
    # forwards SIGINT to stop its workers.
    signal.signal(signal.SIGTERM, _on_sigterm)
    if is_worker:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # every input is checked, and the study created, before any trial runs
        if args.report:
            return _report(args)
        prepared = _prepare(args)
    except (*_INPUT_ERRORS, yaml.YAMLError) as err:
        return _fail(args, err, 2)
    except KeyboardInterrupt:
        return 130
    from fasttricks.tune._study import TooManyFailures, run_study

    try:
        run_study(prepared)
    except KeyboardInterrupt:
        if not is_worker:  # the launcher speaks for its workers
            print(_interrupted_message(prepared), file=sys.stderr)
        return 130
    except TooManyFailures as err:
        if is_worker:
            print(f"{prepared.options.progress_prefix}{err}", file=sys.stderr)
            return 1
        return _fail(args, err, 1)
    except Exception as err:  # noqa: BLE001  one line, not a traceback (--debug shows it)
        return _fail(args, err, 1, expected=False)
    return 0
