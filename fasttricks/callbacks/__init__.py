"""Training callbacks for fastai learners: SAM, batch loss filter, save-best, EMA, NaN guard.

Each callback lives in its own module; recipes pick them by name with :func:`get_callback`.
"""

from __future__ import annotations

from typing import Any

from fastai.callback.core import Callback

from fasttricks._validate import check_choice
from fasttricks.callbacks.ema import EMACallback, ema_decay
from fasttricks.callbacks.loss_filter import BatchLossFilterCallback, loss_filter_mask
from fasttricks.callbacks.nan_guard import NaNGuardCallback, NonFiniteLossError
from fasttricks.callbacks.sam import SAMCallback, sam_perturbation
from fasttricks.callbacks.save_best import SaveBestCallback

__all__ = [
    "BatchLossFilterCallback",
    "EMACallback",
    "NaNGuardCallback",
    "NonFiniteLossError",
    "SAMCallback",
    "SaveBestCallback",
    "callback_registry",
    "ema_decay",
    "get_callback",
    "list_callbacks",
    "loss_filter_mask",
    "sam_perturbation",
]

_REGISTRY: dict[str, type[Callback]] = {
    "sam": SAMCallback,
    "loss_filter": BatchLossFilterCallback,
    "save_best": SaveBestCallback,
    "ema": EMACallback,
    "nan_guard": NaNGuardCallback,
}


def callback_registry() -> dict[str, type[Callback]]:
    """A copy of the name -> callback class registry used by :func:`get_callback`."""
    return dict(_REGISTRY)


def list_callbacks() -> list[str]:
    """The callback names :func:`get_callback` knows, sorted."""
    return sorted(_REGISTRY)


def get_callback(name: str, **kwargs: Any) -> Callback:
    """Build the callback registered as ``name`` (lower-cased) with ``kwargs``.

    Names: ``sam``, ``loss_filter``, ``save_best``, ``ema``, ``nan_guard``. An unknown name raises
    a ``KeyError`` listing the known ones and the closest match; an argument the callback does not
    take raises ``TypeError`` listing the ones it does.

    Example::

        cbs = [get_callback("sam", rho=0.05), get_callback("save_best", monitor="accuracy")]
    """
    if not isinstance(name, str):
        raise TypeError(f"callback name must be a string, got {name!r}")
    key = check_choice("callback", name.strip().lower(), list_callbacks())
    cls = _REGISTRY[key]
    try:
        return cls(**kwargs)
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise TypeError(
                f"callback {key!r} got unexpected argument(s) {unknown}; allowed: {allowed}"
            ) from err
        raise
