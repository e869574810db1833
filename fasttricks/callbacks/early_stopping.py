"""Stop training when a monitored value has not improved for ``patience`` epochs.

fastai's ``EarlyStoppingCallback`` with the direction decided where every other part of
fasttricks decides it (:func:`fasttricks.metrics.lower_is_better`), a wrong monitor name
reported with the recorded names and the closest match (fastai asserts), and a log line instead
of a print. Prechelt, "Early Stopping - But When?" (1998), in *Neural Networks: Tricks of the
Trade*, https://doi.org/10.1007/3-540-49430-8_3.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from fastai.callback.core import CancelFitException
from fastai.callback.tracker import EarlyStoppingCallback as _FastaiEarlyStopping
from fastai.callback.tracker import TrackerCallback

from fasttricks._validate import ChoiceError, check_range, closest
from fasttricks.metrics import lower_is_better

__all__ = ["EarlyStoppingCallback"]

logger = logging.getLogger(__name__)


class EarlyStoppingCallback(_FastaiEarlyStopping):
    """Cancel the fit once ``monitor`` has not improved for ``patience`` epochs in a row.

    An epoch improves when its value beats the best so far by more than ``min_delta``
    (lower is better for losses and errors, :func:`fasttricks.metrics.lower_is_better`); NaN
    never improves. The fit ends after the epoch that makes ``patience`` epochs without
    improvement; ``stopped_epoch`` (0-based) says which, None if the fit ran to its end. Each
    ``fit`` starts afresh (a staged fine-tune's stages are judged on their own).

    Args:
        monitor: a value the recorder logs (default ``"valid_loss"``; e.g. ``"accuracy"``).
        patience: epochs without improvement before stopping (default 1, >= 1).
        min_delta: the least change that counts as an improvement (default 0, >= 0).

    Example::

        learn.fit(20, cbs=EarlyStoppingCallback("accuracy", patience=3))
    """

    def __init__(self, monitor: str = "valid_loss", patience: int = 1,
                 min_delta: float = 0.0) -> None:
        self.validate_options(monitor=monitor, patience=patience, min_delta=min_delta)
        comp = np.less if lower_is_better(monitor) else np.greater
        super().__init__(monitor=monitor, comp=comp, min_delta=float(min_delta),
                         patience=int(patience))
        self.stopped_epoch: int | None = None
        self._trained = False

    @staticmethod
    def validate_options(**options: Any) -> None:
        """Check option values without building the callback (the recipe schema calls this)."""
        monitor = options.get("monitor", "valid_loss")
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a non-empty metric name, got {monitor!r}")
        patience = options.get("patience", 1)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        check_range("min_delta", options.get("min_delta", 0.0), low=0.0)

    def before_fit(self) -> None:
        self.stopped_epoch = None
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        if self.monitor not in names:
            msg = (f"early_stopping: unknown monitor {self.monitor!r}; recorded values: "
                   f"{', '.join(names)}")
            match = closest(self.monitor, names)
            if match is not None:
                msg += f". Did you mean {match!r}?"
            raise ChoiceError(msg)
        super().before_fit()
        self._trained = False

    def after_train(self) -> None:
        self._trained = True

    def after_epoch(self) -> None:
        if not self._trained:  # learn.validate() sends after_epoch too, without training
            return
        self._trained = False
        TrackerCallback.after_epoch(self)
        if self.new_best:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(self.epoch)
            logger.info("early stopping after epoch %d: no %s improvement since epoch %d",
                        self.epoch, self.monitor, self.epoch - self.wait)
            raise CancelFitException()
