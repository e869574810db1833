"""``python -m fasttricks.train RECIPE``: train a recipe, evaluate it on the test split, save it.

Usage::

    python -m fasttricks.train recipes/digits.yaml
    python -m fasttricks.train recipes/mnist1d.yaml --set optimizer.lr=1e-3 --set schedule.epochs=5
    python -m fasttricks.train recipes/digits.yaml --seeds 5      # mean, std, stderr over seeds

Each run writes ``<out>/<name>/`` (default ``runs/<name>/``): ``recipe.yaml`` (the resolved
recipe), ``metrics.csv`` (one row per epoch, with a UTC timestamp), ``model.pth`` (the final
``state_dict``), ``curves.png`` (losses and the primary metric per epoch) and
``summary.json``; every file is written to a temporary name and renamed, so an interrupted run
leaves no half-written file. ``--seeds N`` trains seeds ``seed, seed+1, ..., seed+N-1`` into
``<out>/<name>/seed_<s>/`` and writes ``seeds.csv`` / ``seeds.json`` with the mean, standard
deviation and standard error of the test metric: the cheatsheet's check of how much a score
moves with the seed alone, i.e. how far apart two results must be to mean anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from fasttricks._io import atomic_path, atomic_torch_save, atomic_write_csv, atomic_write_text

__all__ = ["main", "plot_history", "run_seeds", "seed_summary", "summary_line", "write_run"]

logger = logging.getLogger(__name__)


def plot_history(history: pd.DataFrame, metric: str | None, path: str | Path) -> Path:
    """Save a two-panel PNG: train/valid loss per epoch, and ``metric`` per epoch if recorded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    show_metric = metric is not None and metric in history and metric != "valid_loss"
    fig, axes = plt.subplots(1, 2 if show_metric else 1, figsize=(10 if show_metric else 5, 3.6))
    axes = np.atleast_1d(axes)
    epochs = history["epoch"] + 1 if "epoch" in history else np.arange(1, len(history) + 1)
    for col, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        if col in history:
            axes[0].plot(epochs, history[col], style, label=col, markersize=3)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    if show_metric:
        axes[1].plot(epochs, history[metric], "-o", color="C2", markersize=3)
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel(f"valid {metric}")
        axes[1].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_run(result: Any, run_dir: str | Path) -> Path:
    """Write a :class:`~fasttricks.recipes.RunResult` into ``run_dir`` (atomically, file by file).

    Files: ``recipe.yaml``, ``metrics.csv``, ``model.pth``, ``curves.png``, ``summary.json``.
    Returns ``run_dir``.
    """
    from fasttricks.recipes import primary_metric

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = result.learn.recipe
    metric, direction = primary_metric(recipe)
    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    atomic_write_csv(result.history, run_dir / "metrics.csv")
    atomic_torch_save(result.learn.model.state_dict(), run_dir / "model.pth")
    plot_history(result.history, metric, run_dir / "curves.png")
    seconds = float(result.history["seconds"].sum()) if "seconds" in result.history else None
    summary = {
        "name": recipe["name"], "seed": recipe["seed"], "primary_metric": metric,
        "direction": direction, "epochs": int(len(result.history)), "train_seconds": seconds,
        "valid": result.valid, "test": result.test, **result.extra,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(_jsonable(summary), indent=2) + "\n")
    return run_dir


def summary_line(result: Any) -> str:
    """One line: name, test metric and loss, valid metric, epochs, time and the run folder."""
    from fasttricks.recipes import primary_metric

    recipe = result.learn.recipe
    metric, _ = primary_metric(recipe)
    key = "loss" if metric == "valid_loss" else metric
    secs = float(result.history["seconds"].sum()) if "seconds" in result.history else float("nan")
    nan = float("nan")
    parts = [f"{recipe['name']} (seed {recipe['seed']}): test {key} "
             f"{result.test.get(key, nan):.4f}",
             f"test loss {result.test['loss']:.4f}",
             f"valid {key} {result.valid.get(key, nan):.4f}",
             f"{len(result.history)} epochs in {secs:.1f}s"]
    if "save_best" in result.extra:
        sb = result.extra["save_best"]
        parts.append(f"save-best (epoch {sb['best_epoch'] + 1}) test {key} "
                     f"{sb['test'].get(key, float('nan')):.4f} vs retrain test {key} "
                     f"{result.test.get(key, float('nan')):.4f}")
    if result.out_dir is not None:
        parts.append(f"-> {result.out_dir}")
    return ", ".join(parts)


def seed_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1) and standard error (std / sqrt(n)) of values."""
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    return {"n": n, "mean": float(arr.mean()), "std": std,
            "stderr": std / math.sqrt(n) if n > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max())}


def run_seeds(
    recipe: Any, n_seeds: int, out_dir: str | Path | None = "runs", progress: bool = True
) -> tuple[pd.DataFrame, dict]:
    """Run a recipe with seeds ``seed .. seed + n_seeds - 1``; per-seed table and summary.

    The summary holds mean / std / stderr of the test value of the primary metric (and of the
    test loss). With ``out_dir`` each seed goes to ``<out_dir>/<name>/seed_<s>/`` and the
    table and summary to ``seeds.csv`` / ``seeds.json`` beside them.
    """
    from fasttricks.recipes import load_recipe, primary_metric, run_recipe, set_in_recipe

    recipe = load_recipe(recipe)
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds!r}")
    metric, direction = primary_metric(recipe)
    key = "loss" if metric == "valid_loss" else metric
    base = Path(out_dir) / recipe["name"] if out_dir else None
    rows = []
    for i in range(n_seeds):
        seed = recipe["seed"] + i
        r = set_in_recipe(recipe, "seed", seed)
        result = run_recipe(r, out_dir=None, progress=progress)
        if base is not None:
            result.out_dir = write_run(result, base / f"seed_{seed}")
        print(summary_line(result), flush=True)
        rows.append({"seed": seed, f"test_{key}": result.test[key],
                     "test_loss": result.test["loss"], f"valid_{key}": result.valid[key]})
    table = pd.DataFrame(rows)
    summary = {"name": recipe["name"], "metric": key, "direction": direction,
               "test": seed_summary(table[f"test_{key}"]),
               "test_loss": seed_summary(table["test_loss"])}
    if base is not None:
        atomic_write_csv(table, base / "seeds.csv")
        atomic_write_text(base / "seeds.json", json.dumps(_jsonable(summary), indent=2) + "\n")
    return table, summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fasttricks.train",
        description="Train a fasttricks recipe, evaluate it on the test split and save the run.",
    )
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/digits.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optimizer.lr=1e-3 (repeatable)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train N seeds and report mean, std and standard error (default 1)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default runs)")
    p.add_argument("--no-save", action="store_true", help="write nothing to disk")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fasttricks.train``; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from fasttricks.recipes import load_recipe, run_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = None if args.no_save else args.out
    progress = not args.no_progress
    start = time.perf_counter()
    if args.seeds > 1:
        _, summary = run_seeds(recipe, args.seeds, out_dir=out, progress=progress)
        s = summary["test"]
        where = f" -> {Path(out) / recipe['name'] / 'seeds.json'}" if out else ""
        print(f"{recipe['name']}: test {summary['metric']} over {s['n']} seeds: mean "
              f"{s['mean']:.4f}, std {s['std']:.4f}, stderr {s['stderr']:.4f} "
              f"(min {s['min']:.4f}, max {s['max']:.4f}) in "
              f"{time.perf_counter() - start:.1f}s{where}")
        return 0
    result = run_recipe(recipe, out_dir=out, progress=progress)
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
