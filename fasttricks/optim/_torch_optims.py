"""torch's own AdamW, SGD and RMSprop with fasttricks' per-parameter weight-decay rules.

The maths of each step is torch's (fused AdamW on CPU and CUDA where the rule allows, foreach
kernels otherwise); only the weight-decay rule is added: decoupled or L2 (``true_wd``), and
whether 1-D parameters decay (``bn_wd``), see :mod:`fasttricks.optim._decay`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from ._decay import WeightDecayRules

__all__ = ["SGD", "AdamW", "RMSprop"]


def _as_list(params: Iterable[Any] | torch.Tensor) -> list[Any]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


def _all_tensors(params: list[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for item in params:
        if isinstance(item, dict):
            out.extend(item["params"] if not isinstance(item["params"], torch.Tensor)
                       else [item["params"]])
        else:
            out.append(item)
    return out


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _kernel_choice(
    params: list[Any], native: bool, foreach: bool | None, fused: bool | None, can_fuse: bool
) -> tuple[bool | None, bool | None]:
    """Fused on CPU or CUDA when the rule is native (the kernel applies the decay itself, so
    GradScaler's skipped steps skip the decay too) and every parameter is a floating tensor on
    one of those devices; foreach otherwise."""
    tensors = _all_tensors(params)
    kinds = {t.device.type for t in tensors}
    fusable = (bool(tensors) and len(kinds) == 1 and kinds <= {"cpu", "cuda"}
               and all(t.dtype in _FUSED_DTYPES for t in tensors))
    if fused and not native:
        raise ValueError(
            "fused=True needs the optimizer's native weight-decay rule (bn_wd=True and the "
            "native true_wd); got a rule that is applied outside the kernel, use fused=False"
        )
    if fused is None:
        fused = can_fuse and fusable and native and foreach is not True
    if fused:
        return None, True
    return (True if foreach is None else foreach), None


class AdamW(WeightDecayRules, torch.optim.AdamW):
    """torch's AdamW with fasttricks' weight-decay rules (defaults: decoupled, decay on all).

    Loshchilov & Hutter, https://arxiv.org/abs/1711.05101. ``true_wd=False`` turns the decay into
    L2 (Adam with L2); ``bn_wd=False`` skips 1-D parameters. Uses torch's fused kernel (CPU and
    CUDA, floating dtypes) when the rule is AdamW's own (``true_wd=True, bn_wd=True``, the
    default); any other rule is applied outside torch's step and the step falls back to
    foreach kernels (fusing it would let GradScaler skip a step but not its decay).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) (default (0.9, 0.999), torch's; fastai's ``Adam`` uses 0.99).
        eps: added to ``sqrt(v_hat)`` (default 1e-8). Sweep 1.0, 0.1, 0.01 when tuning.
        weight_decay: wd (default 0.01).
        true_wd, bn_wd: the weight-decay rule (default True, True).
        maximize: maximize the objective (default False); foreach, fused: torch's kernel choice
            (default None: fused where the rule allows, see above).
    """

    native_true_wd: ClassVar[bool] = True
    hyper_map: ClassVar[dict[str, str]] = {
        "mom": "betas__0", "sqr_mom": "betas__1", "eps": "eps", "wd": "weight_decay",
        "amsgrad": "amsgrad", "maximize": "maximize",
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        true_wd: bool = True,
        bn_wd: bool = True,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        params = _as_list(params)
        foreach, fused = _kernel_choice(params, bool(true_wd and bn_wd), foreach, fused, True)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, foreach=foreach, fused=fused)
        self._init_rules(true_wd, bn_wd)


class SGD(WeightDecayRules, torch.optim.SGD):
    """torch's SGD (plain, momentum or Nesterov) with fasttricks' weight-decay rules.

    Defaults: ``true_wd=True`` (decoupled, ``p *= 1 - lr*wd``) and ``bn_wd=False`` (no decay on
    1-D parameters). ``true_wd=False, bn_wd=True`` is torch's own L2 decay. Momentum follows
    torch: ``buf = mom*buf + grad``, ``p -= lr*buf`` (Nesterov: ``p -= lr*(grad + mom*buf)``).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-2).
        momentum: mom (default 0); nesterov: Nesterov momentum (default False).
        weight_decay: wd (default 0).
        true_wd, bn_wd: the weight-decay rule (default True, False).
        maximize: maximize the objective (default False).

    torch's foreach Nesterov step adds the momentum into the gradients it is given; this class
    hands it a copy, so ``p.grad`` is never changed.
    """

    native_true_wd: ClassVar[bool] = False
    hyper_map: ClassVar[dict[str, str]] = {
        "mom": "momentum", "wd": "weight_decay", "nesterov": "nesterov", "dampening": "dampening",
        "maximize": "maximize",
    }

    def _inner_writes_grads(self, group: dict[str, Any]) -> bool:
        # torch copies the gradients itself first when it negates them or adds its own L2
        own_copy = group["maximize"] or (self._is_native(group) and group["weight_decay"] != 0)
        return (bool(group["nesterov"]) and group["momentum"] != 0
                and group["foreach"] is not False and not group.get("fused") and not own_copy)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        true_wd: bool = True,
        bn_wd: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        params = _as_list(params)
        native = bool(not true_wd and bn_wd)
        foreach, _ = _kernel_choice(params, native, foreach, False, False)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach)
        self._init_rules(true_wd, bn_wd)


class RMSprop(WeightDecayRules, torch.optim.RMSprop):
    """torch's RMSprop with fasttricks' weight-decay rules (Hinton, Lecture 6e, 2012).

    torch's maths: ``v = a*v + (1-a)*g^2``; with momentum ``buf = mom*buf + g/(sqrt(v)+eps)``,
    ``p -= lr*buf``. (fastai's own ``RMSProp`` averages the gradient before dividing instead.)
    Defaults ``true_wd=True, bn_wd=False``.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (default 1e-2).
        alpha: sqr_mom, the squared-gradient smoothing (default 0.99).
        eps: added to ``sqrt(v)`` (default 1e-8).
        weight_decay: wd (default 0); momentum: mom (default 0); centered (default False).
        true_wd, bn_wd: the weight-decay rule (default True, False).
        maximize: maximize the objective (default False).
    """

    native_true_wd: ClassVar[bool] = False
    hyper_map: ClassVar[dict[str, str]] = {
        "mom": "momentum", "sqr_mom": "alpha", "eps": "eps", "wd": "weight_decay",
        "centered": "centered", "maximize": "maximize",
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        true_wd: bool = True,
        bn_wd: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        params = _as_list(params)
        native = bool(not true_wd and bn_wd)
        foreach, _ = _kernel_choice(params, native, foreach, False, False)
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize,
                         foreach=foreach)
        self._init_rules(true_wd, bn_wd)
