"""Optuna's logging and warnings, quietened where the tuner prints its own lines."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["optuna_log_level", "quiet_experimental"]


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Hide Optuna's ExperimentalWarning (one per heartbeat, retry and plot call); nothing else."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def optuna_log_level(level: int | None) -> Iterator[None]:
    """Optuna's own INFO line per trial would repeat ours: raise its level while we print."""
    import optuna

    if level is None:
        yield
        return
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
