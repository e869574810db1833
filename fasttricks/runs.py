"""The run folder: what one training run leaves on disk, written atomically, read back.

``write_run(result, run_dir)`` writes ``recipe.yaml`` (the resolved recipe), ``metrics.csv``
(one row per epoch, with a UTC timestamp), ``model.pth`` (the final ``state_dict``),
``curves.png`` (losses and the primary metric per epoch) and ``summary.json`` (strict JSON:
NaN becomes ``null``). A run folder is always one whole run: the files are written into a
temporary sibling folder (``.<name>.partial-*``) that is renamed into place; the previous run,
if any, is first renamed to ``.<name>.previous-*`` and removed only once the new one is in
place. Other entries of the folder (``kfold/``, ``seed_<s>/``...) move over to the new one. An
interrupted or failed write (a kill, a full disk) leaves the previous run as it was, and the
next write finishes or undoes an interrupted swap (:func:`recover_run_dir`).
:func:`check_out_dir` checks before training that the parent folder can be written;
:func:`read_run` reads a whole folder back and :func:`summary_line` says in one line what a
run scored.

This module knows the recipe schema only (:mod:`fasttricks.recipes`' ``primary_metric`` and
``save_recipe``); running a recipe lives in :mod:`fasttricks.recipes`, which writes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._io import atomic_torch_save, atomic_write_csv, save_figure, write_json
from fasttricks.recipes import load_recipe, primary_metric, save_recipe

__all__ = [
    "RUN_FILES",
    "check_out_dir",
    "finished_run",
    "plot_history",
    "read_run",
    "recover_run_dir",
    "saved_summary_line",
    "summary_line",
    "write_run",
]

#: The files of one run, in the order they are written (``summary.json`` last).
RUN_FILES = ("recipe.yaml", "metrics.csv", "model.pth", "curves.png", "summary.json")
_PARTIAL = ".partial-"
_PREVIOUS = ".previous-"
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def _write_files(result: Any, folder: Path) -> None:
    recipe = result.learn.recipe
    metric, direction = primary_metric(recipe)
    save_recipe(recipe, folder / "recipe.yaml")
    atomic_write_csv(result.history, folder / "metrics.csv")
    atomic_torch_save(result.learn.model.state_dict(), folder / "model.pth")
    plot_history(result.history, metric, folder / "curves.png")
    summary = {
        "name": recipe["name"], "seed": recipe["seed"], "primary_metric": metric,
        "direction": direction, "epochs": int(len(result.history)),
        "train_seconds": _seconds(result.history), "valid": result.valid, "test": result.test,
        **result.extra,
    }
    write_json(folder / "summary.json", summary)


def _siblings(run_dir: Path, tag: str) -> list[Path]:
    if not run_dir.parent.is_dir():
        return []
    prefix = f".{run_dir.name}{tag}"
    return sorted((p for p in run_dir.parent.iterdir() if p.name.startswith(prefix)),
                  key=lambda p: p.stat().st_mtime)


def _is_stray_temp(name: str) -> bool:
    """A temporary file an interrupted atomic write left behind (``.model.x1y2.tmp.pth``)."""
    return name.startswith(".") and ".tmp" in name


def _move_extras(source: Path, target: Path) -> None:
    """Move the entries of ``source`` that are not run files into ``target`` (if missing)."""
    if not source.is_dir() or not target.is_dir():
        return
    for entry in list(source.iterdir()):
        if entry.name in RUN_FILES or _is_stray_temp(entry.name):
            continue
        if not (target / entry.name).exists():
            os.rename(entry, target / entry.name)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_run_dir(run_dir: str | Path) -> None:
    """Finish or undo a run-folder swap that a kill interrupted; a no-op otherwise.

    If ``run_dir`` is missing but a ``.previous`` copy exists (killed between the two renames),
    the previous run comes back; other entries left in a ``.partial`` folder move back into
    ``run_dir``; then the leftover temporary folders are removed.
    """
    run_dir = Path(run_dir)
    previous = _siblings(run_dir, _PREVIOUS)
    if not run_dir.exists() and previous:
        os.rename(previous.pop(), run_dir)
    for leftover in _siblings(run_dir, _PARTIAL) + previous:
        _move_extras(leftover, run_dir)
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_in(new: Path, run_dir: Path) -> None:
    """Rename ``new`` onto ``run_dir``, keeping the previous run until the rename succeeded."""
    if not run_dir.exists():
        os.rename(new, run_dir)
        return
    if not run_dir.is_dir():
        raise NotADirectoryError(f"run folder {str(run_dir)!r} exists and is not a folder")
    _move_extras(run_dir, new)
    backup = run_dir.parent / f".{run_dir.name}{_PREVIOUS}{uuid.uuid4().hex[:8]}"
    os.rename(run_dir, backup)
    try:
        os.rename(new, run_dir)
    except BaseException:
        os.rename(backup, run_dir)
        raise
    _fsync_dir(run_dir.parent)
    shutil.rmtree(backup, ignore_errors=True)


def write_run(result: Any, run_dir: str | Path) -> Path:
    """Write a :class:`~fasttricks.recipes.RunResult` into ``run_dir`` as one whole run.

    Files, in this order: ``recipe.yaml``, ``metrics.csv``, ``model.pth``, ``curves.png``,
    ``summary.json``, written into a temporary sibling folder that then replaces ``run_dir``
    (see the module docstring). If anything fails (``OSError`` for a full disk, a kill), the
    previous ``run_dir`` is left as it was. Returns ``run_dir``.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_run_dir(run_dir)
    new = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}{_PARTIAL}"))
    try:
        os.chmod(new, 0o777 & ~_UMASK)
        _write_files(result, new)
        _swap_in(new, run_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            if run_dir.is_dir():
                _move_extras(new, run_dir)
            shutil.rmtree(new, ignore_errors=True)
        raise
    return run_dir


def check_out_dir(out: str | Path) -> Path:
    """Check, before any training, that run folders can be written under ``out``.

    Writes and removes a probe file in ``out``, or in its nearest existing parent when ``out``
    does not exist yet (nothing is created). Returns ``out`` as a path.

    Raises:
        ValueError: ``out`` is empty.
        NotADirectoryError: ``out`` (or a folder above it) is a file.
        PermissionError: ``out`` cannot be created or written (the message says why).
    """
    if out is None or not str(out).strip() or "\0" in str(out):
        raise ValueError(f"--out must name a folder, got {str(out)!r}")
    folder = Path(out)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(f"--out {str(folder)!r}: {str(part)!r} is a file, not a "
                                     "folder; choose another --out")
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"--out {str(folder)!r} cannot be written "
                              f"({err.strerror or err}); choose another --out") from None
    return folder


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """A whole run folder read back: ``{"recipe": Recipe, "history": DataFrame, "summary": dict}``.

    The weights stay on disk (``run_dir / "model.pth"``); load them into
    ``build_learner(read_run(d)["recipe"]).model``. While a write is swapping folders (or after
    it was killed mid-swap) the previous run is read from its ``.previous`` copy.

    Raises:
        FileNotFoundError: not a whole run folder (names the first missing file).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        previous = _siblings(run_dir, _PREVIOUS)
        if previous:
            run_dir = previous[-1]
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(run_dir)!r} is not a whole run folder (no "
                                f"{', '.join(missing)})")
    return {"recipe": load_recipe(run_dir / "recipe.yaml"),
            "history": pd.read_csv(run_dir / "metrics.csv"),
            "summary": json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))}


def _line(summary: dict[str, Any], out_dir: Any) -> str:
    """The one summary line of a run, from its ``summary.json`` fields."""
    metric = summary["primary_metric"]
    key = "loss" if metric == "valid_loss" else metric
    nan = float("nan")

    def num(scores: dict, name: str) -> float:
        value = scores.get(name)
        return nan if value is None else float(value)

    valid, test, secs = summary["valid"], summary["test"], summary.get("train_seconds")
    parts = [f"{summary['name']} (seed {summary['seed']}): test {key} {num(test, key):.4f}",
             f"test loss {num(test, 'loss'):.4f}",
             f"valid {key} {num(valid, key):.4f}",
             f"{summary['epochs']} epochs in {nan if secs is None else secs:.1f}s"]
    if "save_best" in summary:
        sb = summary["save_best"]
        parts.append(f"save-best (epoch {sb['best_epoch'] + 1}) test {key} "
                     f"{num(sb['test'], key):.4f} vs retrain test {key} {num(test, key):.4f}")
    if out_dir is not None:
        parts.append(f"-> {out_dir}")
    return ", ".join(parts)


def summary_line(result: Any) -> str:
    """One line: name, test metric and loss, valid metric, epochs, time and the run folder."""
    recipe = result.learn.recipe
    summary = {"name": recipe["name"], "seed": recipe["seed"],
               "primary_metric": primary_metric(recipe)[0], "epochs": len(result.history),
               "train_seconds": _seconds(result.history), "valid": result.valid,
               "test": result.test, **result.extra}
    return _line(summary, result.out_dir)


def finished_run(run_dir: str | Path, recipe: Any) -> dict[str, Any] | None:
    """The ``summary.json`` of ``run_dir`` if it is a whole run folder of ``recipe`` (the same
    resolved recipe, seed included), else None: a missing, partial or unreadable folder, or one
    another recipe wrote, is a run still to do."""
    from fasttricks.recipes import recipe_to_dict

    run_dir = Path(run_dir)
    if not (run_dir / "summary.json").is_file():
        return None
    try:
        run = read_run(run_dir)
    except Exception:  # noqa: BLE001 - an unreadable run folder is simply trained again
        return None
    if recipe_to_dict(run["recipe"]) != recipe_to_dict(load_recipe(recipe)):
        return None
    return run["summary"]


def saved_summary_line(run_dir: str | Path, summary: dict[str, Any] | None = None) -> str:
    """:func:`summary_line` of a finished run folder: from its ``summary`` (as
    :func:`finished_run` returns it) or, by default, read back from disk."""
    return _line(read_run(run_dir)["summary"] if summary is None else summary, Path(run_dir))


if __name__ == "__main__":  # python -m fasttricks.runs table [runs/] (fasttricks.results_table)
    import sys

    from fasttricks.results_table import main

    sys.exit(main())
