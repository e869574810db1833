"""Names a package loads on first use: one module ``__getattr__`` and ``__dir__`` (PEP 562)
for the packages that keep their heavy parts (fastai, optuna) out of ``import``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, namespace: MutableMapping[str, Any], lazy: Mapping[str, str | None]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` (its ``__name__``, ``namespace`` its
    ``globals()``).

    ``lazy`` maps a name to the submodule (relative to ``package``) it is imported from, or to
    None for a submodule itself. A name is imported on first access and kept in ``namespace``,
    so later accesses do not come back here. Any other name raises ``AttributeError``
    ("module 'fasttricks.x' has no attribute 'y'"). ``__dir__`` lists ``__all__`` sorted.
    """

    def __getattr__(name: str) -> Any:
        if name not in lazy:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        source = lazy[name]
        module = importlib.import_module(f"{package}.{source or name}")
        value = module if source is None else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace["__all__"])

    return __getattr__, __dir__
