"""Builders: a validated recipe -> fastai DataLoaders, loss, metrics, callbacks and Learner.

:func:`build_learner` is the one place a Learner is made from a recipe; training, tuning,
k-fold, prediction and the notebooks all go through it. Every builder takes a
:class:`~fasttricks.recipes.Recipe` as it is (a path or plain mapping is validated once first).
The recipe's learning rate is handed to fastai in one place, :func:`set_learning_rate`: the
Learner's ``lr``, which ``fit_flat_cos`` / ``fit_one_cycle`` read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

# fastai patches Learner from these modules: progress bars (no_bar), fit_flat_cos /
# fit_one_cycle, and to_fp16.
import fastai.callback.fp16  # noqa: F401
import fastai.callback.progress  # noqa: F401
import fastai.callback.schedule  # noqa: F401
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner

from fasttricks.datasets import DataSplits, load_dataset
from fasttricks.metrics import get_metric
from fasttricks.recipes._schema import _DATA_KEYS, Recipe, RecipeError, load_recipe

__all__ = [
    "build_dataloaders",
    "build_learner",
    "learning_rate",
    "seed_everything",
    "set_learning_rate",
]

logger = logging.getLogger(__name__)


def _recipe(recipe: str | Path | Mapping[str, Any]) -> Recipe:
    """``recipe`` as a :class:`Recipe`: returned as is if it is one, else validated once."""
    return load_recipe(recipe)


def learning_rate(recipe: Mapping[str, Any]) -> float:
    """The recipe's learning rate: ``optimizer.lr`` (the one rule; the schedule scales it)."""
    return float(recipe["optimizer"]["lr"])


def set_learning_rate(learn: Learner, recipe: Mapping[str, Any]) -> None:
    """Hand the recipe's learning rate to fastai: ``learn.lr``, read by every ``fit_*``."""
    learn.lr = learning_rate(recipe)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (fastai's ``set_seed(seed, reproducible=True)``)."""
    from fastai.torch_core import set_seed

    set_seed(seed, reproducible=True)


# --------------------------------------------------------------------------------------------
# parts


def _opt_func(section: Mapping[str, Any]) -> Callable:
    from fasttricks.optim import get_optimizer

    overrides = {k: v for k, v in section.items() if k not in ("name", "lr")}
    return get_optimizer(section["name"], **overrides)


def _options(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A section's options as plain values (lists, not the recipe's read-only lists)."""
    from fasttricks.recipes._schema import recipe_to_dict

    return {k: recipe_to_dict(v) for k, v in entry.items() if k != "name"}


def _build_loss(section: Mapping[str, Any], splits: DataSplits) -> torch.nn.Module:
    from fasttricks.losses import get_loss

    options = _options(section)
    options.setdefault("vocab", list(splits.vocab))  # errors name the class, not its index
    try:
        return get_loss(section["name"], labels=splits.train.y, n_classes=len(splits.vocab),
                        **options)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"recipe section 'loss' ({section['name']!r}): {err}") from err


def _build_callback(entry: Mapping[str, Any]) -> Callback:
    from fasttricks.callbacks import get_callback

    name = entry["name"]
    try:
        return get_callback(name, **_options(entry))
    except (TypeError, ValueError) as err:
        raise RecipeError(f"recipe key 'callbacks.{name}': {err}") from err


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


def _checked_data(recipe: Mapping[str, Any], splits: DataSplits) -> DataSplits:
    """Refuse NaN/inf features and labels (or impute them, ``data.impute``) and a metric that
    does not fit the data's labels, before anything is built."""
    from fasttricks.data.checks import NonFiniteDataError, check_finite
    from fasttricks.recipes._schema import check_metric_fits

    for i, metric in enumerate(recipe["metrics"]):
        check_metric_fits(metric, splits.multilabel, f"metrics.{i}")
    try:
        return check_finite(splits, recipe["data"].get("impute"))
    except NonFiniteDataError as err:
        raise NonFiniteDataError(f"dataset {recipe['data']['name']!r}: {err}") from None


def _guard(recipe: Mapping[str, Any]) -> list[Callback]:
    """The NaN guard every recipe gets unless it says ``nan_guard: false`` or lists its own."""
    if not recipe.get("nan_guard", True) or any(c["name"] == "nan_guard"
                                                for c in recipe["callbacks"]):
        return []
    from fasttricks.callbacks import NaNGuardCallback

    return [NaNGuardCallback()]


# --------------------------------------------------------------------------------------------
# public


def build_dataloaders(
    recipe: str | Path | Mapping[str, Any], splits: DataSplits | None = None
) -> DataLoaders:
    """fastai ``DataLoaders`` (train, valid, test) for a recipe's ``data`` section.

    ``dls[2]`` is the unshuffled test loader, so ``learn.get_preds(ds_idx=2)`` predicts the test
    split. ``data.oversample`` (``true``/``max`` or a ratio) repeats training items of rare
    classes (:func:`fasttricks.data.oversample_indices`); ``data.sampler: weighted`` samples the
    training loader with per-class weights (``data.weights``, default ``sqrt_inv``) via
    :func:`fasttricks.data.weighted_dataloaders`. ``dls.splits`` holds the (oversampled) splits.
    NaN/inf features or labels are refused first, naming the item or column, unless
    ``data.impute`` fills them (:func:`fasttricks.data.checks.check_finite`).

    Args:
        recipe: a :class:`~fasttricks.recipes.Recipe` (or a path or mapping, validated first).
        splits: data to use instead of the recipe's dataset (k-fold passes a resplit).
    """
    from fasttricks.loaders import splits_dataloaders

    recipe = _recipe(recipe)
    data = recipe["data"]
    if splits is None:
        kwargs = {k: v for k, v in data.items() if k not in _DATA_KEYS}
        splits = load_dataset(data["name"], **kwargs)
    splits = _checked_data(recipe, splits)
    if data["oversample"]:
        from fasttricks.data import oversample_indices

        strategy = "max" if data["oversample"] is True else data["oversample"]
        idx = oversample_indices(splits.train.y, strategy=strategy, seed=recipe["seed"])
        splits = replace(splits, train=splits.train.take(idx))
    dls = splits_dataloaders(splits, bs=data["bs"], valid_bs=data["valid_bs"])
    if data["sampler"] == "weighted":
        from fasttricks.data import weighted_dataloaders

        dls = weighted_dataloaders(dls, labels=splits.train.y, method=data["weights"],
                                   seed=recipe["seed"])
    dls.splits = splits
    return dls


def build_learner(
    recipe: str | Path | Mapping[str, Any],
    splits: DataSplits | None = None,
    cbs: Sequence[Callback] = (),
) -> Learner:
    """The one place a fastai ``Learner`` is made from a recipe.

    Seeds Python, NumPy and torch from ``recipe["seed"]``, builds the DataLoaders
    (:func:`build_dataloaders`), the model (:func:`fasttricks.models.create_model`), the loss
    (:func:`fasttricks.losses.get_loss` with the training labels), the optimizer function
    (:func:`fasttricks.optim.get_optimizer`, once), metrics (:mod:`fasttricks.metrics`) and
    callbacks (with :class:`~fasttricks.callbacks.NaNGuardCallback` unless
    ``nan_guard: false``), sets ``learn.lr`` (:func:`set_learning_rate`), then applies ``fp16``
    (``auto``: ``learn.to_fp16()`` when CUDA is present) and ``channels_last`` (``auto``: on
    for 2-D conv nets on CUDA). ``learn.recipe`` holds the :class:`~fasttricks.recipes.Recipe`.

    A loss or callback option out of range raises :class:`~fasttricks.recipes.RecipeError`
    naming the recipe key.

    Args:
        recipe: a :class:`~fasttricks.recipes.Recipe` (or a path or mapping, validated first).
        splits: data to use instead of the recipe's dataset.
        cbs: extra callbacks added to the learner.
    """
    from fasttricks.models import create_model

    recipe = _recipe(recipe)
    seed_everything(recipe["seed"])
    dls = build_dataloaders(recipe, splits)
    splits = dls.splits
    model_cfg = _options(recipe["model"])
    name = recipe["model"]["name"]
    n_in, extra = _n_in(name, splits, dls)
    model = create_model(name, n_in, len(splits.vocab), **extra, **model_cfg)
    loss = _build_loss(recipe["loss"], splits)
    metrics = [get_metric(m) for m in recipe["metrics"]]
    callbacks = [_build_callback(c) for c in recipe["callbacks"]] + _guard(recipe) + list(cbs)
    extra_kwargs = {}
    if name.startswith("timm:"):
        extra_kwargs["splitter"] = _timm_splitter
    learn = Learner(dls, model, loss_func=loss, opt_func=_opt_func(recipe["optimizer"]),
                    metrics=metrics, cbs=callbacks, **extra_kwargs)
    set_learning_rate(learn, recipe)
    if _use_channels_last(recipe, model):
        learn.model = learn.model.to(memory_format=torch.channels_last)
        learn.add_cb(_ChannelsLastInput())
    if _use_fp16(recipe):
        learn.to_fp16()
    learn.recipe = recipe
    return learn
