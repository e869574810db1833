"""fasttricks: the fast.ai practitioner cheatsheet as a tested, fast library on top of fastai.

Submodules are imported on first use, so ``import fasttricks`` stays fast and pulls in neither
optuna nor timm::

    import fasttricks
    fasttricks.optim.get_optimizer("ranger")   # imports fasttricks.optim here
"""

from __future__ import annotations

from fasttricks._lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(__name__, globals(), dict.fromkeys(_SUBMODULES))
