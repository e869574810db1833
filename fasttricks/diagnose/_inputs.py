"""Validated predictions: probabilities, targets and class names as numpy arrays, and the small
array helpers every diagnostic shares (per-item losses, the confusion matrix, ranking).

Probabilities are what ``learn.get_preds()`` returns: the loss's activation already applied
(softmax rows that sum to 1 for single-label targets, sigmoid values in [0, 1] for multi-hot
targets). Losses here are always the cross-entropy of those probabilities (binary cross-entropy
per label for multi-label), whatever loss trained the model, so classes and items compare on
one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._labels import as_array, encode_labels

_EPS = 1e-12  # probabilities are clipped to [_EPS, 1 - _EPS] before taking logs
_SUM_TOL = 5e-3  # rows of half-precision softmax outputs sum to 1 within about 1e-3

@dataclass(frozen=True)
class _Preds:
    """Validated predictions: float64 probabilities, integer targets, class names."""

    probs: np.ndarray  # (n, c)
    targets: np.ndarray  # (n,) class indices, or (n, c) multi-hot 0/1
    classes: list
    multilabel: bool

    @property
    def n_classes(self) -> int:
        return self.probs.shape[1]

    def predicted(self, threshold: float = 0.5) -> np.ndarray:
        """Argmax class per item (single-label) or the multi-hot prediction at ``threshold``."""
        if self.multilabel:
            return (self.probs >= threshold).astype(np.int64)
        return self.probs.argmax(axis=1)

    def names(self, indices: np.ndarray) -> list:
        return [self.classes[int(i)] for i in indices]

    def label_sets(self, multi_hot: np.ndarray) -> list[tuple]:
        return [tuple(self.names(np.flatnonzero(row))) for row in multi_hot]


def _as_probs(probs: Any, multilabel: bool, multilabel_how: str = "2-D multi-hot targets"
              ) -> np.ndarray:
    """``probs`` as a finite float64 (items x classes) array of probabilities, or a clear error.

    ``multilabel_how`` says, in the error, how the caller is told the data is multi-label.
    """
    arr = as_array(probs)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"probs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty 2-D array (items x classes), "
                         f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"probs must be finite, got {arr[tuple(bad)]} at row {bad[0]}")
    low, high = arr.min(), arr.max()
    if multilabel:
        if low < 0 or high > 1:
            raise ValueError(
                f"probs must be probabilities in [0, 1] for multi-label data, got values in "
                f"[{low:.4g}, {high:.4g}]; these look like logits: apply the activation first "
                "(torch.sigmoid(logits)), or use learn.get_preds(), which applies the loss's "
                "activation")
        return arr
    sums = arr.sum(axis=1)
    worst = int(np.abs(sums - 1).argmax())
    if low < 0 or high > 1 or abs(sums[worst] - 1) > _SUM_TOL:
        if arr.shape[1] == 1:
            hint = ("a single column is one binary label: pass multi-hot targets of shape "
                    f"({arr.shape[0]}, 1), or two columns (1 - p, p)")
        else:
            hint = ("these look like logits or scores: apply the activation first "
                    "(torch.softmax(logits, dim=1)), or use learn.get_preds(), which applies "
                    f"the loss's activation; multi-label probabilities need {multilabel_how}")
        raise ValueError(
            f"probs must be probabilities whose rows sum to 1 for single-label data, but row "
            f"{worst} sums to {sums[worst]:.4g} (values in [{low:.4g}, {high:.4g}]); {hint}")
    return arr


def _as_preds(probs: Any, targets: Any, vocab: Sequence | None) -> _Preds:
    raw_probs = as_array(probs)
    raw_targets = as_array(targets)
    multilabel = raw_targets.ndim == 2
    if raw_targets.ndim not in (1, 2):
        raise ValueError("targets must be 1-D class labels or 2-D multi-hot rows, got shape "
                         f"{raw_targets.shape}")
    same_rows = raw_probs.ndim >= 1 and len(raw_probs) == len(raw_targets)
    if not same_rows or (multilabel and raw_probs.shape != raw_targets.shape):
        need = "the same shape" if multilabel else "the same number of items (rows)"
        raise ValueError(f"probs has shape {tuple(raw_probs.shape)} but targets has shape "
                         f"{tuple(raw_targets.shape)}; they need {need}")
    arr = _as_probs(raw_probs, multilabel)
    n_classes = arr.shape[1]
    if vocab is not None:
        vocab = list(vocab)
        if len(vocab) != n_classes:
            raise ValueError(f"vocab has {len(vocab)} names but probs has {n_classes} columns "
                             "(one per class); pass the vocab the model was trained with")
    enc = encode_labels(raw_targets, vocab=vocab, n_classes=None if vocab else n_classes)
    return _Preds(arr, enc.codes, list(enc.classes), multilabel)


def _check_k(k: int | None) -> None:
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int >= 1 or None, got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"k must be >= 1 (or None for all items), got {k}")


def _clip(probs: np.ndarray) -> np.ndarray:
    return np.clip(probs, _EPS, 1 - _EPS)


def _bce(preds: _Preds) -> np.ndarray:
    """Binary cross-entropy per item and label, (n, c)."""
    p = _clip(preds.probs)
    return -(preds.targets * np.log(p) + (1 - preds.targets) * np.log1p(-p))


def _item_losses(preds: _Preds) -> np.ndarray:
    """Cross-entropy per item: -log p(actual); multi-label: mean binary cross-entropy."""
    if preds.multilabel:
        return _bce(preds).mean(axis=1)
    p_actual = preds.probs[np.arange(len(preds.targets)), preds.targets]
    return -np.log(np.maximum(p_actual, _EPS))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    num = num.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _confusion(preds: _Preds) -> np.ndarray:
    """Confusion matrix, rows actual and columns predicted (c x c counts)."""
    c = preds.n_classes
    flat = preds.targets * c + preds.predicted()
    return np.bincount(flat, minlength=c * c).reshape(c, c)



def _top(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties keep item order."""
    order = np.argsort(-scores, kind="mergesort")
    return order if k is None else order[:k]


def _with_items(frame: pd.DataFrame, items: Sequence | None, n: int) -> pd.DataFrame:
    """Insert a column ``item`` with ``items[index]`` (a pandas object is indexed by position)."""
    if items is None:
        return frame
    if len(items) != n:
        raise ValueError(f"items has {len(items)} entries but probs has {n} rows; pass one "
                         "item per prediction, in the same order")
    rows = frame["index"].to_numpy()
    picked = list(items.iloc[rows]) if hasattr(items, "iloc") else [items[i] for i in rows]
    frame.insert(1, "item", picked)
    return frame

