"""The optimizer registry: frozen :class:`OptimizerConfig` records under lower-case names."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from .._validate import check_choice
from ._ranger import Ranger, RangerAdaBelief
from ._torch_optims import SGD, AdamW, RMSprop

__all__ = [
    "OptimizerConfig",
    "get_config",
    "list_optimizers",
    "optimizer_config_mapping",
    "register_optimizer",
]


class FrozenHypers(Mapping[str, Any]):
    """A read-only, picklable, hashable mapping of hyperparameter defaults."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenHypers is read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenHypers, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenHypers({self._data!r})"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """One registered optimizer: its class, default hyperparameters and weight-decay rules.

    Args:
        optimizer: a ``torch.optim.Optimizer`` subclass with a ``hyper_map`` class attribute that
            maps fastai's short names (``mom``, ``sqr_mom``, ``eps``, ``wd``, ...) to its own
            parameter-group keys (``betas__0`` is the first element of ``betas``), and that
            accepts ``true_wd`` and ``bn_wd`` keywords (all classes in ``fasttricks.optim`` do).
        hyperparameters: default values under fastai's short names; its keys (plus ``true_wd``,
            ``bn_wd``) are the overrides ``get_optimizer`` accepts.
        true_wd: decoupled weight decay (``p *= 1 - lr*wd``) if True, L2 on the gradient if False.
        bn_wd: whether 1-D parameters (biases, norm weights) get weight decay.
        set_betas: whether fastai's schedulers may set momentum (``fit_one_cycle``'s ``moms``).
            False for SGD and RMSprop: their momentum stays what the config says.
        description: one line for listings.
    """

    optimizer: type
    hyperparameters: Mapping[str, Any] = dataclasses.field(default_factory=FrozenHypers)
    true_wd: bool = True
    bn_wd: bool = False
    set_betas: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.optimizer, type):
            raise TypeError(f"optimizer must be a class, got {self.optimizer!r}")
        hyper_map = getattr(self.optimizer, "hyper_map", None)
        if not isinstance(hyper_map, Mapping):
            raise TypeError(
                f"{self.optimizer.__name__} needs a `hyper_map` class attribute mapping fastai "
                "names to its parameter-group keys"
            )
        unknown = sorted(set(self.hyperparameters) - set(hyper_map))
        if unknown:
            raise TypeError(
                f"hyperparameters {unknown} are not known to {self.optimizer.__name__}; "
                f"allowed: {sorted(hyper_map)}"
            )
        object.__setattr__(self, "hyperparameters", FrozenHypers(self.hyperparameters))

    @property
    def allowed_overrides(self) -> tuple[str, ...]:
        """Keyword overrides accepted by ``get_optimizer``/``create_optimizer``."""
        return (*self.hyperparameters, "true_wd", "bn_wd")


_REGISTRY: dict[str, OptimizerConfig] = {}

#: Read-only live view ``name -> OptimizerConfig`` of every registered optimizer.
optimizer_config_mapping: Mapping[str, OptimizerConfig] = MappingProxyType(_REGISTRY)


def register_optimizer(name: str, config: OptimizerConfig, overwrite: bool = False) -> None:
    """Register ``config`` under ``name`` (lower-cased); ``overwrite`` replaces an existing name.

    Raises ``ValueError`` if the name is taken and ``overwrite`` is False, ``TypeError`` if
    ``config`` is not an :class:`OptimizerConfig`.
    """
    if not isinstance(config, OptimizerConfig):
        raise TypeError(f"config must be an OptimizerConfig, got {type(config).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"optimizer {key!r} is already registered; pass overwrite=True")
    _REGISTRY[key] = config


def list_optimizers(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a glob ``pattern`` (e.g. ``"ranger*"``)."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]


def get_config(name: str) -> OptimizerConfig:
    """The config registered under ``name``; ``KeyError`` lists known names and the closest."""
    key = name.lower() if isinstance(name, str) else name
    check_choice("optimizer", key, sorted(_REGISTRY))
    return _REGISTRY[key]


def _register_defaults() -> None:
    adam_like = {"mom": 0.9, "sqr_mom": 0.99, "eps": 1e-5, "wd": 0.01}
    ranger = {"mom": 0.95, "sqr_mom": 0.99, "eps": 1e-6, "wd": 0.01, "k": 6, "alpha": 0.5}
    belief = {"mom": 0.95, "sqr_mom": 0.999, "eps": 1e-8, "wd": 0.01, "k": 6, "alpha": 0.5}
    configs = {
        "adamw": OptimizerConfig(AdamW, adam_like, true_wd=True, bn_wd=True,
                                 description="AdamW (torch, foreach/fused)"),
        "ranger": OptimizerConfig(Ranger, {**ranger, "use_gc": True},
                                  description="RAdam + Lookahead + gradient centralization"),
        "ranger_nogc": OptimizerConfig(Ranger, {**ranger, "use_gc": False},
                                       description="RAdam + Lookahead"),
        "rangeradabelief": OptimizerConfig(
            RangerAdaBelief, {**belief, "use_gc": True},
            description="Ranger with AdaBelief's second moment"),
        "rangeradabelief_nogc": OptimizerConfig(
            RangerAdaBelief, {**belief, "use_gc": False},
            description="Ranger with AdaBelief's second moment, no gradient centralization"),
        "sgd": OptimizerConfig(SGD, {"mom": 0.0, "wd": 0.0}, set_betas=False,
                               description="plain SGD"),
        "sgd_momentum": OptimizerConfig(SGD, {"mom": 0.9, "wd": 0.0}, set_betas=False,
                                        description="SGD with momentum 0.9"),
        "sgd_nesterov": OptimizerConfig(SGD, {"mom": 0.9, "wd": 0.0, "nesterov": True},
                                        set_betas=False,
                                        description="SGD with Nesterov momentum 0.9"),
        "rmsprop": OptimizerConfig(RMSprop, {"mom": 0.9, "sqr_mom": 0.99, "eps": 1e-8,
                                             "wd": 0.0},
                                   set_betas=False, description="RMSprop with momentum 0.9"),
    }
    for name, config in configs.items():
        register_optimizer(name, config)


_register_defaults()
