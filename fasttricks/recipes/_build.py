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
from fasttricks.recipes._schema import (
    _DATA_KEYS,
    Recipe,
    RecipeError,
    load_recipe,
    recipe_to_dict,
)

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


class _CPUBFloat16(Callback):
    """bfloat16 autocast for the forward pass and loss on the CPU (fastai's ``MixedPrecision``
    autocasts on CUDA only); bfloat16 has float32's range, so no gradient scaling is needed."""

    order = 10  # where MixedPrecision runs

    def before_batch(self) -> None:
        self._autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self._autocast.__enter__()

    def after_pred(self) -> None:
        from fastai.torch_core import to_float

        self.learn.pred = to_float(self.learn.pred)

    def after_loss(self) -> None:
        self._autocast.__exit__(None, None, None)


def _has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def _precision(recipe: Mapping[str, Any]) -> str:
    """``"fp16"``, ``"bf16"``, ``"cpu_bf16"`` or ``"fp32"`` for the recipe's ``fp16`` on this
    machine: ``auto`` is fp16 on CUDA; ``true`` on the CPU warns and trains in float32;
    ``bf16`` autocasts to bfloat16 on CUDA (when the GPU supports it) and on the CPU."""
    flag = recipe["fp16"]
    cuda = torch.cuda.is_available()
    if flag == "bf16":
        if cuda:
            if not torch.cuda.is_bf16_supported():
                raise RecipeError("recipe key 'fp16': this GPU does not support bfloat16; use "
                                  "fp16: true (float16 with gradient scaling)")
            return "bf16"
        from torch.amp.autocast_mode import is_autocast_available

        if not is_autocast_available("cpu"):
            raise RecipeError("recipe key 'fp16': bf16 needs CUDA or a torch with CPU "
                              "autocast; use fp16: false on this machine")
        return "cpu_bf16"
    if flag == "auto":
        return "fp16" if cuda else "fp32"
    if flag and not cuda:
        logger.warning("fp16: true needs a CUDA GPU; training in float32 on the CPU "
                       "(fp16: bf16 autocasts to bfloat16 on the CPU)")
        return "fp32"
    return "fp16" if flag else "fp32"


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


def _drop_class(splits: DataSplits, cls: Any, fraction: float, seed: int) -> DataSplits:
    """``splits`` with ``fraction`` of class ``cls``'s training items removed."""
    from fasttricks.data import drop_class_indices

    names = [str(v) for v in splits.vocab]
    if str(cls) in names:
        index = names.index(str(cls))
    elif isinstance(cls, int) and 0 <= cls < len(names):
        index = cls
    else:
        raise RecipeError(f"recipe key 'data.drop_class': unknown class {cls!r}; classes: "
                          f"{', '.join(names[:30])}{' ...' if len(names) > 30 else ''}")
    keep = drop_class_indices(splits.train.y, index, fraction, seed=seed)
    return replace(splits, train=splits.train.take(keep))
def subset_indices(labels: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified ``fraction`` of the items (``data.subset``): each class
    keeps ``fraction`` of its items, within one (:func:`fasttricks.data.stratified_split`)."""
    from fasttricks.data import stratified_split

    return stratified_split(labels, valid_pct=1.0 - float(fraction), seed=int(seed))[0]


def build_dataloaders(
    recipe: str | Path | Mapping[str, Any], splits: DataSplits | None = None
) -> DataLoaders:
    """fastai ``DataLoaders`` (train, valid, test) for a recipe's ``data`` section.

    ``dls[2]`` is the unshuffled test loader, so ``learn.get_preds(ds_idx=2)`` predicts the test
    split. ``data.subset`` (a fraction in (0, 1]) keeps a stratified part of the training items
    (:func:`subset_indices`); ``data.drop_class`` / ``data.drop_fraction`` remove that share of one
    class's training items (:func:`fasttricks.data.drop_class_indices`, seeded by ``seed``).
    ``data.oversample`` (``true``/``max`` or a ratio) repeats training items of rare
    classes (:func:`fasttricks.data.oversample_indices`); ``data.sampler: weighted`` samples the
    training loader with per-class weights (``data.weights``, default ``sqrt_inv``) via
    :func:`fasttricks.data.weighted_dataloaders`. ``dls.splits`` holds the (oversampled) splits.
    NaN/inf features or labels are refused first, naming the item or column, unless
    ``data.impute`` fills them (:func:`fasttricks.data.checks.check_finite`).
    Image data are checked first (``data.check_images``, ``data.bad_images``:
    :func:`fasttricks.data.images.check_image_splits`), then presized and augmented
    (``data.presize``, ``data.augment``) and normalized with the timm model's own statistics or
    ImageNet's (``data.normalize``); ``data.num_workers`` / ``data.pin_memory`` set the loader
    workers (``auto``: the usable cores for images) and page-locked memory (``auto``: on CUDA).

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
    if data.get("subset") is not None and data["subset"] < 1.0:
        splits = replace(splits, train=splits.train.take(
            subset_indices(splits.train.y, data["subset"], seed=data.get("seed", 0))))
    if data.get("drop_fraction"):
        splits = _drop_class(splits, data["drop_class"], data["drop_fraction"], recipe["seed"])
    if data["oversample"]:
        from fasttricks.data import oversample_indices

        strategy = "max" if data["oversample"] is True else data["oversample"]
        idx = oversample_indices(splits.train.y, strategy=strategy, seed=recipe["seed"])
        splits = replace(splits, train=splits.train.take(idx))
    image: dict[str, Any] = {}
    if splits.kind == "image":
        from fasttricks.data.images import check_image_splits, normalization_stats

        splits = check_image_splits(splits, data.get("check_images", "auto"),
                                    data.get("bad_images", "error"))
        image = {"presize": data.get("presize"),
                 "augment": recipe_to_dict(data.get("augment") or False),
                 "stats": normalization_stats(recipe_to_dict(data.get("normalize", "auto")),
                                              recipe["model"]["name"])}
    dls = splits_dataloaders(splits, bs=data["bs"], valid_bs=data["valid_bs"],
                             num_workers=data.get("num_workers", "auto"),
                             pin_memory=data.get("pin_memory", "auto"), **image)
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
    (``auto``: ``learn.to_fp16()`` when CUDA is present; ``bf16``: ``learn.to_bf16()`` on CUDA,
    bfloat16 autocast on the CPU) and ``channels_last`` (``auto``: on for 2-D conv nets on
    CUDA). A timm model gets :func:`fasttricks.models.timm_splitter`'s three parameter groups
    (early body, late body, head) for staged unfreezing. ``learn.recipe`` holds the
    :class:`~fasttricks.recipes.Recipe`.

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
    if recipe.get("distributed", "auto") != "none":
        from fasttricks.distributed import DDPCallback  # a no-op unless torchrun started us

        callbacks.append(DDPCallback())
    extra_kwargs = {}
    if name.startswith("timm:"):
        from fasttricks.models import timm_splitter

        extra_kwargs["splitter"] = timm_splitter
    learn = Learner(dls, model, loss_func=loss, opt_func=_opt_func(recipe["optimizer"]),
                    metrics=metrics, cbs=callbacks, **extra_kwargs)
    set_learning_rate(learn, recipe)
    if _use_channels_last(recipe, model):
        learn.model = learn.model.to(memory_format=torch.channels_last)
        learn.add_cb(_ChannelsLastInput())
    precision = _precision(recipe)
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16()
    elif precision == "cpu_bf16":
        learn.add_cb(_CPUBFloat16())
    learn.recipe = recipe
    return learn
