"""A fastai callback that reports a metric to an Optuna trial every epoch and stops pruned fits.

Why not optuna-integration's fastai callback: it asks ``trial.should_prune()`` once after the
epoch that cancels the fit and a second time in ``after_fit`` to decide whether to raise
``TrialPruned``. Successive halving (and so Hyperband) answers differently the second time:
the first call records the trial's value in the rung (``completed_rung_k``), the second sees
the trial already past that rung and says "do not prune". The trial that was stopped early is
then recorded as COMPLETE, with the value of a half-trained model. This callback asks exactly
once per epoch and remembers its answer.
"""

from __future__ import annotations

import math
from typing import Any

from fastai.callback.core import Callback, CancelFitException

__all__ = ["PruningCallback"]


class PruningCallback(Callback):
    """Report ``monitor`` to ``trial`` after every epoch; cancel the fit when the trial is pruned.

    The step reported is the number of epochs completed in this trial (1, 2, ...), counted
    across several ``fit`` calls (staged fine-tuning), so a pruner's resource is epochs.
    After training, check :attr:`pruned` and raise ``optuna.TrialPruned`` (or call
    :meth:`raise_if_pruned`): the callback never asks the pruner a second time.

    Args:
        trial: the ``optuna.Trial`` being run.
        monitor: the recorder column to report, e.g. ``"accuracy"`` or ``"valid_loss"``
            (default ``"valid_loss"``).
        max_steps: the trial's full epoch budget; the pruner is not asked at that last epoch,
            where stopping saves nothing (default None: ask at every epoch).

    Attributes:
        pruned: True once the pruner said to stop.
        pruned_at: the epoch (1-based) the fit was cancelled at, or None.
        step: epochs completed so far.
        values: the values reported, one per epoch.
    """

    order = 65  # after Recorder (50) has written the epoch's values, after trackers (60)
    remove_on_fetch = True

    def __init__(self, trial: Any, monitor: str = "valid_loss", max_steps: int | None = None
                 ) -> None:
        super().__init__()
        if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {max_steps!r}")
        self.trial = trial
        self.monitor = monitor
        self.max_steps = max_steps
        self.pruned = False
        self.pruned_at: int | None = None
        self.step = 0
        self.values: list[float] = []

    def _column(self) -> int:
        names = list(self.learn.recorder.metric_names)
        if self.monitor not in names or self.monitor in ("epoch", "time"):
            allowed = [n for n in names if n not in ("epoch", "time")]
            raise KeyError(
                f"PruningCallback: unknown monitor {self.monitor!r}; this learner records "
                f"{allowed}"
            )
        # Recorder.values rows start at train_loss (metric_names[0] is "epoch").
        return names.index(self.monitor) - 1

    def before_fit(self) -> None:
        if self.pruned:  # a later stage of a staged fit: stay stopped
            raise CancelFitException()
        if not hasattr(self.learn, "recorder"):
            raise RuntimeError("PruningCallback needs fastai's Recorder on the learner")
        self._idx = self._column()

    def after_epoch(self) -> None:
        row = self.learn.recorder.values[-1]
        value = float(row[self._idx]) if self._idx < len(row) else math.nan
        self.step += 1
        self.values.append(value)
        self.trial.report(value, self.step)
        if self.max_steps is not None and self.step >= self.max_steps:
            return
        if self.trial.should_prune():  # asked exactly once per epoch
            self.pruned = True
            self.pruned_at = self.step
            raise CancelFitException()

    def raise_if_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` if this trial's fit was cancelled by the pruner."""
        if self.pruned:
            import optuna

            raise optuna.TrialPruned(
                f"pruned at epoch {self.pruned_at} with {self.monitor}={self.values[-1]:.6g}"
            )
