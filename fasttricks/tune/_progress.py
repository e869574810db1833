"""One live line per finished trial: number, state, value, epochs used, parameters, best so far."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["TrialProgress", "format_params"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """``key=value`` pairs, floats with 4 significant digits."""
    return " ".join(f"{key}={_fmt(value)}" for key, value in params.items())


class TrialProgress:
    """An Optuna study callback printing one line per finished trial to ``stream``.

    Example line::

        trial   4 PRUNED   accuracy=0.9123 epochs  3/9    4.1s  optimizer.lr=0.0012 | best #2 0.96

    Args:
        metric: the name printed before the value.
        max_epochs: the full epoch budget, printed after the epochs a trial used.
        prefix: printed first (the worker's name when several run), default ``""``.
        stream: where to write, default ``sys.stdout``.
    """

    def __init__(self, metric: str, max_epochs: int | None = None, prefix: str = "",
                 stream: TextIO | None = None) -> None:
        self.metric = metric
        self.max_epochs = max_epochs
        self.prefix = prefix
        self.stream = stream

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        shown = "-" if value is None else f"{value:.4f}"
        epochs = trial.user_attrs.get("epochs", len(trial.intermediate_values))
        budget = f"/{self.max_epochs}" if self.max_epochs else ""
        seconds = trial.duration.total_seconds() if trial.duration is not None else 0.0
        line = (
            f"{self.prefix}trial {trial.number:3d} {trial.state.name:<8s} "
            f"{self.metric}={shown} epochs {epochs:2d}{budget} {seconds:6.1f}s  "
            f"{format_params(trial.params)}"
        )
        error = trial.user_attrs.get("error")
        if trial.state == TrialState.FAIL and error:
            line += f" | {error}"
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            best = study.best_trial
            line += f" | best #{best.number} {best.value:.4f}"
        print(line, file=self.stream or sys.stdout, flush=True)
