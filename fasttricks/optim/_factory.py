"""Build optimizers from registered names: a fastai ``opt_func`` or a plain torch optimizer."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .._validate import check_range
from ._config import OptimizerConfig, get_config

__all__ = ["OptFunc", "create_optimizer", "get_optimizer", "resolve_hyperparameters"]

_BETA_NAMES = ("mom", "sqr_mom")


def _check_overrides(name: str, config: OptimizerConfig, overrides: Mapping[str, Any]) -> None:
    allowed = config.allowed_overrides
    unknown = [k for k in overrides if k not in allowed]
    if not unknown:
        return
    hints = []
    for key in unknown:
        match = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        if match:
            hints.append(f"{key!r} -> {match[0]!r}?")
    msg = (f"optimizer {name!r} got unexpected hyperparameter(s) {', '.join(map(repr, unknown))};"
           f" allowed: {', '.join(allowed)}")
    if hints:
        msg += f". Did you mean {'; '.join(hints)}"
    raise TypeError(msg)


def _check_values(hypers: Mapping[str, Any]) -> None:
    for key, value in hypers.items():
        if key == "lr":
            check_range("lr", value, low=0)
        elif key in _BETA_NAMES:
            check_range(key, value, low=0, high=1, high_inclusive=False)
        elif key == "eps":
            check_range("eps", value, low=0, low_inclusive=False)
        elif key == "wd":
            check_range("wd", value, low=0)
        elif key == "k":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"k must be an integer >= 1, got {value!r}")
        elif key == "alpha":
            check_range("alpha", value, low=0, high=1)
        elif key == "compile" and not isinstance(value, bool):
            raise ValueError(f"compile must be True or False, got {value!r}")


def resolve_hyperparameters(
    name: str, lr: float | None = None, **overrides: Any
) -> tuple[OptimizerConfig, dict[str, Any]]:
    """The config for ``name`` and its hyperparameters with ``overrides`` (and ``lr``) applied.

    Raises ``KeyError`` (unknown name), ``TypeError`` (unknown override) or ``ValueError``
    (bad value, e.g. ``eps <= 0``).
    """
    config = get_config(name)
    _check_overrides(name, config, overrides)
    hypers = {**config.hyperparameters, "true_wd": config.true_wd, "bn_wd": config.bn_wd,
              **overrides}
    if lr is not None:
        hypers["lr"] = lr
    _check_values(hypers)
    return config, hypers


def torch_kwargs(optimizer: type, hypers: Mapping[str, Any]) -> dict[str, Any]:
    """Translate fastai short names to ``optimizer``'s constructor keywords via its hyper_map."""
    kwargs: dict[str, Any] = {}
    tuples: dict[str, dict[int, Any]] = {}
    for key, value in hypers.items():
        if key in ("true_wd", "bn_wd", "lr", "compile"):
            kwargs[key] = value
            continue
        target = optimizer.hyper_map[key]
        if "__" in target:
            base, idx = target.split("__")
            tuples.setdefault(base, {})[int(idx)] = value
        else:
            kwargs[target] = value
    for base, parts in tuples.items():
        kwargs[base] = tuple(parts[i] for i in sorted(parts))
    return kwargs


def _params_of(model_or_params: nn.Module | Iterable[Any] | torch.Tensor) -> Any:
    if isinstance(model_or_params, nn.Module):
        return model_or_params.parameters()
    return model_or_params


def create_optimizer(
    model_or_params: nn.Module | Iterable[Any] | torch.Tensor,
    name: str,
    lr: float,
    **overrides: Any,
) -> torch.optim.Optimizer:
    """A plain ``torch.optim.Optimizer`` for the registered ``name`` (for a PyTorch loop).

    Same maths and weight-decay rules as :func:`get_optimizer`. Overrides use fastai's short
    names (``mom``, ``sqr_mom``, ``eps``, ``wd``, ``k``, ``alpha``, ``use_gc``, ``nesterov``,
    ``true_wd``, ``bn_wd``, ``maximize``; ``compile=True`` for the Ranger family's compiled
    step). ``lr`` is required (``TypeError`` if None).

    Example::

        >>> import torch
        >>> opt = create_optimizer(torch.nn.Linear(3, 1), "ranger", lr=1e-3, wd=1e-2)
    """
    if lr is None:
        raise TypeError(f"create_optimizer needs a learning rate: lr must be a number >= 0 "
                        f"(e.g. lr=1e-3), got None for optimizer {name!r}")
    config, hypers = resolve_hyperparameters(name, lr=lr, **overrides)
    hypers.pop("lr")
    kwargs = torch_kwargs(config.optimizer, hypers)
    return config.optimizer(_params_of(model_or_params), lr=lr, **kwargs)


class OptFunc:
    """A fastai ``opt_func``: ``opt_func(params, lr, **hypers)`` returns a fastai optimizer.

    Made by :func:`get_optimizer`; picklable (so ``learn.export`` works). The result wraps the
    torch optimizer in fastai's ``OptimWrapper``, whose hyperparameters use fastai's names so
    ``fit_one_cycle``, ``fit_flat_cos``, ``lr_find``, ``freeze_to`` and discriminative learning
    rates (``slice(lo, hi)``) work. For configs with ``set_betas=False`` a scheduled ``mom``
    is accepted and ignored (the optimizer's ``momentum`` stays as configured).
    """

    def __init__(self, name: str, overrides: Mapping[str, Any] | None = None) -> None:
        get_config(name)  # TypeError for a non-string, KeyError for an unknown name
        self.name = name.strip().lower()
        self.overrides = dict(overrides or {})
        self.config, self.hypers = resolve_hyperparameters(self.name, **self.overrides)

    def __call__(self, params: Any, lr: float | slice = 1e-3, **hypers: Any) -> Any:
        """Build the optimizer for ``params`` (a list, or a list of groups from a splitter).

        ``lr`` may be a ``slice`` (spread over the groups as fastai does); ``hypers`` use the
        same short names as the overrides and win over them.
        """
        from ._fastai import FastaiOptimWrapper

        merged = {**self.overrides, **hypers}
        lr_value = lr.stop if isinstance(lr, slice) else lr
        config, resolved = resolve_hyperparameters(self.name, lr=lr_value, **merged)
        resolved.pop("lr")
        kwargs = torch_kwargs(config.optimizer, resolved)
        wrapper = FastaiOptimWrapper(params, config, lr=lr_value, **kwargs)
        if isinstance(lr, slice):
            wrapper.set_hyper("lr", lr)
        return wrapper

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        return f"get_optimizer({self.name!r}{args})"

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": self.overrides}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["overrides"])


def get_optimizer(name: str, **overrides: Any) -> OptFunc:
    """A fastai ``opt_func`` for the registered optimizer ``name``.

    Names: see :func:`list_optimizers` (adamw, ranger, ranger_nogc, rangeradabelief,
    rangeradabelief_nogc, sgd, sgd_momentum, sgd_nesterov, rmsprop). Overrides use fastai's
    short names: ``wd``, ``eps``, ``mom``, ``sqr_mom``, plus optimizer-specific ones (``k``,
    ``alpha``, ``use_gc``, ``nesterov``) and the rules ``true_wd``/``bn_wd``.

    On CPU the Ranger family's default step is a C loop of its own, built once per machine in
    about a second (see :mod:`fasttricks.optim._native`). ``compile=True`` (ranger,
    ranger_nogc, rangeradabelief, rangeradabelief_nogc) runs each step through one
    ``torch.compile``d function instead, after a compile that takes tens of seconds the first
    time for a model's parameter shapes (cached on disk); it is meant for GPUs, where the C
    loop does not run.

    Raises ``KeyError`` for an unknown name (listing the known ones and the closest match),
    ``TypeError`` for an override the optimizer does not take (listing the allowed keys) and
    ``ValueError`` for a bad value (``eps <= 0``, betas outside [0, 1), ``wd < 0``, ``k < 1``).

    Example::

        >>> opt_func = get_optimizer("ranger", eps=1e-6, wd=1e-2)
        >>> # Learner(dls, model, opt_func=opt_func).fit_flat_cos(5, 3e-3)
    """
    return OptFunc(name, overrides)
