"""The run folder: what one training run leaves on disk, written atomically, read back.

``write_run(result, run_dir)`` writes ``recipe.yaml`` (the resolved recipe), ``metrics.csv``
(one row per epoch, with a UTC timestamp), ``model.pth`` (the final ``state_dict``),
``curves.png`` (losses and the primary metric per epoch) and ``summary.json`` (strict JSON:
NaN becomes ``null``); every file goes to a temporary name first and is renamed, so an
interrupted run leaves no half-written file. :func:`read_run` reads a folder back and
:func:`summary_line` says in one line what a run scored.

This module knows the recipe schema only (:mod:`fasttricks.recipes`' ``primary_metric`` and
``save_recipe``); running a recipe lives in :mod:`fasttricks.recipes`, which writes through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._io import atomic_torch_save, atomic_write_csv, save_figure, write_json
from fasttricks.recipes import load_recipe, primary_metric, save_recipe

__all__ = ["plot_history", "read_run", "summary_line", "write_run"]


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
    return save_figure(fig, path, dpi=110)


def _seconds(history: pd.DataFrame) -> float | None:
    return float(history["seconds"].sum()) if "seconds" in history else None


def write_run(result: Any, run_dir: str | Path) -> Path:
    """Write a :class:`~fasttricks.recipes.RunResult` into ``run_dir`` (atomically, file by file).

    Files, in this order: ``recipe.yaml``, ``metrics.csv``, ``model.pth``, ``curves.png``,
    ``summary.json``. Returns ``run_dir``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = result.learn.recipe
    metric, direction = primary_metric(recipe)
    save_recipe(recipe, run_dir / "recipe.yaml")
    atomic_write_csv(result.history, run_dir / "metrics.csv")
    atomic_torch_save(result.learn.model.state_dict(), run_dir / "model.pth")
    plot_history(result.history, metric, run_dir / "curves.png")
    summary = {
        "name": recipe["name"], "seed": recipe["seed"], "primary_metric": metric,
        "direction": direction, "epochs": int(len(result.history)),
        "train_seconds": _seconds(result.history), "valid": result.valid, "test": result.test,
        **result.extra,
    }
    write_json(run_dir / "summary.json", summary)
    return run_dir


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder read back: ``{"recipe": Recipe, "history": DataFrame, "summary": dict}``.

    The weights stay on disk (``run_dir / "model.pth"``); load them into
    ``build_learner(read_run(d)["recipe"]).model``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a finished run folder "
                                "(no summary.json)")
    return {"recipe": load_recipe(run_dir / "recipe.yaml"),
            "history": pd.read_csv(run_dir / "metrics.csv"),
            "summary": json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))}


def summary_line(result: Any) -> str:
    """One line: name, test metric and loss, valid metric, epochs, time and the run folder."""
    recipe = result.learn.recipe
    metric, _ = primary_metric(recipe)
    key = "loss" if metric == "valid_loss" else metric
    secs = _seconds(result.history)
    nan = float("nan")
    parts = [f"{recipe['name']} (seed {recipe['seed']}): test {key} "
             f"{result.test.get(key, nan):.4f}",
             f"test loss {result.test['loss']:.4f}",
             f"valid {key} {result.valid.get(key, nan):.4f}",
             f"{len(result.history)} epochs in {nan if secs is None else secs:.1f}s"]
    if "save_best" in result.extra:
        sb = result.extra["save_best"]
        parts.append(f"save-best (epoch {sb['best_epoch'] + 1}) test {key} "
                     f"{sb['test'].get(key, nan):.4f} vs retrain test {key} "
                     f"{result.test.get(key, nan):.4f}")
    if result.out_dir is not None:
        parts.append(f"-> {result.out_dir}")
    return ", ".join(parts)


if __name__ == "__main__":  # python -m fasttricks.runs table [runs/] (fasttricks.results_table)
    import sys

    from fasttricks.results_table import main

    sys.exit(main())
