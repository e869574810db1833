"""How much a metric moves with the training seed alone."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._stats import summarize
from fasttricks._validate import check_choice

logger = logging.getLogger(__name__)


def seed_summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample standard deviation (ddof=1), standard error, min, max of ``values``.

    With one value, std and stderr are 0 (see :func:`fasttricks._stats.summarize`).
    """
    return summarize(values)


@dataclass
class SeedVariance:
    """What :func:`seed_variance` returns: a metric per seed and its spread.

    Attributes:
        metric: the metric's name (``"loss"`` for the loss), split: ``"valid"`` or ``"test"``.
        table: one row per seed (``seed``, ``value``, and the split's loss ``loss``).
        mean, std, stderr: the mean, sample standard deviation (ddof=1) and standard error.
    """

    metric: str
    split: str
    table: pd.DataFrame
    mean: float
    std: float
    stderr: float

    @property
    def values(self) -> np.ndarray:
        """The metric per seed, in seed order."""
        return self.table["value"].to_numpy()

    def summary(self) -> str:
        """One line: metric, split, number of seeds, mean, std, standard error, range."""
        v = self.values
        return (f"{self.split} {self.metric} over {len(v)} seeds: mean {self.mean:.4f}, "
                f"std {self.std:.4f}, stderr {self.stderr:.4f} "
                f"(min {v.min():.4f}, max {v.max():.4f})")


def seed_variance(
    recipe: Any,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    split: str = "valid",
    metric: str | None = None,
    progress: bool = True,
) -> SeedVariance:
    """Train a recipe once per seed and measure how much a metric moves with the seed alone.

    The cheatsheet's validation-set check: if two configurations differ by less than a few
    standard deviations of the seed-to-seed spread, the validation set cannot tell them apart
    (make it bigger, or average over seeds). Each run is
    ``run_recipe(set_in_recipe(recipe, "seed", s))``; the data split (``data.seed``) stays
    fixed, so only the training varies (:func:`fasttricks.recipes.seed_runs`, the one seed
    loop).

    Args:
        recipe: a recipe path or mapping (see :func:`fasttricks.recipes.load_recipe`).
        seeds: training seeds (default ``(0, 1, 2, 3, 4)``); at least one, no repeats.
        split: ``"valid"`` (default) or ``"test"``.
        metric: a recipe metric or ``"loss"`` (default None: the recipe's primary metric).
        progress: show a progress bar over the seeds (default True).
    """
    from fastprogress.fastprogress import progress_bar

    from fasttricks.recipes import load_recipe, primary_metric, seed_runs

    check_choice("split", split, ("valid", "test"))
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=(0, 1, 2)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"seeds must be ints, got {s!r} ({type(s).__name__})")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has repeats: {seeds}; each seed would give the same run")
    recipe = load_recipe(recipe)
    if metric is None:
        name, _ = primary_metric(recipe)
        metric = "loss" if name == "valid_loss" else name
    else:
        check_choice("metric", metric, ["loss", *recipe["metrics"]])
    rows = []
    bar = progress_bar(seeds, display=progress, leave=True)
    for seed, result in seed_runs(recipe, bar, progress=False):
        scores = result.valid if split == "valid" else result.test
        rows.append({"seed": int(seed), "value": scores[metric], "loss": scores["loss"]})
        bar.comment = f"seed {seed}: {split} {metric} {scores[metric]:.4f}"
        logger.info("seed %s: %s %s %.4f", seed, split, metric, scores[metric])
    table = pd.DataFrame(rows)
    stats = seed_summary(table["value"])
    return SeedVariance(metric=metric, split=split, table=table, mean=stats["mean"],
                        std=stats["std"], stderr=stats["stderr"])


