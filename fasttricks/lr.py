"""Learning-rate helpers: the cheatsheet's lr_find range and staged transfer-learning fits.

- :func:`suggest_lr` runs fastai's ``lr_find`` and returns the range the fast.ai course
  recommends: between the point where the loss falls fastest (``steep``) and a tenth of the
  learning rate at the minimum loss (``minimum``). Smith, "Cyclical Learning Rates for Training
  Neural Networks" (2017), https://arxiv.org/abs/1506.01186.
- :func:`fine_tune_staged` implements the transfer-learning rules: fit the head with the body
  frozen at ``lr``; ``freeze_to(-2)`` and fit at ``lr / 2``; ``unfreeze`` and fit with
  discriminative learning rates ``slice(lr / 100, lr / 2)`` (Howard & Ruder, "Universal Language
  Model Fine-tuning for Text Classification" (2018), https://arxiv.org/abs/1801.06146).
  :func:`stage_epochs` splits a total epoch budget into those three stages.
- :func:`fit_sgdr` is cosine annealing with warm restarts (Loshchilov & Hutter, "SGDR:
  Stochastic Gradient Descent with Warm Restarts" (2017), https://arxiv.org/abs/1608.03983),
  fastai's ``fit_sgdr`` schedule, also for ``cycle_mult=1``; :func:`sgdr_epochs` its length.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import fastai.callback.schedule  # noqa: F401  (patches Learner.lr_find / fit_flat_cos)
from fastai.callback.core import Callback, CancelFitException
from fastai.learner import Learner

from fasttricks._validate import check_choice, check_range

__all__ = ["LRRange", "fine_tune_staged", "fit_sgdr", "sgdr_epochs", "stage_epochs",
           "suggest_lr"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LRRange:
    """A learning-rate range from ``lr_find``.

    Attributes:
        steep: learning rate where the loss falls fastest.
        minimum: a tenth of the learning rate at the lowest loss.
        low, high: the two, ordered.
    """

    steep: float
    minimum: float

    @property
    def low(self) -> float:
        """The smaller end of the range."""
        return min(self.steep, self.minimum)

    @property
    def high(self) -> float:
        """The larger end of the range."""
        return max(self.steep, self.minimum)

    @property
    def mid(self) -> float:
        """The geometric middle of the range, a reasonable single pick."""
        return math.sqrt(self.low * self.high)

    def __str__(self) -> str:
        return (f"lr between {self.low:.2e} and {self.high:.2e} (steepest {self.steep:.2e}, "
                f"minimum/10 {self.minimum:.2e}); middle {self.mid:.2e}")


def suggest_lr(
    learn: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    show_plot: bool = False,
) -> LRRange:
    """Run ``learn.lr_find`` and return the range between its steepest point and minimum/10.

    The learner's weights are restored afterwards (fastai's ``lr_find`` does that). The range is
    also logged at INFO level.

    Args:
        learn: the learner.
        start_lr, end_lr: the sweep (default 1e-7 to 10).
        num_it: mini-batches in the sweep (default 100).
        show_plot: draw fastai's loss-vs-lr plot (default False).

    Example:
        >>> rng = suggest_lr(learn)
        >>> learn.fit_flat_cos(5, rng.mid)
    """
    from fastai.callback.schedule import minimum, steep

    check_range("start_lr", start_lr, low=0.0, low_inclusive=False)
    if end_lr <= start_lr:
        raise ValueError(f"end_lr must be above start_lr, got {end_lr!r} <= {start_lr!r}")
    # lr_find parks the weights in learn.path/model_dir/_tmp.pth: keep that out of the user's
    # folders (and working in read-only ones)
    path, model_dir = learn.path, learn.model_dir
    with tempfile.TemporaryDirectory(prefix="fasttricks-lr-find-") as tmp, learn.no_bar():
        learn.path, learn.model_dir = Path(tmp), "."
        try:
            found = learn.lr_find(start_lr=start_lr, end_lr=end_lr, num_it=num_it,
                                  show_plot=show_plot, suggest_funcs=(minimum, steep))
        finally:
            learn.path, learn.model_dir = path, model_dir
    result = LRRange(steep=float(found.steep), minimum=float(found.minimum))
    logger.info("suggested %s", result)
    return result


class _StageRecorder(Callback):
    """Remember, at the first batch of each fit, each parameter group's lr and trainability."""

    order = 100

    def __init__(self) -> None:
        self.stages: list[dict] = []

    def before_fit(self) -> None:
        self._first = True

    def before_batch(self) -> None:
        if not self.training or not self._first:
            return
        self._first = False
        opt = self.learn.opt
        self.stages.append({
            "lrs": [float(h["lr"]) for h in opt.hypers],
            # weights (ndim > 1) only: fastai keeps norm layers trainable in frozen groups
            "trainable": [any(p.requires_grad for p in pg if p.ndim > 1)
                          for pg in opt.param_lists],
        })


def fine_tune_staged(
    learn: Learner,
    lr: float,
    epochs: Sequence[int] = (1, 1, 2),
    fit: str = "flat_cos",
    **fit_kwargs,
) -> list[dict]:
    """Fine-tune a pretrained learner in the cheatsheet's three stages.

    1. ``freeze()`` and fit ``epochs[0]`` epochs at ``lr`` (only the head trains);
    2. ``freeze_to(-2)`` and fit ``epochs[1]`` epochs at ``lr / 2``;
    3. ``unfreeze()`` and fit ``epochs[2]`` epochs at ``slice(lr / 100, lr / 2)`` (the first
       parameter group gets ``lr / 100``, the last ``lr / 2``, the ones between are spaced
       geometrically).

    A stage with 0 epochs is skipped. The learner needs a splitter that gives several parameter
    groups (fastai's ``vision_learner`` does; :func:`fasttricks.recipes.build_learner` splits
    timm models into body and head).

    Args:
        learn: the learner.
        lr: the head's learning rate (e.g. from :func:`suggest_lr`).
        epochs: epochs of each stage (default ``(1, 1, 2)``).
        fit: ``"flat_cos"`` (default) or ``"one_cycle"``.
        **fit_kwargs: passed to the fit method (``pct_start``, ``div_final``, ``cbs`` ...).

    Returns:
        One record per stage that ran: its name, epochs, the lr it was given and, read from
        the optimizer at the stage's first batch, each group's lr and whether its weights
        (parameters with ndim > 1) trained; fastai's ``train_bn`` keeps norm layers of frozen
        groups trainable.
    """
    check_range("lr", lr, low=0.0, low_inclusive=False)
    check_choice("fit", fit, ("flat_cos", "one_cycle"))
    epochs = tuple(epochs)
    if len(epochs) != 3 or any(int(e) != e or e < 0 for e in epochs):
        raise ValueError(f"epochs must be three non-negative integers, got {epochs!r}")
    plan = [("frozen", learn.freeze, lr), ("freeze_to(-2)", lambda: learn.freeze_to(-2), lr / 2),
            ("unfrozen", learn.unfreeze, slice(lr / 100, lr / 2))]
    recorder = _StageRecorder()
    extra = list(fit_kwargs.pop("cbs", []))
    fit_fn = learn.fit_flat_cos if fit == "flat_cos" else learn.fit_one_cycle
    records = []
    for (name, prepare, stage_lr), n in zip(plan, epochs):
        if n == 0:
            continue
        prepare()
        fit_fn(int(n), stage_lr, cbs=[recorder, *extra], **fit_kwargs)
        seen = recorder.stages[-1] if recorder.stages else {}
        records.append({"stage": name, "epochs": int(n), "lr": stage_lr, **seen})
        logger.info("stage %s: %d epoch(s), lr %s", name, n, stage_lr)
    return records


def stage_epochs(epochs: int, freeze_epochs: int = 1, freeze_to_epochs: int = 1
                 ) -> tuple[int, int, int]:
    """Split ``epochs`` into :func:`fine_tune_staged`'s three stages, in order.

    The frozen stage takes ``min(freeze_epochs, epochs)``, the ``freeze_to(-2)`` stage up to
    ``freeze_to_epochs`` of what is left, the unfrozen stage the rest; so the stages always add
    up to ``epochs`` and a shorter budget cuts the last stages first.

    Example:
        >>> stage_epochs(5), stage_epochs(1), stage_epochs(4, 2, 0)
        ((1, 1, 3), (1, 0, 0), (2, 0, 2))
    """
    for name, value in (("epochs", epochs), ("freeze_epochs", freeze_epochs),
                        ("freeze_to_epochs", freeze_to_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    frozen = min(freeze_epochs, epochs)
    partial = min(freeze_to_epochs, epochs - frozen)
    return frozen, partial, epochs - frozen - partial


def sgdr_epochs(n_cycles: int, cycle_len: int = 1, cycle_mult: int = 2) -> int:
    """Epochs of an SGDR schedule: ``cycle_len * (1 + cycle_mult + ... + cycle_mult**(n-1))``.

    Example:
        >>> sgdr_epochs(3, 1, 2), sgdr_epochs(3, 2, 1)
        (7, 6)
    """
    for name, value in (("n_cycles", n_cycles), ("cycle_len", cycle_len),
                        ("cycle_mult", cycle_mult)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return cycle_len * sum(cycle_mult ** i for i in range(n_cycles))


class _StopAfter(Callback):
    """Cancel the fit after ``n`` epochs (a shorter run of the same schedule)."""

    order = 99

    def __init__(self, n: int) -> None:
        self.n = n

    def after_epoch(self) -> None:
        if self.epoch + 1 >= self.n:
            raise CancelFitException()


def fit_sgdr(
    learn: Learner,
    n_cycles: int,
    cycle_len: int = 1,
    cycle_mult: int = 2,
    lr: float | slice | None = None,
    cbs: Sequence[Callback] = (),
    epochs: int | None = None,
) -> None:
    """Fit with cosine annealing and warm restarts (SGDR), fastai's ``fit_sgdr`` schedule.

    Cycle ``i`` lasts ``cycle_len * cycle_mult**i`` epochs; within it the learning rate of each
    parameter group follows ``lr_max * (1 + cos(pi * t)) / 2`` for ``t`` going from 0 to 1 over
    the cycle's steps, then restarts at ``lr_max``. Unlike fastai's, ``cycle_mult=1`` (equal
    cycles) works, and a restart lands exactly on the first step of its cycle.

    Args:
        learn: the learner.
        n_cycles: number of cycles (``n`` in the paper's restarts).
        cycle_len: epochs of the first cycle (``T_0``; default 1).
        cycle_mult: growth of each following cycle (``T_mult``; default 2).
        lr: peak learning rate (default ``learn.lr``; a ``slice`` spreads it over the groups).
        cbs: extra callbacks for this fit.
        epochs: stop after this many epochs of the schedule (default: all of it,
            :func:`sgdr_epochs`).
    """
    from fastai.callback.schedule import ParamScheduler

    total = sgdr_epochs(n_cycles, cycle_len, cycle_mult)
    if epochs is not None and not (isinstance(epochs, int) and 1 <= epochs <= total):
        raise ValueError(f"epochs must be an integer in [1, {total}] (the schedule's length), "
                         f"got {epochs!r}")
    if learn.opt is None:
        learn.create_opt()
    learn.opt.set_hyper("lr", learn.lr if lr is None else lr)
    lr_max = np.array([h["lr"] for h in learn.opt.hypers])
    # cycle boundaries as fractions of training, in float64: fastai's float32 cumsum puts a
    # restart one step late when a boundary falls exactly on a step
    ends = np.cumsum([cycle_len * cycle_mult ** i for i in range(n_cycles)])
    bounds = np.concatenate([[0.0], ends / total])

    def sched(pos: float) -> np.ndarray:
        i = min(int(np.searchsorted(bounds, pos, side="right")) - 1, n_cycles - 1)
        t = (pos - bounds[i]) / (bounds[i + 1] - bounds[i])
        return lr_max * (1 + math.cos(math.pi * t)) / 2

    extra = [_StopAfter(epochs)] if epochs is not None and epochs < total else []
    learn.fit(total, cbs=[ParamScheduler({"lr": sched}), *extra, *cbs])
