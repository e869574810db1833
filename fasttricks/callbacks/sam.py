"""Sharpness-Aware Minimization (SAM / ASAM) as a fastai callback that works with ``to_fp16``.

SAM (Foret et al. 2020, https://arxiv.org/abs/2010.01412) minimises the loss at the worst point of
a small neighbourhood around the weights. Each step takes two forward/backward passes:

1. ``g = grad L(w)`` (the learner's ordinary backward pass);
2. ``e = rho * g / ||g||``, move to ``w + e``, compute ``g' = grad L(w + e)``;
3. go back to ``w`` and let the optimizer step with ``g'``.

ASAM (Kwon et al. 2021, https://arxiv.org/abs/2102.11600) makes the neighbourhood scale
invariant with ``T_w = |w|``: ``e = rho * T_w^2 g / ||T_w g||``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from fastai.callback.core import Callback, CancelStepException
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.training import GradientAccumulation
from fastai.torch_core import to_float
from torch import nn

from fasttricks._validate import check_range

__all__ = ["SAMCallback", "sam_perturbation"]


def sam_perturbation(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    rho: float,
    adaptive: bool = False,
    eps: float = 1e-12,
) -> list[torch.Tensor]:
    """The SAM ascent step ``e(w)`` for every parameter (one global norm over all of them).

    Plain SAM: ``e = rho * g / (||g|| + eps)``. Adaptive SAM (ASAM, ``T_w = |w|``):
    ``e = rho * w^2 * g / (||T_w g|| + eps)``. Uses ``torch._foreach_*`` over the whole lists.

    Args:
        params: the weights ``w``.
        grads: their gradients ``g`` (unscaled), in the same order.
        rho: neighbourhood radius (the paper's ``rho``).
        adaptive: ASAM instead of SAM (default False).
        eps: added to the norm to avoid division by zero (default 1e-12).
    """
    if adaptive:
        t_w = torch._foreach_abs(params)
        t_g = torch._foreach_mul(t_w, grads)
    else:
        t_w = None
        t_g = grads
    norms = torch._foreach_norm(t_g)
    device = norms[0].device
    norm = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))
    scale = rho / (norm.float() + eps)
    # adaptive: e = rho * |w| * (|w| g) / ||T_w g||; plain: e = rho * g / ||g||
    e_w = torch._foreach_mul(t_g, t_w) if adaptive else [g.clone() for g in t_g]
    torch._foreach_mul_(e_w, scale.to(device))
    return e_w


class _ScalerProbe:
    """Stands in for the optimizer in ``GradScaler.step`` to unscale the second gradients.

    ``GradScaler`` keeps one unscale/inf-check record per optimizer object and allows one
    ``unscale_`` per record and step; the learner's ``MixedPrecision`` already used its record for
    the first pass. This separate object gets its own record, so the second pass is unscaled and
    checked through the public API, and ``scaler.update()`` backs off on an overflow in either.
    """

    def __init__(self, opt) -> None:
        self.opt = opt
        self.finite = False

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    def step(self, *args, **kwargs) -> None:
        self.finite = True


@contextlib.contextmanager
def _frozen_bn_stats(modules: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Batch-norm layers normalise with batch statistics but leave running stats untouched."""
    saved = []
    for m in modules:
        count = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
        saved.append((m.momentum, count))
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, count) in zip(modules, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class SAMCallback(Callback):
    """Sharpness-Aware Minimization around any optimizer (fastai ``Callback``).

    After the learner's backward pass the weights move to ``w + e(w)`` with
    ``e = rho * g / ||g||`` (ASAM: ``e = rho * |w|^2 g / || |w| g ||``), the loss and gradients
    are recomputed there, the weights go back to ``w`` and the optimizer steps with the second
    gradients. The reported training loss is the one at ``w``.

    Works with ``learn.to_fp16()``: the second forward runs under the learner's autocast, its loss
    is scaled by the learner's ``GradScaler`` and unscaled before the step; the norm is taken on
    unscaled gradients; a step whose first or second gradients overflow is skipped with the weights
    unchanged, and the scaler backs off. Batch-norm running statistics are updated by the first
    pass only (the second pass uses ``momentum=0``, as in the reference SAM code).
    Works with fastai's ``GradientClip`` (which then clips the second gradients); refuses
    ``GradientAccumulation`` (the ascent step needs the full accumulated gradient and a second pass
    over every accumulated batch). Combined with :class:`BatchLossFilterCallback`, the second loss
    uses the samples the filter kept.

    Args:
        rho: neighbourhood radius ``rho`` (default 0.05; ASAM needs a larger one, e.g. 0.5).
        adaptive: use ASAM's scale-invariant neighbourhood (default False).
        eps: added to the gradient norm (default 1e-12).

    Example::

        learn = Learner(dls, model, cbs=[SAMCallback(rho=0.05)])
        learn.to_fp16().fit_flat_cos(5, 1e-3)
    """

    order = MixedPrecision.order + 0.5  # after the fp16 unscale, before GradientClip (11)

    def __init__(self, rho: float = 0.05, adaptive: bool = False, eps: float = 1e-12) -> None:
        self.rho = float(check_range("rho", rho, low=0.0, low_inclusive=False))
        self.adaptive = bool(adaptive)
        self.eps = float(check_range("eps", eps, low=0.0))
        self._bn: list[nn.modules.batchnorm._BatchNorm] = []
        self._mp: MixedPrecision | None = None
        self._loss_filter = None
        self._probe: _ScalerProbe | None = None
        self._backup: list[torch.Tensor] = []

    def before_fit(self) -> None:
        for cb in self.learn.cbs:
            if isinstance(cb, GradientAccumulation):
                raise ValueError(
                    "SAMCallback cannot be combined with GradientAccumulation: SAM's ascent step "
                    "needs the full accumulated gradient and a second pass over every accumulated "
                    "batch. Remove GradientAccumulation (use a larger batch or fp16 instead)."
                )
        self._mp = next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)
        from fasttricks.callbacks.loss_filter import BatchLossFilterCallback

        self._loss_filter = next(
            (cb for cb in self.learn.cbs if isinstance(cb, BatchLossFilterCallback)), None
        )
        self._bn = [
            m
            for m in self.learn.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self._probe = _ScalerProbe(self.learn.opt)
        self._backup = []

    def after_fit(self) -> None:
        self._mp, self._loss_filter, self._probe, self._bn, self._backup = None, None, None, [], []

    def _autocast(self):
        mp = self._mp
        if mp is not None and getattr(mp, "autocast", None) is not None:
            return mp.autocast
        return contextlib.nullcontext()

    def _second_loss(self) -> torch.Tensor:
        learn = self.learn
        with _frozen_bn_stats(self._bn), self._autocast():
            pred = learn.model(*learn.xb)
            if self._mp is not None:
                pred = to_float(pred)
            if self._loss_filter is not None:
                loss = self._loss_filter.filtered_loss(pred, *learn.yb)
            else:
                loss = learn.loss_func(pred, *learn.yb)
        return loss

    def _save_weights(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        same = len(self._backup) == len(params) and all(
            b.shape == p.shape and b.dtype == p.dtype and b.device == p.device
            for b, p in zip(self._backup, params)
        )
        if same:
            torch._foreach_copy_(self._backup, params)
        else:
            self._backup = [p.detach().clone() for p in params]
        return self._backup

    def before_step(self) -> None:
        # Runs after MixedPrecision.before_step: the first gradients are unscaled and finite here
        # (an overflow made MixedPrecision cancel the step before this callback is called).
        params = [p for pl in self.learn.opt.param_lists for p in pl if p.grad is not None]
        if not params:
            return
        scaler = getattr(self.learn, "scaler", None)
        with torch.no_grad():
            grads = [p.grad for p in params]
            e_w = sam_perturbation(params, grads, self.rho, self.adaptive, self.eps)
            backup = self._save_weights(params)
            torch._foreach_add_(params, e_w)  # w -> w + e(w)
            torch._foreach_zero_(grads)
        try:
            loss = self._second_loss()
            if scaler is not None:
                loss = scaler.scale(loss)
            loss.backward()
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, backup)  # back to w, exactly
        if scaler is not None:
            self._probe.finite = False
            scaler.step(self._probe)  # unscales the second gradients and checks them for inf/nan
            if not self._probe.finite:
                raise CancelStepException()
