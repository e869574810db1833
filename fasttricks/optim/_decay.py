"""Weight-decay rules decided per parameter inside the optimizer step.

Two switches, as in fastai:

* ``true_wd=True``: decoupled weight decay, ``p <- p * (1 - lr * wd)`` (Loshchilov & Hutter,
  "Decoupled Weight Decay Regularization", https://arxiv.org/abs/1711.05101).
  ``true_wd=False``: L2 regularisation, ``grad <- grad + wd * p``.
* ``bn_wd=False``: no decay on parameters with ``ndim <= 1`` (biases and normalisation weights).

The rule is applied per parameter inside ``step``, so the parameter groups stay exactly what
the caller (e.g. a fastai splitter) made; nothing is split into extra groups.
:func:`decay_share` measures, on a real model and batch, what the rule did to each parameter.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["WeightDecayRules", "apply_weight_decay", "decay_share", "decays"]


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


def decay_share(
    model: nn.Module,
    name: str,
    loss_func: Callable[..., Tensor],
    batch: Sequence[Any],
    lr: float = 1e-3,
    wd: float = 0.1,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, float]:
    """How much of ``lr * wd * p`` one optimizer step took off each parameter of ``model``.

    One step of the registered optimizer ``name`` on the same weights and gradients (``batch``
    is ``(*inputs, target)``), once with ``wd`` and once with ``wd=0``; for each named parameter
    ``||step(wd) - step(0)|| / (lr * wd * ||p||)``. 1.0 is decoupled decay (``true_wd=True``,
    Loshchilov & Hutter 2019), 0.0 no decay (``bn_wd=False`` on a parameter with ``ndim <= 1``),
    anything else L2 decay (``true_wd=False``), whose ``wd * p`` is rescaled by the optimizer
    with the gradient. A parameter that is all zeros has nothing to decay: ``nan``.
    ``model`` is not changed; ``overrides`` go to the optimizer (e.g. ``true_wd=False``).

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        >>> s = decay_share(net, "ranger_nogc", torch.nn.functional.mse_loss,
        ...                 (torch.randn(4, 3), torch.randn(4, 2)))
        >>> {k: round(v, 2) for k, v in s.items()}
        {'0.weight': 1.0, '0.bias': 0.0, '1.weight': 0.0, '1.bias': nan}
    """
    from ._factory import create_optimizer

    if not (isinstance(lr, (int, float)) and lr > 0 and isinstance(wd, (int, float)) and wd > 0):
        raise ValueError(f"decay_share needs lr > 0 and wd > 0 (the share divides by lr * wd), "
                         f"got lr={lr!r}, wd={wd!r}")
    *inputs, target = batch
    grads_of = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # dropout: the one mask both steps share
        torch.manual_seed(seed)
        loss_func(grads_of(*inputs), target).backward()
    grads = [p.grad for p in grads_of.parameters()]
    steps = {}
    for decay in (wd, 0.0):
        net = copy.deepcopy(model)
        params = list(net.parameters())
        for p, g in zip(params, grads, strict=True):
            p.grad = None if g is None else g.clone()
        before = [p.detach().clone() for p in params]
        create_optimizer(params, name, lr=lr, wd=decay, **overrides).step()
        steps[decay] = [p.detach() - b for p, b in zip(params, before, strict=True)]
    share = {}
    for i, (key, p) in enumerate(model.named_parameters()):
        size = float(p.detach().norm())
        diff = float((steps[wd][i] - steps[0.0][i]).norm())
        share[key] = diff / (lr * wd * size) if size > 0 else math.nan
    return share


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
