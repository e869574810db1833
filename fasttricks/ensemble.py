"""Ensembles: averaged predictions, k-fold training with out-of-fold predictions, seed and
snapshot ensembles.

The averaging maths are pure functions (:func:`average_predictions`); the training functions
(:func:`kfold_fit`, :func:`seed_ensemble`, :func:`snapshot_ensemble`) go through the recipe API
(:func:`fasttricks.recipes.build_learner` / :func:`fasttricks.recipes.fit_learner`), so a fold
is trained exactly like ``python -m fasttricks.train`` would train the same recipe.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

import numpy as np
import torch
from torch import nn

from fasttricks._validate import check_choice

__all__ = [
    "AVERAGING_METHODS",
    "average_predictions",
    "predict_ensemble",
]

logger = logging.getLogger(__name__)

AVERAGING_METHODS: tuple[str, ...] = ("mean", "geometric", "rank")
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """Lower-cased ``value`` if allowed, else :func:`check_choice`'s error with the closest name."""
    return check_choice(name, value.lower() if isinstance(value, str) else value, allowed)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def _normalized_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = _to_numpy(weights).reshape(-1)
    if w.size != n:
        raise ValueError(f"weights must have one entry per prediction ({n}), got {w.size}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"weights must be finite, >= 0 and not all zero, got {w.tolist()}"
        )
    return w / w.sum()


def _rank01(p: np.ndarray) -> np.ndarray:
    """Average ranks along the item axis (axis 0), scaled to [0, 1]; ties share their rank."""
    from scipy.stats import rankdata

    n = p.shape[0]
    r = rankdata(p, axis=0, method="average")
    return (r - 1.0) / (n - 1) if n > 1 else np.full_like(p, 0.5)


def average_predictions(
    preds: Sequence[ArrayLike],
    method: str = "mean",
    weights: Sequence[float] | None = None,
    eps: float = 1e-7,
) -> ArrayLike:
    """Combine the predictions of several models on the same items into one.

    - ``"mean"``: weighted arithmetic mean ``sum_m w_m p_m`` (the usual ensemble of probabilities).
    - ``"geometric"``: weighted geometric mean ``exp(sum_m w_m log p_m)`` (log-linear pooling;
      a model that is confidently wrong is punished harder). Predictions must be >= 0 and are
      clipped to ``eps`` before the log. If every input is a 2-D matrix whose rows sum to 1
      (softmax outputs), the result is renormalised so its rows sum to 1 as well.
    - ``"rank"``: every model's scores are replaced by their ranks along the item axis (axis 0,
      per column, ties averaged, scaled to [0, 1]) before the weighted mean; the Kaggle trick for
      rank metrics such as ROC AUC when models are calibrated differently.

    Args:
        preds: a sequence of predictions of the same shape, one per model (tensors or arrays;
            a tensor/array stacked along a leading model axis works too).
        method: ``"mean"`` (default), ``"geometric"`` or ``"rank"``.
        weights: optional non-negative weight per model (normalised to sum 1); default equal.
        eps: floor for probabilities before the log in ``"geometric"`` (default 1e-7).

    Returns:
        The combined predictions, same shape as one input: a float32 ``torch.Tensor`` if the
        first input is a tensor, else a float64 numpy array.

    Example:
        >>> average_predictions([torch.tensor([0.2, 0.8]), torch.tensor([0.4, 0.6])])
        tensor([0.3000, 0.7000])
    """
    method = _check_choice("method", method, AVERAGING_METHODS)
    items = list(preds)
    if not items:
        raise ValueError("preds is empty: pass at least one model's predictions")
    as_tensor = isinstance(items[0], torch.Tensor)
    arrays = [_to_numpy(p) for p in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f"all predictions must have the same shape, got {[a.shape for a in arrays]}"
        )
    w = _normalized_weights(weights, len(arrays))
    stack = np.stack(arrays)  # (models, items, ...)
    wb = w.reshape((-1,) + (1,) * (stack.ndim - 1))
    if method == "mean":
        out = (wb * stack).sum(axis=0)
    elif method == "geometric":
        if (stack < 0).any():
            raise ValueError(
                "geometric averaging needs non-negative predictions (probabilities), found "
                f"a minimum of {stack.min():.4g}; apply softmax/sigmoid first or use method='mean'"
            )
        out = np.exp((wb * np.log(np.clip(stack, eps, None))).sum(axis=0))
        if stack.ndim == 3 and np.allclose(stack.sum(axis=-1), 1.0, atol=1e-4):
            out = out / out.sum(axis=-1, keepdims=True)
    else:
        if stack.shape[1] == 0:
            raise ValueError("rank averaging needs at least one item")
        out = (wb * np.stack([_rank01(a) for a in arrays])).sum(axis=0)
    if as_tensor:
        return torch.from_numpy(out).float()
    return out


def _resolve_activation(activation: str | Callable | None) -> Callable[[torch.Tensor], Any]:
    if activation is None:
        return lambda t: t
    if callable(activation):
        return activation
    name = _check_choice("activation", activation, ACTIVATIONS)
    if name == "softmax":
        return lambda t: torch.softmax(t.float(), dim=1 if t.ndim > 1 else 0)
    if name == "sigmoid":
        return lambda t: torch.sigmoid(t.float())
    return lambda t: t


def load_ensemble_member(
    path: str | PathLike, model: nn.Module | None = None, device: Any = "cpu"
) -> nn.Module:
    """Load one saved model: a whole pickled ``nn.Module`` (as :func:`kfold_fit` writes), a
    state dict, or a fastai ``learn.save`` file (``{"model": state_dict, "opt": ...}``).

    A state dict needs ``model``, a module of the right architecture, which is copied (not
    modified). Files are unpickled with ``weights_only=False``: load only files you trust.
    """
    obj = torch.load(path, map_location=device, weights_only=False)
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

    Returns:
        A float32 CPU tensor of the averaged predictions, one row per item.
    """
    paths = list(model_paths)
    if not paths:
        raise ValueError("model_paths is empty: pass at least one saved model")
    method = _check_choice("method", method, AVERAGING_METHODS)
    act = _resolve_activation(activation)
    loaders = getattr(dls, "loaders", None)
    dl = dls[ds_idx] if loaders is not None else dls
    if hasattr(dl, "new"):  # fastai DataLoader: fixed order, keep the last partial batch
        dl = dl.new(shuffle=False, drop_last=False)
    if device is None:
        device = getattr(dls, "device", None) or getattr(dl, "device", None) or "cpu"
    n_inp = getattr(dls, "n_inp", None) if loaders is not None else None
    if n_inp is None:
        n_inp = getattr(dl, "n_inp", 1) if hasattr(dl, "new") else 1
    preds = []
    for path in paths:
        member = load_ensemble_member(path, model=model, device=device)
        member.eval()
        outs = []
        for batch in dl:
            xs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x
                       for x in _inputs_of(batch, n_inp))
            outs.append(act(member(*xs)).float().cpu())
        preds.append(torch.cat(outs))
        logger.debug("predict_ensemble: %s -> %s", path, tuple(preds[-1].shape))
    return average_predictions(preds, method=method, weights=weights)
