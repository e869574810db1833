"""Recipes: a YAML file -> fastai DataLoaders + Learner -> fit, evaluate, write ``runs/<name>/``.

A recipe names everything a training run needs::

    name: digits
    data: {name: digits, bs: 64}            # + the dataset's options (valid_pct, seed, ...);
                                            # sampler: weighted, weights: sqrt_inv; oversample
    model: {name: cnn2d, channels: [32, 64, 128]}
    loss: {name: cross_entropy}             # + the loss's options (gamma, alpha, ...)
    optimizer: {name: ranger, lr: 3e-3, wd: 1e-2}
    schedule: {fit: flat_cos, epochs: 10, pct_start: 0.75, div_final: 1e5}
    callbacks: [{name: ema, decay: 0.999}]
    metrics: [accuracy]
    seed: 0
    fp16: auto                              # learn.to_fp16() when CUDA is present
    channels_last: auto                     # channels-last memory format for GPU conv nets
    retrain_at_best: false

:func:`load_recipe` validates a recipe before anything trains: an unknown section or key names
itself, the allowed keys and the closest match; a value of the wrong type names its dotted path
(``optimizer.lr``) and echoes the value. Numbers written ``1e-3`` (which YAML 1.1 reads as a
string) are coerced wherever a number is expected. ``data.seed`` fixes the dataset's split and
is independent of the training ``seed``, so ``--seeds N`` varies only the training.
:func:`build_learner` is the one place a Learner is made from a config; training, tuning,
k-fold and the notebooks all go through it.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

# fastai patches Learner from these modules: progress bars (no_bar), fit_flat_cos /
# fit_one_cycle, and to_fp16.
import fastai.callback.fp16  # noqa: F401
import fastai.callback.progress  # noqa: F401
import fastai.callback.schedule  # noqa: F401
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner

from fasttricks._validate import ChoiceError, closest
from fasttricks.datasets import DataSplits, dataset_parameters, list_datasets, load_dataset

__all__ = [
    "RecipeError",
    "RunResult",
    "build_dataloaders",
    "build_learner",
    "evaluate",
    "fit_learner",
    "list_metrics",
    "load_recipe",
    "primary_metric",
    "recipe_to_dict",
    "run_recipe",
    "save_recipe",
    "set_in_recipe",
]

logger = logging.getLogger(__name__)


class RecipeError(ValueError):
    """A recipe value that is out of range or inconsistent (the message names its path)."""


# --------------------------------------------------------------------------------------------
# value coercion

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_error(path: str, value: Any, expected: str) -> TypeError:
    return TypeError(f"recipe key {path!r} must be {expected}, got {value!r} "
                     f"({type(value).__name__})")


def _as_float(path: str, value: Any) -> float:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(path, value, "a number")
    return float(value)


def _as_int(path: str, value: Any) -> int:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(path, value, "an integer")
    return value


def _as_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(path, value, "true or false")
    return value


def _as_str(path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _type_error(path, value, "a non-empty string")
    return value


def _as_auto_bool(path: str, value: Any) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    raise _type_error(path, value, "true, false or 'auto'")


def _loose(path: str, value: Any) -> Any:
    """Open-ended options (a loss's ``gamma``, an optimizer's ``eps``): numeric strings -> float."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_loose(f"{path}.{i}", v) for i, v in enumerate(value)]
    return value


def _like_default(path: str, value: Any, default: Any) -> Any:
    """Coerce an option to the type of the function default it overrides."""
    if value is None:
        return None
    if isinstance(default, bool):
        return _as_bool(path, value)
    if isinstance(default, float):
        return _as_float(path, value)
    if isinstance(default, int):
        try:
            return _as_int(path, value)
        except TypeError:
            return _as_float(path, value)
    return _loose(path, value)


def _unknown_key(section: str, key: str, allowed: Iterable[str]) -> ChoiceError:
    allowed = list(allowed)
    where = f"section {section!r}" if section else "the recipe"
    path = f"{section}.{key}" if section else key
    msg = (f"unknown key {path!r} in {where}; allowed keys: "
           f"{', '.join(repr(a) for a in allowed)}")
    match = closest(key, allowed)
    if match is not None:
        msg += f". Did you mean {match!r}?"
    return ChoiceError(msg)


def _unknown_name(path: str, value: Any, known: Iterable[str]) -> ChoiceError:
    known = list(known)
    msg = f"recipe key {path!r}: unknown name {value!r}; known: {', '.join(map(repr, known))}"
    match = closest(value, known)
    if match is not None:
        msg += f". Did you mean {match!r}?"
    return ChoiceError(msg)


def _check_positive(path: str, value: float | int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RecipeError(f"recipe key {path!r} must be {bound}, got {value!r}")


# --------------------------------------------------------------------------------------------
# schema

_SECTIONS = ("name", "description", "data", "model", "loss", "optimizer", "schedule",
             "callbacks", "metrics", "seed", "fp16", "channels_last", "retrain_at_best")

# data keys handled by the recipe itself; the rest are the dataset loader's arguments
_DATA_KEYS = ("name", "bs", "valid_bs", "sampler", "weights", "oversample")
_SCHEDULE_KEYS = ("fit", "epochs", "pct_start", "div", "div_final")
_FITS = ("flat_cos", "one_cycle")
_SAMPLERS = ("random", "weighted")
_PCT_START = {"flat_cos": 0.75, "one_cycle": 0.25}


def _section(raw: Mapping[str, Any], name: str) -> dict:
    value = raw.get(name)
    if value is None:
        return {}
    if isinstance(value, str) and name in ("model", "loss", "optimizer", "data"):
        return {"name": value}
    if not isinstance(value, Mapping):
        raise _type_error(name, value, "a mapping")
    for key in value:
        if not isinstance(key, str):
            raise _type_error(f"{name}.{key}", key, "a string key")
    return dict(value)


def _validate_data(raw: Mapping[str, Any]) -> dict:
    data = _section(raw, "data")
    if "name" not in data:
        raise RecipeError(f"recipe section 'data' needs a 'name'; known datasets: "
                          f"{', '.join(list_datasets())}")
    name = _as_str("data.name", data["name"])
    if name not in list_datasets():
        raise _unknown_name("data.name", name, list_datasets())
    params = dataset_parameters(name)
    out: dict[str, Any] = {"name": name}
    out["bs"] = _as_int("data.bs", data.get("bs", 64))
    _check_positive("data.bs", out["bs"])
    valid_bs = data.get("valid_bs")
    out["valid_bs"] = None if valid_bs is None else _as_int("data.valid_bs", valid_bs)
    if out["valid_bs"] is not None:
        _check_positive("data.valid_bs", out["valid_bs"])
    sampler = data.get("sampler", "random")
    sampler = "random" if sampler is None else _as_str("data.sampler", sampler)
    if sampler not in _SAMPLERS:
        raise _unknown_name("data.sampler", sampler, _SAMPLERS)
    out["sampler"] = sampler
    from fasttricks.losses import CLASS_WEIGHT_METHODS

    out["weights"] = _as_str("data.weights", data.get("weights", "sqrt_inv"))
    if out["weights"] not in CLASS_WEIGHT_METHODS:
        raise _unknown_name("data.weights", out["weights"], CLASS_WEIGHT_METHODS)
    over = data.get("oversample", False)
    if over is None or isinstance(over, bool) or over == "max":
        out["oversample"] = bool(over) if over != "max" else "max"
    else:
        ratio = _as_float("data.oversample", over) if not isinstance(over, str) or _NUMBER.match(
            over) else None
        if ratio is None:
            raise _type_error("data.oversample", over, "true, false, 'max' or a ratio")
        if not 0.0 < ratio <= 1.0:
            raise RecipeError("recipe key 'data.oversample' must be true, 'max' or a ratio in "
                              f"(0, 1] (rare classes grow to ratio * largest), got {over!r}")
        out["oversample"] = ratio
    for key, value in data.items():
        if key in _DATA_KEYS:
            continue
        if key not in params:
            raise _unknown_key("data", key, [*_DATA_KEYS, *params])
        default = params[key].default
        out[key] = _like_default(f"data.{key}", value, default)
    missing = [k for k, p in params.items()
               if p.default is inspect.Parameter.empty and k not in out]
    if missing:
        raise RecipeError(f"dataset {name!r} needs data.{missing[0]} (required: "
                          f"{', '.join(missing)})")
    return out


def _validate_model(raw: Mapping[str, Any]) -> dict:
    from fasttricks.models import list_models, model_factory

    model = _section(raw, "model")
    if "name" not in model:
        raise RecipeError("recipe section 'model' needs a 'name'; known models: "
                          f"{', '.join(list_models())}, or 'timm:<name>'")
    name = _as_str("model.name", model["name"])
    if not name.startswith("timm:") and name not in list_models():
        raise _unknown_name("model.name", name, [*list_models(), "timm:<name>"])
    out: dict[str, Any] = {"name": name}
    if name.startswith("timm:"):
        for key, value in model.items():
            if key != "name":
                out[key] = _loose(f"model.{key}", value)
        return out
    params = {k: p for k, p in inspect.signature(model_factory(name)).parameters.items()
              if k not in ("n_in", "n_out", "emb_szs")}
    for key, value in model.items():
        if key == "name":
            continue
        if key not in params:
            raise _unknown_key("model", key, ["name", *params])
        out[key] = _like_default(f"model.{key}", value, params[key].default)
    return out


def _default_multilabel(data: Mapping[str, Any]) -> bool:
    return data["name"] == "multilabel"


def _validate_loss(raw: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    from fasttricks.losses import list_losses

    loss = _section(raw, "loss")
    default = "bce" if _default_multilabel(data) else "cross_entropy"
    name = _as_str("loss.name", loss.get("name", default))
    if name.lower() not in list_losses():
        raise _unknown_name("loss.name", name, list_losses())
    out = {"name": name.lower()}
    for key, value in loss.items():
        if key != "name":
            out[key] = _loose(f"loss.{key}", value)
    return out


def _optimizer_keys(name: str) -> list[str]:
    """The override names ``get_optimizer(name, ...)`` takes (fastai's short names)."""
    from fasttricks.optim import optimizer_config_mapping

    return list(optimizer_config_mapping[name].allowed_overrides)


def _validate_optimizer(raw: Mapping[str, Any]) -> dict:
    opt = _section(raw, "optimizer")
    name = _as_str("optimizer.name", opt.get("name", "adamw")).lower()
    from fasttricks.optim import list_optimizers

    if name not in list_optimizers():
        raise _unknown_name("optimizer.name", name, list_optimizers())
    out: dict[str, Any] = {"name": name, "lr": _as_float("optimizer.lr", opt.get("lr", 1e-3))}
    _check_positive("optimizer.lr", out["lr"])
    allowed = _optimizer_keys(name)
    for key, value in opt.items():
        if key in ("name", "lr"):
            continue
        if key not in allowed:
            raise _unknown_key("optimizer", key, ["name", "lr", *allowed])
        out[key] = _loose(f"optimizer.{key}", value)
    _opt_func(out)  # the optimizer's own checks (bad values) before any training starts
    return out


def _validate_schedule(raw: Mapping[str, Any]) -> dict:
    sched = _section(raw, "schedule")
    for key in sched:
        if key not in _SCHEDULE_KEYS:
            raise _unknown_key("schedule", key, _SCHEDULE_KEYS)
    fit = _as_str("schedule.fit", sched.get("fit", "flat_cos"))
    if fit not in _FITS:
        raise _unknown_name("schedule.fit", fit, _FITS)
    out: dict[str, Any] = {"fit": fit, "epochs": _as_int("schedule.epochs", sched.get("epochs", 5))}
    _check_positive("schedule.epochs", out["epochs"])
    pct = sched.get("pct_start")
    out["pct_start"] = _PCT_START[fit] if pct is None else _as_float("schedule.pct_start", pct)
    if not 0.0 <= out["pct_start"] <= 1.0:
        raise RecipeError(f"recipe key 'schedule.pct_start' must be in [0, 1], got "
                          f"{out['pct_start']!r}")
    out["div"] = _as_float("schedule.div", sched.get("div", 25.0))
    out["div_final"] = _as_float("schedule.div_final", sched.get("div_final", 1e5))
    _check_positive("schedule.div", out["div"])
    _check_positive("schedule.div_final", out["div_final"])
    return out


def _validate_callbacks(raw: Mapping[str, Any]) -> list[dict]:
    cbs = raw.get("callbacks") or []
    if not isinstance(cbs, list):
        raise _type_error("callbacks", cbs, "a list of {name: ..., options} mappings")
    out = []
    for i, entry in enumerate(cbs):
        path = f"callbacks.{i}"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise _type_error(path, entry, "a mapping with a 'name'")
        item = {"name": _as_str(f"{path}.name", entry["name"]).lower()}
        for key, value in entry.items():
            if key != "name":
                item[key] = _loose(f"{path}.{key}", value)
        _build_callback(item, path)  # unknown names / options fail here, before training
        out.append(item)
    return out


def _validate_metrics(raw: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    default = ["accuracy_multi"] if _default_multilabel(data) else ["accuracy"]
    metrics = raw.get("metrics", default)
    if metrics is None:
        metrics = []
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list):
        raise _type_error("metrics", metrics, "a list of metric names")
    for i, m in enumerate(metrics):
        _as_str(f"metrics.{i}", m)
        if m not in _METRICS:
            raise _unknown_name(f"metrics.{i}", m, list_metrics())
    return list(metrics)


def _validate(raw: Mapping[str, Any], default_name: str = "recipe") -> dict:
    if not isinstance(raw, Mapping):
        raise _type_error("<recipe>", raw, "a mapping of sections")
    for key in raw:
        if key not in _SECTIONS:
            raise _unknown_key("", str(key), _SECTIONS)
    data = _validate_data(raw)
    recipe: dict[str, Any] = {
        "name": _as_str("name", raw.get("name", default_name)),
        "description": str(raw.get("description", "") or ""),
        "data": data,
        "model": _validate_model(raw),
        "loss": _validate_loss(raw, data),
        "optimizer": _validate_optimizer(raw),
        "schedule": _validate_schedule(raw),
        "callbacks": _validate_callbacks(raw),
        "metrics": _validate_metrics(raw, data),
        "seed": _as_int("seed", raw.get("seed", 0)),
        "fp16": _as_auto_bool("fp16", raw.get("fp16", "auto")),
        "channels_last": _as_auto_bool("channels_last", raw.get("channels_last", "auto")),
        "retrain_at_best": _as_bool("retrain_at_best", raw.get("retrain_at_best", False)),
    }
    if re.search(r"[/\\]|^\.+$", recipe["name"]):
        raise RecipeError(f"recipe key 'name' must be usable as a folder name, got "
                          f"{recipe['name']!r}")
    return recipe


# --------------------------------------------------------------------------------------------
# overrides


def _parse_override(item: str) -> tuple[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"an override must look like 'section.key=value', got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"an override must look like 'section.key=value', got {item!r}")
    return key, yaml.safe_load(text) if text.strip() else None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        path = ".".join(parts[: depth + 1])
        if depth == 0 and part not in _SECTIONS:
            raise _unknown_key("", part, _SECTIONS)
        if isinstance(node, list):
            node = node[_list_index(node, part, path)]
            continue
        child = node.get(part)
        if child is None:
            if depth == 0 and part in ("callbacks", "metrics"):
                child = []
            else:
                child = {}
            node[part] = child
        elif isinstance(child, str) and depth == 0 and part in ("model", "loss", "optimizer",
                                                               "data"):
            child = {"name": child}
            node[part] = child
        elif not isinstance(child, (dict, list)):
            raise KeyError(f"recipe key {path!r} is a value, not a section: cannot set "
                           f"{dotted!r}")
        node = child
    last = parts[-1]
    if len(parts) == 1 and last not in _SECTIONS:
        raise _unknown_key("", last, _SECTIONS)
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    else:
        node[last] = value


def _list_index(items: list, part: str, path: str) -> int:
    """A list position from a number or, for callbacks, a callback name."""
    if re.fullmatch(r"-?\d+", part):
        i = int(part)
        if not -len(items) <= i < len(items):
            raise KeyError(f"recipe key {path!r}: index {i} is out of range for a list of "
                           f"{len(items)}")
        return i
    names = [e.get("name") if isinstance(e, Mapping) else e for e in items]
    if part in names:
        return names.index(part)
    raise _unknown_name(path, part, [str(n) for n in names])


def _apply_overrides(raw: dict, overrides: Sequence[str] | Mapping[str, Any]) -> dict:
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs = (list(overrides.items()) if isinstance(overrides, Mapping)
             else [_parse_override(o) for o in overrides])
    for key, value in pairs:
        _set_path(raw, key, value)
    return raw


# --------------------------------------------------------------------------------------------
# public: loading


def load_recipe(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> dict:
    """Read, override and validate a recipe; return it fully resolved (defaults filled in).

    Args:
        source: a YAML path or a mapping (e.g. a recipe returned earlier).
        overrides: ``"dotted.key=value"`` strings (values parsed as YAML, so ``lr=1e-3`` and
            ``epochs=5`` work) or a mapping ``{dotted key: value}``. Callbacks are addressed by
            position or name: ``callbacks.ema.decay=0.99``.

    Raises:
        KeyError: an unknown section or key (lists the allowed keys and the closest match).
        TypeError: a value of the wrong type (names its dotted path and echoes the value).
        ValueError: a value out of range.

    Example:
        >>> recipe = load_recipe("recipes/digits.yaml", ["optimizer.lr=1e-3"])
        >>> recipe["optimizer"]["lr"]
        0.001
    """
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
        default_name = str(raw.get("name") or "recipe")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        if not isinstance(raw, dict):
            raise _type_error("<recipe>", raw, "a mapping of sections")
        default_name = path.stem
    _apply_overrides(raw, overrides)
    return _validate(raw, default_name)


def set_in_recipe(recipe: Mapping[str, Any], dotted_key: str, value: Any) -> dict:
    """A validated copy of ``recipe`` with the value at ``dotted_key`` replaced.

    Raises ``KeyError`` naming the key if the path does not exist in the schema (and the usual
    ``TypeError`` / ``ValueError`` for a bad value).

    Example:
        >>> r2 = set_in_recipe(recipe, "schedule.epochs", 3)
    """
    raw = copy.deepcopy(dict(recipe))
    _set_path(raw, dotted_key, value)
    return _validate(raw, str(raw.get("name") or "recipe"))


def recipe_to_dict(recipe: Mapping[str, Any]) -> dict:
    """A plain, mutable deep copy of a recipe (nested dicts and lists), e.g. for YAML."""
    if isinstance(recipe, Mapping):
        return {str(k): recipe_to_dict(v) for k, v in recipe.items()}
    if isinstance(recipe, (list, tuple)):
        return [recipe_to_dict(v) for v in recipe]
    return recipe


def save_recipe(recipe: Mapping[str, Any], path: str | Path, header: str = "") -> Path:
    """Write ``recipe`` as YAML to ``path`` atomically (keys in recipe order); returns the path.

    ``header`` (e.g. ``"# best trial 7\n"``) is written above the YAML.
    """
    from fasttricks._io import atomic_write_text

    text = header + yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
    return atomic_write_text(path, text)


def _resolved(recipe: str | Path | Mapping[str, Any]) -> dict:
    return load_recipe(recipe)


# --------------------------------------------------------------------------------------------
# building blocks: optimizer, loss, metrics, callbacks


def _opt_func(section: Mapping[str, Any]) -> Callable:
    from fasttricks.optim import get_optimizer

    overrides = {k: v for k, v in section.items() if k not in ("name", "lr")}
    return get_optimizer(section["name"], **overrides)


def _build_loss(section: Mapping[str, Any], splits: DataSplits) -> torch.nn.Module:
    from fasttricks.losses import get_loss

    kwargs = {k: v for k, v in section.items() if k != "name"}
    return get_loss(section["name"], labels=splits.train.y, n_classes=len(splits.vocab),
                    **kwargs)


def _balanced_accuracy() -> Any:
    from fastai.metrics import AccumMetric
    from sklearn.metrics import balanced_accuracy_score

    return AccumMetric(balanced_accuracy_score, dim_argmax=-1, to_np=True, invert_arg=True,
                       name="balanced_accuracy")


def _f1_macro() -> Any:
    from fastai.metrics import AccumMetric
    from sklearn.metrics import f1_score

    return AccumMetric(f1_score, dim_argmax=-1, to_np=True, invert_arg=True, name="f1_macro",
                       average="macro")


def _f1_multi() -> Any:
    from fastai.metrics import AccumMetric, ActivationType
    from sklearn.metrics import f1_score

    return AccumMetric(f1_score, activation=ActivationType.Sigmoid, thresh=0.5, to_np=True,
                       invert_arg=True, flatten=False, name="f1_multi", average="macro",
                       zero_division=0)


def _roc_auc_multi() -> Any:
    from fastai.metrics import AccumMetric, ActivationType
    from sklearn.metrics import roc_auc_score

    return AccumMetric(roc_auc_score, activation=ActivationType.Sigmoid, to_np=True,
                       invert_arg=True, flatten=False, name="roc_auc_multi", average="macro")


def _plain_metric(name: str) -> Callable[[], Any]:
    def make() -> Any:
        import fastai.metrics

        return getattr(fastai.metrics, name)

    return make


_METRICS: dict[str, Callable[[], Any]] = {
    "accuracy": _plain_metric("accuracy"),
    "error_rate": _plain_metric("error_rate"),
    "top_k_accuracy": _plain_metric("top_k_accuracy"),
    "balanced_accuracy": _balanced_accuracy,
    "f1_macro": _f1_macro,
    "accuracy_multi": _plain_metric("accuracy_multi"),
    "f1_multi": _f1_multi,
    "roc_auc_multi": _roc_auc_multi,
}


def list_metrics() -> list[str]:
    """Metric names a recipe's ``metrics`` list accepts (as fastai's recorder names them)."""
    return sorted(_METRICS)


def _build_callback(entry: Mapping[str, Any], path: str = "callbacks") -> Callback:
    from fasttricks.callbacks import get_callback, list_callbacks

    name = entry["name"]
    if name not in list_callbacks():
        raise _unknown_name(f"{path}.name", name, list_callbacks())
    kwargs = {k: v for k, v in entry.items() if k != "name"}
    return get_callback(name, **kwargs)


class _ChannelsLastInput(Callback):
    """Hand 4-D inputs to the model in channels-last memory format (GPU conv nets)."""

    order = 1

    def before_batch(self) -> None:
        xb = tuple(x.contiguous(memory_format=torch.channels_last)
                   if isinstance(x, torch.Tensor) and x.ndim == 4 else x for x in self.learn.xb)
        self.learn.xb = xb


def _timm_splitter(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """Two parameter groups for a timm model: the body, then the classifier head."""
    head = {id(p) for p in model.get_classifier().parameters()}
    body = [p for p in model.parameters() if id(p) not in head]
    return [body, list(model.get_classifier().parameters())]


def _seed_everything(seed: int) -> None:
    from fastai.torch_core import set_seed

    set_seed(seed, reproducible=True)


def _has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def _use_fp16(recipe: Mapping[str, Any]) -> bool:
    flag = recipe["fp16"]
    if flag == "auto":
        return torch.cuda.is_available()
    if flag and not torch.cuda.is_available():
        logger.warning("fp16: true needs a CUDA GPU; training in float32 on the CPU")
        return False
    return bool(flag)


def _use_channels_last(recipe: Mapping[str, Any], model: torch.nn.Module) -> bool:
    flag = recipe["channels_last"]
    if flag == "auto":
        return torch.cuda.is_available() and _has_conv2d(model)
    return bool(flag)


# --------------------------------------------------------------------------------------------
# public: building and running


def build_dataloaders(
    recipe: str | Path | Mapping[str, Any], splits: DataSplits | None = None
) -> DataLoaders:
    """fastai ``DataLoaders`` (train, valid, test) for a recipe's ``data`` section.

    ``dls[2]`` is the unshuffled test loader, so ``learn.get_preds(ds_idx=2)`` predicts the test
    split. ``data.oversample`` (``true``/``max`` or a ratio) repeats training items of rare
    classes (:func:`fasttricks.data.oversample_indices`); ``data.sampler: weighted`` samples the
    training loader with per-class weights (``data.weights``, default ``sqrt_inv``) via
    :func:`fasttricks.data.weighted_dataloaders`. ``dls.splits`` holds the (oversampled) splits.

    Args:
        recipe: a recipe (path or mapping).
        splits: data to use instead of the recipe's dataset (k-fold passes a resplit).
    """
    from fasttricks.loaders import splits_dataloaders

    recipe = _resolved(recipe)
    data = recipe["data"]
    if splits is None:
        kwargs = {k: v for k, v in data.items() if k not in _DATA_KEYS}
        splits = load_dataset(data["name"], **kwargs)
    if data["oversample"]:
        from fasttricks.data import oversample_indices

        strategy = "max" if data["oversample"] is True else data["oversample"]
        idx = oversample_indices(splits.train.y, strategy=strategy, seed=recipe["seed"])
        from dataclasses import replace

        splits = replace(splits, train=splits.train.take(idx))
    dls = splits_dataloaders(splits, bs=data["bs"], valid_bs=data["valid_bs"])
    if data["sampler"] == "weighted":
        from fasttricks.data import weighted_dataloaders

        dls = weighted_dataloaders(dls, labels=splits.train.y, method=data["weights"],
                                   seed=recipe["seed"])
    dls.splits = splits
    return dls


def _n_in(model_name: str, splits: DataSplits, dls: DataLoaders) -> tuple[int, dict]:
    from fasttricks.models import model_input_kind

    kind = model_input_kind(model_name)
    if splits.kind == "tabular":
        if kind != "tabular":
            raise RecipeError(f"tabular data needs model 'tabular', got {model_name!r}")
        from fastai.tabular.model import get_emb_sz

        to = dls.tabular
        return max(len(to.cont_names), 1), {"emb_szs": get_emb_sz(to)}
    if kind == "tabular":
        raise RecipeError(f"model 'tabular' needs tabular data, got a {splits.kind!r} dataset")
    if splits.kind == "image":
        return 3, {}
    shape = np.asarray(splits.train.x).shape[1:]
    if kind == "features":
        return int(np.prod(shape)), {}
    if len(shape) < 2:
        raise RecipeError(f"model {model_name!r} is a conv net and needs items shaped "
                          f"(channels, ...); this dataset's items have shape {tuple(shape)}: "
                          "use model 'mlp'")
    return int(shape[0]), {}


def build_learner(
    recipe: str | Path | Mapping[str, Any],
    splits: DataSplits | None = None,
    cbs: Sequence[Callback] = (),
) -> Learner:
    """The one place a fastai ``Learner`` is made from a recipe.

    Seeds Python, NumPy and torch from ``recipe["seed"]``, builds the DataLoaders
    (:func:`build_dataloaders`), the model (:func:`fasttricks.models.create_model`), the loss
    (:func:`fasttricks.losses.get_loss` with the training labels), the optimizer
    (:func:`fasttricks.optim.get_optimizer`), metrics and callbacks, then applies ``fp16``
    (``auto``: ``learn.to_fp16()`` when CUDA is present) and ``channels_last`` (``auto``: on
    for 2-D conv nets on CUDA). ``learn.recipe`` holds the resolved recipe.

    Args:
        recipe: a recipe (path or mapping).
        splits: data to use instead of the recipe's dataset.
        cbs: extra callbacks added to the learner.
    """
    from fasttricks.models import create_model

    recipe = _resolved(recipe)
    _seed_everything(recipe["seed"])
    dls = build_dataloaders(recipe, splits)
    splits = dls.splits
    model_cfg = dict(recipe["model"])
    name = model_cfg.pop("name")
    n_in, extra = _n_in(name, splits, dls)
    model = create_model(name, n_in, len(splits.vocab), **extra, **model_cfg)
    loss = _build_loss(recipe["loss"], splits)
    metrics = [_METRICS[m]() for m in recipe["metrics"]]
    callbacks = [_build_callback(c) for c in recipe["callbacks"]] + list(cbs)
    extra_kwargs = {}
    if name.startswith("timm:"):
        extra_kwargs["splitter"] = _timm_splitter
    learn = Learner(dls, model, loss_func=loss, opt_func=_opt_func(recipe["optimizer"]),
                    lr=recipe["optimizer"]["lr"], metrics=metrics, cbs=callbacks,
                    **extra_kwargs)
    if _use_channels_last(recipe, model):
        learn.model = learn.model.to(memory_format=torch.channels_last)
        learn.add_cb(_ChannelsLastInput())
    if _use_fp16(recipe):
        learn.to_fp16()
    learn.recipe = recipe
    return learn


def fit_learner(
    learn: Learner,
    recipe: Mapping[str, Any] | None = None,
    cbs: Sequence[Callback] = (),
    epochs: int | None = None,
) -> None:
    """Fit ``learn`` with the recipe's schedule: ``fit_flat_cos`` (default) or ``fit_one_cycle``.

    The seed is re-applied first, so a fit is reproducible whatever ran before it.

    Args:
        learn: a learner from :func:`build_learner`.
        recipe: the recipe whose schedule and lr to use (default ``learn.recipe``).
        cbs: extra callbacks for this fit only.
        epochs: override ``schedule.epochs``.
    """
    recipe = learn.recipe if recipe is None else _resolved(recipe)
    sched = recipe["schedule"]
    n_epochs = sched["epochs"] if epochs is None else int(epochs)
    if n_epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    lr = recipe["optimizer"]["lr"]
    _seed_everything(recipe["seed"])
    if sched["fit"] == "flat_cos":
        learn.fit_flat_cos(n_epochs, lr, div_final=sched["div_final"],
                           pct_start=sched["pct_start"], cbs=list(cbs))
    else:
        learn.fit_one_cycle(n_epochs, lr, div=sched["div"], div_final=sched["div_final"],
                            pct_start=sched["pct_start"], cbs=list(cbs))


def evaluate(learn: Learner, ds_idx: int = 2) -> dict[str, float]:
    """Loss and every metric of ``learn`` on loader ``ds_idx`` (default 2: the test split).

    Returns ``{"loss": ..., "<metric name>": ...}`` in the recorder's order.
    """
    with learn.no_bar(), learn.no_logging():
        values = learn.validate(ds_idx=ds_idx)
    names = ["loss"] + [m.name for m in learn.metrics]
    return {n: float(v) for n, v in zip(names, values)}


def primary_metric(recipe: Mapping[str, Any]) -> tuple[str, str]:
    """``(name, "maximize" | "minimize")``: the first recipe metric, else ``valid_loss``.

    The name is the one fastai's recorder logs; names containing ``loss`` or ``error`` are
    minimized, everything else maximized (fastai's tracker rule).
    """
    metrics = recipe.get("metrics") or []
    name = metrics[0] if metrics else "valid_loss"
    lower = "loss" in name or "error" in name
    return name, "minimize" if lower else "maximize"


@dataclass
class RunResult:
    """What :func:`run_recipe` returns.

    Attributes:
        learn: the trained learner.
        valid, test: ``{"loss": ..., metric: ...}`` on the validation and test splits.
        history: one row per epoch (epoch, train_loss, valid_loss, metrics, seconds, timestamp).
        out_dir: the run folder written, or None.
        extra: anything else (e.g. ``save_best`` results when ``retrain_at_best`` is on).
    """

    learn: Learner
    valid: dict
    test: dict
    history: pd.DataFrame
    out_dir: Path | None = None
    extra: dict = field(default_factory=dict)


class _EpochClock(Callback):
    """Record when each epoch ended (UTC) and how long it took."""

    order = 60

    def before_fit(self) -> None:
        self.stamps: list[tuple[float, str]] = []

    def before_epoch(self) -> None:
        self._t0 = time.perf_counter()

    def after_epoch(self) -> None:
        self.stamps.append((time.perf_counter() - self._t0,
                            datetime.now(timezone.utc).isoformat(timespec="seconds")))


def _history(learn: Learner, clock: _EpochClock) -> pd.DataFrame:
    names = [n for n in learn.recorder.metric_names[1:] if n != "time"]
    rows = []
    for i, values in enumerate(learn.recorder.values):
        row: dict[str, Any] = {"epoch": i}
        row.update({n: (None if v is None else float(v)) for n, v in zip(names, values)})
        if i < len(clock.stamps):
            row["seconds"] = round(clock.stamps[i][0], 4)
            row["timestamp"] = clock.stamps[i][1]
        rows.append(row)
    return pd.DataFrame(rows)


def _fit_and_score(learn: Learner, recipe: dict, cbs: Sequence[Callback], progress: bool,
                   epochs: int | None = None) -> tuple[dict, dict, pd.DataFrame]:
    clock = _EpochClock()
    with ExitStack() as stack:
        if not progress:
            stack.enter_context(learn.no_bar())
            stack.enter_context(learn.no_logging())
        fit_learner(learn, recipe, cbs=[clock, *cbs], epochs=epochs)
    history = _history(learn, clock)  # before validate(), which resets the recorder
    return evaluate(learn, 1), evaluate(learn, 2), history


def run_recipe(
    recipe: str | Path | Mapping[str, Any],
    out_dir: str | Path | None = None,
    cbs: Sequence[Callback] = (),
    progress: bool = True,
) -> RunResult:
    """Build, fit and evaluate a recipe; write ``out_dir/<name>/`` when ``out_dir`` is given.

    With ``retrain_at_best: true`` the recipe first trains with
    :class:`~fasttricks.callbacks.SaveBestCallback` on the primary metric, then retrains from
    scratch for ``best_epoch + 1`` epochs (the cheatsheet's save-best vs retrain comparison);
    the returned result is the retrained run, with the save-best run's numbers in
    ``extra["save_best"]``.

    The run folder holds ``recipe.yaml`` (the resolved recipe), ``metrics.csv`` (one row per
    epoch, with a timestamp), ``model.pth`` (the final ``state_dict``), ``curves.png`` (losses
    and the primary metric per epoch) and ``summary.json``; every file is written atomically.

    Args:
        recipe: a recipe (path or mapping).
        out_dir: parent folder of the run folder (e.g. ``"runs"``); None or False writes nothing.
        cbs: extra callbacks for the fit (e.g. a tuner's pruning callback).
        progress: show fastai's progress bar and epoch table (default True).
    """
    recipe = _resolved(recipe)
    extra: dict[str, Any] = {}
    if recipe["retrain_at_best"]:
        from fasttricks.callbacks import SaveBestCallback

        metric, _ = primary_metric(recipe)
        saver = SaveBestCallback(monitor=metric, fname="best")
        learn = build_learner(recipe)
        with tempfile.TemporaryDirectory(prefix="fasttricks-best-") as tmp:
            path, model_dir = learn.path, learn.model_dir
            learn.path, learn.model_dir = Path(tmp), "."
            try:
                valid, test, history = _fit_and_score(learn, recipe, [saver, *cbs], progress)
            finally:
                learn.path, learn.model_dir = path, model_dir
        best_epoch = saver.best_epoch if saver.best_epoch is not None else len(history) - 1
        extra["save_best"] = {"best_epoch": int(best_epoch), "best_value": saver.best_value,
                              "monitor": metric, "valid": valid, "test": test,
                              "history": history.to_dict(orient="records")}
        learn = build_learner(recipe)
        valid, test, history = _fit_and_score(learn, recipe, cbs, progress, epochs=best_epoch + 1)
        extra["retrain"] = {"epochs": int(best_epoch + 1), "valid": valid, "test": test}
    else:
        learn = build_learner(recipe)
        valid, test, history = _fit_and_score(learn, recipe, cbs, progress)
    result = RunResult(learn=learn, valid=valid, test=test, history=history, extra=extra)
    if out_dir:
        from fasttricks.train import write_run

        result.out_dir = write_run(result, Path(out_dir) / recipe["name"])
    return result
