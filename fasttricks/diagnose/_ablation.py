"""Class ablation: retrain with part of one class's training items removed, compare every F1.

The cheatsheet's test for whether to drop data from a dominant, well-performing class: if its
own F1 barely moves and the other classes gain (less imbalance, fewer items pulled towards it),
the removed items were not earning their training time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._io import save_figure
from fasttricks._stats import summarize
from fasttricks._validate import check_choice
from fasttricks.diagnose._inputs import _as_preds
from fasttricks.diagnose._plots import pyplot
from fasttricks.diagnose._report import _report

__all__ = ["AblationResult", "class_ablation"]

logger = logging.getLogger(__name__)


@dataclass
class AblationResult:
    """What :func:`class_ablation` returns.

    Attributes:
        cls: the ablated class (its name). split: where F1 was measured.
        runs: one row per (fraction kept, seed, class): ``fraction``, ``seed``, ``class``,
            ``f1``, ``n_ablated_train`` (the ablated class's training items in that run).
        table: one row per (fraction, class): ``f1_mean``, ``f1_stderr`` over the seeds,
            ``delta`` (mean F1 minus the mean at the largest fraction) and ``delta_stderr``
            (``sqrt(se^2 + se_base^2)``, the seeds of two settings being independent).
    """

    cls: str
    split: str
    runs: pd.DataFrame
    table: pd.DataFrame

    def summary(self) -> str:
        """One line per fraction: the ablated class's F1 change and the others' mean change."""
        lines = []
        base = self.table["fraction"].max()
        for frac, part in self.table.groupby("fraction", sort=False):
            if frac == base:
                continue
            own = part[part["class"] == self.cls].iloc[0]
            rest = part[part["class"] != self.cls]
            d_rest = rest["delta"].mean()
            se_rest = math.sqrt((rest["delta_stderr"] ** 2).sum()) / max(len(rest), 1)
            lines.append(
                f"keeping {frac:.0%} of {self.cls!r}: its {self.split} F1 {own['f1_mean']:.4f} "
                f"({own['delta']:+.4f} ± {own['delta_stderr']:.4f}), other classes' mean F1 "
                f"{d_rest:+.4f} ± {se_rest:.4f}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """F1 of the ablated class against the fraction kept (left), and each other class's
        F1 change at the smallest fraction (right), with standard-error bars."""
        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        own = self.table[self.table["class"] == self.cls]
        left.errorbar(own["fraction"], own["f1_mean"], yerr=own["f1_stderr"], fmt="-o",
                      capsize=3)
        left.set_xlabel(f"fraction of {self.cls!r} training items kept")
        left.set_ylabel(f"{self.split} F1 of {self.cls!r}")
        left.invert_xaxis()
        left.grid(alpha=0.3)
        smallest = self.table["fraction"].min()
        last = self.table[self.table["fraction"] == smallest]
        pos = np.arange(len(last))
        colors = ["C3" if c == self.cls else "C0" for c in last["class"]]
        right.bar(pos, last["delta"], yerr=last["delta_stderr"], color=colors, capsize=2)
        right.set_xticks(pos, [str(c) for c in last["class"]], rotation=90, fontsize=8)
        right.axhline(0, color="black", lw=0.8)
        right.set_ylabel(f"F1 change, {smallest:.0%} kept")
        right.set_title("every class (red: the ablated one)")
        fig.tight_layout()
        return save_figure(fig, path, dpi=110)


def _seed_list(seeds: int | Sequence[int], base: int) -> list[int]:
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return [base + i for i in range(int(seeds))]
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct and at least one, got {out}")
    return out


def _fractions(fractions: Sequence[float]) -> list[float]:
    out = [float(f) for f in fractions]
    if not out or len(set(out)) != len(out) or any(not 0.0 <= f <= 1.0 for f in out):
        raise ValueError(f"fractions must be distinct shares of the class kept, in [0, 1], "
                         f"got {list(fractions)}")
    return sorted(out, reverse=True)


def class_ablation(
    recipe: Any,
    cls: str | int,
    fractions: Sequence[float] = (1.0, 0.75, 0.5),
    seeds: int | Sequence[int] = 3,
    split: str = "valid",
    progress: bool = True,
    out_dir: str | Path | None = None,
) -> AblationResult:
    """Retrain ``recipe`` keeping only ``fractions`` of class ``cls``'s training items.

    Each run is the recipe with ``data.drop_class: cls``, ``data.drop_fraction: 1 - f`` (the
    removed items drawn with the run's seed) and ``seed`` set, trained with
    :func:`fasttricks.recipes.build_learner` and :func:`fasttricks.recipes.fit_learner`; F1
    of every class is measured on ``split`` (which is never subsampled). The largest fraction
    is the baseline (1.0: all items). Spreads come from :func:`fasttricks._stats.summarize`.

    Args:
        recipe: a recipe path, mapping or resolved recipe.
        cls: the class to thin out (its name, or its index).
        fractions: shares of the class's training items kept (default 1.0, 0.75, 0.5).
        seeds: how many seeds (default 3: the recipe's seed and the next two) or a list.
        split: ``"valid"`` (default) or ``"test"``.
        progress: show a progress bar over the runs (default True).
        out_dir: write ``ablation.csv``, ``ablation_runs.csv`` and ``ablation.png`` there.
    """
    from fastprogress.fastprogress import progress_bar

    from fasttricks._io import atomic_write_csv, quiet_fit
    from fasttricks.recipes import build_learner, fit_learner, load_recipe

    check_choice("split", split, ("valid", "test"))
    base = load_recipe(recipe)
    fracs = _fractions(fractions)
    seed_list = _seed_list(seeds, int(base["seed"]))
    plan = [(f, s) for f in fracs for s in seed_list]
    rows = []
    name = None
    bar = progress_bar(plan, leave=True) if progress else None
    for frac, seed in bar if bar is not None else plan:
        variant = load_recipe(base, {"data.drop_class": cls, "data.drop_fraction": 1.0 - frac,
                                     "seed": seed})
        learn = build_learner(variant)
        vocab = [str(v) for v in learn.dls.splits.vocab]
        name = _class_name(cls, vocab)
        index = vocab.index(name)
        train_y = np.asarray(learn.dls.splits.train.y)
        members = train_y[:, index] > 0 if train_y.ndim == 2 else train_y == index
        n_cls = int(members.sum())
        with quiet_fit(learn):
            fit_learner(learn, variant)
            probs, targets = learn.get_preds(ds_idx=1 if split == "valid" else 2)[:2]
        report = _report(_as_preds(probs.float(), targets, vocab))
        for _, r in report.iterrows():
            rows.append({"fraction": frac, "seed": seed, "class": r["class"], "f1": r["f1"],
                         "n_ablated_train": n_cls})
        if bar is not None:
            bar.comment = (f"kept {frac:.0%} of {name!r}, seed {seed}: F1 "
                           f"{_f1(report, name):.4f}")
    runs = pd.DataFrame(rows)
    result = AblationResult(cls=name, split=split, runs=runs, table=_table(runs, vocab))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(result.table, out / "ablation.csv")
        atomic_write_csv(runs, out / "ablation_runs.csv")
        result.plot(out / "ablation.png")
    return result


def _f1(report: pd.DataFrame, name: str) -> float:
    return float(report.loc[report["class"] == name, "f1"].iloc[0])


def _class_name(cls: str | int, vocab: list[str]) -> str:
    if str(cls) in vocab:
        return str(cls)
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool) and 0 <= cls < len(vocab):
        return vocab[int(cls)]
    raise ValueError(f"unknown class {cls!r}; classes: {', '.join(vocab[:30])}")


def _table(runs: pd.DataFrame, vocab: list[str]) -> pd.DataFrame:
    rows = []
    for (frac, name), part in runs.groupby(["fraction", "class"], sort=False):
        s = summarize(part["f1"])
        rows.append({"fraction": frac, "class": name, "n_ablated_train":
                     int(part["n_ablated_train"].iloc[0]), "seeds": s["n"],
                     "f1_mean": s["mean"], "f1_stderr": s["stderr"]})
    table = pd.DataFrame(rows)
    order = {c: i for i, c in enumerate(vocab)}
    table = table.sort_values(["fraction", "class"], ascending=[False, True],
                              key=lambda col: col.map(order) if col.name == "class" else col,
                              kind="mergesort").reset_index(drop=True)
    base_frac = table["fraction"].max()
    base = table[table["fraction"] == base_frac].set_index("class")
    table["delta"] = table["f1_mean"] - table["class"].map(base["f1_mean"])
    table["delta_stderr"] = np.sqrt(table["f1_stderr"] ** 2
                                    + table["class"].map(base["f1_stderr"]) ** 2)
    table.loc[table["fraction"] == base_frac, "delta_stderr"] = 0.0
    return table
