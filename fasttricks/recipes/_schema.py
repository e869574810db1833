"""The recipe schema: read, override and validate a recipe once; the result is immutable.

A recipe names everything a training run needs::

    name: digits
    data: {name: digits, bs: 64}            # + the dataset's options (valid_pct, seed, ...);
                                            # sampler: weighted, weights: sqrt_inv; oversample;
                                            # num_workers: auto, pin_memory: auto; for images
                                            # presize, augment, normalize, check_images,
                                            # bad_images
    model: {name: cnn2d, channels: [32, 64, 128]}
    loss: {name: cross_entropy}             # + the loss's options (gamma, alpha, ...)
    optimizer: {name: ranger, lr: 3e-3, wd: 1e-2}
    schedule: {fit: flat_cos, epochs: 10, pct_start: 0.75, div_final: 1e5}
                                            # fit: flat_cos | one_cycle | sgdr | fine_tune
    callbacks: [{name: ema, decay: 0.999}]  # also early_stopping, grad_accum, grad_clip...
    metrics: [accuracy]
    seed: 0
    fp16: auto                              # learn.to_fp16() when CUDA is present; or bf16
    channels_last: auto                     # channels-last memory format for GPU conv nets
    retrain_at_best: false
    distributed: auto                       # ddp: one model on several processes (torchrun);
                                            # auto: ddp when launched by torchrun; none
    nan_guard: true                         # stop a diverging run (NaNGuardCallback); opt out

:func:`load_recipe` validates a recipe before anything is built: an unknown section or key
(also a loss's or a callback's option, checked against its constructor's signature) names
itself, the allowed keys and the closest match; a value of the wrong type names its dotted path
(``optimizer.lr``) and echoes the value. Nothing is constructed while validating. Numbers
written ``1e-3`` (which YAML 1.1 reads as a string) are coerced wherever a number is expected.
``data.seed`` fixes the dataset's split and is independent of the training ``seed``.
``data.impute`` (``median`` or ``mean``) fills NaN/inf feature values from the training split
instead of refusing the data. A metric that needs multi-label targets on single-label data (or
the other way round) is refused here, from the metric registry's ``multilabel`` flag.

Training keys beyond the defaults:

- ``model: {name: timm:<name>, pretrained: true}`` loads timm's hub weights (an unreachable hub
  fails at once, naming the offline way); ``model.weights: path.safetensors`` (or ``.pth``)
  loads a local file instead, re-creating the classifier for the recipe's classes.
- ``schedule.fit: sgdr``: cosine annealing with warm restarts over ``n_cycles`` cycles of
  ``cycle_len * cycle_mult**i`` epochs; ``epochs`` is then their sum (set from them).
- ``schedule.fit: fine_tune``: :func:`fasttricks.lr.fine_tune_staged` over ``epochs`` in all:
  ``freeze_epochs`` with the body frozen at ``lr``, ``freeze_to_epochs`` after
  ``freeze_to(-2)`` at ``lr / 2``, the rest unfrozen at ``slice(lr / 100, lr / 2)``.
- callbacks ``early_stopping`` (monitor, patience, min_delta), ``grad_accum`` (n_acc samples
  per step), ``grad_clip`` (max_norm, norm_type).
- ``fp16``: ``auto`` (fp16 mixed precision on CUDA), ``true``, ``false`` or ``bf16``
  (bfloat16 autocast on CUDA, and on the CPU, where torch supports it).

The result is a :class:`Recipe`: a read-only mapping (nested sections and lists are read-only
too) that the builders trust without checking it again. Change one with :func:`set_in_recipe`
or ``load_recipe(recipe, overrides)``, which validate the changed copy once.

This module needs neither fastai nor torch to import; the registries it checks names against
(datasets, models, losses, callbacks) are imported when a recipe is validated.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from fasttricks._validate import ChoiceError, closest
from fasttricks.metrics import METRICS, metric_direction

__all__ = [
    "FrozenDict",
    "FrozenList",
    "Recipe",
    "RecipeError",
    "UnknownOptionError",
    "check_metric_fits",
    "list_metrics",
    "load_recipe",
    "primary_metric",
    "recipe_to_dict",
    "save_recipe",
    "set_in_recipe",
    "yaml_problem",
]


class RecipeError(ValueError):
    """A recipe value that is out of range or inconsistent (the message names its path)."""


class UnknownOptionError(ChoiceError, TypeError):
    """An option a loss or callback does not take: a ``KeyError`` like every unknown recipe key,
    and a ``TypeError`` like the unexpected keyword argument it would become."""


# --------------------------------------------------------------------------------------------
# the validated, read-only recipe

_READ_ONLY = ("recipes are read-only: use set_in_recipe(recipe, 'a.b', value) or "
              "load_recipe(recipe, overrides) for a changed copy, or recipe_to_dict(recipe) for "
              "a plain mutable one")


def _read_only(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise TypeError(_READ_ONLY)


class FrozenDict(dict):
    """A ``dict`` that refuses every change (a recipe section).

    A ``dict`` subclass, so ``json.dumps``, ``yaml.safe_dump`` and equality with plain dicts
    work as before; copies are the object itself, pickling round-trips.
    """

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple:
        return type(self), (dict(self),)

    def __copy__(self) -> FrozenDict:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenDict:
        return self


class FrozenList(list):
    """A ``list`` that refuses every change (``callbacks``, ``metrics``, model channels...)."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = clear = extend = insert = pop = remove = reverse = sort = _read_only

    def __reduce__(self) -> tuple:
        return type(self), (list(self),)

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenList:
        return self


class Recipe(FrozenDict):
    """A validated recipe, as :func:`load_recipe` returns it: read-only, defaults filled in.

    Builders (:func:`~fasttricks.recipes.build_learner` and friends) accept it without
    validating it again; ``load_recipe(recipe)`` returns it unchanged.
    """


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return FrozenList(_freeze(v) for v in value)
    return value


for _dumper in (yaml.SafeDumper, yaml.Dumper):
    _dumper.add_representer(FrozenDict, _dumper.represent_dict)
    _dumper.add_representer(Recipe, _dumper.represent_dict)
    _dumper.add_representer(FrozenList, _dumper.represent_list)


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


def _as_distributed(value: Any) -> str:
    if value is None or value is False:
        return "none"
    if not isinstance(value, str) or value.lower() not in _DISTRIBUTED:
        raise RecipeError(f"recipe key 'distributed' must be one of {list(_DISTRIBUTED)}, got "
                          f"{value!r}")
    return value.lower()


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


def _unknown_key(section: str, key: str, allowed: Iterable[str],
                 error: type[ChoiceError] = ChoiceError) -> ChoiceError:
    allowed = list(allowed)
    where = f"section {section!r}" if section else "the recipe"
    path = f"{section}.{key}" if section else key
    msg = (f"unknown key {path!r} in {where}; allowed keys: "
           f"{', '.join(repr(a) for a in allowed)}")
    match = closest(key, allowed)
    if match is not None:
        msg += f". Did you mean {match!r}?"
    return error(msg)


def _unknown_name(path: str, value: Any, known: Iterable[str]) -> ChoiceError:
    known = list(known)
    msg = f"recipe key {path!r}: unknown name {value!r}; known: {', '.join(map(repr, known))}"
    match = closest(value, known)
    if match is not None:
        msg += f". Did you mean {match!r}?"
    return ChoiceError(msg)


def _check_positive(path: str, value: float | int, allow_zero: bool = False) -> None:
    if not math.isfinite(value):
        raise RecipeError(f"recipe key {path!r} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RecipeError(f"recipe key {path!r} must be {bound}, got {value!r}")


# --------------------------------------------------------------------------------------------
# schema

_SECTIONS = ("name", "description", "data", "model", "loss", "optimizer", "schedule",
             "callbacks", "metrics", "seed", "fp16", "channels_last", "retrain_at_best",
             "distributed", "nan_guard")
_DISTRIBUTED = ("auto", "none", "ddp")

# data keys handled by the recipe itself; the rest are the dataset loader's arguments
_IMAGE_KEYS = ("presize", "augment", "normalize", "check_images", "bad_images")
_DATA_KEYS = ("name", "bs", "valid_bs", "sampler", "weights", "oversample", "subset",
              "drop_class", "drop_fraction", "num_workers", "pin_memory", "impute",
              *_IMAGE_KEYS)
_IMPUTE = ("median", "mean")
_SCHEDULE_KEYS = ("fit", "epochs", "pct_start", "div", "div_final", "n_cycles", "cycle_len",
                  "cycle_mult", "freeze_epochs", "freeze_to_epochs")
_FITS = ("flat_cos", "one_cycle", "sgdr", "fine_tune")
_SAMPLERS = ("random", "weighted")
_PCT_START = {"flat_cos": 0.75, "one_cycle": 0.25, "sgdr": 0.75, "fine_tune": 0.75}
# integer schedule keys of sgdr and staged fine-tuning: (default, least value)
_SCHEDULE_INTS = {"n_cycles": (3, 1), "cycle_len": (1, 1), "cycle_mult": (2, 1),
                  "freeze_epochs": (1, 0), "freeze_to_epochs": (1, 0)}
_FIT_KEYS = {"flat_cos": (), "one_cycle": (), "sgdr": ("n_cycles", "cycle_len", "cycle_mult"),
             "fine_tune": ("freeze_epochs", "freeze_to_epochs")}
_FP16 = ("auto", True, False, "bf16")


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
    from fasttricks.datasets import dataset_parameters, list_datasets

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
    from fasttricks._labels import CLASS_WEIGHT_METHODS

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
    out.update(_validate_drop(data))
    subset = data.get("subset")
    if subset is not None:  # a stratified fraction of the training data; absent: all of it
        out["subset"] = _as_float("data.subset", subset)
        if not 0.0 < out["subset"] <= 1.0:
            raise RecipeError("recipe key 'data.subset' must be a fraction in (0, 1] of the "
                              f"training data (a stratified subset), got {subset!r}")
    workers = data.get("num_workers", "auto")
    if workers != "auto":
        if isinstance(workers, str) and not _NUMBER.match(workers):
            raise _type_error("data.num_workers", workers, "'auto' or an integer >= 0")
        workers = _as_int("data.num_workers", workers)
        _check_positive("data.num_workers", workers, allow_zero=True)
    out["num_workers"] = workers
    out["pin_memory"] = _as_auto_bool("data.pin_memory", data.get("pin_memory", "auto"))
    out.update(_validate_image_keys(name, data, params))
    impute = data.get("impute")
    out["impute"] = None if impute is None else _as_str("data.impute", impute)
    if out["impute"] is not None and out["impute"] not in _IMPUTE:
        raise _unknown_name("data.impute", out["impute"], _IMPUTE)
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


def _validate_drop(data: Mapping[str, Any]) -> dict:
    """``data.drop_class`` / ``data.drop_fraction``: train without a share of one class's
    items (class ablation); kept in the recipe only when something is dropped."""
    fraction = data.get("drop_fraction")
    cls = data.get("drop_class")
    if fraction is None or fraction == 0:
        return {}
    fraction = _as_float("data.drop_fraction", fraction)
    if not 0.0 <= fraction <= 1.0:
        raise RecipeError("recipe key 'data.drop_fraction' must be in [0, 1] (the share of "
                          f"data.drop_class's training items removed), got {fraction!r}")
    if cls is None:
        raise RecipeError("recipe key 'data.drop_fraction' needs 'data.drop_class', the class "
                          "(name or index) to remove items from")
    if isinstance(cls, bool) or not isinstance(cls, (str, int)) or cls == "":
        raise _type_error("data.drop_class", cls, "a class name or index")
    return {"drop_class": cls, "drop_fraction": fraction}
_NORMALIZE = ("auto", "imagenet", "none")
_BAD_IMAGES = ("error", "skip")
_AUG_CHOICES = {"mode": ("bilinear", "nearest", "bicubic"),
                "pad_mode": ("reflection", "zeros", "border")}
_AUG_UNIT = ("p_affine", "p_lighting", "max_lighting", "max_warp")


def _validate_image_keys(name: str, data: Mapping[str, Any],
                         params: Mapping[str, inspect.Parameter]) -> dict:
    """The image-only data keys (presizing, augmentation, normalization, image checks)."""
    from fasttricks.datasets import DATASETS, dataset_kind

    given = [k for k in _IMAGE_KEYS if k in data]
    if dataset_kind(name) != "image":
        if given:
            images = [n for n in DATASETS.names() if dataset_kind(n) == "image"]
            raise RecipeError(f"recipe key 'data.{given[0]}' applies to image datasets "
                              f"({', '.join(images)}), not {name!r}")
        return {}
    from fasttricks.data.images import AUGMENT_DEFAULTS

    out: dict[str, Any] = {}
    size = data.get("size", params["size"].default if "size" in params else None)
    presize = data.get("presize")
    out["presize"] = None if presize is None else _as_int("data.presize", presize)
    if out["presize"] is not None:
        _check_positive("data.presize", out["presize"])
        if size is not None and out["presize"] < _as_int("data.size", size):
            raise RecipeError(f"recipe key 'data.presize' ({out['presize']}) must be at least "
                              f"data.size ({size}): items are presized larger, then augmented "
                              "down to size")
    aug = data.get("augment", False)
    if aug is None or isinstance(aug, bool):
        out["augment"] = dict(AUGMENT_DEFAULTS) if aug else False
    elif isinstance(aug, Mapping):
        opts = {}
        for key, value in aug.items():
            path = f"data.augment.{key}"
            if key not in AUGMENT_DEFAULTS:
                raise _unknown_key("data.augment", str(key), AUGMENT_DEFAULTS)
            if key in _AUG_CHOICES:
                value = _as_str(path, value)
                if value not in _AUG_CHOICES[key]:
                    raise _unknown_name(path, value, _AUG_CHOICES[key])
                opts[key] = value
                continue
            opts[key] = _like_default(path, value, AUGMENT_DEFAULTS[key])
            if opts[key] is None:
                raise _type_error(path, value, "a value")
        opts = {**AUGMENT_DEFAULTS, **opts}
        for key in _AUG_UNIT:
            if not 0.0 <= opts[key] <= 1.0:
                raise RecipeError(f"recipe key 'data.augment.{key}' must be in [0, 1], got "
                                  f"{opts[key]!r}")
        if opts["max_rotate"] < 0:
            raise RecipeError(f"recipe key 'data.augment.max_rotate' must be >= 0 (degrees), "
                              f"got {opts['max_rotate']!r}")
        if not 0.0 < opts["min_zoom"] <= opts["max_zoom"]:
            raise RecipeError("recipe keys 'data.augment.min_zoom' and 'max_zoom' need "
                              f"0 < min_zoom <= max_zoom, got {opts['min_zoom']!r} and "
                              f"{opts['max_zoom']!r}")
        if not 0.0 < opts["min_scale"] <= 1.0:
            raise RecipeError(f"recipe key 'data.augment.min_scale' must be in (0, 1], got "
                              f"{opts['min_scale']!r}")
        out["augment"] = opts
    else:
        raise _type_error("data.augment", aug, "true, false or a mapping of aug_transforms "
                          f"options ({', '.join(AUGMENT_DEFAULTS)})")
    norm = data.get("normalize", "auto")
    if isinstance(norm, Mapping):
        extra = set(norm) - {"mean", "std"}
        if extra or set(norm) != {"mean", "std"}:
            raise RecipeError(f"recipe key 'data.normalize' as a mapping needs exactly 'mean' "
                              f"and 'std', got {sorted(map(str, norm))}")
        stats = {}
        for key in ("mean", "std"):
            values = norm[key]
            if not isinstance(values, list) or len(values) not in (1, 3):
                raise _type_error(f"data.normalize.{key}", values, "a list of 1 or 3 numbers")
            stats[key] = [_as_float(f"data.normalize.{key}.{i}", v) for i, v in
                          enumerate(values)]
        if any(v <= 0 for v in stats["std"]):
            raise RecipeError(f"recipe key 'data.normalize.std' must be > 0, got "
                              f"{stats['std']!r}")
        out["normalize"] = stats
    else:
        norm = _as_str("data.normalize", norm)
        if norm not in _NORMALIZE:
            raise _unknown_name("data.normalize", norm, _NORMALIZE)
        out["normalize"] = norm
    out["check_images"] = _as_auto_bool("data.check_images", data.get("check_images", "auto"))
    out["bad_images"] = _as_str("data.bad_images", data.get("bad_images", "error"))
    if out["bad_images"] not in _BAD_IMAGES:
        raise _unknown_name("data.bad_images", out["bad_images"], _BAD_IMAGES)
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
        return _validate_timm_model(name, model)
    params = {k: p for k, p in inspect.signature(model_factory(name)).parameters.items()
              if k not in ("n_in", "n_out", "emb_szs")}
    for key, value in model.items():
        if key == "name":
            continue
        if key not in params:
            raise _unknown_key("model", key, ["name", *params])
        out[key] = _like_default(f"model.{key}", value, params[key].default)
    return out


def _validate_timm_model(name: str, model: Mapping[str, Any]) -> dict:
    """``timm:<name>``: a name timm knows, ``pretrained`` (bool), ``weights`` (a file path);
    any other key goes to ``timm.create_model`` as it is."""
    from fasttricks.models import check_timm_name

    try:
        check_timm_name(name[len("timm:"):])
    except ChoiceError as err:
        raise ChoiceError(f"recipe key 'model.name': {err}") from None
    out: dict[str, Any] = {"name": name}
    for key, value in model.items():
        if key == "name":
            continue
        if key == "pretrained":
            out[key] = _as_bool("model.pretrained", value)
        elif key == "weights":
            out[key] = None if value is None else _as_str("model.weights", value)
        else:
            out[key] = _loose(f"model.{key}", value)
    return out
# built-in datasets whose labels are known without loading them: multi-label or not
_KNOWN_LABELS = {"digits": False, "mnist1d": False, "longtail": False, "synthetic": False,
                 "multilabel": True}


def _default_multilabel(data: Mapping[str, Any]) -> bool:
    return data["name"] == "multilabel" or (data["name"] == "image_csv"
                                            and data.get("label_delim") is not None)


def _signature_options(func: Any) -> dict[str, inspect.Parameter] | None:
    """The keyword arguments ``func`` takes, or None when it takes ``**kwargs`` (anything)."""
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if k != "self" and p.kind is not p.VAR_POSITIONAL}


def _check_options(path: str, given: Mapping[str, Any],
                   params: Mapping[str, inspect.Parameter] | None,
                   loose: Iterable[str] = ()) -> dict[str, Any]:
    """Check option names against a signature and coerce values to the defaults' types.

    ``loose`` names options that take more than their default's type (a class-weight method
    name where a float is the default): only numeric strings are coerced for those.
    """
    out: dict[str, Any] = {}
    loose = set(loose)
    for key, value in given.items():
        if key == "name":
            continue
        where = f"{path}.{key}"
        if params is None or key in loose:
            out[key] = _loose(where, value)
            continue
        if key not in params:
            raise _unknown_key(path, key, params, UnknownOptionError)
        default = params[key].default
        out[key] = _loose(where, value) if default is inspect.Parameter.empty else _like_default(
            where, value, default)
    if params is not None:
        missing = [k for k, p in params.items()
                   if p.default is inspect.Parameter.empty and k not in out]
        if missing:
            raise RecipeError(f"recipe section {path!r} needs {path}.{missing[0]} (required: "
                              f"{', '.join(missing)})")
    return out


# get_loss's own keywords besides the loss's: passed on to class_weights
_LOSS_EXTRA = {name: inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
               for name, default in (("vocab", None), ("beta", 0.999))}


def _validate_loss(raw: Mapping[str, Any], data: Mapping[str, Any]) -> dict:
    from fasttricks.losses import LOSSES

    loss = _section(raw, "loss")
    default = "bce" if _default_multilabel(data) else "cross_entropy"
    name = _as_str("loss.name", loss.get("name", default)).lower()
    if name not in LOSSES:
        raise _unknown_name("loss.name", name, LOSSES.names())
    config = LOSSES.get(name)
    params = _signature_options(config.factory)
    if params is not None:
        params = {**params, **{k: p for k, p in _LOSS_EXTRA.items() if k not in params}}
        if name == "weighted_cross_entropy":  # get_loss fills the weights from the labels
            params["weights"] = params["weights"].replace(default=None)
    out = {"name": name}
    out.update(_check_options("loss", loss, params, loose=config.weight_args))
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
    _check_optimizer_values(out)
    return out


def _check_optimizer_values(section: Mapping[str, Any]) -> None:
    """The optimizer's own value checks (``eps > 0``, betas in [0, 1)...) without building it."""
    from fasttricks.optim._factory import resolve_hyperparameters

    overrides = {k: v for k, v in section.items() if k not in ("name", "lr")}
    resolve_hyperparameters(section["name"], lr=section["lr"], **overrides)


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
    for key, (default, least) in _SCHEDULE_INTS.items():
        value = sched.get(key)
        value = default if value is None else _as_int(f"schedule.{key}", value)
        if value < least:
            raise RecipeError(f"recipe key 'schedule.{key}' must be >= {least}, got {value!r}")
        if key in _FIT_KEYS[fit]:  # checked always, kept where the fit uses it
            out[key] = value
    if fit == "sgdr":  # the cycles set the length
        from fasttricks.lr import sgdr_epochs

        out["epochs"] = sgdr_epochs(out["n_cycles"], out["cycle_len"], out["cycle_mult"])
    return out


def _as_fp16(value: Any) -> bool | str:
    if value in _FP16 and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    raise _type_error("fp16", value, "true, false or 'auto' (or 'bf16')")


def _validate_callbacks(raw: Mapping[str, Any]) -> list[dict]:
    from fasttricks.callbacks import callback_options, list_callbacks

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
        name = _as_str(f"{path}.name", entry["name"]).lower()
        if name not in list_callbacks():
            raise _unknown_name(f"{path}.name", name, list_callbacks())
        item = {"name": name}
        item.update(_check_options(f"callbacks.{name}", entry, callback_options(name)))
        _check_callback_values(name, item)
        out.append(item)
    return out


def _check_callback_values(name: str, item: Mapping[str, Any]) -> None:
    """A callback's own value checks (``patience >= 1``...), where it offers them."""
    from fasttricks.callbacks import CALLBACKS

    check = getattr(CALLBACKS.get(name), "validate_options", None)
    if check is None:
        return
    try:
        check(**{k: v for k, v in item.items() if k != "name"})
    except (TypeError, ValueError) as err:
        raise RecipeError(f"recipe key 'callbacks.{name}': {err}") from None


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
        if m not in METRICS:
            raise _unknown_name(f"metrics.{i}", m, list_metrics())
        if data["name"] in _KNOWN_LABELS:  # other datasets are checked once loaded
            check_metric_fits(m, _KNOWN_LABELS[data["name"]], f"metrics.{i}")
    return list(metrics)


def check_metric_fits(name: str, multilabel: bool, path: str = "metrics") -> None:
    """Refuse a metric made for multi-label targets on single-label data, or the reverse.

    The metric registry's ``multilabel`` flag (None: either) is compared with the data's.
    """
    wants = METRICS.get(name).multilabel
    if wants is None or wants == bool(multilabel):
        return
    kind = "multi-label" if multilabel else "single-label"
    fits = [n for n in METRICS.names() if METRICS.get(n).multilabel in (None, bool(multilabel))]
    raise RecipeError(f"recipe key {path!r}: metric {name!r} needs "
                      f"{'multi-label' if wants else 'single-label'} targets but the data are "
                      f"{kind}; metrics for {kind} data: {', '.join(map(repr, fits))}")


def _validate(raw: Mapping[str, Any], default_name: str = "recipe") -> dict:
    """Check every section of ``raw`` and fill in the defaults (the one validation)."""
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
        "fp16": _as_fp16(raw.get("fp16", "auto")),
        "channels_last": _as_auto_bool("channels_last", raw.get("channels_last", "auto")),
        "retrain_at_best": _as_bool("retrain_at_best", raw.get("retrain_at_best", False)),
        "distributed": _as_distributed(raw.get("distributed", "auto")),
        "nan_guard": _as_bool("nan_guard", raw.get("nan_guard", True)),
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
    try:
        return key, yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise RecipeError(f"override {item!r}: the value is not valid YAML "
                          f"({yaml_problem(err)})") from None


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        path = ".".join(parts[: depth + 1])
        if depth == 0 and part not in _SECTIONS:
            raise _unknown_key("", part, _SECTIONS)
        if isinstance(node, list):
            i = _list_index(node, part, path)
            if isinstance(node[i], str):  # a callback given by name only: {name: ...}
                node[i] = {"name": node[i]}
            node = node[i]
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
# public


def yaml_problem(err: Exception) -> str:
    """A YAML parse error in one line: ``line L, column C: <problem>`` (1-based)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    problem = " ".join(str(problem).split())
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def list_metrics() -> list[str]:
    """Metric names a recipe's ``metrics`` list accepts (see :mod:`fasttricks.metrics`)."""
    return METRICS.names()


def _read(source: str | Path | Mapping[str, Any]) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        raw = recipe_to_dict(source)
        return raw, str(raw.get("name") or "recipe")
    from fasttricks.recipes._builtin import resolve_recipe

    if Path(source).is_dir():
        raise IsADirectoryError(f"recipe path {str(source)!r} is a folder, not a YAML file "
                                f"(e.g. {str(Path(source) / 'digits.yaml')!r})")
    path = resolve_recipe(source)
    with open(path, encoding="utf-8") as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"recipe file {str(path)!r} is not valid YAML: "
                              f"{yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise _type_error("<recipe>", raw, "a mapping of sections")
    return raw, path.stem


def load_recipe(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> Recipe:
    """Read, override and validate a recipe once; return it as a read-only :class:`Recipe`.

    A :class:`Recipe` without overrides is returned as it is (it was validated when made).
    All overrides are applied first, then the result is validated once.

    Args:
        source: a YAML path, a built-in recipe name (``"digits"``, see
            :func:`~fasttricks.recipes.list_recipes`), a mapping, or a :class:`Recipe`.
        overrides: ``"dotted.key=value"`` strings (values parsed as YAML, so ``lr=1e-3`` and
            ``epochs=5`` work) or a mapping ``{dotted key: value}``. Callbacks are addressed by
            position or name: ``callbacks.ema.decay=0.99``.

    Raises:
        KeyError: an unknown section, key or option (lists the allowed keys and the closest
            match); unknown loss and callback options are also ``TypeError``.
        TypeError: a value of the wrong type (names its dotted path and echoes the value).
        ValueError: a value out of range (:class:`RecipeError`).

    Example:
        >>> recipe = load_recipe("digits", ["optimizer.lr=1e-3"])
        >>> recipe["optimizer"]["lr"]
        0.001
    """
    if isinstance(source, Recipe) and not overrides:
        return source
    raw, default_name = _read(source)
    if overrides:
        _apply_overrides(raw, overrides)
    return _freeze_recipe(_validate(raw, default_name))


def _freeze_recipe(validated: Mapping[str, Any]) -> Recipe:
    return Recipe({k: _freeze(v) for k, v in validated.items()})


def set_in_recipe(recipe: Mapping[str, Any], dotted_key: str, value: Any) -> Recipe:
    """A validated copy of ``recipe`` with the value at ``dotted_key`` replaced.

    Raises ``KeyError`` naming the key if the path does not exist in the schema (and the usual
    ``TypeError`` / ``ValueError`` for a bad value). ``recipe`` itself is unchanged.

    Example:
        >>> r2 = set_in_recipe(recipe, "schedule.epochs", 3)
    """
    return load_recipe(recipe, {dotted_key: value})


def recipe_to_dict(recipe: Mapping[str, Any]) -> dict:
    """A plain, mutable deep copy of a recipe (nested dicts and lists), e.g. to edit or dump."""
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


def primary_metric(recipe: Mapping[str, Any]) -> tuple[str, str]:
    """``(name, "maximize" | "minimize")``: the first recipe metric, else ``valid_loss``.

    The name is the one fastai's recorder logs; the direction is
    :func:`fasttricks.metrics.metric_direction`'s (``error_rate`` and losses are minimized).
    """
    metrics = recipe.get("metrics") or []
    name = metrics[0] if metrics else "valid_loss"
    return name, metric_direction(name)
