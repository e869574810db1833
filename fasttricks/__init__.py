"""fasttricks: the fast.ai practitioner cheatsheet as a tested, fast library on top of fastai.

Submodules are imported on first use, so ``import fasttricks`` stays fast and pulls in neither
optuna nor timm::

    import fasttricks
    fasttricks.optim.get_optimizer("ranger")   # imports fasttricks.optim here
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBMODULES = (
    "optim",
    "losses",
    "callbacks",
    "data",
    "datasets",
    "loaders",
    "models",
    "metrics",
    "recipes",
    "runs",
    "lr",
    "schedules",
    "batch_size",
    "ensemble",
    "diagnose",
    "tune",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'fasttricks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
