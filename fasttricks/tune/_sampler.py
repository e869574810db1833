"""Samplers by name, and a seed per trial so restarts and parallel workers sample new points.

0.1 seeded every process's sampler with ``--seed``: a resumed study repeated its first
points, and two identical commands on one study (one per machine) sampled identical trials.
Here each process's seed is derived from the base seed, the study name, the worker index and
the number of finished trials when it started, and each trial's seed from that and the trial
number, which the storage hands out once per study.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from fasttricks._validate import check_choice
from fasttricks.tune._options import SAMPLERS

__all__ = ["GRID_ATTR", "SAMPLERS", "GridPointSampler", "SeededSampler", "make_sampler",
           "sampler_seed"]

GRID_ATTR = "grid_point"


def make_sampler(name: str = "tpe", seed: int | None = 0, n_trials: int | None = None) -> Any:
    """An Optuna sampler by name: ``"tpe"`` (default) or ``"random"``.

    A grid (``"grid"``) needs the space's points, so it is a :class:`GridPointSampler`.

    TPE (Bergstra et al. 2011) starts with ``min(10, max(3, n_trials // 3))`` random trials
    (Optuna's default is 10, too many for a 12-trial study). Parallel workers do not propose
    the same point because the study re-seeds each trial (:class:`SeededSampler`).

    Raises:
        KeyError: unknown name (lists the known samplers and the closest match).
    """
    check_choice("sampler", name, SAMPLERS)
    if name == "grid":
        raise ValueError("the grid sampler needs the grid: use GridPointSampler(grid_points(...))")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = 10 if n_trials is None else min(10, max(3, n_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def sampler_seed(seed: int, *identity: Any) -> int:
    """A 32-bit seed derived from ``seed`` and ``identity`` (SHA-256 of their ``repr``).

    Example:
        >>> sampler_seed(0, "study", 0, 0) == sampler_seed(0, "study", 0, 0)
        True
        >>> sampler_seed(0, "study", 0, 0) == sampler_seed(0, "study", 1, 0)
        False
    """
    text = repr((int(seed), *identity)).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


class SeededSampler(optuna.samplers.BaseSampler):
    """An Optuna sampler that starts every trial from its own seed.

    Before trial ``n`` it makes a fresh sampler (:func:`make_sampler`) seeded with
    ``sampler_seed(process_seed, n)`` and delegates to it. Optuna's TPE and random samplers
    keep no state between trials other than their random generator (TPE reads the history from
    the storage), so only where each trial's random numbers start changes.

    Args:
        name: ``"tpe"`` or ``"random"``.
        process_seed: this process's seed, or None for unseeded sampling.
        n_trials: the study's trial budget (sizes TPE's random start-up).
    """

    def __init__(self, name: str, process_seed: int | None, n_trials: int | None) -> None:
        self.name = name
        self.process_seed = process_seed
        self.n_trials = n_trials
        self._inner = make_sampler(name, process_seed, n_trials)

    def trial_seed(self, number: int) -> int | None:
        """The seed of trial ``number`` (None when unseeded)."""
        return None if self.process_seed is None else sampler_seed(self.process_seed, number)

    def before_trial(self, study: Any, trial: Any) -> None:
        self._inner = make_sampler(self.name, self.trial_seed(trial.number), self.n_trials)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(sorted(point.items()), default=str)


class GridPointSampler(optuna.samplers.BaseSampler):
    """Grid search over given points: each trial takes one point not yet taken.

    Like Optuna's ``GridSampler``, but over a list of points rather than the Cartesian product
    of every parameter's values, so a conditional parameter does not multiply the grid where
    it is not sampled (:func:`fasttricks.tune._space.grid_points`). A point is taken by a
    trial that is running, waiting, finished or pruned; a failed trial's point is free again,
    so it is retried. Among free points one is drawn at random (seeded), which makes two
    workers starting at once less likely to pick the same point; once every point is taken,
    a point is repeated (a study on a finished grid should stop at ``n_trials`` before that).

    Args:
        points: ``{parameter name: value}`` per grid point (at least one, no duplicates).
        seed: seed of the draw among free points (None: unseeded).
    """

    def __init__(self, points: Sequence[Mapping[str, Any]], seed: int | None = 0) -> None:
        self.points = [dict(p) for p in points]
        if not self.points:
            raise ValueError("the grid has no points")
        self._keys = [_point_key(p) for p in self.points]
        if len(set(self._keys)) != len(self._keys):
            raise ValueError("the grid has duplicate points")
        self._by_key = dict(zip(self._keys, self.points, strict=True))
        self._rng = random.Random(seed)

    def taken(self, study: Any) -> set[str]:
        """The points of trials that are running, waiting, finished or pruned."""
        from optuna.trial import TrialState

        busy = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
        return {t.system_attrs[GRID_ATTR] for t in study.get_trials(deepcopy=False, states=busy)
                if GRID_ATTR in t.system_attrs}

    def before_trial(self, study: Any, trial: Any) -> None:
        if GRID_ATTR in trial.system_attrs or "fixed_params" in trial.system_attrs:
            return
        taken = self.taken(study)
        free = [k for k in self._keys if k not in taken] or list(self._keys)
        study._storage.set_trial_system_attr(trial._trial_id, GRID_ATTR, self._rng.choice(free))

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, param_name: str,
                           param_distribution: Any) -> Any:
        key = trial.system_attrs.get(GRID_ATTR)
        point = self._by_key.get(key)
        if point is None or param_name not in point:
            raise ValueError(
                f"grid point {key} has no value for parameter {param_name!r}: the search "
                "space changed since the study started; use another --study-name"
            )
        value = point[param_name]
        if not param_distribution._contains(param_distribution.to_internal_repr(value)):
            raise ValueError(f"grid value {value!r} of {param_name!r} is outside "
                             f"{param_distribution}")
        return value

    def reseed_rng(self) -> None:
        self._rng = random.Random()
