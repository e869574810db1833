"""Learning-rate helpers: the cheatsheet's lr_find range and staged transfer-learning fits.

- :func:`suggest_lr` runs fastai's ``lr_find`` and returns the range the fast.ai course
  recommends: between the point where the loss falls fastest (``steep``) and a tenth of the
  learning rate at the minimum loss (``minimum``). Smith, "Cyclical Learning Rates for Training
  Neural Networks" (2017), https://arxiv.org/abs/1506.01186.
- :func:`fine_tune_staged` implements the transfer-learning rules: fit the head with the body
  frozen at ``lr``; ``freeze_to(-2)`` and fit at ``lr / 2``; ``unfreeze`` and fit with
  discriminative learning rates ``slice(lr / 100, lr / 2)`` (Howard & Ruder, "Universal Language
  Model Fine-tuning for Text Classification" (2018), https://arxiv.org/abs/1801.06146).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (patches Learner.lr_find / fit_flat_cos)
from fastai.callback.core import Callback
from fastai.learner import Learner

from fasttricks._validate import check_choice, check_range

__all__ = ["LRRange", "fine_tune_staged", "suggest_lr"]

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
            "lrs": [h["lr"] for h in opt.hypers],
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
