"""Training callbacks for fastai learners: SAM, batch loss filter, save-best, EMA, NaN guard,
early stopping, gradient accumulation and gradient clipping.

Each callback lives in its own module; recipes pick them by name with :func:`get_callback`.
fastai's own MixUp (Zhang et al., 2018, https://arxiv.org/abs/1710.09412; ``alpha`` of the
Beta distribution, default 0.4) and CutMix (Yun et al., 2019, https://arxiv.org/abs/1905.04899;
``alpha`` default 1.0) are registered as ``mixup`` and ``cutmix``.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix, MixUp

from fasttricks._validate import did_you_mean
from fasttricks.callbacks.early_stopping import EarlyStoppingCallback
from fasttricks.callbacks.ema import EMACallback, ema_decay
from fasttricks.callbacks.grad_accum import GradientAccumulationCallback
from fasttricks.callbacks.grad_clip import GradientClipCallback
from fasttricks.callbacks.loss_filter import BatchLossFilterCallback, loss_filter_mask
from fasttricks.callbacks.nan_guard import NaNGuardCallback, NonFiniteLossError
from fasttricks.callbacks.sam import SAMCallback, sam_perturbation
from fasttricks.callbacks.save_best import SaveBestCallback
from fasttricks.registry import Registry

__all__ = [
    "CALLBACKS",
    "BatchLossFilterCallback",
    "EMACallback",
    "EarlyStoppingCallback",
    "GradientAccumulationCallback",
    "GradientClipCallback",
    "NaNGuardCallback",
    "NonFiniteLossError",
    "SAMCallback",
    "SaveBestCallback",
    "callback_options",
    "callback_registry",
    "ema_decay",
    "get_callback",
    "list_callbacks",
    "loss_filter_mask",
    "register_callback",
    "sam_perturbation",
]

CALLBACKS: Registry[type[Callback]] = Registry("callback")


def register_callback(name: str, cls: type[Callback], *, overwrite: bool = False) -> None:
    """Make callback class ``cls`` available to :func:`get_callback` and recipes as ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise TypeError(f"cls must be a fastai Callback class, got {cls!r}")
    CALLBACKS.register(name, cls, overwrite=overwrite)


for _name, _cls in (("sam", SAMCallback), ("loss_filter", BatchLossFilterCallback),
                    ("save_best", SaveBestCallback), ("ema", EMACallback),
                    ("nan_guard", NaNGuardCallback), ("early_stopping", EarlyStoppingCallback),
                    ("grad_accum", GradientAccumulationCallback),
                    ("grad_clip", GradientClipCallback), ("mixup", MixUp), ("cutmix", CutMix)):
    register_callback(_name, _cls)


def callback_registry() -> dict[str, type[Callback]]:
    """A copy of the name -> callback class registry used by :func:`get_callback`."""
    return dict(CALLBACKS.view)


def list_callbacks(pattern: str | None = None) -> list[str]:
    """The callback names :func:`get_callback` knows, sorted; ``pattern`` is a glob."""
    return CALLBACKS.names(pattern)


def callback_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments callback ``name`` takes (its constructor's signature), by name.

    Lets a recipe check a callback's options without building the callback.
    """
    cls = CALLBACKS.get(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def get_callback(name: str, **kwargs: Any) -> Callback:
    """Build the callback registered as ``name`` (lower-cased) with ``kwargs``.

    Names: ``sam``, ``loss_filter``, ``save_best``, ``ema``, ``nan_guard``, ``early_stopping``,
    ``grad_accum``, ``grad_clip``, ``mixup``, ``cutmix``. An unknown name raises
    a ``KeyError`` listing the known ones and the closest match; an argument the callback does not
    take raises ``TypeError`` listing the ones it does.

    Example::

        cbs = [get_callback("sam", rho=0.05), get_callback("save_best", monitor="accuracy")]
    """
    if not isinstance(name, str):
        raise TypeError(f"callback name must be a string, got {name!r}")
    cls = CALLBACKS.get(name)
    allowed = list(callback_options(name))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"callback {CALLBACKS.key(name)!r} got unexpected argument(s) {unknown}"
                        f"{did_you_mean(unknown[0], allowed)}; allowed: {allowed}")
    return cls(**kwargs)
