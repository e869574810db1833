"""The optimizer registry: frozen :class:`OptimizerConfig` records under lower-case names."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..registry import Registry
from ._decay import WeightDecayRules
from ._ranger import Ranger, RangerAdaBelief
from ._torch_optims import SGD, AdamW, RMSprop

__all__ = [
    "OptimizerConfig",
    "config_from_torch_class",
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
        extra = [k for k in ("maximize",) if k in self.optimizer.hyper_map
                 and k not in self.hyperparameters]
        if getattr(self.optimizer, "compilable", False):
            extra.append("compile")
        return (*self.hyperparameters, "true_wd", "bn_wd", *extra)

    # the cheatsheet's dictionary spelling: cfg["optimizer"], cfg["hyperparameters"],
    # cfg["wd"]["true_wd"], cfg["wd"]["bn_wd"], cfg.get("set_betas", True)
    _KEYS = ("optimizer", "hyperparameters", "wd", "set_betas", "description")

    def __getitem__(self, key: str) -> Any:
        if key == "wd":
            return FrozenHypers({"true_wd": self.true_wd, "bn_wd": self.bn_wd})
        if key in self._KEYS:
            return getattr(self, key)
        raise KeyError(f"OptimizerConfig has no key {key!r}; keys: {', '.join(self._KEYS)}")

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]`` if ``key`` is one of :meth:`keys`, else ``default``."""
        return self[key] if key in self._KEYS else default

    def keys(self) -> tuple[str, ...]:
        """The dictionary keys: optimizer, hyperparameters, wd (true_wd, bn_wd), set_betas,
        description."""
        return self._KEYS

    def __contains__(self, key: object) -> bool:
        return key in self._KEYS


def _check_entry(name: str, config: OptimizerConfig) -> None:
    if not isinstance(config, OptimizerConfig):
        raise TypeError(f"config must be an OptimizerConfig or a torch.optim.Optimizer subclass, "
                        f"got {type(config).__name__}")


_OPTIMIZERS: Registry[OptimizerConfig] = Registry("optimizer", check=_check_entry)
_REGISTRY = _OPTIMIZERS._entries  # the live dict behind the registry (tests clean up through it)

#: Read-only live view ``name -> OptimizerConfig`` of every registered optimizer.
optimizer_config_mapping: Mapping[str, OptimizerConfig] = _OPTIMIZERS.view

# fastai's short names for torch's constructor arguments (betas is split into mom/sqr_mom)
_FASTAI_NAMES = {"momentum": "mom", "weight_decay": "wd", "eps": "eps"}


def _torch_hyper_map(cls: type) -> tuple[dict[str, str], dict[str, Any]]:
    """(hyper_map, defaults under fastai names) read from a torch optimizer's signature."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot read the signature of {cls.__name__}: {err}") from None
    names = [n for n in sig.parameters if n != "self"]
    if not names or names[0] != "params":
        raise TypeError(f"{cls.__name__}.__init__ must take `params` first, got {names}")
    hyper_map: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    for name in names[1:]:
        param = sig.parameters[name]
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or name == "lr":
            continue
        if param.default is param.empty:
            raise TypeError(f"{cls.__name__} argument {name!r} has no default; register an "
                            "OptimizerConfig with a subclass that gives it one")
        value = param.default
        if name == "betas":
            if not (isinstance(value, tuple) and len(value) == 2):
                raise TypeError(f"{cls.__name__} betas default must be a pair, got {value!r}")
            hyper_map.update({"mom": "betas__0", "sqr_mom": "betas__1"})
            defaults.update({"mom": value[0], "sqr_mom": value[1]})
            continue
        short = _FASTAI_NAMES.get(name, name)
        if name == "alpha" and "momentum" in names and "betas" not in names:
            short = "sqr_mom"  # RMSprop-like: alpha is the squared-gradient smoothing
        if name in ("foreach", "fused", "capturable", "differentiable"):
            continue  # kernel choices, not hyperparameters
        if short in hyper_map:
            raise TypeError(f"{cls.__name__}: both {hyper_map[short]!r} and {name!r} map to "
                            f"fastai's {short!r}")
        hyper_map[short] = name
        if value is not None:
            defaults[short] = value
    if "lr" not in names:
        raise TypeError(f"{cls.__name__}.__init__ takes no `lr`; fastai needs one")
    return hyper_map, defaults


def _wrap_torch_class(cls: type) -> type:
    """``cls`` with fasttricks' weight-decay rules and a ``hyper_map`` from its signature.

    Its own ``weight_decay`` is L2 on the gradient (torch's Adam, NAdam, RAdam, ...) unless the
    class is decoupled by name (AdamW); so the defaults ``true_wd=False, bn_wd=True`` leave the
    optimizer exactly as torch has it.
    """
    hyper_map, _ = _torch_hyper_map(cls)
    native_true_wd = issubclass(cls, torch.optim.AdamW)

    def __init__(self: Any, params: Any, *args: Any, true_wd: bool = native_true_wd,
                 bn_wd: bool = True, **kwargs: Any) -> None:
        cls.__init__(self, params, *args, **kwargs)
        self._init_rules(true_wd, bn_wd)

    return type(cls.__name__, (WeightDecayRules, cls), {
        "__init__": __init__, "hyper_map": hyper_map, "native_true_wd": native_true_wd,
        "__module__": __name__, "__doc__": f"torch's {cls.__name__} with fasttricks' "
                                           "weight-decay rules (true_wd, bn_wd).",
    })


def config_from_torch_class(cls: type, description: str = "") -> OptimizerConfig:
    """An :class:`OptimizerConfig` for a plain ``torch.optim.Optimizer`` subclass.

    The fastai-name map comes from the constructor's signature: ``betas`` -> ``mom``/``sqr_mom``,
    ``momentum`` -> ``mom``, ``alpha`` -> ``sqr_mom`` (RMSprop-likes: momentum and no betas),
    ``weight_decay`` -> ``wd``, ``eps`` -> ``eps``; other keywords keep their names. Defaults are
    the signature's; the rule is the class's own weight decay (``true_wd`` True only for AdamW
    subclasses, ``bn_wd=True``). Raises ``TypeError`` naming what cannot be mapped.
    """
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"expected a torch.optim.Optimizer subclass, got {cls!r}")
    _, defaults = _torch_hyper_map(cls)
    wrapped = _wrap_torch_class(cls)
    return OptimizerConfig(wrapped, defaults, true_wd=wrapped.native_true_wd, bn_wd=True,
                           set_betas="mom" in wrapped.hyper_map,
                           description=description or f"torch.optim.{cls.__name__}")


def register_optimizer(
    name: str, config: OptimizerConfig | type, overwrite: bool = False
) -> None:
    """Register ``config`` under ``name`` (stripped, lower-cased); ``overwrite`` replaces a name.

    ``config`` is an :class:`OptimizerConfig`, or a plain ``torch.optim.Optimizer`` subclass
    such as ``torch.optim.NAdam`` (see :func:`config_from_torch_class`). Raises ``ValueError`` if
    the name is taken and ``overwrite`` is False, ``TypeError`` if ``config`` is neither.

    Example::

        >>> import torch
        >>> register_optimizer("nadam", torch.optim.NAdam)
        >>> optimizer_config_mapping["nadam"]["hyperparameters"]["mom"]
        0.9
    """
    if isinstance(config, type) and not hasattr(config, "hyper_map"):
        config = config_from_torch_class(config)
    _OPTIMIZERS.register(name, config, overwrite=overwrite)  # type: ignore[arg-type]


def list_optimizers(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a glob ``pattern`` (e.g. ``"ranger*"``)."""
    return _OPTIMIZERS.names(pattern)


def get_config(name: str) -> OptimizerConfig:
    """The config registered under ``name``; ``KeyError`` lists known names and the closest.

    ``TypeError`` when ``name`` is not a string (e.g. None).
    """
    if not isinstance(name, str):
        raise TypeError(f"name (the optimizer's name) must be a string such as 'ranger', "
                        f"got {name!r}; known: {', '.join(_OPTIMIZERS.names())}")
    return _OPTIMIZERS.get(name)


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
