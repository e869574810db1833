"""Ranger and RangerAdaBelief: RAdam + Lookahead + gradient centralization, as foreach steps.

* RAdam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond",
  https://arxiv.org/abs/1908.03265): Adam whose step is rectified by
  ``r_t = sqrt((rho_t-4)(rho_t-2)rho_inf / ((rho_inf-4)(rho_inf-2)rho_t))`` once
  ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t) > 5`` (``rho_inf = 2/(1-b2) - 1``); before that the
  step is SGD with bias-corrected momentum, ``p -= lr * m / (1 - b1^t)``.
* Lookahead (Zhang et al., https://arxiv.org/abs/1907.08610): every ``k`` steps the slow weights
  move ``alpha`` of the way to the fast ones, ``slow += alpha * (p - slow)``, and ``p = slow``.
* Gradient centralization (Yong et al., https://arxiv.org/abs/2004.01461): for parameters with
  ``ndim > 1`` the gradient's mean over all dims but the first is subtracted.
* AdaBelief (Zhuang et al., https://arxiv.org/abs/2010.07468): the second moment tracks the
  "belief" ``s = b2*s + (1-b2)*(g - m)^2 + eps`` instead of ``g^2``.

Ranger is Less Wright's combination of the first three (2019); RangerAdaBelief adds the fourth.
Every elementwise update runs with ``torch._foreach_*`` over all parameters of a parameter group
that share device, dtype and step count. On CPU the lists are cut into cache-sized blocks (whole
rows, about ``BLOCK_NUMEL`` elements each): the ~10 elementwise passes of a step then re-read a
block from cache instead of main memory, which makes a CPU step cost less than torch's AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validate import check_range
from ._decay import apply_weight_decay, decays

__all__ = ["Ranger", "RangerAdaBelief"]

# RAdam switches from momentum SGD to the rectified adaptive step once rho_t exceeds this
# (torch.optim.RAdam and ranger-adabelief both use 5).
RECTIFY_THRESHOLD = 5.0


def validate_ranger_args(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float, k: int, alpha: float
) -> None:
    """Raise ``ValueError`` naming the first bad argument and echoing its value."""
    check_range("lr", lr, low=0)
    if len(tuple(betas)) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_range("betas[0]", betas[0], low=0, high=1, high_inclusive=False)
    check_range("betas[1]", betas[1], low=0, high=1, high_inclusive=False)
    check_range("eps", eps, low=0, low_inclusive=False)
    check_range("weight_decay", weight_decay, low=0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    check_range("alpha", alpha, low=0, high=1)


def _rectification(step: int, beta2: float) -> float | None:
    """RAdam's rectification term r_t for ``step`` (1-based), or None while ``rho_t <= 5``."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    beta2_t = beta2**step
    rho_t = rho_inf - 2.0 * step * beta2_t / (1.0 - beta2_t)
    if rho_t <= RECTIFY_THRESHOLD:
        return None
    num = (rho_t - 4.0) * (rho_t - 2.0) * rho_inf
    den = (rho_inf - 4.0) * (rho_inf - 2.0) * rho_t
    return math.sqrt(num / den)


# Elements per cache block: the update runs block by block, so the ~10 elementwise passes of one
# step re-read a block from cache instead of memory (2**18 floats = 1 MiB per buffer).
BLOCK_NUMEL = 2**18
_NO_LIMIT = 2**62


class _Block:
    """Slices of parameters (same group, device, dtype and step) updated by one set of foreach
    calls. Rows of a parameter are never split, so centralization can work block by block."""

    __slots__ = (
        "exp_avg_sqs",
        "exp_avgs",
        "gc_dims",
        "gc_grads",
        "grads",
        "numel",
        "params",
        "slow",
        "wd_grads",
        "wd_params",
    )

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.exp_avgs: list[Tensor] = []
        self.exp_avg_sqs: list[Tensor] = []
        self.slow: list[Tensor] = []
        self.gc_grads: list[Tensor] = []
        self.gc_dims: list[tuple[int, ...]] = []
        self.wd_params: list[Tensor] = []
        self.wd_grads: list[Tensor] = []
        self.numel = 0

    def add(self, tensors: tuple[Tensor, ...], gc_dims: tuple[int, ...] | None, wd: bool) -> None:
        p, g, m, s, w = tensors
        self.params.append(p)
        self.grads.append(g)
        self.exp_avgs.append(m)
        self.exp_avg_sqs.append(s)
        self.slow.append(w)
        if gc_dims is not None:
            self.gc_grads.append(g)
            self.gc_dims.append(gc_dims)
        if wd:
            self.wd_params.append(p)
            self.wd_grads.append(g)
        self.numel += p.numel()


def _row_slices(
    tensors: tuple[Tensor, ...], block_numel: int
) -> list[tuple[tuple[Tensor, ...], bool]]:
    """Split same-shape contiguous tensors into row blocks of about ``block_numel`` elements.

    Returns ``(slices, is_2d_view)`` pairs; tensors that are not all contiguous are returned
    whole (``is_2d_view`` False).
    """
    first = tensors[0]
    if first.numel() <= block_numel or not all(t.is_contiguous() for t in tensors):
        return [(tensors, False)]
    rows = first.shape[0] if first.ndim > 1 else first.numel()
    row_numel = first.numel() // rows
    step = max(1, block_numel // row_numel)
    views = [t.view(rows, row_numel) for t in tensors]
    parts = [v.split(step, dim=0) for v in views]
    return [(tuple(part[i] for part in parts), True) for i in range(len(parts[0]))]


class _RangerBase(torch.optim.Optimizer):
    adabelief: ClassVar[bool] = False
    hyper_map: ClassVar[dict[str, str]] = {
        "mom": "betas__0", "sqr_mom": "betas__1", "eps": "eps", "wd": "weight_decay",
        "k": "k", "alpha": "alpha", "use_gc": "use_gc",
    }

    def __init__(
        self,
        params: Iterable[Any] | Tensor,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        k: int,
        alpha: float,
        use_gc: bool,
        true_wd: bool,
        bn_wd: bool,
    ) -> None:
        validate_ranger_args(lr, betas, eps, weight_decay, k, alpha)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "k": k, "alpha": alpha, "use_gc": bool(use_gc), "true_wd": bool(true_wd),
                    "bn_wd": bool(bn_wd)}
        if isinstance(params, Tensor):
            params = [params]
        super().__init__(params, defaults)
        #: elements per cache block on CPU (see BLOCK_NUMEL); results do not depend on it
        self.block_numel = BLOCK_NUMEL

    def _blocks(self, group: dict[str, Any]) -> dict[tuple[Any, ...], list[_Block]]:
        """Cache blocks of the group's parameters with gradients, keyed by device/dtype/step."""
        blocks: dict[tuple[Any, ...], list[_Block]] = {}
        use_gc, bn_wd, wd = group["use_gc"], group["bn_wd"], group["weight_decay"]
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["slow_buffer"] = p.detach().clone(memory_format=torch.preserve_format)
            key = (p.device, p.dtype, state["step"])
            state["step"] += 1
            chain = blocks.get(key)
            if chain is None:
                chain = blocks[key] = [_Block()]
            tensors = (p, grad, state["exp_avg"], state["exp_avg_sq"], state["slow_buffer"])
            gc = use_gc and p.ndim > 1
            decay = wd != 0 and decays(p, bn_wd)
            # cache blocks help CPUs; on accelerators one multi-tensor launch per op is best
            limit = self.block_numel if p.device.type == "cpu" else _NO_LIMIT
            for pieces, is_view in _row_slices(tensors, limit):
                if chain[-1].numel >= limit:
                    chain.append(_Block())
                gc_dims = ((1,) if is_view else tuple(range(1, p.ndim))) if gc else None
                chain[-1].add(pieces, gc_dims, decay)
        return blocks

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One optimizer step; ``closure`` (optional) re-evaluates the model and returns the loss.

        Like the reference implementations, gradient centralization is applied to ``p.grad`` in
        place.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for (_, _, prev_step), chain in self._blocks(group).items():
                for block in chain:
                    self._update(group, block, prev_step + 1)
        return loss

    def _update(self, group: dict[str, Any], b: _Block, step: int) -> None:
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        # weight decay: decoupled p *= 1 - lr*wd, or L2 grad += wd*p (before centralization)
        apply_weight_decay(b.wd_params, b.wd_grads, lr, group["weight_decay"], group["true_wd"])
        # gradient centralization: g -= mean of g over all dims but the first (torch has no
        # foreach reduction over dims, so the row means are one call per tensor)
        if b.gc_grads:
            means = [g.mean(dim=dims, keepdim=True) for g, dims in zip(b.gc_grads, b.gc_dims)]
            torch._foreach_sub_(b.gc_grads, means)
        # first moment m = b1*m + (1-b1)*g
        torch._foreach_lerp_(b.exp_avgs, b.grads, 1.0 - beta1)
        rect = _rectification(step, beta2)
        if self.adabelief:
            # s = b2*s + (1-b2)*(g-m)^2, computed as lerp(s, (g-m)^2, 1-b2) on a scratch list
            # (+ eps, added below on rectified steps as ranger-adabelief does)
            diff = torch._foreach_sub(b.grads, b.exp_avgs)
            torch._foreach_mul_(diff, diff)
            torch._foreach_lerp_(b.exp_avg_sqs, diff, 1.0 - beta2)
            del diff
        else:
            # v = b2*v + (1-b2)*g^2
            torch._foreach_mul_(b.exp_avg_sqs, beta2)
            torch._foreach_addcmul_(b.exp_avg_sqs, b.grads, b.grads, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1**step
        if rect is None:
            # un-rectified: SGD with bias-corrected momentum
            torch._foreach_add_(b.params, b.exp_avgs, alpha=-lr / bias_correction1)
        else:
            if self.adabelief:
                torch._foreach_add_(b.exp_avg_sqs, eps)
            denom = torch._foreach_sqrt(b.exp_avg_sqs)
            torch._foreach_add_(denom, eps)
            step_size = lr * rect * math.sqrt(1.0 - beta2**step) / bias_correction1
            torch._foreach_addcdiv_(b.params, b.exp_avgs, denom, value=-step_size)
        if step % group["k"] == 0:
            # lookahead: slow += alpha*(fast - slow); fast = slow
            torch._foreach_lerp_(b.slow, b.params, group["alpha"])
            torch._foreach_copy_(b.params, b.slow)


class Ranger(_RangerBase):
    """Ranger: RAdam + Lookahead (k=6, alpha=0.5) + gradient centralization, foreach kernels.

    Per step and parameter group: weight decay (decoupled ``p *= 1 - lr*wd`` by default, on
    parameters with ``ndim > 1`` only unless ``bn_wd=True``), gradient centralization on
    ``ndim > 1`` parameters (``use_gc``), Adam moments, RAdam's rectified step (or bias-corrected
    momentum SGD while ``rho_t <= 5``), then every ``k`` steps the Lookahead sync. The
    denominator is ``sqrt(v) + eps`` with the ``sqrt(1 - b2^t)`` bias correction folded into
    the step size, as in ``torch.optim.RAdam``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2), fastai's mom/sqr_mom (default (0.95, 0.99), fastai's ``ranger``).
        eps: added to ``sqrt(v)`` (default 1e-6, fastai's ``ranger``). For Adam-family eps
            sweeps try 1.0, 0.1, 0.01.
        weight_decay: wd (default 0).
        k: Lookahead sync period (default 6); alpha: Lookahead slow step (default 0.5).
        use_gc: gradient centralization on ``ndim > 1`` parameters (default True).
        true_wd: decoupled decay if True, L2 on the gradient if False (default True).
        bn_wd: also decay 1-D parameters (biases, norm weights) (default False).

    Example::

        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Ranger(model.parameters(), lr=1e-2)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step()
    """

    adabelief = False

    def __init__(
        self,
        params: Iterable[Any] | Tensor,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        use_gc: bool = True,
        *,
        true_wd: bool = True,
        bn_wd: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, k, alpha, use_gc, true_wd, bn_wd)


class RangerAdaBelief(_RangerBase):
    """RangerAdaBelief: Ranger with AdaBelief's second moment, foreach kernels.

    Same as :class:`Ranger` except the second moment is ``s = b2*s + (1-b2)*(g - m)^2`` with
    ``m`` the freshly updated first moment, and on rectified steps ``s += eps`` (kept in the
    state) before the step ``p -= step_size * m / (sqrt(s) + eps)``. With ``weight_decay=0``
    this matches the ``ranger-adabelief`` 0.1.0 package step by step (same betas, eps, GC and
    rectification threshold 5).

    Deliberate difference: that package adds decoupled decay to the update scaled by RAdam's
    step size, and during the un-rectified first steps adds it into the momentum buffer itself;
    here decoupled decay is AdamW's ``p *= 1 - lr*wd``, independent of the moments.

    eps guidance (from the AdaBelief authors): 1e-8 for vision (the default here), 1e-16 for
    NLP/transformers, 1e-12 for RL. The package's own default is 1e-5.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) (default (0.95, 0.999), the package's).
        eps: see above (default 1e-8).
        weight_decay: wd (default 0).
        k: Lookahead sync period (default 6); alpha: Lookahead slow step (default 0.5).
        use_gc: gradient centralization on ``ndim > 1`` parameters (default True).
        true_wd: decoupled decay if True, L2 on the gradient if False (default True).
        bn_wd: also decay 1-D parameters (default False).
    """

    adabelief = True

    def __init__(
        self,
        params: Iterable[Any] | Tensor,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        k: int = 6,
        alpha: float = 0.5,
        use_gc: bool = True,
        *,
        true_wd: bool = True,
        bn_wd: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, k, alpha, use_gc, true_wd, bn_wd)
