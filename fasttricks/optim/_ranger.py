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

Speed: on CPU a step over float32/float64 tensors (contiguous or channels-last) is one call of
the C kernel in ``_native.py``: one pass per row with the gradient centralization, both moments,
the step and the Lookahead sync, as fast as torch's fused AdamW. Elsewhere a rectified RAdam
step is Adam's step with learning rate ``lr*r_t`` and eps ``eps/sqrt(1-b2^t)``, so it runs
through torch's fused AdamW kernel (CPU and CUDA). RangerAdaBelief's rectified step (CPU) is
torch's fused SGD kernel, used to write the new first moment and ``g - m``, followed by the same
Adam kernel with ``beta1 ~ 1`` (see ``_fused_update``). Where those kernels do not apply
(RAdam's first un-rectified steps, non-contiguous or non-float tensors, other devices,
``fused=False``, RangerAdaBelief on CUDA) the step is ``torch._foreach_*`` over all parameters
of a group that share device, dtype and step count, cut into cache-sized blocks on CPU. Complex
parameters are updated as their real views, as ``torch.optim.RAdam`` does; gradient
centralization takes the complex mean. No path writes to ``p.grad``.

``compile=True`` replaces all of this by one ``torch.compile``d update (``_compiled.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validate import check_range
from ._compiled import compile_unavailable_reason, compiled_update
from ._decay import apply_weight_decay, decays
from ._native import native_applies, native_update

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


# Elements per cache block of the foreach path on CPU: its ~10 elementwise passes re-read a block
# from cache instead of memory (2**18 floats = 1 MiB per buffer).
BLOCK_NUMEL = 2**18
# Elements per block of the fused AdaBelief path (bounds its scratch buffer to 4 MiB in float32).
SCRATCH_NUMEL = 2**20
_NO_LIMIT = 2**62
# RangerAdaBelief's fused path runs torch's Adam kernel with beta1 = 1 - 2**-40, so the kernel
# leaves the (already updated) first moment alone to 1e-12; its bias correction is then exactly
# 2**-40 at kernel step 1, which the learning rate passed to it undoes exactly.
_FROZEN = 2.0**-40
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_kernels_available() -> bool:
    return hasattr(torch, "_fused_adamw_") and hasattr(torch, "_fused_sgd_")


class _Block:
    """Slices of parameters (same group, device, dtype and step) updated by one set of foreach
    calls; every tensor is real (complex ones are viewed as real)."""

    __slots__ = ("decay", "exp_avg_sqs", "exp_avgs", "grads", "numel", "params", "slow")

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.exp_avgs: list[Tensor] = []
        self.exp_avg_sqs: list[Tensor] = []
        self.slow: list[Tensor] = []
        self.decay: list[bool] = []
        self.numel = 0

    def add(self, tensors: tuple[Tensor, ...], decay: bool) -> None:
        p, g, m, s, w = tensors
        self.params.append(p)
        self.grads.append(g)
        self.exp_avgs.append(m)
        self.exp_avg_sqs.append(s)
        self.slow.append(w)
        self.decay.append(decay)
        self.numel += p.numel()

    def split(self, limit: int) -> list[_Block]:
        """This block cut into blocks of about ``limit`` elements (whole rows)."""
        chain = [_Block()]
        for tensors, decay in zip(zip(self.params, self.grads, self.exp_avgs, self.exp_avg_sqs,
                                      self.slow), self.decay):
            for pieces in _row_slices(tensors, limit):
                if chain[-1].numel >= limit:
                    chain.append(_Block())
                chain[-1].add(pieces, decay)
        return chain

    def decayed(self, want: bool) -> tuple[list[Tensor], ...]:
        """(params, grads, exp_avgs, exp_avg_sqs) of the tensors whose decay flag is ``want``."""
        keep = [i for i, d in enumerate(self.decay) if d == want]
        return tuple([lst[i] for i in keep] for lst in (self.params, self.grads, self.exp_avgs,
                                                         self.exp_avg_sqs))


def _row_slices(tensors: tuple[Tensor, ...], block_numel: int) -> list[tuple[Tensor, ...]]:
    """Split same-shape contiguous tensors into row blocks of about ``block_numel`` elements
    (tensors that are small or not all contiguous are returned whole)."""
    first = tensors[0]
    if first.numel() <= block_numel or not all(t.is_contiguous() for t in tensors):
        return [tensors]
    rows = first.shape[0] if first.ndim > 1 else first.numel()
    row_numel = first.numel() // rows
    step = max(1, block_numel // row_numel)
    parts = [t.view(rows, row_numel).split(step, dim=0) for t in tensors]
    return [tuple(part[i] for part in parts) for i in range(len(parts[0]))]


# (parameter, gradient, state, whether it decays) of one parameter in a step
_Item = tuple[Tensor, Tensor, dict[str, Any], bool]


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _centralized(grads: list[Tensor]) -> list[Tensor]:
    """Gradient centralization: ``g - mean of g over all dims but the first`` for each ``ndim >
    1`` gradient (complex gradients take the complex mean), as new tensors; the others are
    returned as they are. torch has no foreach reduction over dims, so the row means are one
    call per tensor; the subtraction is one foreach call."""
    idx = [i for i, g in enumerate(grads) if g.ndim > 1]
    if not idx:
        return list(grads)
    means = [grads[i].mean(dim=tuple(range(1, grads[i].ndim)), keepdim=True) for i in idx]
    out = list(grads)
    for i, g in zip(idx, torch._foreach_sub([grads[i] for i in idx], means)):
        out[i] = g
    return out


class _RangerBase(torch.optim.Optimizer):
    adabelief: ClassVar[bool] = False
    #: takes ``compile=True`` (``get_optimizer(name, compile=True)`` accepts it)
    compilable: ClassVar[bool] = True
    #: elements per cache block of the foreach path on CPU (results do not depend on it); an
    #: instance may override it
    block_numel: ClassVar[int] = BLOCK_NUMEL
    hyper_map: ClassVar[dict[str, str]] = {
        "mom": "betas__0", "sqr_mom": "betas__1", "eps": "eps", "wd": "weight_decay",
        "k": "k", "alpha": "alpha", "use_gc": "use_gc", "maximize": "maximize",
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
        maximize: bool = False,
        fused: bool | None = None,
        compile: bool = False,
    ) -> None:
        validate_ranger_args(lr, betas, eps, weight_decay, k, alpha)
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if fused and not _fused_kernels_available():
            raise RuntimeError("fused=True needs torch._fused_adamw_ and torch._fused_sgd_ "
                               f"(torch >= 2.4), this is torch {torch.__version__}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "k": k, "alpha": alpha, "use_gc": bool(use_gc), "true_wd": bool(true_wd),
                    "bn_wd": bool(bn_wd), "maximize": bool(maximize), "fused": fused}
        if isinstance(params, Tensor):
            params = [params]
        super().__init__(params, defaults)
        # how steps run, not a hyperparameter: kept out of the groups so that eager and compiled
        # optimizers have the same state_dict (and survives pickling through __getstate__)
        self._compile = compile
        self._compile_error: str | None = None
        if compile:
            reason = compile_unavailable_reason()
            if reason is not None:
                self._compile_error = reason
                warnings.warn(f"{type(self).__name__}(compile=True): {reason}; using the eager "
                              "step", RuntimeWarning, stacklevel=3)

    def _gather(self, group: dict[str, Any]) -> dict[tuple[Any, ...], list[_Item]]:
        """The group's parameters with gradients, keyed by device/dtype/step (state created and
        step counts advanced; gradients untouched)."""
        keyed: dict[tuple[Any, ...], list[_Item]] = {}
        bn_wd, wd = group["bn_wd"], group["weight_decay"]
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
            keyed.setdefault(key, []).append((p, grad, state, wd != 0 and decays(p, bn_wd)))
        return keyed

    def _prepare(self, group: dict[str, Any], items: list[_Item]) -> _Block:
        """The eager path's block: gradient centralization, maximize and L2 decay applied to the
        gradients it carries."""
        use_gc, wd = group["use_gc"], group["weight_decay"]
        l2 = not group["true_wd"] and wd != 0
        # every change goes into new tensors: p.grad keeps the gradient the backward pass made
        grads = [g for _, g, _, _ in items]
        if group["maximize"]:
            grads = list(torch._foreach_neg(grads))
        if l2:
            idx = [i for i, (_, _, _, d) in enumerate(items) if d]
            if idx:
                dec = torch._foreach_add([grads[i] for i in idx],
                                         [items[i][0].detach() for i in idx], alpha=wd)
                for i, g in zip(idx, dec):
                    grads[i] = g
        if use_gc:
            grads = _centralized(grads)
        block = _Block()
        for (p, _, state, decay), g in zip(items, grads):
            tensors = (p.detach(), g, state["exp_avg"], state["exp_avg_sq"],
                       state["slow_buffer"])
            block.add(tuple(_real(t) for t in tensors), decay and not l2)
        return block

    def _use_fused(self, group: dict[str, Any], block: _Block, rect: float | None) -> bool:
        if group.get("fused") is False or rect is None or not _fused_kernels_available():
            return False
        p = block.params[0]
        if self.adabelief and (group["betas"][0] == 0 or p.device.type != "cpu"):
            return False  # the AdaBelief remapping is checked on CPU kernels only
        if p.device.type not in ("cpu", "cuda") or p.dtype not in _FUSED_DTYPES:
            return False
        return all(t.is_contiguous() for lst in (block.params, block.grads, block.exp_avgs,
                                                 block.exp_avg_sqs) for t in lst)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One optimizer step; ``closure`` (optional) re-evaluates the model and returns the loss.

        ``p.grad`` is left unchanged (the reference implementations centralize it in place).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for (device, dtype, prev_step), items in self._gather(group).items():
                step = prev_step + 1
                rect = _rectification(step, group["betas"][1])
                sync = step % group["k"] == 0
                if self.compile and dtype in _FUSED_DTYPES and self._compiled_step(
                        group, items, step, rect, sync):
                    continue  # the compiled update includes the Lookahead sync
                if group.get("fused") is not False and native_applies(device, dtype) and \
                        native_update(*self._update_args(group, items, step, rect),
                                      self.adabelief, group["maximize"], sync):
                    continue  # so does the C kernel's
                block = self._prepare(group, items)
                self._eager_update(group, block, step, rect)
                if sync:
                    # lookahead: slow += alpha*(fast - slow); fast = slow
                    params = [_real(p.detach()) for p, _, _, _ in items]
                    slow = [_real(st["slow_buffer"]) for _, _, st, _ in items]
                    torch._foreach_lerp_(slow, params, group["alpha"])
                    torch._foreach_copy_(params, slow)
        return loss

    def _eager_update(self, group: dict[str, Any], block: _Block, step: int,
                      rect: float | None) -> None:
        if self._use_fused(group, block, rect):
            self._fused_update(group, block, step, rect)  # type: ignore[arg-type]
        else:
            on_cpu = block.params[0].device.type == "cpu"
            for piece in block.split(self.block_numel if on_cpu else _NO_LIMIT):
                self._foreach_update(group, piece, step, rect)

    # ------------------------------------------------------------------ compiled step
    @property
    def compile(self) -> bool:
        """Whether steps run through the compiled update (see ``compile=`` in the class doc)."""
        return self.__dict__.get("_compile", False) and not self.__dict__.get("_compile_error")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["compile"] = self.__dict__.get("_compile", False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict also calls this (without the key): the instance keeps its own choice
        compile_ = bool(state.pop("compile", self.__dict__.get("_compile", False)))
        super().__setstate__(state)
        self._compile = compile_
        for group in self.param_groups:  # optimizers pickled before these options existed
            group.setdefault("maximize", False)
            group.setdefault("fused", None)

    @staticmethod
    def _update_args(group: dict[str, Any], items: list[_Item], step: int,
                     rect: float | None) -> tuple[Any, ...]:
        """(params, grads, exp_avgs, exp_avg_sqs, slows, values, centralize, decoupled, l2) of
        one update, as the compiled step and the C kernel take them (see ``_compiled._update``:
        ``p -= m * (a / (sqrt(v) + eps) + b)``)."""
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        l2_rule = not group["true_wd"]
        params = [p.detach() for p, _, _, _ in items]
        decayed = [d for _, _, _, d in items]
        bias_correction1 = 1.0 - beta1**step
        if rect is None:
            a, b, eps_add = 0.0, lr / bias_correction1, 0.0
        else:
            a = lr * rect * math.sqrt(1.0 - beta2**step) / bias_correction1
            b, eps_add = 0.0, eps
        return (params, [g for _, g, _, _ in items], [st["exp_avg"] for _, _, st, _ in items],
                [st["exp_avg_sq"] for _, _, st, _ in items],
                [st["slow_buffer"] for _, _, st, _ in items],
                [1.0 - lr * wd, wd, beta1, beta2, a, b, eps, eps_add, group["alpha"]],
                tuple(group["use_gc"] and p.ndim > 1 for p in params),
                tuple(d and not l2_rule for d in decayed), tuple(d and l2_rule for d in decayed))

    def _compiled_step(self, group: dict[str, Any], items: list[_Item], step: int,
                       rect: float | None, sync: bool) -> bool:
        """The compiled update of ``items``; False (after one warning) when it cannot run."""
        if any(p.is_complex() for p, _, _, _ in items):
            return False  # complex parameters take the eager path
        try:
            compiled_update(*self._update_args(group, items, step, rect), self.adabelief,
                            group["maximize"], sync)
        except Exception as err:  # noqa: BLE001  (no compiler, or inductor failed: run eager)
            self._compile_error = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            warnings.warn(f"{type(self).__name__}(compile=True): torch.compile failed "
                          f"({self._compile_error}); using the eager step from now on",
                          RuntimeWarning, stacklevel=3)
            return False
        return True

    def _fused_update(self, group: dict[str, Any], b: _Block, step: int, rect: float) -> None:
        """A rectified step with torch's fused Adam kernels (one pass over the tensors).

        RAdam's rectified step ``p -= lr*r*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)`` is Adam's
        step with learning rate ``lr*r`` and eps ``eps/sqrt(1-b2^t)``; the kernel's decoupled
        decay ``p *= 1 - lr'*wd'`` gets ``wd' = lr*wd/lr'``.
        """
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        device = b.params[0].device
        if not self.adabelief:
            lr_k = lr * rect
            eps_k = eps / math.sqrt(1.0 - beta2**step)
            steps = torch.full((), float(step), dtype=torch.float32, device=device)
            self._kernel(b, steps, lr_k, beta1, beta2, eps_k, lr * wd, None)
            return
        # AdaBelief: one fused SGD call (weight decay -1, lr -(1-b1)) writes m = m + (1-b1)(g-m)
        # and the scratch g - m_old. The Adam kernel then reads the gradient b1*(g - m_old),
        # which is g - m_new (its grad_scale divides by 1/b1), so its second moment is
        # s = b2*s + (1-b2)*(g-m)^2; with beta1 ~ 1 it leaves m as it is, and steps.
        # AdaBelief's "s += eps" goes in beforehand as eps/b2 (b2*(s + eps/b2) = b2*s + eps).
        bias_correction1 = 1.0 - beta1**step
        step_size = lr * rect * math.sqrt(1.0 - beta2**step) / bias_correction1
        root = math.sqrt(1.0 - beta2)
        lr_k = step_size * _FROZEN / root
        one = torch.ones((), dtype=torch.float32, device=device)
        scale = torch.full((), 1.0 / beta1, dtype=torch.float32, device=device)
        limit = SCRATCH_NUMEL if device.type == "cpu" else _NO_LIMIT
        for piece in b.split(limit):
            scratch = torch.empty(piece.numel, dtype=piece.params[0].dtype, device=device)
            views, offset = [], 0
            for t in piece.grads:
                views.append(scratch[offset:offset + t.numel()].view(t.shape))
                offset += t.numel()
            torch._fused_sgd_(piece.exp_avgs, piece.grads, views, weight_decay=-1.0,
                              momentum=1.0, lr=-(1.0 - beta1), dampening=0.0, nesterov=False,
                              maximize=False, is_first_step=True)
            torch._foreach_add_(piece.exp_avg_sqs, eps / beta2)
            piece.grads = views
            self._kernel(piece, one, lr_k, 1.0 - _FROZEN, beta2, eps / root, lr * wd, scale)

    @staticmethod
    def _kernel(b: _Block, steps: Tensor, lr: float, beta1: float, beta2: float, eps: float,
                lr_wd: float, grad_scale: Tensor | None) -> None:
        for want in (True, False):
            params, grads, exp_avgs, exp_avg_sqs = b.decayed(want)
            if not params:
                continue
            wd = lr_wd / lr if want and lr != 0 else 0.0
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], [steps] * len(params),
                                lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd, eps=eps,
                                amsgrad=False, maximize=False, grad_scale=grad_scale)

    def _foreach_update(self, group: dict[str, Any], b: _Block, step: int,
                        rect: float | None) -> None:
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        # decoupled weight decay p *= 1 - lr*wd (L2 is already in the gradients)
        wd_params = [p for p, d in zip(b.params, b.decay) if d]
        apply_weight_decay(wd_params, [], lr, group["weight_decay"], True)
        # first moment m = b1*m + (1-b1)*g
        torch._foreach_lerp_(b.exp_avgs, b.grads, 1.0 - beta1)
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


class Ranger(_RangerBase):
    """Ranger: RAdam + Lookahead (k=6, alpha=0.5) + gradient centralization, fused steps.

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
        maximize: maximize the objective instead of minimizing (default False).
        fused: ``None`` (the default): the C kernel on CPU where it applies (float32/float64,
            contiguous or channels-last, a working C compiler), else rectified steps through
            torch's fused Adam kernel (CPU or CUDA, floating dtypes, contiguous tensors);
            ``False``: always the foreach path; ``True``: the same as None, but an error where
            torch lacks its fused kernels.
        compile: run each step through one ``torch.compile``d function over the parameter
            lists (default False; see ``fasttricks.optim._compiled``), after a one-off compile
            per parameter layout (tens of seconds cold, cached on disk); on CPU the default C
            kernel is faster. Without a working compiler it warns once and takes the eager
            step. Complex parameters always take the eager step.

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
        maximize: bool = False,
        fused: bool | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, k, alpha, use_gc, true_wd, bn_wd,
                         maximize, fused, compile)


class RangerAdaBelief(_RangerBase):
    """RangerAdaBelief: Ranger with AdaBelief's second moment, fused steps on CPU.

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
        maximize: maximize the objective instead of minimizing (default False).
        fused: as in :class:`Ranger`: ``None`` (the default) takes the C kernel on CPU where
            it applies, else torch's fused kernels (CPU); ``False``: always the foreach path.
        compile: the compiled step, as in :class:`Ranger` (default False).
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
        maximize: bool = False,
        fused: bool | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, k, alpha, use_gc, true_wd, bn_wd,
                         maximize, fused, compile)
