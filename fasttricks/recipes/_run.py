"""Running a recipe: fit with its schedule, evaluate, train over seeds.

:func:`run_recipe` builds (:func:`~fasttricks.recipes.build_learner`), fits
(:func:`fit_learner`) and scores a recipe on the validation and test splits, optionally with the
cheatsheet's save-best-then-retrain comparison; :func:`seed_runs` is the one loop that trains a
recipe once per seed (the train command's ``--seeds`` and
:func:`fasttricks.diagnose.seed_variance` both use it).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
from fastai.callback.core import Callback
from fastai.learner import Learner

from fasttricks._io import quiet_fit
from fasttricks.recipes._build import (
    _recipe,
    build_learner,
    seed_everything,
    set_learning_rate,
)
from fasttricks.recipes._schema import primary_metric, set_in_recipe

__all__ = [
    "RunResult",
    "evaluate",
    "fit_learner",
    "run_recipe",
    "run_seeds",
    "seed_range",
    "seed_runs",
]

logger = logging.getLogger(__name__)


def fit_learner(
    learn: Learner,
    recipe: Mapping[str, Any] | None = None,
    cbs: Sequence[Callback] = (),
    epochs: int | None = None,
) -> None:
    """Fit ``learn`` with the recipe's schedule (``schedule.fit``).

    - ``flat_cos`` (default): ``fit_flat_cos``; ``one_cycle``: ``fit_one_cycle``;
    - ``sgdr``: :func:`fasttricks.lr.fit_sgdr` with ``n_cycles``, ``cycle_len``,
      ``cycle_mult`` (an ``epochs`` below the schedule's length stops it early);
    - ``fine_tune``: :func:`fasttricks.lr.fine_tune_staged` over ``epochs`` split by
      :func:`fasttricks.lr.stage_epochs` (``freeze_epochs`` frozen at ``lr``,
      ``freeze_to_epochs`` at ``freeze_to(-2)`` and ``lr / 2``, the rest unfrozen at
      ``slice(lr / 100, lr / 2)``), each stage a ``fit_flat_cos``; afterwards
      ``learn.recorder.values`` holds every stage's epochs and ``learn.fine_tune_stages`` the
      stage records.

    The seed is re-applied first, so a fit is reproducible whatever ran before it. The learning
    rate is the recipe's (``learn.lr``, see :func:`~fasttricks.recipes.set_learning_rate`).

    Args:
        learn: a learner from :func:`~fasttricks.recipes.build_learner`.
        recipe: the recipe whose schedule and lr to use (default ``learn.recipe``).
        cbs: extra callbacks for this fit only.
        epochs: override ``schedule.epochs``.
    """
    if recipe is None:
        recipe = learn.recipe
    else:
        recipe = _recipe(recipe)
        set_learning_rate(learn, recipe)
    sched = recipe["schedule"]
    n_epochs = sched["epochs"] if epochs is None else int(epochs)
    if n_epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    seed_everything(recipe["seed"])
    fit = sched["fit"]
    if fit == "flat_cos":
        learn.fit_flat_cos(n_epochs, div_final=sched["div_final"],
                           pct_start=sched["pct_start"], cbs=list(cbs))
    elif fit == "one_cycle":
        learn.fit_one_cycle(n_epochs, div=sched["div"], div_final=sched["div_final"],
                            pct_start=sched["pct_start"], cbs=list(cbs))
    elif fit == "sgdr":
        from fasttricks.lr import fit_sgdr

        fit_sgdr(learn, sched["n_cycles"], sched["cycle_len"], sched["cycle_mult"],
                 cbs=list(cbs), epochs=n_epochs)
    else:
        _fine_tune(learn, sched, n_epochs, cbs)


class _EveryEpoch(Callback):
    """Keep each epoch's recorder row across several fits (the stages of a fine-tune)."""

    order = 51  # right after the Recorder (50) has written the row

    def __init__(self) -> None:
        self.rows: list = []

    def after_epoch(self) -> None:
        self.rows.append(list(self.learn.recorder.values[-1]))


def _fine_tune(learn: Learner, sched: Mapping[str, Any], n_epochs: int,
               cbs: Sequence[Callback]) -> None:
    from fastcore.foundation import L

    from fasttricks.lr import fine_tune_staged, stage_epochs

    stages = stage_epochs(n_epochs, sched["freeze_epochs"], sched["freeze_to_epochs"])
    rows = _EveryEpoch()
    learn.fine_tune_stages = fine_tune_staged(
        learn, float(learn.lr), epochs=stages, fit="flat_cos", pct_start=sched["pct_start"],
        div_final=sched["div_final"], cbs=[rows, *cbs])
    learn.recorder.values = L(rows.rows)


def evaluate(learn: Learner, ds_idx: int = 2) -> dict[str, float]:
    """Loss and every metric of ``learn`` on loader ``ds_idx`` (default 2: the test split).

    Returns ``{"loss": ..., "<metric name>": ...}`` in the recorder's order.
    """
    with quiet_fit(learn):
        values = learn.validate(ds_idx=ds_idx)
    names = ["loss"] + [m.name for m in learn.metrics]
    return {n: float(v) for n, v in zip(names, values)}


@dataclass
class RunResult:
    """What :func:`run_recipe` returns.

    Attributes:
        learn: the trained learner.
        valid, test: ``{"loss": ..., metric: ...}`` on the validation and test splits.
        history: one row per epoch (epoch, train_loss, valid_loss, metrics, seconds, timestamp).
        out_dir: the run folder written, or None.
        extra: anything else (e.g. ``save_best`` results when ``retrain_at_best`` is on).
    """

    learn: Learner
    valid: dict
    test: dict
    history: pd.DataFrame
    out_dir: Path | None = None
    extra: dict = field(default_factory=dict)


class _EpochClock(Callback):
    """Record when each epoch ended (UTC) and how long it took."""

    order = 60

    def __init__(self) -> None:  # not per fit: a staged fine-tune runs several
        self.stamps: list[tuple[float, str]] = []

    def before_epoch(self) -> None:
        self._t0 = time.perf_counter()

    def after_epoch(self) -> None:
        self.stamps.append((time.perf_counter() - self._t0,
                            datetime.now(timezone.utc).isoformat(timespec="seconds")))


def _history(learn: Learner, clock: _EpochClock) -> pd.DataFrame:
    names = [n for n in learn.recorder.metric_names[1:] if n != "time"]
    rows = []
    for i, values in enumerate(learn.recorder.values):
        row: dict[str, Any] = {"epoch": i}
        row.update({n: (None if v is None else float(v)) for n, v in zip(names, values)})
        if i < len(clock.stamps):
            row["seconds"] = round(clock.stamps[i][0], 4)
            row["timestamp"] = clock.stamps[i][1]
        rows.append(row)
    return pd.DataFrame(rows)


def _fit_and_score(learn: Learner, cbs: Sequence[Callback], progress: bool,
                   epochs: int | None = None) -> tuple[dict, dict, pd.DataFrame]:
    from fasttricks.callbacks.nan_guard import check_finite_scores

    clock = _EpochClock()
    with ExitStack() as stack:
        if not progress:
            stack.enter_context(quiet_fit(learn))
        fit_learner(learn, cbs=[clock, *cbs], epochs=epochs)
    history = _history(learn, clock)  # before validate(), which resets the recorder
    valid, test = evaluate(learn, 1), evaluate(learn, 2)
    metric, _ = primary_metric(learn.recipe)
    check_finite_scores(learn, {"valid": valid, "test": test},
                        ("loss",) if metric == "valid_loss" else ("loss", metric))
    return valid, test, history


def _save_best_then_retrain(recipe: Mapping[str, Any], cbs: Sequence[Callback],
                            progress: bool) -> tuple[Learner, dict, dict, pd.DataFrame, dict]:
    from fasttricks.callbacks import SaveBestCallback

    metric, _ = primary_metric(recipe)
    saver = SaveBestCallback(monitor=metric, fname="best")
    learn = build_learner(recipe)
    with tempfile.TemporaryDirectory(prefix="fasttricks-best-") as tmp:
        path, model_dir = learn.path, learn.model_dir
        learn.path, learn.model_dir = Path(tmp), "."
        try:
            valid, test, history = _fit_and_score(learn, [saver, *cbs], progress)
        finally:
            learn.path, learn.model_dir = path, model_dir
    best_epoch = saver.best_epoch if saver.best_epoch is not None else len(history) - 1
    extra: dict[str, Any] = {
        "save_best": {"best_epoch": int(best_epoch), "best_value": saver.best_value,
                      "monitor": metric, "valid": valid, "test": test,
                      "history": history.to_dict(orient="records")}}
    learn = build_learner(recipe)
    valid, test, history = _fit_and_score(learn, cbs, progress, epochs=best_epoch + 1)
    extra["retrain"] = {"epochs": int(best_epoch + 1), "valid": valid, "test": test}
    return learn, valid, test, history, extra


def run_recipe(
    recipe: str | Path | Mapping[str, Any],
    out_dir: str | Path | None = None,
    cbs: Sequence[Callback] = (),
    progress: bool = True,
) -> RunResult:
    """Build, fit and evaluate a recipe; write ``out_dir/<name>/`` when ``out_dir`` is given.

    With ``retrain_at_best: true`` the recipe first trains with
    :class:`~fasttricks.callbacks.SaveBestCallback` on the primary metric (in its direction,
    :func:`fasttricks.metrics.metric_direction`), then retrains from scratch for
    ``best_epoch + 1`` epochs (the cheatsheet's save-best vs retrain comparison); the returned
    result is the retrained run, with the save-best run's numbers in ``extra["save_best"]``.

    The run folder is written by :func:`fasttricks.runs.write_run`: ``recipe.yaml``,
    ``metrics.csv``, ``model.pth``, ``curves.png`` and ``summary.json``, into a temporary
    folder renamed into place, so the folder always holds one whole run.

    A diverged run raises :class:`~fasttricks.callbacks.NonFiniteLossError` and writes nothing:
    the NaN guard stops it (unless ``nan_guard: false``), and a final validation or test loss
    or primary metric that is nan/inf is refused.

    Args:
        recipe: a :class:`~fasttricks.recipes.Recipe` (or a path or mapping, validated once).
        out_dir: parent folder of the run folder (e.g. ``"runs"``); None or False writes nothing.
        cbs: extra callbacks for the fit (e.g. a tuner's pruning callback).
        progress: show fastai's progress bar and epoch table (default True).
    """
    recipe = _recipe(recipe)
    extra: dict[str, Any] = {}
    if recipe["retrain_at_best"]:
        learn, valid, test, history, extra = _save_best_then_retrain(recipe, cbs, progress)
    else:
        learn = build_learner(recipe)
        valid, test, history = _fit_and_score(learn, cbs, progress)
    result = RunResult(learn=learn, valid=valid, test=test, history=history, extra=extra)
    if out_dir:
        from fasttricks.runs import write_run

        result.out_dir = write_run(result, Path(out_dir) / recipe["name"])
    return result


def seed_runs(
    recipe: str | Path | Mapping[str, Any],
    seeds: Iterable[int],
    progress: bool = False,
    run_dir: str | Path | None = None,
) -> Iterator[tuple[int, RunResult]]:
    """Train ``recipe`` once per training seed; yield ``(seed, result)`` as each run finishes.

    The one seed loop: each run is ``run_recipe(set_in_recipe(recipe, "seed", s))``; the data
    split (``data.seed``) stays fixed, so only the training varies. With ``run_dir`` each run
    is written to ``<run_dir>/seed_<s>/`` (:func:`fasttricks.runs.write_run`).

    Args:
        recipe: a recipe (validated once).
        seeds: the training seeds, e.g. ``range(5)`` or a progress bar over them.
        progress: show each run's progress bar (default False).
        run_dir: folder of the per-seed run folders (default None: write nothing).
    """
    recipe = _recipe(recipe)
    for seed in seeds:
        result = run_recipe(set_in_recipe(recipe, "seed", int(seed)), progress=progress)
        if run_dir is not None:
            from fasttricks.runs import write_run

            result.out_dir = write_run(result, Path(run_dir) / f"seed_{int(seed)}")
        yield int(seed), result


def seed_range(recipe: Any, n_seeds: int) -> range:
    """The training seeds of ``n_seeds`` runs of ``recipe``: ``seed .. seed + n_seeds - 1``
    (``ValueError`` unless ``n_seeds`` is an integer >= 1)."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds must be an integer >= 1, got {n_seeds!r}")
    return range(recipe["seed"], recipe["seed"] + n_seeds)


def run_seeds(
    recipe: str | Path | Mapping[str, Any],
    n_seeds: int,
    out_dir: str | Path | None = "runs",
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Run a recipe with seeds ``seed .. seed + n_seeds - 1``; per-seed table and summary.

    The summary holds n / mean / std / stderr / min / max (:func:`fasttricks._stats.summarize`)
    of the test value of the primary metric and of the test loss. With ``out_dir`` each seed
    goes to ``<out_dir>/<name>/seed_<s>/`` and the table and summary to ``seeds.csv`` /
    ``seeds.json`` beside them; a seed whose folder already holds a whole run of this recipe
    with that seed (:func:`fasttricks.runs.finished_run`) is not trained again, so a rerun
    or a run with more seeds continues where the last one stopped. Prints one summary line per
    seed.
    """
    from fasttricks._io import atomic_write_csv, write_json
    from fasttricks._stats import summarize
    from fasttricks.runs import finished_run, saved_summary_line, summary_line

    recipe = _recipe(recipe)
    seeds = seed_range(recipe, n_seeds)
    metric, direction = primary_metric(recipe)
    key = "loss" if metric == "valid_loss" else metric
    base = Path(out_dir) / recipe["name"] if out_dir else None
    rows = []
    for seed in seeds:
        done = None
        if base is not None:
            done = finished_run(base / f"seed_{seed}", set_in_recipe(recipe, "seed", seed))
        if done is not None:
            valid, test = done["valid"], done["test"]
            line = f"{saved_summary_line(base / f'seed_{seed}', done)} (already done)"
        else:
            ((_, result),) = seed_runs(recipe, [seed], progress=progress, run_dir=base)
            valid, test, line = result.valid, result.test, summary_line(result)
        print(line, flush=True)
        rows.append({"seed": seed, f"test_{key}": _score(test, key),
                     "test_loss": _score(test, "loss"), f"valid_{key}": _score(valid, key)})
    table = pd.DataFrame(rows)
    summary = {"name": recipe["name"], "metric": key, "direction": direction,
               "test": summarize(table[f"test_{key}"]),
               "test_loss": summarize(table["test_loss"])}
    if base is not None:
        atomic_write_csv(table, base / "seeds.csv")
        write_json(base / "seeds.json", summary)
    return table, summary


def _score(scores: Mapping[str, Any], name: str) -> float:
    """A score as a float; nan where a run folder's strict JSON holds null."""
    value = scores[name]
    return float("nan") if value is None else float(value)
