"""fasttricks: the fast.ai practitioner cheatsheet as a tested, fast library on top of fastai.

Submodules are imported on first use, so ``import fasttricks`` stays fast and pulls in neither
optuna nor timm::

    import fasttricks
    fasttricks.optim.get_optimizer("ranger")   # imports fasttricks.optim here
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

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

# fastai.layers applies @torch.jit.script at import time, and recent torch answers each with a
# FutureWarning that no fasttricks user can act on. Only that module's import is quietened,
# only for that category and message: a user's own torch.jit.script still warns.
_JIT_MESSAGE = r"`torch\.jit\.script` is deprecated"


class _QuietFastaiLayers(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "fastai.layers":
            return None
        sys.meta_path.remove(self)  # once: the module is then in sys.modules
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def quiet(module: ModuleType) -> None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_JIT_MESSAGE,
                                            category=FutureWarning)
                    exec_module(module)

            spec.loader.exec_module = quiet  # type: ignore[method-assign]
        return spec


if "fastai.layers" not in sys.modules and not any(
        isinstance(f, _QuietFastaiLayers) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietFastaiLayers())


__getattr__, __dir__ = lazy_names(__name__, globals(), dict.fromkeys(_SUBMODULES))
