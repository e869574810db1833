"""Stop a diverging run early with the remedies that usually fix it.

When the training loss turns nan/inf (or the fp16 gradient scaler skips many steps in a row),
more epochs only waste time. The fast.ai practitioner cheatsheet's two remedies for a diverging
run: raise the optimizer's ``eps`` (Adam-style optimizers divide by ``sqrt(v) + eps``, which blows
up when ``v`` is tiny, notably in fp16) to 1e-4 or higher, or lower the learning rate about 10x.

Every recipe adds the guard unless it says ``nan_guard: false``, and :func:`check_finite_scores`
refuses a run whose final loss or primary metric is not finite, so a diverged run never counts
as a success.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from fastai.callback.core import Callback, CancelFitException

__all__ = ["NaNGuardCallback", "NonFiniteLossError", "check_finite_scores", "remedies"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became nan/inf or fp16 steps kept overflowing."""


def _fmt(values: list[float]) -> str:
    uniq = sorted(set(values))
    text = ", ".join(f"{v:.3g}" for v in uniq)
    return text if len(uniq) == 1 else f"[{text}] (per parameter group)"


def remedies(learn: Any) -> str:
    """The cheatsheet's remedies for a diverging run, naming the eps and lr in effect.

    Reads ``learn.opt.hypers`` (fastai's per-group hyper-parameters); before the optimizer
    exists, falls back to ``learn.lr`` and names no eps.
    """
    hypers = getattr(getattr(learn, "opt", None), "hypers", None) or []
    lrs = [float(h["lr"]) for h in hypers if "lr" in h]
    eps = [float(h["eps"]) for h in hypers if "eps" in h]
    if not lrs and isinstance(getattr(learn, "lr", None), (int, float)):
        lrs = [float(learn.lr)]
    if eps:
        eps_part = f"raise the optimizer's eps to 1e-4 or higher (eps in effect: {_fmt(eps)})"
    else:
        eps_part = ("use an optimizer with an eps term (Adam-style) set to 1e-4 or higher "
                    "(the current optimizer has no eps)")
    if lrs:
        lr_part = (f"lower the learning rate about 10x (lr in effect: {_fmt(lrs)}; "
                   f"try {_fmt([lr / 10 for lr in lrs])})")
    else:
        lr_part = "lower the learning rate about 10x"
    return f"Remedies: {eps_part}, or {lr_part}."


def check_finite_scores(learn: Any, scores: Mapping[str, Mapping[str, float]],
                        names: tuple[str, ...] = ("loss",)) -> None:
    """Raise :class:`NonFiniteLossError` if a final score is nan/inf (a diverged run).

    Args:
        learn: the trained learner (its optimizer's lr and eps go into the remedies).
        scores: ``{"valid": {"loss": ..., "accuracy": ...}, "test": {...}}``.
        names: the score names checked in every split (default the loss; a run adds its
            primary metric).
    """
    for split, values in scores.items():
        for name in names:
            value = values.get(name)
            if value is None or math.isfinite(float(value)):
                continue
            shown = f"{split} loss" if name == "loss" else f"{split} {name}"
            raise NonFiniteLossError(
                f"training diverged: the final {shown} is {float(value)}, so the run is not "
                f"saved as finished. {remedies(learn)}")


class NaNGuardCallback(Callback):
    """Stop training when the training loss is nan/inf, explodes, or fp16 steps keep overflowing.

    The check runs on every training batch, after the loss and before backward, so the weights
    keep their last finite values. The message names the cheatsheet's remedies with the values in
    effect: raise the optimizer's ``eps`` to 1e-4 or higher, or lower the learning rate about 10x.
    Other callbacks' ``after_fit`` (e.g. :class:`SaveBestCallback` reloading its best weights)
    still run before the error is raised.

    Args:
        max_skipped_steps: consecutive skipped optimizer steps (fp16 overflow) that count as
            divergence (default 25; the scaler halves its scale at every skip).
        raise_error: raise :class:`NonFiniteLossError` after fit (default True); if False, log
            the message as a warning and only stop. ``message`` holds the text either way.
        max_loss_ratio: a training-batch loss above ``max_loss_ratio * max(first loss, 1)``
            counts as divergence too (default 1e4; SGD at lr=100 reaches 1e21 while still
            finite); None turns this check off.
    """

    order = 90  # after_loss after MixedPrecision (10) left autocast; after_fit after the others

    def __init__(self, max_skipped_steps: int = 25, raise_error: bool = True,
                 max_loss_ratio: float | None = 1e4) -> None:
        if isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int):
            raise TypeError(f"max_skipped_steps must be an int, got {max_skipped_steps!r}")
        if max_skipped_steps < 1:
            raise ValueError(f"max_skipped_steps must be >= 1, got {max_skipped_steps}")
        if max_loss_ratio is not None and (isinstance(max_loss_ratio, bool) or not isinstance(
                max_loss_ratio, (int, float)) or not max_loss_ratio > 1):
            raise ValueError(f"max_loss_ratio must be a number > 1 or None, got "
                             f"{max_loss_ratio!r}")
        self.max_loss_ratio = None if max_loss_ratio is None else float(max_loss_ratio)
        self._first: float | None = None
        self.max_skipped_steps = max_skipped_steps
        self.raise_error = bool(raise_error)
        self.message: str | None = None
        self._skipped = 0
        self._cancelled = False

    def before_fit(self) -> None:
        self.message, self._skipped, self._cancelled = None, 0, False
        self._first = None

    def after_loss(self) -> None:
        if not self.training:
            return
        loss = self.learn.loss
        if not torch.is_tensor(loss):
            loss = torch.as_tensor(loss)
        if bool(torch.isfinite(loss.detach()).all()):
            if self.max_loss_ratio is not None:
                self._check_growth(float(loss.detach().float().mean()))
            return
        value = float(loss.detach().float().reshape(-1)[0])
        kind = "nan" if math.isnan(value) else "inf"
        self._stop(f"the training loss is {kind}")

    def _check_growth(self, value: float) -> None:
        if self._first is None:
            self._first = value
            return
        limit = self.max_loss_ratio * max(abs(self._first), 1.0)
        if value > limit:
            self._stop(f"the training loss is {value:.3g}, over {self.max_loss_ratio:.3g} times "
                       f"its first value {self._first:.3g} (diverging)")

    def after_cancel_step(self) -> None:
        self._cancelled = True

    def after_step(self) -> None:
        if not self._cancelled:
            self._skipped = 0
            return
        self._cancelled = False
        self._skipped += 1
        if self._skipped >= self.max_skipped_steps:
            self._stop(
                f"{self._skipped} optimizer steps in a row were skipped because the gradients "
                f"overflowed (inf/nan)"
            )

    def _stop(self, what: str) -> None:
        self.message = (
            f"Training stopped at epoch {self.epoch}, batch {self.iter}: {what}. "
            f"{self.remedies()}"
        )
        raise CancelFitException()

    def remedies(self) -> str:
        """The cheatsheet's remedies, naming the eps and learning rate now in effect."""
        return remedies(self.learn)

    def after_fit(self) -> None:
        if self.message is None:
            return
        if self.raise_error:
            raise NonFiniteLossError(self.message)
        logger.warning(self.message)
