"""Seed ensembles (one model per seed) and snapshot ensembles (one model per LR cycle)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttricks._io import atomic_torch_save, write_json
from fasttricks._stats import summarize
from fasttricks.ensemble._members import (
    Member,
    MemberJob,
    MemberOptions,
    MemberRun,
    Plan,
    averaged,
    load_or_train,
    member_record,
    quiet,
    scorers,
)
from fasttricks.ensemble._parallel import JOB_KINDS, Workers
from fasttricks.ensemble._report import announce, fmt, member_line, metrics_json
from fasttricks.ensemble._results import EnsembleScores, MemberScores
from fasttricks.ensemble._store import MemberStore, fingerprint, safe_load, to_plain

__all__ = ["EnsembleResult", "MemberResult", "seed_ensemble", "seed_job", "snapshot_ensemble"]

logger = logging.getLogger(__name__)


@dataclass
class MemberResult(MemberScores):
    """One member of a seed or snapshot ensemble: its name, its scores alone and its model file
    (the shared fields of :class:`~fasttricks.ensemble._results.MemberScores`, keyword-only)."""

    name: str


@dataclass
class EnsembleResult(EnsembleScores):
    """What :func:`seed_ensemble` and :func:`snapshot_ensemble` return.

    Attributes:
        kind: ``"seed"`` or ``"snapshot"``. metric, direction: the primary metric key and
            ``"maximize"``/``"minimize"`` (:func:`fasttricks.metrics.metric_direction`).
        members: one :class:`MemberResult` per seed / cycle, in order.
        valid_preds, test_preds: the members' averaged predictions on the valid and test split
            (``test_preds`` None without a test split); ``valid`` and ``test`` their scores.
        out_dir: ``runs/<name>/seeds`` or ``runs/<name>/snapshots``.
    """

    kind: str
    members: list[MemberResult]
    valid_preds: torch.Tensor
    valid_targets: torch.Tensor
    valid: dict[str, float]

    def member_results(self) -> list[MemberResult]:
        return self.members

    def _split(self) -> str:
        return "test" if self.test is not None else "valid"

    def member_scores(self, split: str | None = None) -> np.ndarray:
        """The primary metric of every member alone on ``split`` (default test, else valid)."""
        split = split or self._split()
        return np.asarray([getattr(m, split)[self.metric] for m in self.members], dtype=float)

    def spread(self) -> dict[str, float]:
        """n, mean, std (ddof=1), stderr, min, max of the members' primary metric
        (:func:`fasttricks._stats.summarize`; test split if there is one, else valid)."""
        return summarize(self.member_scores())

    @property
    def mean(self) -> float:
        """Mean of the members' primary metric (test split if there is one, else valid)."""
        return self.spread()["mean"]

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) of the members' primary metric; 0 for one member."""
        return self.spread()["std"]

    @property
    def sem(self) -> float:
        """Standard error of the mean, ``std / sqrt(n_members)``."""
        return self.spread()["stderr"]

    @property
    def ensemble_score(self) -> float:
        """The averaged predictions' primary metric (test split if there is one, else valid)."""
        return float(getattr(self, self._split())[self.metric])

    def summary(self) -> str:
        """One line: members' mean ± std (sem) and the ensemble's score."""
        s = self.spread()
        return (
            f"{self.name} {self.kind} ensemble of {len(self.members)}: {self._split()} "
            f"{self.metric} members {fmt(s['mean'])} ± {fmt(s['std'])} (sem {fmt(s['stderr'])}), "
            f"ensemble {fmt(self.ensemble_score)} [{self.seconds:.1f}s]"
        )

    def _chart_name(self) -> str:
        return f"{self.kind}.png"

    def _draw(self, ax: Any, x: np.ndarray) -> list[float]:
        """Every member's score as a bar, their mean and the ensemble's score as lines."""
        scores = self.member_scores()
        ax.bar(x, scores, 0.6, color="#4c72b0", label="single member")
        ax.axhline(self.mean, color="#4c72b0", ls="--", label="members' mean")
        ax.axhline(self.ensemble_score, color="#c44e52", lw=2, label="ensemble")
        ax.set_xticks(x, [m.name for m in self.members], rotation=30, fontsize=8)
        ax.set_ylabel(f"{self._split()} {self.metric}")
        ax.set_title(f"{self.name}: {self.kind} ensemble")
        return [*scores, self.ensemble_score]


def _ensemble_json(result: EnsembleResult) -> dict:
    return {
        "name": result.name, "kind": result.kind, "metric": result.metric,
        "direction": result.direction,
        "members": [{"name": m.name, **m.to_json()} for m in result.members],
        "valid": metrics_json(result.valid), "test": metrics_json(result.test),
        "mean": result.mean, "std": result.std, "sem": result.sem, "summary": result.summary(),
    }


def _finish_ensemble(plan: Plan, kind: str, run: MemberRun, store: MemberStore,
                     started: float, progress: bool) -> EnsembleResult:
    """Average the members, score the averages, write ``<kind>.png`` and ``result.json``."""
    loss_func, metrics = scorers(plan, run.learn)
    records = run.records
    members = [MemberResult(name=m.name, **MemberScores.fields(m, store)) for m in run.members]
    valid_preds, valid_targets, valid_scores = averaged(records, "valid", loss_func, metrics)
    test_preds, test_targets, test_scores = averaged(records, "test", loss_func, metrics)
    result = EnsembleResult(
        name=plan.name, kind=kind, metric=plan.key, direction=plan.direction, members=members,
        valid_preds=valid_preds, valid_targets=valid_targets, valid=valid_scores,
        test_preds=test_preds, test_targets=test_targets, test=test_scores,
        out_dir=store.folder, seconds=time.perf_counter() - started,
    )
    result.plot()
    write_json(store.folder / "result.json", _ensemble_json(result))
    announce(result.summary(), progress)
    return result


# --------------------------------------------------------------------------------------------
# seed ensembles


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def seed_job(recipe: Any, seeds: Sequence[int],
             options: MemberOptions = MemberOptions()) -> tuple[Plan, MemberJob]:
    """The plan and member job of :func:`seed_ensemble` (same arguments, the shared ones in
    ``options``), untrained."""
    from fasttricks.recipes import build_learner, fit_learner, set_in_recipe

    seeds = _checked_seeds(seeds)
    plan = options.plan(recipe)
    base = plan.recipe_dict()
    base.pop("seed", None)
    store = MemberStore(Path(options.out_dir) / plan.name / "seeds",
                        fingerprint({"recipe": base, "test": plan.has_test}))
    cbs, progress = list(options.cbs), options.progress

    def train(i: int, name: str) -> tuple[dict, Any]:
        seeded = set_in_recipe(plan.recipe, "seed", seeds[i])
        learn = build_learner(seeded, splits=plan.splits)
        with quiet(learn, progress):
            fit_learner(learn, seeded, cbs=cbs)
        return member_record(learn, plan.has_test), learn

    return plan, MemberJob(store=store, names=[f"seed_{s}" for s in seeds], train=train)


def _job_from_spec(spec: dict) -> MemberJob:
    """The seed-ensemble job of a worker's description
    (:func:`fasttricks.ensemble._parallel.build_job`)."""
    return seed_job(spec["recipe"], options=MemberOptions.from_spec(spec), **spec["kwargs"])[1]


JOB_KINDS["seeds"] = _job_from_spec


def seed_ensemble(
    recipe: Any,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    overrides: Any = (),
    test: bool = True,
    out_dir: str | PathLike = "runs",
    cbs: Sequence[Any] = (),
    progress: bool = True,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    storage: str | None = None,
    threads: int | None = None,
) -> EnsembleResult:
    """Train the same recipe once per seed and average the models' predictions.

    Reports each member's score, their mean, standard deviation and standard error (how much
    of a difference between two runs is seed noise), and the score of the averaged
    predictions: the cheapest ensemble, as in Lakshminarayanan et al., "Simple and Scalable
    Predictive Uncertainty Estimation using Deep Ensembles" (NeurIPS 2017).

    Members are written to ``<out_dir>/<name>/seeds/seed_<s>.pth`` (model) and ``.pt`` (record,
    read back with ``torch.load(weights_only=True)``), with ``result.json`` (strict JSON) and
    ``seed.png``; re-running skips seeds already trained with the same recipe, so adding seeds
    reuses the old ones.

    Args:
        recipe: a recipe path, mapping or resolved recipe.
        seeds: the model seeds (default 0-4); each run is the recipe with ``seed`` replaced.
        overrides: ``"dotted.key=value"`` strings or a mapping applied to the recipe.
        test: also predict and score the test split (default True).
        out_dir: the runs folder (default ``"runs"``).
        cbs: extra fastai callbacks for every fit.
        progress: show fastai's progress and one line per seed (default True).
        workers, gpus, storage, threads: train the seeds in worker processes, each claimed
            once, as in :func:`~fasttricks.ensemble.kfold_fit` (default: one after another
            here); the results are those of the sequential run with the same thread count.

    Example::

        result = seed_ensemble("mnist1d", seeds=range(5))
        result.mean, result.std, result.sem, result.ensemble_score
    """
    started = time.perf_counter()
    where = Workers(workers, gpus, storage, threads)
    seeds = _checked_seeds(seeds)
    options = MemberOptions(overrides, test, out_dir, cbs, progress)
    plan, job = seed_job(recipe, seeds, options)
    plan.save_recipe(job.store.folder)
    where.run(options.spec("seeds", plan, seeds=seeds), job, cbs=cbs, progress=progress)
    store = job.store

    def report(m: Member) -> None:
        prefix = f"seed {seeds[m.index]} ({m.index + 1}/{len(seeds)})"
        announce(member_line(prefix, m.record, plan.key, m.resumed), progress)

    run = load_or_train(store, job.names, job.train, on_member=report)
    return _finish_ensemble(plan, "seed", run, store, started, progress)


# --------------------------------------------------------------------------------------------
# snapshot ensembles


def _check_count(name: str, value: Any, *, optional: bool = False) -> int | None:
    from fasttricks._validate import check_range

    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1{' or None' if optional else ''}, "
                        f"got {value!r}")
    check_range(name, int(value), low=1)
    return int(value)


class _Cycles:
    """Trains snapshot cycles on one learner, each continuing from where the last one ended.

    ``resume.pth`` holds the weights and optimizer state at the end of the latest finished
    cycle (tensors and plain values, read with ``weights_only=True``). A finished cycle is kept
    only if a continuous run of finished cycles reaches the one ``resume.pth`` is from, so the
    next cycle continues exactly; otherwise every cycle is trained again.
    """

    def __init__(self, plan: Plan, learn: Any, store: MemberStore, names: list[str],
                 epochs: int | None, cbs: Sequence[Any], progress: bool) -> None:
        self.plan, self.learn, self.store = plan, learn, store
        self.epochs, self.cbs, self.progress = epochs, list(cbs), progress
        self.resume_path = store.folder / "resume.pth"
        self.resume = safe_load(self.resume_path, map_location=learn.dls.device)
        self.keep = self._finished_prefix(names)
        self.restored = self.keep == 0

    def _finished_prefix(self, names: list[str]) -> int:
        """How many leading cycles to keep from an earlier run."""
        state = self.resume if isinstance(self.resume, dict) else {}
        last = state.get("cycle")
        if state.get("fingerprint") != self.store.fingerprint or not isinstance(last, int):
            last = -1
        keep = 0
        while keep < min(len(names), last + 1) and self.store.load(names[keep]) is not None:
            keep += 1
        if keep < len(names) and keep != last + 1:
            keep = 0  # the next cycle would not continue from the state it needs
        if keep == 0 and self.store.record_path(names[0]).exists():
            logger.warning("no usable resume state in %s; training every cycle again",
                           self.store.folder)
        return keep

    def accept(self, i: int, record: dict) -> bool:
        return i < self.keep

    def _restore(self) -> None:
        """Weights and optimizer state at the end of the last kept cycle."""
        self.learn.model.load_state_dict(self.resume["model"])
        self.learn.create_opt()
        self.learn.opt.load_state_dict(self.resume["opt"])
        self.restored = True

    def __call__(self, i: int, name: str) -> tuple[dict, Any]:
        from fasttricks.recipes import fit_learner

        if not self.restored:
            self._restore()
        with quiet(self.learn, self.progress):
            fit_learner(self.learn, self.plan.recipe, cbs=self.cbs, epochs=self.epochs)
        return {**member_record(self.learn, self.plan.has_test), "cycle": i}, self.learn

    def save_resume(self, i: int, learn: Any) -> None:
        """After cycle ``i`` is saved: its weights and optimizer state, for the next cycle."""
        state = {"cycle": i, "fingerprint": self.store.fingerprint,
                 "model": learn.model.state_dict(), "opt": learn.opt.state_dict()}
        atomic_torch_save(to_plain(state), self.resume_path)


def snapshot_ensemble(
    recipe: Any,
    cycles: int = 3,
    *,
    epochs: int | None = None,
    overrides: Any = (),
    test: bool = True,
    out_dir: str | PathLike = "runs",
    cbs: Sequence[Any] = (),
    progress: bool = True,
    workers: int = 1,
) -> EnsembleResult:
    """Train through ``cycles`` learning-rate cycles, snapshot after each, average the snapshots.

    A cycle is one call of the recipe's schedule (``fit_flat_cos`` or ``fit_one_cycle``, via
    ``fit_learner``) for ``epochs`` epochs (default: the recipe's), each continuing from the
    previous cycle's weights and optimizer state; the model at the end of every cycle, where
    the learning rate has annealed to a minimum, is one ensemble member. "Snapshot Ensembles:
    Train 1, get M for free", Huang et al., ICLR 2017.

    Snapshots go to ``<out_dir>/<name>/snapshots/cycle_<c>.pth`` (model) and ``.pt`` (record),
    plus ``resume.pth`` (weights and optimizer state of the last finished cycle as tensors and
    plain values), ``result.json`` and ``snapshot.png``. Re-running continues after the last
    finished cycle, so asking for more cycles extends an earlier run; records and
    ``resume.pth`` are read with ``torch.load(weights_only=True)``, so a planted file cannot run
    code: it is ignored and the cycles are trained again.

    Args:
        recipe: a recipe path, mapping or resolved recipe.
        cycles: number of cycles = ensemble members (default 3, at least 1).
        epochs: epochs per cycle (default: the recipe's ``schedule.epochs``).
        overrides: ``"dotted.key=value"`` strings or a mapping applied to the recipe.
        test: also predict and score the test split (default True).
        out_dir: the runs folder (default ``"runs"``).
        cbs: extra fastai callbacks for every cycle.
        progress: show fastai's progress and one line per cycle (default True).
        workers: only 1: the snapshots are one fit, each cycle continuing from the previous
            one, so there are no independent members to share out (any other value is a
            ``ValueError``; use :func:`seed_ensemble` or :func:`kfold_fit` for parallel
            members).

    Example::

        result = snapshot_ensemble("digits", cycles=3, epochs=4)
        print(result.summary())   # each snapshot's test score and the averaged one
    """
    from fasttricks.recipes import build_learner

    started = time.perf_counter()
    if workers != 1:
        raise ValueError(f"workers={workers!r}: a snapshot ensemble is one fit (each cycle "
                         "continues from the previous one), so workers does not apply; allowed "
                         "is 1 (seed_ensemble and kfold_fit train members in parallel)")
    cycles = _check_count("cycles", cycles)
    epochs = _check_count("epochs", epochs, optional=True)
    plan = MemberOptions(overrides, test).plan(recipe)
    store = MemberStore(Path(out_dir) / plan.name / "snapshots", fingerprint(
        {"recipe": plan.recipe_dict(), "epochs": epochs, "test": plan.has_test}))
    plan.save_recipe(store.folder)
    names = [f"cycle_{c}" for c in range(cycles)]
    trainer = _Cycles(plan, build_learner(plan.recipe, splits=plan.splits), store, names,
                      epochs, cbs, progress)

    def report(m: Member) -> None:
        announce(member_line(f"cycle {m.index + 1}/{cycles}", m.record, plan.key, m.resumed),
                 progress)

    run = load_or_train(store, names, trainer, accept=trainer.accept,
                        on_saved=trainer.save_resume, on_member=report)
    run.learn = trainer.learn
    return _finish_ensemble(plan, "snapshot", run, store, started, progress)
