"""Samplers by name, and a seed per trial so restarts and parallel workers sample new points.

0.1 seeded every process's sampler with ``--seed``: a resumed study repeated its first
points, and two identical commands on one study (one per machine) sampled identical trials.
Here each process's seed is derived from the base seed, the study name, the worker index and
the number of finished trials when it started, and each trial's seed from that and the trial
number, which the storage hands out once per study.
"""

from __future__ import annotations

import hashlib
from typing import Any

import optuna

from fasttricks._validate import check_choice
from fasttricks.tune._options import SAMPLERS

__all__ = ["SAMPLERS", "SeededSampler", "make_sampler", "sampler_seed"]


def make_sampler(name: str = "tpe", seed: int | None = 0, n_trials: int | None = None) -> Any:
    """An Optuna sampler by name: ``"tpe"`` (default) or ``"random"``.

    TPE (Bergstra et al. 2011) starts with ``min(10, max(3, n_trials // 3))`` random trials
    (Optuna's default is 10, too many for a 12-trial study). Parallel workers do not propose
    the same point because the study re-seeds each trial (:class:`SeededSampler`).

    Raises:
        KeyError: unknown name (lists the known samplers and the closest match).
    """
    check_choice("sampler", name, SAMPLERS)
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
