"""Gradient clipping: rescale the gradients so their total norm is at most ``max_norm``.

fastai's ``GradientClip`` (``torch.nn.utils.clip_grad_norm_`` before each step; under
``to_fp16`` it runs after the GradScaler has unscaled the gradients) with its arguments
checked. Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks"
(2013), https://arxiv.org/abs/1211.5063.
"""

from __future__ import annotations

from typing import Any

from fastai.callback.training import GradientClip

from fasttricks._validate import check_range

__all__ = ["GradientClipCallback"]


class GradientClipCallback(GradientClip):
    """Clip the total gradient norm of all parameters to ``max_norm`` before each step.

    Args:
        max_norm: the largest total norm allowed (default 1.0, > 0).
        norm_type: the p of the p-norm (default 2.0; ``inf`` for the largest entry).
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        self.validate_options(max_norm=max_norm, norm_type=norm_type)
        super().__init__(max_norm=float(max_norm), norm_type=float(norm_type))

    @staticmethod
    def validate_options(**options: Any) -> None:
        """Check option values without building the callback (the recipe schema calls this)."""
        check_range("max_norm", options.get("max_norm", 1.0), low=0.0, low_inclusive=False)
        check_range("norm_type", options.get("norm_type", 2.0), low=0.0, low_inclusive=False)
