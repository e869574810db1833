"""Validation/test correlation: does the validation set rank configurations like the test set?

A tuner picks the trial with the best validation score. That choice is only worth something if
the validation score orders the trials the way held-out data does. The cheatsheet's rule: if
validation and test metrics are not correlated across trials, rebuild the validation set
(bigger, drawn like the test data, stratified or grouped) before tuning further.

:func:`val_test_correlation` computes Spearman's rho and Kendall's tau (``scipy.stats``) of two
score lists with a verdict; :func:`study_correlation` re-evaluates a study's finished trials on
the test split (retraining each from its parameters) and writes the result beside the study.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._io import atomic_write_csv, save_figure, write_json
from fasttricks.diagnose._plots import pyplot

__all__ = ["CorrelationResult", "correlation_verdict", "study_correlation",
           "val_test_correlation"]

logger = logging.getLogger(__name__)

STRONG = 0.7  # Spearman rho at or above: validation tracks test
WEAK = 0.3  # below: not correlated


def correlation_verdict(rho: float, n: int) -> str:
    """A plain-language verdict on Spearman's ``rho`` between validation and test over ``n``
    trials: ``rho >= 0.7`` tracks, ``0.3 <= rho < 0.7`` weak, below 0.3 not correlated (rebuild
    the validation set). Fewer than 3 trials, or a constant score, cannot be judged."""
    if n < 3 or rho is None or not math.isfinite(rho):
        return (f"cannot judge from {n} trial{'s' if n != 1 else ''}"
                f"{'' if n < 3 else ' (a score is constant across trials)'}: evaluate at least "
                "3 trials with different scores")
    if rho >= STRONG:
        return (f"validation tracks test (Spearman rho {rho:.2f} over {n} trials): the "
                "validation set ranks configurations like held-out data, so choosing by it is "
                "sound")
    if rho >= WEAK:
        return (f"validation and test are only weakly correlated (Spearman rho {rho:.2f} over "
                f"{n} trials): differences between the top trials are partly noise; use a "
                "larger validation set or average over seeds before trusting small gains")
    return (f"validation and test are not correlated (Spearman rho {rho:.2f} over {n} trials): "
            "choosing by the validation score is close to choosing at random; rebuild the "
            "validation set (larger, drawn like the test data, stratified or grouped) before "
            "tuning further")


@dataclass
class CorrelationResult:
    """What :func:`val_test_correlation` returns.

    Attributes:
        table: one row per trial: ``trial``, ``valid``, ``test`` (and any extra columns).
        metric, direction: the metric compared and whether it is maximized or minimized.
        spearman, spearman_p, kendall, kendall_p: rank correlations and their p-values
            (NaN with fewer than 3 trials or a constant score).
        verdict: :func:`correlation_verdict`.
    """

    table: pd.DataFrame
    metric: str
    direction: str
    spearman: float
    spearman_p: float
    kendall: float
    kendall_p: float
    verdict: str

    def summary(self) -> str:
        """Two lines: the correlations and the verdict."""
        return (f"{self.metric} over {len(self.table)} trials: Spearman rho {self.spearman:.3f} "
                f"(p {self.spearman_p:.3g}), Kendall tau {self.kendall:.3f} "
                f"(p {self.kendall_p:.3g})\n{self.verdict}")

    def plot(self, path: str | Path) -> Path:
        """Validation against test metric, one point per trial, the best by validation marked."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        t = self.table
        ax.scatter(t["valid"], t["test"], color="C0")
        if len(t):
            best = t["valid"].idxmax() if self.direction == "maximize" else t["valid"].idxmin()
            ax.scatter([t.loc[best, "valid"]], [t.loc[best, "test"]], color="C3", zorder=3,
                       label="best by validation")
            for _, r in t.iterrows():
                ax.annotate(str(r["trial"]), (r["valid"], r["test"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"validation {self.metric}")
        ax.set_ylabel(f"test {self.metric}")
        ax.set_title(f"Spearman {self.spearman:.2f}, Kendall {self.kendall:.2f}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return save_figure(fig, path, dpi=110)


def val_test_correlation(
    valid: Sequence[float], test: Sequence[float], metric: str = "value",
    direction: str | None = None, trials: Sequence[Any] | None = None,
) -> CorrelationResult:
    """Spearman's rho and Kendall's tau (tau-b) between validation and test scores.

    Rank correlations, so they do not depend on the metric's scale and are the same for a
    maximized and a minimized metric (both columns are the same metric). Computed with
    ``scipy.stats.spearmanr`` / ``kendalltau``; NaN with fewer than 3 trials.

    Args:
        valid, test: one score per trial, same order.
        metric: the metric's name, for messages (default ``"value"``).
        direction: ``"maximize"`` / ``"minimize"`` (default:
            :func:`fasttricks.metrics.metric_direction`).
        trials: trial ids (default 0, 1, ...).
    """
    from scipy import stats

    from fasttricks.metrics import metric_direction

    v = np.asarray(valid, dtype=float)
    t = np.asarray(test, dtype=float)
    if v.ndim != 1 or v.shape != t.shape:
        raise ValueError(f"valid and test need one score per trial each, got shapes {v.shape} "
                         f"and {t.shape}")
    if not (np.isfinite(v).all() and np.isfinite(t).all()):
        raise ValueError("valid and test scores must be finite")
    direction = direction or metric_direction(metric)
    ids = list(trials) if trials is not None else list(range(len(v)))
    table = pd.DataFrame({"trial": ids, "valid": v, "test": t})
    nan = float("nan")
    rho = p_rho = tau = p_tau = nan
    if len(v) >= 3 and np.ptp(v) > 0 and np.ptp(t) > 0:
        rho, p_rho = (float(x) for x in stats.spearmanr(v, t))
        tau, p_tau = (float(x) for x in stats.kendalltau(v, t))
    return CorrelationResult(table, metric, direction, rho, p_rho, tau, p_tau,
                             correlation_verdict(rho, len(v)))


# --------------------------------------------------------------------------------------------
# studies


def _open_study(study_dir: Path) -> tuple[Any, Any, dict, int]:
    """The study stored for ``study_dir``, its base recipe, its parsed space and the torch
    threads its trials trained with (the tuner's default when options.json does not say)."""
    import optuna

    from fasttricks.recipes import load_recipe
    from fasttricks.tune._options import OPTIONS_FILE, TuneOptions, default_threads
    from fasttricks.tune._space import load_space
    from fasttricks.tune._storage import make_storage

    if not study_dir.is_dir():
        raise FileNotFoundError(f"study folder {str(study_dir)!r} does not exist")
    for needed in ("recipe.yaml", "space.yaml"):
        if not (study_dir / needed).is_file():
            raise FileNotFoundError(f"{str(study_dir)!r} is not a study folder: no {needed} "
                                    "(run python -m fasttricks.tune first)")
    saved = (TuneOptions.load(study_dir / OPTIONS_FILE)
             if (study_dir / OPTIONS_FILE).is_file() else None)
    name = (saved.study_name if saved is not None and saved.study_name else study_dir.name)
    storage = saved.storage if saved is not None else None
    try:
        study = optuna.load_study(study_name=name, storage=make_storage(
            storage, name, root=study_dir.parent))
    except KeyError:
        raise KeyError(f"no study named {name!r} in the storage of {str(study_dir)!r}") from None
    threads = saved.threads if saved is not None and saved.threads else default_threads(1)
    return (study, load_recipe(study_dir / "recipe.yaml"), load_space(study_dir / "space.yaml"),
            int(threads))


def _test_of(recipe: Any, metric: str) -> float:
    """Train ``recipe`` as a trial was trained and score its final model on the test split."""
    from fasttricks._io import quiet_fit
    from fasttricks.recipes import build_learner, evaluate, fit_learner

    learn = build_learner(recipe)
    with quiet_fit(learn):
        fit_learner(learn, recipe)
    scores = evaluate(learn, ds_idx=2)
    return scores[_test_key(metric)]


def _test_key(metric: str) -> str:
    """The recorder's metric name -> its key in :func:`fasttricks.recipes.evaluate`'s dict."""
    return "loss" if metric in ("valid_loss", "train_loss", "loss") else metric


def study_correlation(
    study_dir: str | Path,
    top: int | None = None,
    *,
    evaluate: Callable[[Any, str], float] | None = None,
    progress: bool = True,
    write: bool = True,
) -> CorrelationResult:
    """Re-evaluate a study's finished trials on the test split and correlate with validation.

    A trial's recipe is the study's base ``recipe.yaml`` with the trial's parameters
    (:func:`fasttricks.tune._space.apply_params`); trial models are not kept, so each is
    retrained (same recipe, same seed, same torch threads as the study's trials) and its final
    model scored on the test split. The validation value is the one the study recorded for the
    trial (what the tuner chose by).

    Writes into the study folder: ``correlation.csv`` (trial, valid, test), ``correlation.png``
    (the scatter plot), ``correlation.json`` (rho, tau, p-values, verdict), and a column
    ``test_<metric>`` in ``trials.csv`` when that file exists.

    Args:
        study_dir: the study folder (``runs/<study>``) with recipe.yaml, space.yaml and
            options.json, written by ``python -m fasttricks.tune``.
        top: only the ``top`` best trials by validation (default None: every finished trial).
        evaluate: ``evaluate(recipe, metric) -> test value`` (default: retrain and score).
        progress: a progress bar over the trials (default True).
        write: write the files above (default True).
    """
    from optuna.trial import TrialState

    from fasttricks.metrics import metric_direction
    from fasttricks.tune._space import apply_params
    from fasttricks.tune._study import _torch_threads

    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top must be a positive number of trials, got {top!r}")
    study_dir = Path(study_dir)
    study, base, space, threads = _open_study(study_dir)
    metric = study.user_attrs.get("metric")
    if metric is None:
        from fasttricks.recipes import primary_metric

        metric = primary_metric(base)[0]
    direction = study.direction.name.lower()
    if direction != metric_direction(metric):
        logger.warning("study %s %ss %s", study.study_name, direction, metric)
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.value is not None and math.isfinite(t.value)]
    if not trials:
        raise ValueError(f"study {study.study_name!r} has no completed trial to re-evaluate")
    trials.sort(key=lambda t: -t.value if direction == "maximize" else t.value)
    chosen = trials[:top] if top is not None else trials
    scorer = evaluate or _test_of
    tests = []
    if progress:
        from fastprogress.fastprogress import progress_bar

        loop = progress_bar(chosen, leave=True)
    else:
        loop = chosen
    for trial in loop:
        params = trial.params
        recipe = apply_params(base, space, lambda param, params=params: params[param.key])
        with _torch_threads(threads):  # as the tuner trained it: fast on a shared CPU
            tests.append(float(scorer(recipe, metric)))
        if progress:
            loop.comment = (f"trial {trial.number}: valid {trial.value:.4f}, test "
                            f"{tests[-1]:.4f}")
    result = val_test_correlation([t.value for t in chosen], tests, metric=metric,
                                  direction=direction, trials=[t.number for t in chosen])
    if write:
        _write(study_dir, result)
    return result


def _write(study_dir: Path, result: CorrelationResult) -> None:
    atomic_write_csv(result.table, study_dir / "correlation.csv")
    result.plot(study_dir / "correlation.png")
    write_json(study_dir / "correlation.json", {
        "metric": result.metric, "direction": result.direction, "trials": len(result.table),
        "spearman": result.spearman, "spearman_p": result.spearman_p,
        "kendall": result.kendall, "kendall_p": result.kendall_p, "verdict": result.verdict,
    })
    trials_csv = study_dir / "trials.csv"
    if trials_csv.is_file():
        frame = pd.read_csv(trials_csv)
        if "number" in frame:
            column = f"test_{_test_key(result.metric)}"
            tests = dict(zip(result.table["trial"], result.table["test"]))
            new = frame["number"].map(tests)
            frame[column] = new.combine_first(frame[column]) if column in frame else new
            atomic_write_csv(frame, trials_csv)
