"""Averaging the predictions of several models: pure maths on tensors and arrays, no fastai."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fasttricks._validate import check_choice

__all__ = ["AVERAGING_METHODS", "average_predictions"]

AVERAGING_METHODS: tuple[str, ...] = ("mean", "geometric", "rank")

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def lowered_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """Lower-cased ``value`` if allowed, else :func:`check_choice`'s error with the closest name."""
    return check_choice(name, value.lower() if isinstance(value, str) else value, allowed)


def to_numpy(x: ArrayLike) -> np.ndarray:
    """``x`` as a float64 numpy array (tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def _normalized_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """One weight per model, summing to 1 (equal weights when ``weights`` is None)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = to_numpy(weights).reshape(-1)
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


def _stacked(preds: Sequence[ArrayLike]) -> tuple[np.ndarray, bool]:
    """The predictions stacked along a leading model axis, and whether the first was a tensor."""
    items = list(preds)
    if not items:
        raise ValueError("preds is empty: pass at least one model's predictions")
    arrays = [to_numpy(p) for p in items]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(
            f"all predictions must have the same shape, got {[a.shape for a in arrays]}"
        )
    return np.stack(arrays), isinstance(items[0], torch.Tensor)


def _geometric(stack: np.ndarray, wb: np.ndarray, eps: float) -> np.ndarray:
    """``exp(sum_m w_m log p_m)``; rows renormalised when every input's rows sum to 1."""
    if (stack < 0).any():
        raise ValueError(
            "geometric averaging needs non-negative predictions (probabilities), found "
            f"a minimum of {stack.min():.4g}; apply softmax/sigmoid first or use method='mean'"
        )
    out = np.exp((wb * np.log(np.clip(stack, eps, None))).sum(axis=0))
    if stack.ndim == 3 and np.allclose(stack.sum(axis=-1), 1.0, atol=1e-4):
        out = out / out.sum(axis=-1, keepdims=True)
    return out


def average_predictions(
    preds: Sequence[ArrayLike],
    method: str = "mean",
    weights: Sequence[float] | None = None,
    eps: float = 1e-7,
) -> ArrayLike:
    """Combine the predictions of several models on the same items into one.

    - ``"mean"``: weighted arithmetic mean ``sum_m w_m p_m`` (the usual ensemble of probabilities).
    - ``"geometric"``: weighted geometric mean ``exp(sum_m w_m log p_m)`` (log-linear pooling,
      Genest and Zidek, Statistical Science 1986; a model that is confidently wrong is punished
      harder). Predictions must be >= 0 and are
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
    method = lowered_choice("method", method, AVERAGING_METHODS)
    stack, as_tensor = _stacked(preds)  # (models, items, ...)
    w = _normalized_weights(weights, stack.shape[0])
    wb = w.reshape((-1,) + (1,) * (stack.ndim - 1))
    if method == "mean":
        out = (wb * stack).sum(axis=0)
    elif method == "geometric":
        out = _geometric(stack, wb, eps)
    else:
        if stack.shape[1] == 0:
            raise ValueError("rank averaging needs at least one item")
        out = (wb * np.stack([_rank01(a) for a in stack])).sum(axis=0)
    if as_tensor:
        return torch.from_numpy(out).float()
    return out
