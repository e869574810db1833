"""Weight-decay rules decided per parameter inside the optimizer step.

Two switches, as in fastai:

* ``true_wd=True``: decoupled weight decay, ``p <- p * (1 - lr * wd)`` (Loshchilov & Hutter,
  "Decoupled Weight Decay Regularization", https://arxiv.org/abs/1711.05101).
  ``true_wd=False``: L2 regularisation, ``grad <- grad + wd * p``.
* ``bn_wd=False``: no decay on parameters with ``ndim <= 1`` (biases and normalisation weights).

The rule is applied per parameter inside ``step``, so the parameter groups stay exactly what
the caller (e.g. a fastai splitter) made; nothing is split into extra groups.
:func:`fasttricks.optim.decay_share` measures, on a real model and batch, what the rule did to
each parameter.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["WeightDecayRules", "apply_weight_decay", "decays"]


def decays(param: Tensor, bn_wd: bool) -> bool:
    """Whether ``param`` gets weight decay: always if ``bn_wd``, else only when ``ndim > 1``."""
    return bn_wd or param.ndim > 1


def apply_weight_decay(
    params: list[Tensor], grads: list[Tensor], lr: float, wd: float, true_wd: bool
) -> None:
    """Apply one step of weight decay to already selected ``params`` (in place, foreach).

    ``true_wd=True``: ``p *= 1 - lr * wd``; ``False``: ``grad += wd * p``. Nothing happens when
    ``wd == 0`` or the lists are empty.
    """
    if wd == 0 or not params:
        return
    if true_wd:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    else:
        torch._foreach_add_(grads, params, alpha=wd)


def _unhooked(bound_step: Any) -> Any:
    """A base class's bound ``step`` without torch's hook wrapper (so hooks do not run twice)."""
    if getattr(bound_step, "hooked", False):
        return functools.partial(bound_step.__wrapped__, bound_step.__self__)
    return bound_step


class WeightDecayRules:
    """Mixin for a torch optimizer class: ``true_wd``/``bn_wd`` rules on top of its own step.

    The wrapped optimizer keeps ``weight_decay`` in its parameter groups (so schedulers and fastai
    set it as usual). When a group's rule is exactly the wrapped optimizer's native one
    (``native_true_wd`` and ``bn_wd=True``), its own (possibly fused) kernel applies the decay;
    otherwise the decay is applied here and the inner step runs with ``weight_decay=0``:
    decoupled decay with foreach ops on the selected parameters, L2 by handing the inner step
    gradients ``g + wd*p`` in place of ``p.grad`` for that step (``p.grad`` itself is never
    changed, so a second step on the same backward does not count the decay twice).
    """

    native_true_wd: bool = False
    #: the inner step writes into the gradients it is given (torch's foreach Nesterov SGD does)
    writes_grads: bool = False

    def _init_rules(self, true_wd: bool, bn_wd: bool) -> None:
        self.defaults["true_wd"] = bool(true_wd)
        self.defaults["bn_wd"] = bool(bn_wd)
        for group in self.param_groups:
            group.setdefault("true_wd", bool(true_wd))
            group.setdefault("bn_wd", bool(bn_wd))

    def _is_native(self, group: dict[str, Any]) -> bool:
        return group["bn_wd"] and group["true_wd"] == self.native_true_wd

    def _inner_writes_grads(self, group: dict[str, Any]) -> bool:
        return self.writes_grads

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Apply the weight-decay rule, then the wrapped optimizer's own step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved: list[tuple[dict[str, Any], Any]] = []
        swapped: list[tuple[Tensor, Tensor]] = []
        try:
            for group in self.param_groups:
                wd = group.get("weight_decay", 0.0)
                protect = self._inner_writes_grads(group)
                if (self._is_native(group) or wd == 0) and not protect:
                    continue
                l2 = not group["true_wd"] and wd != 0 and not self._is_native(group)
                # torch negates the gradient before adding L2, so -(g - wd*p) = -g + wd*p
                sign = -1.0 if group.get("maximize", False) else 1.0
                decoupled = []
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    chosen = wd != 0 and decays(p, group["bn_wd"])
                    if l2 and chosen:
                        swapped.append((p, p.grad))
                        p.grad = p.grad.add(p.detach(), alpha=sign * wd)
                        continue
                    if protect:
                        swapped.append((p, p.grad))
                        p.grad = p.grad.clone()
                    if chosen and group["true_wd"] and not self._is_native(group):
                        decoupled.append(p)
                if decoupled:
                    apply_weight_decay(decoupled, [], group["lr"], wd, True)
                if wd != 0 and not self._is_native(group):
                    saved.append((group, wd))
                    group["weight_decay"] = 0.0
            _unhooked(super().step)()  # type: ignore[misc]
        finally:
            for group, wd in saved:
                group["weight_decay"] = wd
            for p, grad in swapped:
                p.grad = grad
        return loss
