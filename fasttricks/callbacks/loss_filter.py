"""Batch loss filter: train each step on the hardest samples of the batch only.

Online hard-example mining in the spirit of Loshchilov & Hutter 2015 ("Online batch selection",
https://arxiv.org/abs/1511.06343) and OHEM (Shrivastava et al. 2016): per batch, keep the
highest-loss samples that together carry ``loss_perc`` of the batch's total loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision

from fasttricks._validate import check_range

__all__ = ["BatchLossFilterCallback", "loss_filter_mask"]


def loss_filter_mask(losses: torch.Tensor, loss_perc: float) -> torch.Tensor:
    """Boolean mask (in the batch's order) of the samples a batch loss filter keeps.

    The samples are sorted by loss, highest first, and the smallest such prefix whose losses add
    up to at least ``loss_perc`` of the batch total is kept (always at least one sample). A
    sample is kept when the losses ranked above it sum to less than ``loss_perc * total``.
    Runs on the losses' device without a host sync.

    Args:
        losses: per-sample losses, shape ``(bs,)``.
        loss_perc: share of the batch's total loss to keep, in (0, 1].
    """
    if losses.ndim != 1:
        raise ValueError(
            f"losses must be 1-D (one value per sample), got shape {tuple(losses.shape)}"
        )
    keep, _, _ = _filter(losses.detach().float(), loss_perc)
    return keep.bool()


def _filter(values: torch.Tensor, loss_perc: float):
    """(float keep mask in batch order, number kept, total loss) for 1-D detached ``values``."""
    sorted_losses, order = torch.sort(values, descending=True)
    cum = torch.cumsum(sorted_losses, 0)
    total = cum[-1]
    # kept when the losses ranked above it sum to less than loss_perc * total; the first always
    keep_sorted = (cum - sorted_losses) < loss_perc * total
    keep_sorted[0] = True
    keep_sorted = keep_sorted.to(values.dtype)
    keep = torch.empty_like(values).scatter_(0, order, keep_sorted)  # order is a permutation
    return keep, keep_sorted.sum(), total


def _per_sample(losses: torch.Tensor, bs: int) -> torch.Tensor:
    """Reduce an unreduced loss to one value per sample (mean over any other elements)."""
    if losses.ndim == 0:
        raise TypeError(
            "the loss function returned a scalar with reduction='none'; BatchLossFilterCallback "
            "needs one loss per sample"
        )
    if losses.ndim == 1 and losses.shape[0] == bs:  # the common case: already per sample
        return losses if losses.dtype == torch.float32 else losses.float()
    if losses.shape[0] == bs:
        return losses.reshape(bs, -1).float().mean(1)
    if losses.numel() % bs == 0:  # flattened (bs * n) losses, e.g. fastai's flattened losses
        return losses.reshape(bs, -1).float().mean(1)
    raise ValueError(
        f"cannot split {losses.numel()} unreduced loss values into {bs} samples"
    )


class BatchLossFilterCallback(Callback):
    """Train on the highest-loss samples whose losses add up to ``loss_perc`` of the batch total.

    The learner's loss is computed per sample (``reduction='none'``) on training batches, the
    samples of :func:`loss_filter_mask` are kept (at least one) and the loss used for backward is
    their mean. The recorded training loss stays the mean over the whole batch, and validation is
    untouched. Works under fp16 and with tuple model outputs (the loss function receives the
    prediction unchanged).

    Args:
        loss_perc: share of the batch's total loss to keep, in (0, 1] (default 0.9).
        schedule: optional callable ``pct_train -> loss_perc`` (e.g. fastai's
            ``SchedLin(1.0, 0.8)``), evaluated every training batch; overrides ``loss_perc``.

    Raises:
        TypeError at ``before_fit`` if the loss function has no ``reduction`` to set to ``'none'``.
    """

    order = MixedPrecision.order - 5  # before GradientAccumulation (6) rescales the loss

    def __init__(
        self, loss_perc: float = 0.9, schedule: Callable[[float], float] | None = None
    ) -> None:
        self.loss_perc = float(check_range("loss_perc", loss_perc, 0.0, 1.0, low_inclusive=False))
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be a callable pct_train -> loss_perc, got {schedule!r}")
        self.schedule = schedule
        self._keep: torch.Tensor | None = None
        self._reduction: str | None = None

    def before_fit(self) -> None:
        lf = self.learn.loss_func
        if not hasattr(lf, "reduction"):
            raise TypeError(
                f"BatchLossFilterCallback needs a loss function with a `reduction` attribute that "
                f"can be set to 'none' (per-sample losses), got {lf!r}. Use an nn.Module loss or a "
                f"fastai loss such as CrossEntropyLossFlat."
            )

    def current_perc(self) -> float:
        """The ``loss_perc`` in effect now (from ``schedule`` when given)."""
        if self.schedule is None:
            return self.loss_perc
        perc = float(self.schedule(getattr(self.learn, "pct_train", 0.0)))
        return check_range("scheduled loss_perc", perc, 0.0, 1.0, low_inclusive=False)

    # The loss is per sample for the whole training phase (no attribute churn per batch).
    def before_train(self) -> None:
        lf = self.learn.loss_func
        self._reduction = lf.reduction
        lf.reduction = "none"

    def after_train(self) -> None:
        if self._reduction is not None:
            self.learn.loss_func.reduction = self._reduction
            self._reduction = None

    after_fit = after_train  # training stopped by an exception skips after_train

    def after_loss(self) -> None:
        if not self.training or self._reduction is None:
            return
        bs = self._batch_size()
        losses = _per_sample(self.learn.loss_grad, bs)
        keep, n_keep, total = _filter(losses.detach(), self.current_perc())
        self._keep = keep
        self.learn.loss = total / bs
        self.learn.loss_grad = torch.dot(losses, keep) / n_keep

    @property
    def keep(self) -> torch.Tensor | None:
        """Boolean mask of the samples kept in the last training batch (batch order)."""
        return None if self._keep is None else self._keep.bool()

    def filtered_loss(self, pred, *yb) -> torch.Tensor:
        """The loss on ``(pred, yb)`` averaged over the samples kept for the current batch.

        Used by :class:`SAMCallback` for its second pass.
        """
        lf = self.learn.loss_func
        old = lf.reduction
        lf.reduction = "none"
        try:
            losses = lf(pred, *yb)
        finally:
            lf.reduction = old
        losses = _per_sample(losses, self._batch_size())
        if self._keep is None:
            return losses.mean()
        keep = self._keep.to(losses.dtype)
        return torch.dot(losses, keep) / keep.sum()

    def _batch_size(self) -> int:
        yb = self.learn.yb
        first = yb[0] if len(yb) else self.learn.xb[0]
        while isinstance(first, (tuple, list)):
            first = first[0]
        return int(first.shape[0])
