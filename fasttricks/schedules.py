"""fastai's ``fit_flat_cos`` and ``fit_one_cycle`` schedules as plain PyTorch LR schedulers.

Both are fastai's ``combined_cos``: a cosine from ``start`` to ``middle`` over the first
``pct_start`` of training, then a cosine from ``middle`` to ``end`` over the rest, with fastai's
cosine ``sched_cos(start, end, pos) = start + (1 + cos(pi * (1 - pos))) * (end - start) / 2``.

* :func:`flat_cos` (fastai's ``fit_flat_cos``): ``lr`` flat for ``pct_start=0.75`` of the steps,
  then a cosine down to ``lr / div_final`` (``div_final=1e5``). Momentum is left alone.
* :func:`one_cycle` (fastai's ``fit_one_cycle``; Smith, "A disciplined approach to neural
  network hyper-parameters", 2018, https://arxiv.org/abs/1803.09820): a cosine warm-up from
  ``lr_max / div`` (``div=25``) to ``lr_max`` over ``pct_start=0.25`` of the steps, then down
  to ``lr_max / div_final``; momentum runs the other way, ``moms=(0.95, 0.85, 0.95)``.

The scheduler is stepped once per batch, after ``optimizer.step()``, exactly like
``torch.optim.lr_scheduler.OneCycleLR``: at construction it sets the learning rate of step 0,
and after ``k`` calls of ``step()`` the optimizer holds fastai's value for batch ``k``, i.e. at
training progress ``k / total_steps``. Each parameter group keeps its own peak learning rate
(fastai's discriminative learning rates). Momentum is fastai's ``mom``: ``betas[0]`` for the
Adam family (and fasttricks' Ranger optimizers), ``momentum`` for SGD and RMSprop. A group whose
``momentum`` is 0 is left at 0 (setting it would switch momentum on, which fastai's own SGD
avoids by ignoring ``mom`` when built without it).

Example::

    >>> import torch
    >>> from fasttricks.schedules import one_cycle
    >>> model = torch.nn.Linear(4, 1)
    >>> opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    >>> sched = one_cycle(opt, total_steps=100, lr_max=1e-2)
    >>> round(opt.param_groups[0]["lr"], 6), opt.param_groups[0]["betas"][0]
    (0.0004, 0.95)
    >>> for _ in range(100):
    ...     opt.step()
    ...     sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from fasttricks._validate import check_range

__all__ = ["CombinedCosineLR", "flat_cos", "one_cycle", "sched_cos"]


def sched_cos(start: float, end: float, pos: float) -> float:
    """fastai's cosine annealing from ``start`` (``pos=0``) to ``end`` (``pos=1``)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def _combined_cos(pct: float, start: float, middle: float, end: float, pos: float) -> float:
    """fastai's ``combined_cos``: ``start -> middle`` over ``[0, pct)``, ``middle -> end`` after."""
    if pos < pct or pct >= 1.0:
        return sched_cos(start, middle, pos / pct)
    return sched_cos(middle, end, (pos - pct) / (1.0 - pct))


def _positive(name: str, value: Any) -> float:
    check_range(name, value, 0, low_inclusive=False)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_total_steps(total_steps: Any) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(
            f"total_steps must be a positive int (epochs * batches per epoch), got {total_steps!r}"
        )
    return total_steps


def _has_momentum(group: dict[str, Any]) -> str | None:
    """The key that holds fastai's ``mom`` in a torch parameter group, or None."""
    if "betas" in group:
        return "betas"
    if "momentum" in group and group["momentum"] != 0:
        return "momentum"
    return None


class CombinedCosineLR(LRScheduler):
    """Per-step two-phase cosine schedule of lr (and optionally momentum), as fastai's.

    For parameter group ``g`` at step ``k`` of ``total_steps`` (``pos = k / total_steps``) the
    learning rate is ``combined_cos(pct_start, start[g], middle[g], end[g])(pos)`` and, when
    ``moms=(m0, m1, m2)`` is given, the momentum is ``combined_cos(pct_start, m0, m1, m2)(pos)``.
    Stepping past ``total_steps`` raises ``ValueError`` (as ``OneCycleLR`` does). Usually built
    by :func:`flat_cos` or :func:`one_cycle`.

    Args:
        optimizer: a ``torch.optim.Optimizer``.
        total_steps: number of optimizer steps in the whole schedule (>= 1).
        pct_start: fraction of the steps in the first phase, in [0, 1].
        start, middle, end: learning rates per parameter group (sequences of the group count).
        moms: ``(start, middle, end)`` momentum, or None to leave momentum alone.
        last_epoch: torch's resume argument (default -1: a fresh schedule).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        pct_start: float,
        start: Sequence[float],
        middle: Sequence[float],
        end: Sequence[float],
        moms: Sequence[float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.total_steps = _check_total_steps(total_steps)
        self.pct_start = float(check_range("pct_start", pct_start, 0.0, 1.0))
        n_groups = len(optimizer.param_groups)
        for name, values in (("start", start), ("middle", middle), ("end", end)):
            if len(values) != n_groups:
                raise ValueError(
                    f"{name} has {len(values)} learning rates but the optimizer has {n_groups} "
                    "parameter groups"
                )
        self.phases = [
            (float(s), float(m), float(e)) for s, m, e in zip(start, middle, end, strict=True)
        ]
        self.moms = None if moms is None else tuple(float(m) for m in moms)
        super().__init__(optimizer, last_epoch)

    def _position(self) -> float:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"stepped {step} times but the schedule has total_steps={self.total_steps}; "
                "build it with the number of batches you train for"
            )
        return step / self.total_steps

    def get_lr(self) -> list[float]:
        """fastai's learning rate of every parameter group at the current step."""
        pos = self._position()
        return [_combined_cos(self.pct_start, s, m, e, pos) for s, m, e in self.phases]

    def step(self) -> None:  # type: ignore[override]  (no deprecated ``epoch`` argument)
        """Advance one batch: set lr (and momentum, when scheduled) for the next step."""
        super().step()
        if self.moms is None:
            return
        mom = _combined_cos(self.pct_start, *self.moms, self._position())
        for group in self.optimizer.param_groups:
            key = _has_momentum(group)
            if key == "betas":
                group["betas"] = (mom, *tuple(group["betas"])[1:])
            elif key == "momentum":
                group["momentum"] = mom


def _group_lrs(optimizer: torch.optim.Optimizer, lr: Any, name: str) -> list[float]:
    """``lr`` for every group: None -> each group's current lr; a number; or one per group."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    groups = optimizer.param_groups
    if lr is None:
        values = [group["lr"] for group in groups]
        values = [v.item() if isinstance(v, torch.Tensor) else v for v in values]
    elif isinstance(lr, Real) and not isinstance(lr, bool):
        values = [lr] * len(groups)
    elif isinstance(lr, Sequence) and not isinstance(lr, str):
        values = list(lr)
        if len(values) != len(groups):
            raise ValueError(
                f"{name} has {len(values)} values but the optimizer has {len(groups)} parameter "
                f"groups: give one number or one per group, got {lr!r}"
            )
    else:
        raise TypeError(f"{name} must be a number, one number per group or None, got {lr!r}")
    return [_positive(name, v) for v in values]


def _check_moms(moms: Any) -> tuple[float, float, float]:
    if isinstance(moms, str) or not isinstance(moms, Sequence) or len(moms) != 3:
        raise ValueError(f"moms must be three momentums (start, middle, end), got {moms!r}")
    for m in moms:
        check_range("each of moms", m, 0.0, 1.0, high_inclusive=False)
    return tuple(float(m) for m in moms)


def flat_cos(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    lr: float | Sequence[float] | None = None,
    div_final: float = 1e5,
    pct_start: float = 0.75,
) -> CombinedCosineLR:
    """fastai's ``fit_flat_cos`` as a per-step torch scheduler: flat ``lr``, then cosine down.

    The learning rate stays at ``lr`` for the first ``pct_start`` of the steps and then follows
    a cosine to ``lr / div_final``; momentum is not scheduled (as in fastai). The cheatsheet's
    default schedule for Ranger-style optimizers (flat + cosine anneal, from the fast.ai
    community's ImageWoof experiments, 2019).

    Args:
        optimizer: the optimizer whose groups are scheduled.
        total_steps: ``epochs * batches per epoch``.
        lr: the flat learning rate: one number, one per parameter group, or None (default) for
            each group's current lr.
        div_final: final learning rate is ``lr / div_final`` (default 1e5, as fastai).
        pct_start: fraction of the steps at the flat lr, in [0, 1] (default 0.75, as fastai).

    Raises:
        ValueError / TypeError: a bad ``total_steps``, lr, ``div_final`` or ``pct_start``.
    """
    lrs = _group_lrs(optimizer, lr, "lr")
    div_final = _positive("div_final", div_final)
    return CombinedCosineLR(
        optimizer, total_steps, pct_start, lrs, lrs, [v / div_final for v in lrs]
    )


def one_cycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    lr_max: float | Sequence[float] | None = None,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: Sequence[float] | None = (0.95, 0.85, 0.95),
) -> CombinedCosineLR:
    """fastai's ``fit_one_cycle`` as a per-step torch scheduler, momentum included.

    Learning rate: cosine from ``lr_max / div`` up to ``lr_max`` over ``pct_start`` of the
    steps, then cosine down to ``lr_max / div_final``. Momentum (``betas[0]`` or
    ``momentum``): cosine from ``moms[0]`` down to ``moms[1]`` and back up to ``moms[2]``.
    Smith, "A disciplined approach to neural network hyper-parameters: Part 1" (2018),
    https://arxiv.org/abs/1803.09820; fastai's cosine variant.

    Args:
        optimizer: the optimizer whose groups are scheduled.
        total_steps: ``epochs * batches per epoch``.
        lr_max: peak learning rate: one number, one per parameter group, or None (default) for
            each group's current lr.
        div: the start learning rate is ``lr_max / div`` (default 25, as fastai).
        div_final: the final learning rate is ``lr_max / div_final`` (default 1e5, as fastai).
        pct_start: fraction of the steps in the warm-up, in [0, 1] (default 0.25, as fastai).
        moms: ``(start, middle, end)`` momentum in [0, 1) (default fastai's
            ``(0.95, 0.85, 0.95)``), or None to leave momentum alone.

    Raises:
        ValueError / TypeError: a bad ``total_steps``, lr, ``div``, ``div_final``,
            ``pct_start`` or ``moms``.
    """
    lrs = _group_lrs(optimizer, lr_max, "lr_max")
    div = _positive("div", div)
    div_final = _positive("div_final", div_final)
    moms = None if moms is None else _check_moms(moms)
    return CombinedCosineLR(
        optimizer,
        total_steps,
        pct_start,
        [v / div for v in lrs],
        lrs,
        [v / div_final for v in lrs],
        moms=moms,
    )
