"""Small CPU-friendly models for the built-in datasets; anything else comes from timm.

``create_model(name, n_in, n_out, **kwargs)`` builds:

- ``mlp``: flatten, then Linear-BatchNorm-ReLU-Dropout blocks; ``n_in`` is the number of input
  features (the product of an item's shape).
- ``cnn1d``: a 1-D conv net for MNIST-1D style signals (``(batch, n_in, length)``), with
  BatchNorm, ReLU, max-pooling and global average + max pooling before the head.
- ``cnn2d``: a small 2-D conv net for 8x8 digits (``(batch, n_in, h, w)``).
- ``tabular``: fastai's ``TabularModel`` (categorical embeddings + continuous features).
- ``timm:<name>``: any timm model, e.g. ``timm:resnet18``, built with ``pretrained=False`` by
  default (nothing is downloaded), ``in_chans=n_in`` and ``num_classes=n_out``.

For conv models ``n_in`` is the number of input channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fasttricks._validate import check_choice, check_range
from fasttricks.registry import Registry

__all__ = [
    "INPUT_KINDS",
    "MODELS",
    "ModelSpec",
    "cnn1d",
    "cnn2d",
    "create_model",
    "list_models",
    "mlp",
    "model_factory",
    "model_input_kind",
    "register_model",
    "tabular",
]


def _as_tuple(name: str, values: int | Sequence[int]) -> tuple[int, ...]:
    vals = (values,) if isinstance(values, int) else tuple(values)
    if not vals or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in vals):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return vals


def mlp(
    n_in: int,
    n_out: int,
    hidden: int | Sequence[int] = (256, 256),
    dropout: float = 0.1,
    bn: bool = True,
) -> nn.Module:
    """A multi-layer perceptron: Flatten, then ``[Linear, BatchNorm1d, ReLU, Dropout]`` blocks.

    Args:
        n_in: input features (an item is flattened first).
        n_out: outputs (classes).
        hidden: widths of the hidden layers (default ``(256, 256)``).
        dropout: dropout after each hidden block (default 0.1).
        bn: BatchNorm after each hidden Linear (default True).
    """
    hidden = _as_tuple("hidden", hidden)
    check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_in
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class _ConcatPool(nn.Module):
    """Global average and max pooling over every spatial axis, concatenated: ``2 * channels``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.cat([flat.mean(-1), flat.amax(-1)], dim=1)


def _conv_net(
    dims: int,
    n_in: int,
    n_out: int,
    channels: int | Sequence[int],
    kernel_size: int,
    pool_every: int,
    dropout: float,
) -> nn.Module:
    """The net behind :func:`cnn1d` (``dims=1``) and :func:`cnn2d` (``dims=2``); it checks the
    arguments for both."""
    channels = _as_tuple("channels", channels)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    check_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    layers: list[nn.Module] = []
    width = n_in
    for i, c in enumerate(channels):
        layers += [conv(width, c, kernel_size, padding=kernel_size // 2, bias=False), norm(c),
                   nn.ReLU(inplace=True)]
        if pool_every and (i + 1) % pool_every == 0 and i + 1 < len(channels):
            layers.append(pool(2, ceil_mode=True))
        width = c
    layers += [_ConcatPool(), nn.BatchNorm1d(2 * width)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(2 * width, n_out))
    return nn.Sequential(*layers)


def cnn1d(
    n_in: int,
    n_out: int,
    channels: int | Sequence[int] = (64, 64, 128, 128),
    kernel_size: int = 5,
    pool_every: int = 2,
    dropout: float = 0.1,
) -> nn.Module:
    """A 1-D conv net for short signals such as MNIST-1D (length 40).

    ``[Conv1d, BatchNorm1d, ReLU]`` blocks with a max-pool (stride 2) after every
    ``pool_every`` blocks, then global average + max pooling, BatchNorm, Dropout and a Linear
    head. Global pooling makes the features translation-tolerant, which MNIST-1D's random shifts
    reward (the paper's CNN without it reaches 94%).

    Args:
        n_in: input channels (1 for MNIST-1D).
        n_out: classes.
        channels: output channels of each conv block (default ``(64, 64, 128, 128)``).
        kernel_size: odd kernel size (default 5).
        pool_every: blocks between max-pools (default 2; 0 disables pooling).
        dropout: dropout before the head (default 0.1).
    """
    return _conv_net(1, n_in, n_out, channels, kernel_size, pool_every, dropout)


def cnn2d(
    n_in: int,
    n_out: int,
    channels: int | Sequence[int] = (32, 64, 128),
    kernel_size: int = 3,
    pool_every: int = 2,
    dropout: float = 0.1,
) -> nn.Module:
    """A small 2-D conv net for tiny images such as the 8x8 digits.

    ``[Conv2d, BatchNorm2d, ReLU]`` blocks, a 2x2 max-pool after every ``pool_every`` blocks,
    then global average + max pooling, BatchNorm, Dropout and a Linear head.

    Args:
        n_in: input channels (1 for digits).
        n_out: classes.
        channels: output channels of each conv block (default ``(32, 64, 128)``).
        kernel_size: odd kernel size (default 3).
        pool_every: blocks between max-pools (default 2; 0 disables pooling).
        dropout: dropout before the head (default 0.1).
    """
    return _conv_net(2, n_in, n_out, channels, kernel_size, pool_every, dropout)


def tabular(
    n_in: int,
    n_out: int,
    emb_szs: Sequence[tuple[int, int]] = (),
    layers: int | Sequence[int] = (200, 100),
    ps: float = 0.1,
    embed_p: float = 0.0,
) -> nn.Module:
    """fastai's ``TabularModel``: embeddings of the categorical columns + continuous features.

    Args:
        n_in: number of continuous features.
        n_out: classes.
        emb_szs: ``(cardinality, width)`` per categorical column (filled in by the recipe
            from the data, fastai's ``get_emb_sz`` rule).
        layers: hidden widths (default ``(200, 100)``, fastai's default).
        ps: dropout of the hidden layers (default 0.1).
        embed_p: dropout of the embeddings (default 0).
    """
    from fastai.tabular.model import TabularModel

    layers = _as_tuple("layers", layers)
    return TabularModel(list(emb_szs), n_in, n_out, layers=list(layers), ps=ps, embed_p=embed_p)


def _timm_model(name: str, n_in: int, n_out: int, **kwargs: Any) -> nn.Module:
    import timm

    kwargs.setdefault("pretrained", False)
    known = timm.list_models()
    if name not in known:
        check_choice("timm model", name, known)
    return timm.create_model(name, num_classes=n_out, in_chans=n_in, **kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: ``factory(n_in, n_out, **options)`` and what ``n_in`` means for it
    (``"features"``, ``"channels"`` or ``"tabular"``; the recipe builder derives it)."""

    factory: Callable[..., nn.Module]
    input_kind: str


INPUT_KINDS = ("features", "channels", "tabular")
MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, factory: Callable[..., nn.Module], input_kind: str, *,
                   overwrite: bool = False) -> None:
    """Make ``factory(n_in, n_out, **options)`` buildable by name (and usable in recipes)."""
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {factory!r}")
    check_choice("input kind", input_kind, INPUT_KINDS)
    if name.strip().lower().startswith("timm:"):
        raise ValueError(f"model names starting with 'timm:' are timm's, got {name!r}")
    MODELS.register(name, ModelSpec(factory, input_kind), overwrite=overwrite)


for _name, _factory, _kind in (("mlp", mlp, "features"), ("cnn1d", cnn1d, "channels"),
                               ("cnn2d", cnn2d, "channels"), ("tabular", tabular, "tabular")):
    register_model(_name, _factory, _kind)


def list_models(pattern: str | None = None) -> list[str]:
    """Built-in model names (glob ``pattern`` optional); any ``timm:<name>`` is accepted too."""
    return MODELS.names(pattern)


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        check_choice("model", name, [*list_models(), "timm:<name>"])
    return MODELS.get(name)


def model_input_kind(name: str) -> str:
    """What ``n_in`` means for ``name``: ``"features"``, ``"channels"`` or ``"tabular"``."""
    if name.startswith("timm:"):
        return "channels"
    return _spec(name).input_kind


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The builder behind ``name`` (its signature lists the accepted keyword arguments)."""
    if name.startswith("timm:"):
        return _timm_model
    return _spec(name).factory


def create_model(name: str, n_in: int, n_out: int, **kwargs: Any) -> nn.Module:
    """Build a model by name: a built-in (:func:`list_models`) or ``timm:<name>``.

    Args:
        name: ``mlp``, ``cnn1d``, ``cnn2d``, ``tabular`` or ``timm:<model name>``.
        n_in: input features (``mlp``), channels (conv nets, timm) or continuous features
            (``tabular``).
        n_out: outputs (classes).
        **kwargs: the builder's options (see each builder); for timm, ``timm.create_model``'s.

    Example:
        >>> model = create_model("cnn2d", n_in=1, n_out=10)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {name!r}")
    for label, v in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    if name.startswith("timm:"):
        return _timm_model(name[len("timm:"):], n_in, n_out, **kwargs)
    factory = model_factory(name)
    import inspect

    allowed = [p for p in inspect.signature(factory).parameters if p not in ("n_in", "n_out")]
    for key in kwargs:
        check_choice(f"{name} option", key, allowed)
    return factory(n_in, n_out, **kwargs)
