"""``python -m fasttricks.tune``: tune a recipe from the command line (resumable)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "DEFAULT_RECIPE"]

DEFAULT_RECIPE = "recipes/digits.yaml"


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
                        help=f"recipe YAML to tune (default {DEFAULT_RECIPE})")
    parser.add_argument("--space", default=None,
                        help="search space YAML (default: <recipe>.space.yaml beside the recipe)")
    parser.add_argument("--pruner", default="hyperband",
                        help="hyperband (default), asha, median or none")
    parser.add_argument("--sampler", default="tpe", help="tpe (default) or random")
    parser.add_argument("--n-trials", type=_positive_int, default=20,
                        help="finished trials the study should hold (default 20)")
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
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="log every trial to this MLflow tracking URI (needs mlflow)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads per worker (default: half the cores / workers)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def _resolve_recipe(path_text: str) -> str:
    """The recipe path as given, or the shipped one when run outside the repository."""
    path = Path(path_text)
    if path.exists():
        return path_text
    shipped = Path(__file__).resolve().parents[2] / path_text
    if not path.is_absolute() and shipped.exists():
        return str(shipped)
    return path_text


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 done, 1 bad input, 130 interrupted)."""
    import optuna

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from us

    from fasttricks.tune._study import prepare_study, tune

    is_worker = args.worker is not None
    # SIGTERM stops as cleanly as Ctrl-C. A worker also restores Python's Ctrl-C handler: a
    # process started in the background by a shell inherits SIGINT ignored, and the launcher
    # forwards SIGINT to stop its workers.
    signal.signal(signal.SIGTERM, _on_sigterm)
    if is_worker:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = args.workers if args.workers is not None else (len(args.gpus) if args.gpus else 1)
    if args.mlflow is not None:
        from fasttricks.tune._mlflow import import_mlflow

        try:
            import_mlflow()
        except ImportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    options = dict(
        pruner=args.pruner,
        sampler=args.sampler,
        n_trials=args.n_trials,
        metric=args.metric,
        direction=args.direction,
        storage=args.storage,
        study_name=args.study_name,
        seed=args.seed,
        heartbeat=args.heartbeat,
        max_retry=args.max_retry,
    )
    recipe = _resolve_recipe(args.recipe)
    try:  # every input is checked, and the study created, before any trial runs
        prepare_study(recipe, args.space, workers=1 if is_worker else workers, **options)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
    try:
        tune(
            recipe,
            args.space,
            timeout=args.timeout,
            workers=1 if is_worker else workers,
            gpus=None if is_worker else args.gpus,
            mlflow=args.mlflow,
            threads=args.threads,
            write_results=not is_worker,
            progress_prefix=f"[w{args.worker}] " if is_worker else "",
            **options,
        )
    except KeyboardInterrupt:
        if not is_worker:  # the launcher speaks for its workers
            print("interrupted: running trials were recorded as failed; re-run the same "
                  "command to resume", file=sys.stderr)
        return 130
    return 0
