"""Save the model whenever a monitored value improves; reload the best weights at the end of fit.

Like fastai's ``SaveModelCallback``, but the checkpoint is written atomically (a temporary file
in the same folder, then ``os.replace``), a wrong monitor name fails at once with the recorded
names and the closest match, and the best epoch and value are kept for retraining.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.learner import Recorder, load_model
from fastai.torch_core import get_model, rank_distrib

from fasttricks._io import atomic_torch_save
from fasttricks._validate import ChoiceError, check_range, closest
from fasttricks.metrics import lower_is_better

__all__ = ["SaveBestCallback"]

logger = logging.getLogger(__name__)


def _process_group() -> tuple[int, int]:
    """``(rank, world size)`` of the running distributed job; ``(RANK, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return rank_distrib(), 1


def _broadcast_weights(model: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (in place)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


class SaveBestCallback(Callback):
    """Save the model when ``monitor`` improves and reload the best weights after fit.

    The direction comes from :func:`fasttricks.metrics.lower_is_better`: registered metrics
    know theirs (``error_rate`` is minimized); any other name containing ``loss`` or ``error``
    is better when lower, anything else when higher (fastai's tracker rule). An epoch counts
    as better when it beats the best so far by more than ``min_delta``. The checkpoint goes to
    ``learn.path/learn.model_dir/{fname}.pth`` in fastai's ``learn.save`` format (so
    ``learn.load(fname)`` reads it), written atomically. With an :class:`EMACallback` on the
    learner, the EMA writes its state beside it as ``{fname}_ema.pth`` after each save
    (``EMACallback.load(fname)``); ``saved_epoch`` says which epoch was saved last.

    After fit, ``best_epoch`` (0-based epoch index, None if no epoch completed) and ``best_value``
    hold the best epoch and its value; ``ckpt_path`` the checkpoint file.

    Under DistributedDataParallel (:mod:`fasttricks.distributed`) only rank 0 writes the
    checkpoint (every rank sees the same gathered metrics, so all agree on the best epoch); at
    the end of fit rank 0 reloads it and sends the weights to the other ranks, which need
    neither the file nor a shared folder.

    Args:
        monitor: a name the recorder logs (default ``"valid_loss"``; e.g. ``"accuracy"``).
        comp: comparison ``comp(new, best) -> bool`` meaning "new is better", e.g. ``np.less``;
            default inferred from ``monitor``.
        min_delta: minimum improvement (default 0.0).
        fname: checkpoint name without extension (default ``"best"``).
        reload: load the best weights at the end of fit (default True).
        with_opt: also save the optimizer state (default False).
    """

    order = 61  # after the Recorder (50) has logged the epoch; like fastai's SaveModelCallback
    remove_on_fetch = True
    _only_train_loop = True

    def __init__(
        self,
        monitor: str = "valid_loss",
        comp: Callable | None = None,
        min_delta: float = 0.0,
        fname: str = "best",
        reload: bool = True,
        with_opt: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"monitor must be a non-empty metric name, got {monitor!r}")
        if comp is not None and not callable(comp):
            raise TypeError(f"comp must be a comparison like np.less or np.greater, got {comp!r}")
        self.monitor = monitor
        if comp is None:
            comp = np.less if lower_is_better(monitor) else np.greater
        self.comp = comp
        self.min_delta = float(check_range("min_delta", min_delta, low=0.0))
        if not isinstance(fname, str) or not fname:
            raise TypeError(f"fname must be a non-empty file name, got {fname!r}")
        self.fname = fname
        self.reload = bool(reload)
        self.with_opt = bool(with_opt)
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.ckpt_path: Path | None = None
        self.saved_epoch: int | None = None
        self.reloaded = False

    @property
    def lower_is_better(self) -> bool:
        """Whether smaller values of ``monitor`` are better."""
        return bool(self.comp(0.0, 1.0))

    def _improved(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best_value is None:
            return True
        delta = -self.min_delta if self.lower_is_better else self.min_delta
        return bool(self.comp(value - delta, self.best_value))

    def before_fit(self) -> None:
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self.learn, "gather_preds")
        self.best_epoch, self.best_value, self.reloaded = None, None, False
        self.saved_epoch = None
        if not self.run:
            return
        recorder = next((cb for cb in self.learn.cbs if isinstance(cb, Recorder)), None)
        if recorder is None:
            raise RuntimeError("SaveBestCallback needs the learner's Recorder callback")
        names = [n for n in recorder.metric_names[1:] if n != "time"]
        if self.monitor not in names:
            msg = f"unknown monitor {self.monitor!r}; recorded values: {', '.join(names)}"
            match = closest(self.monitor, names)
            if match is not None:
                msg += f". Did you mean {match!r}?"
            raise ChoiceError(msg)
        self._idx = list(recorder.metric_names[1:]).index(self.monitor)
        self.ckpt_path = Path(self.learn.path) / self.learn.model_dir / f"{self.fname}.pth"

    def after_epoch(self) -> None:
        value = self.learn.recorder.values[-1][self._idx]
        value = None if value is None else float(value)
        if not self._improved(value):
            return
        self.best_epoch, self.best_value = int(self.epoch), value
        logger.info("better model at epoch %d: %s = %.6g", self.epoch, self.monitor, value)
        self._save()

    def _save(self) -> None:
        if _process_group()[0] != 0:
            return
        state = get_model(self.learn.model).state_dict()
        opt = getattr(self.learn, "opt", None)
        if self.with_opt and opt is not None:
            state = {"model": state, "opt": opt.state_dict()}
        atomic_torch_save(state, self.ckpt_path)
        self.saved_epoch = int(self.epoch)

    def after_fit(self) -> None:
        if not self.reload or self.best_epoch is None or self.ckpt_path is None:
            return
        rank, world = _process_group()
        if world > 1:
            self._reload_distributed(rank)
            return
        if not self.ckpt_path.exists():
            return
        self.learn.load(self.fname, with_opt=self.with_opt, weights_only=False)
        self.reloaded = True
        self._log_reload()

    def _reload_distributed(self, rank: int) -> None:
        """Rank 0 reads its checkpoint and broadcasts the weights (and optimizer state)."""
        model = get_model(self.learn.model)
        device = next(model.parameters()).device
        found = torch.tensor([1.0 if rank == 0 and self.ckpt_path.exists() else 0.0],
                             device=device)
        dist.broadcast(found, 0)
        if not found.item():
            return
        if self.learn.opt is None:
            self.learn.create_opt()
        if rank == 0:  # fastai's learn.load would wait in a barrier for the other ranks
            load_model(self.ckpt_path, model, self.learn.opt, with_opt=self.with_opt,
                       device=device, weights_only=False)
        _broadcast_weights(model)
        if self.with_opt:
            state = [self.learn.opt.state_dict() if rank == 0 else None]
            dist.broadcast_object_list(state, 0)
            if rank != 0:
                self.learn.opt.load_state_dict(state[0])
        self.reloaded = True
        self._log_reload()

    def _log_reload(self) -> None:
        logger.info(
            "reloaded the best model (epoch %d, %s = %.6g)",
            self.best_epoch,
            self.monitor,
            self.best_value,
        )
