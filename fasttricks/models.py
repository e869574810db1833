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
  ``pretrained=True`` loads the hub weights (from the local cache when they are there) and fails
  within seconds with :class:`WeightsUnavailableError` when they cannot be reached;
  ``weights="file.safetensors"`` (or ``.pth``) loads a local file instead (:func:`load_weights`),
  re-creating the classifier head for ``n_out`` classes. :func:`timm_splitter` gives fastai
  three parameter groups (early body, late body, head) for staged unfreezing.

For conv models ``n_in`` is the number of input channels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fasttricks._validate import ChoiceError, check_choice, check_range
from fasttricks.registry import Registry

__all__ = [
    "INPUT_KINDS",
    "MODELS",
    "ModelSpec",
    "WeightsUnavailableError",
    "check_timm_name",
    "cnn1d",
    "cnn2d",
    "create_model",
    "list_models",
    "load_weights",
    "mlp",
    "model_factory",
    "model_input_kind",
    "read_state_dict",
    "register_model",
    "tabular",
    "timm_splitter",
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


# --------------------------------------------------------------------------------------------
# timm models: names, pretrained weights, a local weights file, the transfer-learning splitter


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights that cannot be had: the hub is unreachable (or offline) and nothing is
    cached. A ``FileNotFoundError``, so command lines report it as one line of bad input."""


_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROBE_TIMEOUT_S = 3.0
def check_timm_name(name: str) -> str:
    """Return ``name`` if timm knows it (an architecture, optionally with a ``.tag``), else raise.

    The error (a :class:`~fasttricks._validate.ChoiceError`, so a ``KeyError``) suggests at most
    five close names rather than listing timm's 1,200 architectures.
    """
    import difflib

    import timm

    if not isinstance(name, str) or not name:
        raise TypeError(f"timm model name must be a non-empty string, got {name!r}")
    if timm.is_model(name):
        return name
    known = timm.list_models()
    close = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.6)
    msg = f"unknown timm model {name!r}"
    if close:
        msg += f"; closest: {', '.join(map(repr, close))}"
    msg += f" (timm has {len(known)}; timm.list_models('pattern*') searches them)"
    raise ChoiceError(msg)


def _unavailable(name: str, reason: str) -> WeightsUnavailableError:
    fname = f"{name.replace('/', '_')}.pth"
    return WeightsUnavailableError(
        f"timm model {name!r}: pretrained weights are not available ({reason}). To train "
        f"offline, save them where there is internet: torch.save(timm.create_model({name!r}, "
        f"pretrained=True).state_dict(), {fname!r}); then set 'model.weights: {fname}' in the "
        "recipe (.safetensors, .pth or .bin; the classifier head is re-created for the recipe's "
        "classes), or copy the Hugging Face cache (~/.cache/huggingface) to this machine")


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in _OFFLINE_ENV)


def _weights_urls(cfg: Any) -> list[str]:
    """Where timm would download a pretrained config's weights from (first choice first)."""
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import hf_hub_url

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = ([cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None)
                 else ["model.safetensors", "pytorch_model.bin"])
        return [hf_hub_url(repo, name, revision=revision or None) for name in names]
    return [cfg.url] if getattr(cfg, "url", None) else []


def _reachable(urls: Sequence[str], timeout: float | None = None) -> str | None:
    """None if an HTTP HEAD of one of ``urls`` succeeds within ``timeout`` seconds, else why not.

    The probe runs in a daemon thread, so a resolver or a server that hangs cannot hold the
    caller longer; a proxy answering 404 counts as unreachable.
    """
    import threading
    import urllib.request

    timeout = _PROBE_TIMEOUT_S if timeout is None else timeout
    outcome: list[str | None] = []

    def probe() -> None:
        reasons = []
        for url in urls:
            try:
                request = urllib.request.Request(url, method="HEAD")
                with urllib.request.urlopen(request, timeout=timeout):
                    outcome.append(None)
                    return
            except Exception as err:  # URLError, HTTPError, timeouts, bad proxies
                reasons.append(f"{url}: {err}")
        outcome.append("; ".join(reasons) or "no download address")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout * max(len(urls), 1) + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _cached_pretrained_file(cfg: Any) -> str | None:
    """The locally cached weights file of a pretrained config (Hugging Face or torch hub)."""
    if getattr(cfg, "hf_hub_id", None):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = ([cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None)
                 else ["model.safetensors", "pytorch_model.bin"])
        for fname in names:
            found = try_to_load_from_cache(repo, fname, revision=revision or None)
            if isinstance(found, str):
                return found
    url = getattr(cfg, "url", None)
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if cached.is_file():
            return str(cached)
    return None


def _pretrained_overlay(name: str) -> dict[str, Any]:
    """timm's ``pretrained_cfg_overlay`` for ``name``: a cached file, else {} (download), else
    raise :class:`WeightsUnavailableError` at once (offline, or the hub does not answer)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        import timm

        tagged = timm.list_models(name.split(".")[0], pretrained=True)[:5]
        hint = f"; with weights: {', '.join(map(repr, tagged))}" if tagged else ""
        raise WeightsUnavailableError(f"timm model {name!r} has no pretrained weights{hint}. "
                                      "Use 'model.pretrained: false' or 'model.weights: path'")
    if cfg.file:
        return {}
    cached = _cached_pretrained_file(cfg)
    if cached is not None:
        return {"file": cached}
    if _offline():
        raise _unavailable(name, "HF_HUB_OFFLINE is set and they are not in the local cache")
    reason = _reachable(_weights_urls(cfg))
    if reason is not None:
        raise _unavailable(name, reason)
    return {}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pth``, ``.pt``, ``.bin``).

    A checkpoint that wraps the weights (``{"model": ...}`` as fastai's ``learn.save`` with the
    optimizer writes, ``{"state_dict": ...}``) is unwrapped, and a ``module.`` prefix
    (DataParallel) is removed. Torch files are read with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle and zip errors differ by torch version
            raise ValueError(f"weights file {str(path)!r} is not a readable torch state dict: "
                             f"{err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of a timm model's classifier (``get_classifier()``)."""
    head = model.get_classifier()
    for prefix, module in model.named_modules():
        if module is head:
            return {f"{prefix}.{k}" if prefix else k for k in head.state_dict()}
    return set()


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a local weights file into a timm model, keeping the model's own classifier head.

    The body must match the file exactly (a missing, unexpected or differently shaped body
    tensor is an error naming it). Classifier tensors whose shape differs from the model's (a
    1000-class ImageNet head for a 10-class recipe) are dropped, so the freshly initialised
    head for the recipe's classes stays; a first convolution with a different number of input
    channels is adapted with timm's ``adapt_input_conv`` (summed or repeated RGB filters), as
    timm does for its own pretrained weights. Returns ``model``.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = _classifier_keys(model)
    for key in [k for k in state if k in head]:
        if key not in own or state[key].shape != own[key].shape:
            del state[key]
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv") or ()
    for conv in (first,) if isinstance(first, str) else first:
        key = f"{conv}.weight"
        if key in state and key in own and state[key].ndim == 4 \
                and state[key].shape[1] != own[key].shape[1]:
            from timm.models import adapt_input_conv

            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(f"weights file {str(path)!r} does not fit this model: {k!r} has shape "
                         f"{tuple(state[k].shape)}, the model's {tuple(own[k].shape)} "
                         f"({len(wrong)} tensor(s) differ)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise ValueError(f"weights file {str(path)!r} does not fit this model: missing "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    return model


def _timm_model(name: str, n_in: int, n_out: int, pretrained: bool = False,
                weights: str | os.PathLike[str] | None = None, **kwargs: Any) -> nn.Module:
    """A timm model for ``n_in`` channels and ``n_out`` classes (see :func:`create_model`)."""
    import timm

    check_timm_name(name)
    if weights is not None:
        model = timm.create_model(name, pretrained=False, num_classes=n_out, in_chans=n_in,
                                  **kwargs)
        return load_weights(model, weights)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=n_out, in_chans=n_in,
                                 **kwargs)
    overlay = {**_pretrained_overlay(name), **dict(kwargs.pop("pretrained_cfg_overlay", None)
                                                   or {})}
    try:
        return timm.create_model(name, pretrained=True, num_classes=n_out, in_chans=n_in,
                                 pretrained_cfg_overlay=overlay or None, **kwargs)
    except OSError as err:  # connection errors, hub errors, a damaged cache
        raise _unavailable(name, f"{type(err).__name__}: {err}") from err


def _split_evenly(units: list[list[nn.Parameter]], n: int) -> list[list[nn.Parameter]]:
    """``units`` (in model order) joined into ``n`` consecutive groups, earlier ones larger."""
    n = min(n, len(units))
    size, extra = divmod(len(units), n)
    groups, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        groups.append([p for unit in units[start:stop] for p in unit])
        start = stop
    return groups


def timm_splitter(model: nn.Module, n_body_groups: int = 2) -> list[list[nn.Parameter]]:
    """fastai parameter groups for a timm model: the body in ``n_body_groups`` parts, then the head.

    The body is cut between stages, as timm's own ``group_matcher(coarse=True)`` names them
    (stem, each stage or block, the final norm), into consecutive parts of about equal numbers
    of stages, the earlier part taking the extra one; a resnet gives [stem, layer1, layer2],
    [layer3, layer4], [fc] -- fastai's three groups for a resnet. So ``learn.freeze()`` trains
    the head, ``learn.freeze_to(-2)`` the late stages and the head, ``learn.unfreeze()`` all
    (fastai's ``train_bn`` keeps norm layers of frozen groups trainable). A model without a group
    matcher is cut between its top-level children; one with a single body part gets two groups.

    Args:
        model: a timm model (it has ``get_classifier()``).
        n_body_groups: parts of the body (default 2, so three groups in all).
    """
    if isinstance(n_body_groups, bool) or not isinstance(n_body_groups, int) or n_body_groups < 1:
        raise ValueError(f"n_body_groups must be an integer >= 1, got {n_body_groups!r}")
    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    named = dict(model.named_parameters())
    units: list[list[nn.Parameter]] = []
    try:
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=True))
        units = [[named[n] for n in grouped[k] if id(named[n]) not in head_ids]
                 for k in sorted(grouped)]
    except (AttributeError, NotImplementedError, TypeError):
        units = [[p for p in child.parameters() if id(p) not in head_ids]
                 for child in model.children()]
    units = [u for u in units if u]
    seen = {id(p) for u in units for p in u}
    rest = [p for p in model.parameters() if id(p) not in seen and id(p) not in head_ids]
    if rest:  # nothing may be left out of the optimizer
        units.append(rest)
    groups = _split_evenly(units, n_body_groups) if units else []
    return [*groups, head] if head else groups


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
