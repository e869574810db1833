"""What one optimizer step's weight decay did to each parameter of a real model.

The optimizers decide decay per parameter inside ``step`` (:mod:`fasttricks.optim._decay`);
:func:`decay_share` shows the result on a model and a batch: decoupled, none, or L2.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._factory import create_optimizer

__all__ = ["decay_share"]


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
    ``model`` is not changed; ``overrides`` go to the optimizer (e.g. ``true_wd=False``);
    ``seed`` fixes the one dropout mask the gradients are taken with.

    Example::

        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        >>> s = decay_share(net, "ranger_nogc", torch.nn.functional.mse_loss,
        ...                 (torch.randn(4, 3), torch.randn(4, 2)))
        >>> {k: round(v, 2) for k, v in s.items()}
        {'0.weight': 1.0, '0.bias': 0.0, '1.weight': 0.0, '1.bias': nan}
    """
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
