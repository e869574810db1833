"""Loading saved ensemble members and predicting with all of them (inference for ensembles)."""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import torch
from torch import nn

from fasttricks.ensemble._average import AVERAGING_METHODS, average_predictions, lowered_choice

__all__ = ["ACTIVATIONS", "load_ensemble_member", "predict_ensemble"]

logger = logging.getLogger(__name__)

ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")


def _resolve_activation(activation: str | Callable | None) -> Callable[[torch.Tensor], Any]:
    if activation is None:
        return lambda t: t
    if callable(activation):
        return activation
    name = lowered_choice("activation", activation, ACTIVATIONS)
    if name == "softmax":
        return lambda t: torch.softmax(t.float(), dim=1 if t.ndim > 1 else 0)
    if name == "sigmoid":
        return lambda t: torch.sigmoid(t.float())
    return lambda t: t


def _load_file(path: str | PathLike, device: Any, allow_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors and plain containers only); a file
    that needs more (a whole pickled module) is unpickled only when ``allow_pickle``."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise ValueError(
                f"{path} is not a plain tensor file (state dict or fastai learn.save file) and "
                "allow_pickle=False refuses to unpickle it; pass allow_pickle=True only for "
                "files you trust"
            ) from err
    return torch.load(path, map_location=device, weights_only=False)


def load_ensemble_member(
    path: str | PathLike,
    model: nn.Module | None = None,
    device: Any = "cpu",
    *,
    allow_pickle: bool = True,
) -> nn.Module:
    """Load one saved model: a whole pickled ``nn.Module`` (as :func:`kfold_fit` writes), a
    state dict, or a fastai ``learn.save`` file (``{"model": state_dict, "opt": ...}``).

    A state dict needs ``model``, a module of the right architecture, which is copied (not
    modified). Every file is first read with ``torch.load(weights_only=True)``, which runs no
    code; only a whole pickled module needs full unpickling, done when ``allow_pickle`` (default
    True): load such files only from sources you trust, or pass ``allow_pickle=False`` to refuse
    them.
    """
    obj = _load_file(path, device, allow_pickle)
    if isinstance(obj, nn.Module):
        return obj.to(device)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if model is None:
            raise ValueError(
                f"{path} holds a state dict, not a model: pass model=<module of the same "
                "architecture> to load it"
            )
        member = copy.deepcopy(model)
        member.load_state_dict(obj)
        return member.to(device)
    raise TypeError(
        f"{path} holds a {type(obj).__name__}; expected an nn.Module, a state dict or a fastai "
        "learn.save file"
    )


def _inputs_of(batch: Any, n_inp: int) -> tuple:
    if isinstance(batch, (list, tuple)):
        return tuple(batch[:n_inp])
    return (batch,)


def _ordered_loader(dls: Any, ds_idx: int, device: Any) -> tuple[Any, Any, int]:
    """The loader to predict (in item order, last partial batch kept), the device to run on
    and how many leading batch elements are inputs."""
    loaders = getattr(dls, "loaders", None)
    dl = dls[ds_idx] if loaders is not None else dls
    if hasattr(dl, "new"):  # fastai DataLoader: fixed order, keep the last partial batch
        dl = dl.new(shuffle=False, drop_last=False)
    if device is None:
        device = getattr(dls, "device", None) or getattr(dl, "device", None) or "cpu"
    n_inp = getattr(dls, "n_inp", None) if loaders is not None else None
    if n_inp is None:
        n_inp = getattr(dl, "n_inp", 1) if hasattr(dl, "new") else 1
    return dl, device, n_inp


def _predict_member(member: nn.Module, dl: Any, device: Any, n_inp: int,
                    act: Callable[[torch.Tensor], Any]) -> torch.Tensor:
    """One model's activated outputs over the whole loader, as a float32 CPU tensor."""
    member.eval()
    outs = []
    for batch in dl:
        xs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x
                   for x in _inputs_of(batch, n_inp))
        outs.append(act(member(*xs)).float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def predict_ensemble(
    model_paths: Sequence[str | PathLike],
    dls: Any,
    *,
    ds_idx: int = 1,
    model: nn.Module | None = None,
    activation: str | Callable | None = "softmax",
    method: str = "mean",
    weights: Sequence[float] | None = None,
    device: Any = None,
    allow_pickle: bool = True,
) -> torch.Tensor:
    """Predict with every saved model and average the predictions (inference for ensembles).

    Args:
        model_paths: files saved with ``torch.save(model)`` (e.g. ``KFoldResult.model_paths``),
            or state dicts / fastai ``learn.save`` files together with ``model``.
        dls: a fastai ``DataLoaders`` (``dls[ds_idx]`` is predicted, in order, no shuffling), a
            single fastai ``DataLoader`` (e.g. ``dls.test_dl(items)``) or a torch ``DataLoader``.
            Batches are ``(inputs..., targets...)``; fastai's ``n_inp`` tells them apart, a
            torch loader's batch is taken as ``(x, y)`` (or just ``x``).
        ds_idx: which loader of a ``DataLoaders`` to predict (default 1, validation, as fastai's
            ``get_preds``).
        model: an architecture template, only needed for state-dict files.
        activation: ``"softmax"`` (default, single-label), ``"sigmoid"`` (multi-label),
            ``"none"``/None (raw outputs) or a callable applied to each model's outputs.
        method, weights: how to combine, see :func:`average_predictions` (default equal mean).
        device: where to run the models (default: the loaders' device, else CPU).
        allow_pickle: unpickle whole-module files (default True); see
            :func:`load_ensemble_member`.

    Returns:
        A float32 CPU tensor of the averaged predictions, one row per item.
    """
    paths = list(model_paths)
    if not paths:
        raise ValueError("model_paths is empty: pass at least one saved model")
    method = lowered_choice("method", method, AVERAGING_METHODS)
    act = _resolve_activation(activation)
    dl, device, n_inp = _ordered_loader(dls, ds_idx, device)
    preds = []
    for path in paths:
        member = load_ensemble_member(path, model=model, device=device,
                                      allow_pickle=allow_pickle)
        preds.append(_predict_member(member, dl, device, n_inp, act))
        logger.debug("predict_ensemble: %s -> %s", path, tuple(preds[-1].shape))
    return average_predictions(preds, method=method, weights=weights)
