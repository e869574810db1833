"""``python -m fasttricks.train RECIPE``: train a recipe, evaluate it on the test split, save it.

Usage::

    python -m fasttricks.train digits                  # a built-in recipe, by name
    python -m fasttricks.train mnist1d --set optimizer.lr=1e-3 --set schedule.epochs=5
    python -m fasttricks.train digits --seeds 5        # mean, std, stderr over seeds
    python -m fasttricks.train digits --kfold 5        # 5-fold CV ensemble
    python -m fasttricks.train path/to/my.yaml         # your own recipe file

``python -m fasttricks.recipes list`` shows the built-in recipes.

Each run writes ``<out>/<name>/`` (default ``runs/<name>/``): ``recipe.yaml`` (the resolved
recipe), ``metrics.csv`` (one row per epoch, with a UTC timestamp), ``model.pth`` (the final
``state_dict``), ``curves.png`` (losses and the primary metric per epoch) and
``summary.json``, written into a temporary folder renamed into place, so the folder is always
one whole run (a kill or a full disk leaves the previous run as it was). ``--seeds N`` trains
seeds ``seed, seed+1, ..., seed+N-1`` into
``<out>/<name>/seed_<s>/`` and writes ``seeds.csv`` / ``seeds.json`` with the mean, standard
deviation and standard error of the test metric: the cheatsheet's check of how much a score
moves with the seed alone, i.e. how far apart two results must be to mean anything.
A rerun skips the seeds whose folder already holds a whole run of the same recipe and seed.
``--kfold N --workers W [--gpus 0,1] [--storage URL]`` trains the folds in W worker processes
(one per GPU or CPU slot; on CPU this process is one of them and forks the others, which then
start at once), each fold claimed once from a shared study (a journal file in the
k-fold folder, or PostgreSQL for several machines running the same command); a killed worker's
fold is retried and a rerun skips finished folds. ``--seeds N --workers W`` does the same
with the seeds' run folders (journal ``<out>/<name>/members.log``), with the results of the
sequential run. A single run is one fit, and so is a snapshot ensemble
(:func:`fasttricks.ensemble.snapshot_ensemble`): ``--workers`` does not apply to them.
``torchrun --nproc_per_node N -m fasttricks.train RECIPE`` (or ``distributed: ddp`` in the
recipe) trains one model in N processes with DistributedDataParallel
(:mod:`fasttricks.distributed`; ``data.bs`` is per process) and only rank 0 writes the run
folder.
``--kfold N`` cross-validates the recipe instead (:func:`fasttricks.ensemble.kfold_fit`): N fold
models, out-of-fold and fold-averaged test scores in ``<out>/<name>/kfold/``; re-running skips
the folds already finished.

Errors are one line ``error: ...`` (``--debug`` shows the traceback). Exit status: 0 done; 2 bad
input, nothing trained (a recipe or ``--set`` value, YAML syntax with its file and line, a
metric that does not fit the data, NaN/inf data, an unwritable ``--out``); 1 the run diverged
(the NaN guard, on unless the recipe says ``nan_guard: false``, or a final loss or metric that
is not finite: nothing is saved as finished) or its results could not be written; 130
interrupted (Ctrl-C: the line says what was saved and how to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger(__name__)

# The errors a bad recipe, option or data setting raises: printed as one line, exit code 2.
_USER_ERRORS = (KeyError, TypeError, ValueError, FileNotFoundError, IsADirectoryError,
                NotADirectoryError, PermissionError, ImportError)


def _error(err: BaseException, code: int = 2) -> int:
    from fasttricks._errors import print_error

    return print_error(err, code)


def _saved_so_far(args: argparse.Namespace) -> str:
    """What an interrupted command has kept on disk, and how to resume (for Ctrl-C)."""
    if args.no_save:
        return "nothing was saved (--no-save); re-run the command to train again"
    where = Path(args.out) / (getattr(args, "name", None) or "<name>")
    if args.kfold is not None:
        return (f"the finished folds are kept in {where / 'kfold'}; re-run the same command "
                "to resume from them")
    if args.seeds > 1:
        return (f"the finished seeds are saved in {where}/seed_<s>/; re-run the same command "
                "to train only the seeds not yet finished")
    return (f"nothing of this run was saved (a previous run in {where} is kept as it was); "
            "re-run the same command to train again")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fasttricks.train",
        description="Train a fasttricks recipe, evaluate it on the test split and save the run.",
    )
    p.add_argument("recipe", help="a built-in recipe name (e.g. digits; python -m "
                                  "fasttricks.recipes list) or a recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optimizer.lr=1e-3 (repeatable)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train N seeds and report mean, std and standard error (default 1)")
    p.add_argument("--kfold", type=int, default=None, metavar="N",
                   help="k-fold cross-validation ensemble with N folds (results in "
                        "<out>/<name>/kfold/)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="with --kfold or --seeds: train the folds or seeds in N worker "
                        "processes, one per GPU or CPU slot, each claimed once (default 1: one "
                        "after another). Not for a single run, nor for a snapshot ensemble: "
                        "each is one fit")
    p.add_argument("--gpus", default=None, metavar="IDS",
                   help="comma-separated GPU ids dealt out to the workers, e.g. 0,1")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="where workers claim folds or seeds: a journal file (default in the "
                        "k-fold folder, or <out>/<name>/ for --seeds) or postgresql://... "
                        "shared by the same command on each machine")
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default runs)")
    p.add_argument("--no-save", action="store_true", help="write nothing to disk")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--mlflow", default=None, metavar="URI",
                   help="log the run folder (parameters, per-epoch metrics, files) to this "
                        "MLflow tracking URI (needs mlflow-skinny)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
    return p


def _gpus(args: argparse.Namespace) -> list[str] | None:
    return [g for g in args.gpus.split(",") if g.strip()] if args.gpus else None


def _run_kfold(recipe: object, n_splits: int, out: str | None, progress: bool,
               args: argparse.Namespace) -> int:
    """``--kfold N``: :func:`fasttricks.ensemble.kfold_fit`, its one-line summary, exit status."""
    import tempfile
    from contextlib import ExitStack

    from fasttricks.ensemble import kfold_fit

    with ExitStack() as stack:
        if out is None:  # --no-save: the fold models only live while they are scored
            out = stack.enter_context(tempfile.TemporaryDirectory())
        result = kfold_fit(recipe, n_splits=n_splits, out_dir=out, progress=progress,
                           workers=args.workers, gpus=_gpus(args), storage=args.storage,
                           threads=args.threads)
    if not progress:  # with progress, kfold_fit has printed it already
        print(result.summary())
    return 0


def _ddp_processes(args: argparse.Namespace) -> int:
    import torch

    if args.gpus:
        return len([g for g in args.gpus.split(",") if g.strip()])
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return args.workers if args.workers > 1 else 2


def _launch_ddp(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``distributed: ddp`` without torchrun: start this command under torchrun."""
    import os
    import subprocess

    n = _ddp_processes(args)
    env = dict(os.environ)
    if args.gpus:
        env["CUDA_VISIBLE_DEVICES"] = args.gpus
    print(f"distributed: ddp: training one model in {n} processes", flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", "-m", "fasttricks.train", *argv]
    return subprocess.call(cmd, env=env)


def _run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    import torch

    from fasttricks.distributed import is_rank0, world_size

    from fasttricks.recipes import RecipeError, load_recipe, run_recipe, seed_range
    from fasttricks.runs import summary_line

    if args.seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1 (the number of seeds to train), "
                         f"got {args.seeds}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be an integer >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    args.name = recipe["name"]
    if recipe["distributed"] == "ddp" and world_size() == 1 and args.kfold is None:
        return _launch_ddp(args, argv)
    out = None if args.no_save or not is_rank0() else args.out  # only rank 0 writes
    if out is not None:
        from fasttricks.runs import check_out_dir

        check_out_dir(out)
    progress = not args.no_progress and is_rank0()
    if args.mlflow is not None:
        from fasttricks.tune._mlflow import check_tracking_uri

        if args.no_save or args.kfold is not None:
            raise ValueError("--mlflow logs the run folder: it cannot be combined with "
                             "--no-save or --kfold")
        check_tracking_uri(args.mlflow)
    if world_size() > 1 and recipe["distributed"] != "none":
        if args.kfold is not None or args.seeds > 1:
            raise RecipeError("torchrun trains one model: --kfold and --seeds are not "
                              "available under it (use --workers for parallel members)")
        result = run_recipe(recipe, out_dir=out, progress=progress)
        if is_rank0():
            print(summary_line(result))
        return 0
    start = time.perf_counter()
    if args.kfold is not None:
        if args.seeds > 1:
            raise RecipeError("--kfold and --seeds cannot be combined; choose one")
        return _run_kfold(recipe, args.kfold, out, progress, args)
    if args.seeds == 1 and (args.workers != 1 or args.storage or args.gpus):
        raise RecipeError("--workers, --gpus and --storage apply to --kfold and --seeds N > 1 "
                          "(a single run, like a snapshot ensemble, is one fit); got --workers "
                          f"{args.workers}, --gpus {args.gpus}, --storage "
                          f"{'set' if args.storage else None}")
    if args.seeds > 1:
        from fasttricks.ensemble import run_seeds_in_workers

        _, summary = run_seeds_in_workers(recipe, args.seeds, out_dir=out, progress=progress,
                                          workers=args.workers, gpus=_gpus(args),
                                          storage=args.storage, threads=args.threads)
        s = summary["test"]
        where = f" -> {Path(out) / recipe['name'] / 'seeds.json'}" if out else ""
        if args.mlflow is not None:
            _log_mlflow(args.mlflow, recipe, [Path(out) / recipe["name"] / f"seed_{seed}"
                                              for seed in seed_range(recipe, args.seeds)])
        print(f"{recipe['name']}: test {summary['metric']} over {s['n']} seeds: mean "
              f"{s['mean']:.4f}, std {s['std']:.4f}, stderr {s['stderr']:.4f} "
              f"(min {s['min']:.4f}, max {s['max']:.4f}) in "
              f"{time.perf_counter() - start:.1f}s{where}")
        return 0
    result = run_recipe(recipe, out_dir=out, progress=progress)
    if args.mlflow is not None:
        _log_mlflow(args.mlflow, recipe, [result.out_dir])
    print(summary_line(result))
    return 0


def _log_mlflow(uri: str, recipe: object, run_dirs: list) -> None:
    from fasttricks.tune._mlflow import log_run_folder

    for run_dir in run_dirs:
        log_run_folder(uri, recipe["name"], run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fasttricks.train``; returns the exit status.

    A bad recipe (unknown key, wrong type, value out of range, missing file, YAML syntax), a
    bad option or data that do not fit the recipe print one line ``error: ...`` and return 2;
    a diverged run or a failed write return 1; Ctrl-C returns 130 with one line saying what was
    saved. ``--debug`` shows the traceback instead.
    """
    from fasttricks.callbacks.nan_guard import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args, argv)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"interrupted: {_saved_so_far(args)}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        if args.debug:
            raise
        return _error(err, 1)
    except _USER_ERRORS as err:
        if args.debug:
            raise
        return _error(err)
    except OSError as err:  # a full disk, a folder that went away while writing
        if args.debug:
            raise
        what = f"{err.strerror} ({err.filename})" if err.filename else (err.strerror or err)
        return _error(OSError(f"could not write the results: {what}; a previous run folder "
                              f"is kept as it was. Free space or choose another --out, then "
                              f"re-run"), 1)


if __name__ == "__main__":
    sys.exit(main())
