"""Exponential moving average (EMA) of the weights, validated and kept as the final model.

Polyak averaging (Polyak & Juditsky 1992) in its exponential form, as used by
``tf.train.ExponentialMovingAverage`` and timm's ``ModelEmaV2``: after every optimizer step
``ema = d * ema + (1 - d) * w``. With ``warmup`` the decay follows TensorFlow's
``num_updates`` rule ``d_n = min(decay, (1 + n) / (10 + n))`` (n = updates so far), so the
average forgets the random initial weights quickly.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from fastai.callback.core import Callback

from fasttricks._io import atomic_torch_save
from fasttricks._validate import check_range
from fasttricks.callbacks.save_best import SaveBestCallback

__all__ = ["EMACallback", "ema_decay"]

logger = logging.getLogger(__name__)


def ema_decay(decay: float, num_updates: int, warmup: bool = True) -> float:
    """The decay used for update number ``num_updates`` (0-based).

    ``min(decay, (1 + n) / (10 + n))`` with ``warmup`` (TensorFlow's ExponentialMovingAverage
    ``num_updates`` rule), else ``decay``.
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class EMACallback(Callback):
    """Keep an exponential moving average of the weights; validate with it; end fit with it.

    After every optimizer step that was not skipped (e.g. an fp16 overflow),
    ``ema = d * ema + (1 - d) * w`` with one ``torch._foreach_lerp_`` over all floating-point
    parameters (``d`` from :func:`ema_decay`). Buffers such as batch-norm running statistics are
    not averaged: the model's current buffers are used with the EMA weights (equivalent to copying
    them at every step, without the cost).

    With ``validate_ema`` the EMA weights are swapped in for each validation inside fit and kept
    there through ``after_epoch``, so trackers such as :class:`SaveBestCallback` score and save
    the EMA weights; the raw weights come back before the next epoch trains. At the end of fit the
    EMA weights are copied into the model, unless a :class:`SaveBestCallback` has just reloaded
    its best checkpoint. The EMA continues across fits of the same model (``fine_tune``).
    Whenever a :class:`SaveBestCallback` has just written a checkpoint, the EMA state is written
    beside it as ``{fname}_ema.pth``, so the averaged weights travel with the model they belong
    to.

    The state (decay, update count, averaged weights) round-trips with :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`save` and :meth:`load`.

    Args:
        decay: the EMA decay ``d`` in [0, 1) (default 0.999).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` (default True).
        validate_ema: validate with the EMA weights during fit (default True).
        swap_at_end: copy the EMA weights into the model after fit (default True).
    """

    order = 65  # after the fp16 step and SaveBestCallback (61), which saves what was validated
    _only_train_loop = True

    def __init__(
        self,
        decay: float = 0.999,
        warmup: bool = True,
        validate_ema: bool = True,
        swap_at_end: bool = True,
    ) -> None:
        self.decay = float(check_range("decay", decay, 0.0, 1.0, high_inclusive=False))
        self.warmup = bool(warmup)
        self.validate_ema = bool(validate_ema)
        self.swap_at_end = bool(swap_at_end)
        self.num_updates = 0
        self.ema_params: list[torch.Tensor] | None = None
        self._params: list[torch.Tensor] = []
        self._raw: list[torch.Tensor] | None = None
        self._swapped = False
        self._skipped = False
        self._in_fit = False

    # -- bookkeeping -------------------------------------------------------------------------
    def _model_params(self) -> list[torch.Tensor]:
        return [p for p in self.learn.model.parameters() if p.is_floating_point()]

    def _matches(self, params: list[torch.Tensor]) -> bool:
        return self.ema_params is not None and len(self.ema_params) == len(params) and all(
            e.shape == p.shape for e, p in zip(self.ema_params, params)
        )

    def before_fit(self) -> None:
        self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self.learn, "gather_preds")
        if not self.run:
            return
        self._params = self._model_params()
        if not self._matches(self._params):
            with torch.no_grad():
                self.ema_params = [p.detach().clone() for p in self._params]
            self.num_updates = 0
        else:  # continue (e.g. the second fit of fine_tune); follow the model's device/dtype
            self.ema_params = [
                e.to(device=p.device, dtype=p.dtype) for e, p in zip(self.ema_params, self._params)
            ]
        self._raw, self._swapped, self._skipped, self._in_fit = None, False, False, True

    # -- updates -----------------------------------------------------------------------------
    def after_cancel_step(self) -> None:
        self._skipped = True

    def after_step(self) -> None:
        if self._skipped:
            self._skipped = False
            return
        self.update()

    @torch.no_grad()
    def update(self) -> None:
        """One EMA update from the model's current weights."""
        d = ema_decay(self.decay, self.num_updates, self.warmup)
        torch._foreach_lerp_(self.ema_params, self._params, 1.0 - d)
        self.num_updates += 1

    # -- swapping ----------------------------------------------------------------------------
    @torch.no_grad()
    def _swap_in(self) -> None:
        if self._swapped:
            return
        if self._raw is None or len(self._raw) != len(self._params):
            self._raw = [p.detach().clone() for p in self._params]
        else:
            torch._foreach_copy_(self._raw, self._params)
        torch._foreach_copy_(self._params, self.ema_params)
        self._swapped = True

    @torch.no_grad()
    def _swap_out(self) -> None:
        if not self._swapped:
            return
        torch._foreach_copy_(self._params, self._raw)
        self._swapped = False

    def before_validate(self) -> None:
        if self._in_fit and self.validate_ema and self.num_updates > 0:
            self._swap_in()

    def after_epoch(self) -> None:
        self._swap_out()
        for cb in self.learn.cbs:  # keep the EMA state with the checkpoint it belongs to
            if (isinstance(cb, SaveBestCallback) and cb.saved_epoch is not None
                    and cb.saved_epoch == self.epoch and self.ema_params is not None):
                self.save(cb.fname)

    def after_fit(self) -> None:
        if not self._in_fit:
            return
        self._in_fit = False
        self._swap_out()
        save_best = next(
            (cb for cb in self.learn.cbs if isinstance(cb, SaveBestCallback) and cb.reloaded),
            None,
        )
        if save_best is not None:
            logger.info("EMA weights not swapped in: %s reloaded its best checkpoint", save_best)
        elif self.swap_at_end and self.num_updates > 0:
            with torch.no_grad():
                torch._foreach_copy_(self._params, self.ema_params)
        self._raw = None

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The EMA state: decay, warmup, update count and averaged weights (on the CPU)."""
        params = None if self.ema_params is None else [e.detach().cpu() for e in self.ema_params]
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "ema_params": params,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; weights move to the learner's device when one is set."""
        self.decay = float(check_range("decay", state["decay"], 0.0, 1.0, high_inclusive=False))
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        params = state["ema_params"]
        if params is not None and getattr(self, "learn", None) is not None:
            model_params = self._model_params()
            if len(model_params) != len(params) or any(
                e.shape != p.shape for e, p in zip(params, model_params)
            ):
                raise ValueError("the saved EMA weights do not match the learner's model")
            params = [e.to(device=p.device, dtype=p.dtype) for e, p in zip(params, model_params)]
        self.ema_params = None if params is None else [e.clone() for e in params]

    def _file(self, fname: str | os.PathLike[str]):
        return self.learn.path / self.learn.model_dir / f"{fname}_ema.pth"

    def save(self, fname: str | os.PathLike[str]):
        """Write :meth:`state_dict` atomically as ``{fname}_ema.pth`` beside ``learn.save(fname)``.
        """
        return atomic_torch_save(self.state_dict(), self._file(fname))

    def load(self, fname: str | os.PathLike[str]) -> EMACallback:
        """Read the state written by :meth:`save`."""
        state = torch.load(self._file(fname), map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        return self
