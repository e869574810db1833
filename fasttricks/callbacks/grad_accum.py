"""Gradient accumulation: step the optimizer once every ``n_acc`` training samples.

fastai's ``GradientAccumulation`` with its argument checked: each mini-batch's loss gradient is
scaled by ``bs / n_acc`` and the step (and zeroing) is skipped until ``n_acc`` samples were
seen, so one step uses the gradient of the mean loss over about ``n_acc`` samples -- a large
batch in the memory of a small one. With plain SGD and ``n_acc = k * bs`` the weights match one
step on a batch ``k`` times larger (BatchNorm statistics aside).
"""

from __future__ import annotations

from typing import Any

from fastai.callback.training import GradientAccumulation

__all__ = ["GradientAccumulationCallback"]


class GradientAccumulationCallback(GradientAccumulation):
    """Accumulate gradients over ``n_acc`` samples before each optimizer step.

    Args:
        n_acc: samples per optimizer step (default 32; a multiple of the batch size gives
            equal steps). The count carries over epoch ends.
    """

    def __init__(self, n_acc: int = 32) -> None:
        self.validate_options(n_acc=n_acc)
        super().__init__(n_acc=int(n_acc))

    @staticmethod
    def validate_options(**options: Any) -> None:
        """Check option values without building the callback (the recipe schema calls this)."""
        n_acc = options.get("n_acc", 32)
        if isinstance(n_acc, bool) or not isinstance(n_acc, int) or n_acc < 1:
            raise ValueError(f"n_acc must be a number of samples >= 1, got {n_acc!r}")
