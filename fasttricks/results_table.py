"""One table of every finished run under a folder: the recipe keys that differ, and the scores.

The experiment starters' "big results table": each row is a run folder (one with a
``summary.json``, written by :func:`fasttricks.runs.write_run`; unfinished runs are skipped),
the columns are the dotted recipe keys whose values differ across the runs, then the run's
epochs, training time and its ``valid_<name>`` / ``test_<name>`` scores. It is written as CSV
and as a markdown table::

    python -m fasttricks.runs table runs/ --out results.csv --sort test_accuracy

:func:`trial_row` is the in-memory counterpart for a notebook or script comparing tricks: it
runs one recipe variant and returns its row (label, changes, test score, seconds, status).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fasttricks._errors import error_line, print_error
from fasttricks._io import atomic_write_csv, atomic_write_text

__all__ = ["find_runs", "main", "results_table", "to_markdown", "trial_row", "trial_summary",
           "write_table"]


def find_runs(root: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """``(finished, unfinished)`` run folders under ``root`` (``root`` itself included).

    A finished run has ``summary.json``; a folder with ``recipe.yaml`` or ``metrics.csv`` but
    no summary is an unfinished run. Both lists are sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {str(root)!r} not found")
    finished, unfinished = [], []
    for folder in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
        if (folder / "summary.json").is_file():
            finished.append(folder)
        elif (folder / "recipe.yaml").is_file() and (folder / "metrics.csv").is_file():
            unfinished.append(folder)
    return finished, unfinished


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[f"{prefix}{key}"] = json.dumps(value, default=str)
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scores(summary: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"epochs": summary.get("epochs"),
                           "train_seconds": summary.get("train_seconds")}
    for split in ("valid", "test"):
        for name, value in (summary.get(split) or {}).items():
            out[f"{split}_{name}"] = value
    return out


def results_table(root: str | os.PathLike[str], sort: str | None = None) -> pd.DataFrame:
    """The table of the finished runs under ``root``.

    Columns: ``run`` (the folder relative to ``root``), the dotted recipe keys whose values
    differ between runs (all of them with one run: none), then ``epochs``, ``train_seconds``
    and the scores. ``sort`` orders rows by a column: a score best first (lower first for
    losses and errors, :func:`fasttricks.metrics.lower_is_better`, ``train_seconds`` and
    ``epochs``), a recipe key smallest first.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no finished run.
        KeyError: ``sort`` is not a column (lists the columns).
    """
    from fasttricks.recipes import recipe_to_dict
    from fasttricks.runs import read_run

    root = Path(root)
    finished, unfinished = find_runs(root)
    if not finished:
        raise FileNotFoundError(
            f"no finished run under {str(root)!r} (a run folder has summary.json)"
            + (f"; {len(unfinished)} unfinished skipped" if unfinished else ""))
    keys, scores, names = [], [], []
    for folder in finished:
        run = read_run(folder)
        keys.append(_flat(recipe_to_dict(run["recipe"])))
        scores.append(_scores(run["summary"]))
        names.append("." if folder == root else folder.relative_to(root).as_posix())
    all_keys = list(dict.fromkeys(k for row in keys for k in row))
    differ = [k for k in all_keys
              if len({json.dumps(row.get(k), default=str, sort_keys=True) for row in keys}) > 1]
    rows = [{"run": name, **{k: row.get(k) for k in differ}, **score}
            for name, row, score in zip(names, keys, scores, strict=True)]
    table = pd.DataFrame(rows)
    table.attrs["skipped"] = [p.relative_to(root).as_posix() for p in unfinished]
    if sort is not None:
        table = _sorted(table, sort)
    return table


def trial_row(label: str, recipe: Any, changes: Mapping[str, Any] | None = None,
              out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run ``recipe`` with ``changes`` (dotted keys) and return one row of a comparison table.

    The row: ``label``, ``changes``, ``seconds`` (wall clock of the whole run: build, fit,
    evaluation), ``test <metric>`` (the recipe's primary metric on the test split, ``test
    loss`` without metrics), ``status`` and ``result`` (the
    :class:`~fasttricks.recipes.RunResult`). A run the NaN guard stops is a row too: score
    ``nan``, ``status`` the guard's one-line reason (fastai's event prefix removed), ``result``
    None; anything else that goes wrong is raised. ``status`` is ``"ok"`` otherwise.
    ``pd.DataFrame(rows)`` of several rows is the table; ``out_dir`` also writes the run folder
    (:func:`fasttricks.recipes.run_recipe`).
    """
    from fasttricks.callbacks import NonFiniteLossError
    from fasttricks.recipes import load_recipe, primary_metric, run_recipe

    changes = dict(changes or {})
    recipe = load_recipe(recipe, changes)
    metric, _ = primary_metric(recipe)
    key = "loss" if metric == "valid_loss" else metric
    start = time.perf_counter()
    try:
        result = run_recipe(recipe, out_dir=out_dir, progress=False)
        score, status = float(result.test[key]), "ok"
    except NonFiniteLossError as err:
        result, score = None, math.nan
        status = error_line(err)
    return {"label": label, "changes": changes, "seconds": time.perf_counter() - start,
            f"test {key}": score, "status": status, "result": result}


def trial_summary(row: Mapping[str, Any]) -> str:
    """One line for a :func:`trial_row` row: label, test score, seconds, and a stop's reason."""
    name, score = next((k, v) for k, v in row.items() if k.startswith("test "))
    line = f"{row['label']:28s} {name} {score:.4f}  {row['seconds']:5.1f} s"
    return line if row["status"] == "ok" else f"{line}\n  {row['status']}"


def _lower_is_better(column: str) -> bool:
    from fasttricks.metrics import lower_is_better

    if column in ("epochs", "train_seconds"):
        return True
    for prefix in ("valid_", "test_"):
        if column.startswith(prefix):
            name = column[len(prefix):]
            return name == "loss" or lower_is_better(name)
    return True  # a recipe key: smallest first


def _sorted(table: pd.DataFrame, column: str) -> pd.DataFrame:
    from fasttricks._validate import check_choice

    check_choice("sort column", column, list(table.columns))
    ascending = _lower_is_better(column) if column != "run" else True
    out = table.sort_values(column, ascending=ascending, na_position="last", kind="stable")
    out.attrs = dict(table.attrs)
    return out.reset_index(drop=True)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """The table as GitHub markdown (floats to 4 significant digits, missing cells empty)."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_table(table: pd.DataFrame, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``out`` (CSV) and the same name with ``.md`` (markdown), atomically."""
    out = Path(out)
    csv = atomic_write_csv(table, out)
    md = atomic_write_text(out.with_suffix(".md"), to_markdown(table))
    return csv, md


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fasttricks.runs",
        description="Tables over run folders written by python -m fasttricks.train.")
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser(
        "table", help="one table of every finished run: differing recipe keys and scores")
    table.add_argument("root", nargs="?", default="runs",
                       help="folder searched for run folders (default runs)")
    table.add_argument("--out", default=None,
                       help="CSV file to write (default <root>/results.csv; markdown beside it)")
    table.add_argument("--sort", default=None, metavar="COLUMN",
                       help="sort by this column, best first (e.g. test_accuracy)")
    table.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fasttricks.runs table [ROOT] [--out results.csv] [--sort COLUMN]``.

    Prints the markdown table and where the files went; returns 0, or 2 with one
    ``error: ...`` line for bad input (no runs, an unknown sort column).
    """
    args = _parser().parse_args(argv)
    try:
        table = results_table(args.root, sort=args.sort)
        csv, md = write_table(table, args.out or Path(args.root) / "results.csv")
    except (KeyError, ValueError, OSError) as err:
        if args.debug:
            raise
        return print_error(err)
    print(to_markdown(table), end="")
    skipped = table.attrs.get("skipped") or []
    note = f" ({len(skipped)} unfinished run(s) skipped)" if skipped else ""
    print(f"{len(table)} runs -> {csv}, {md}{note}")
    return 0
