"""Turn user labels (ints, strings, multi-hot rows) into class indices and per-class counts.

Shared by `fasttricks.losses` (class weights) and `fasttricks.data` (oversampling, weighted
sampling), so both read labels the same way. Private: the public entry points validate and
document the accepted forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fasttricks import _validate


@dataclass(frozen=True)
class EncodedLabels:
    """Labels as class indices.

    `codes` is a 1-D int array (single-label) or a 2-D 0/1 int array (multi-label, one row per
    item); `classes` names the class of each index; `multilabel` says which form `codes` has.
    """

    codes: np.ndarray
    classes: list
    multilabel: bool

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> np.ndarray:
        """Items per class (positives per class for multi-label), ordered like `classes`."""
        if self.multilabel:
            return self.codes.sum(axis=0).astype(np.int64)
        return np.bincount(self.codes, minlength=self.n_classes).astype(np.int64)


def closest(value: Any, options: Sequence) -> str:
    """A ' (did you mean ...?)' hint naming the option closest to `value`, or ''."""
    match = _validate.closest(value, options)
    return f" (did you mean {match!r}?)" if match is not None else ""


def _is_int_like(values: np.ndarray) -> bool:
    if values.dtype.kind in "iub":
        return True
    if values.dtype.kind == "f":
        return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
    return False


def _all_ints(options: Sequence) -> bool:
    return all(isinstance(o, (int, np.integer)) and not isinstance(o, bool) for o in options)


def as_array(labels: Any) -> np.ndarray:
    """`labels` (list, tuple, numpy, torch, pandas, fastai `L`) as a numpy array."""
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        return labels.detach().cpu().numpy()
    if hasattr(labels, "to_numpy"):
        return labels.to_numpy()
    if isinstance(labels, np.ndarray):
        return labels
    values = list(labels)
    if values and all(hasattr(v, "item") and getattr(v, "ndim", 1) == 0 for v in values):
        values = [v.item() for v in values]
    return np.asarray(values)


def encode_labels(
    labels: Any,
    vocab: Sequence | None = None,
    n_classes: int | None = None,
) -> EncodedLabels:
    """Encode `labels` as class indices.

    Single-label `labels` (1-D) are integer class indices or class names (any hashable: str,
    int, ...). Without `vocab`, integer labels are indices ``0..n_classes-1`` (``n_classes``
    defaults to ``max + 1``) and other labels are sorted like fastai's `CategoryMap`. With a
    `vocab`, names are looked up in it; integer labels are indices into it unless the vocab
    itself holds integers, in which case they are matched by value.

    Multi-label `labels` are a 2-D multi-hot array (items x classes) of 0/1 values.
    """
    values = as_array(labels)
    if vocab is not None:
        vocab = list(vocab)
        if len(vocab) == 0:
            raise ValueError("vocab is empty; pass the list of class names or None")
        if len(set(map(str, vocab))) != len(vocab):
            raise ValueError(f"vocab has duplicate entries: {vocab}")
    if n_classes is not None and (isinstance(n_classes, bool) or int(n_classes) < 1):
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
    if values.ndim == 2:
        return _encode_multi_hot(values, vocab, n_classes)
    if values.ndim != 1:
        raise ValueError(
            "labels must be 1-D (one class per item) or 2-D multi-hot (items x classes), "
            f"got an array of shape {values.shape}"
        )
    if values.size == 0:
        raise ValueError("labels is empty; pass at least one label")
    if _is_int_like(values) and (vocab is None or not _all_ints(vocab)):
        return _encode_indices(values.astype(np.int64), vocab, n_classes)
    return _encode_names(values, vocab, n_classes)


def _encode_indices(values: np.ndarray, vocab: list | None, n_classes: int | None) -> EncodedLabels:
    if values.min() < 0:
        raise ValueError(f"integer labels must be class indices >= 0, got {int(values.min())}")
    size = len(vocab) if vocab is not None else n_classes
    if size is not None and vocab is not None and n_classes is not None and n_classes != size:
        raise ValueError(f"n_classes={n_classes} does not match the vocab's {size} classes")
    if size is None:
        size = int(values.max()) + 1
    if values.max() >= size:
        bad = sorted({int(v) for v in values[values >= size]})
        raise ValueError(
            f"labels {bad[:10]} are not valid class indices: allowed are 0..{size - 1}"
            + (f" (vocab: {vocab})" if vocab is not None else f" (n_classes={size})")
        )
    classes = vocab if vocab is not None else list(range(size))
    return EncodedLabels(values, classes, multilabel=False)


def _encode_names(values: np.ndarray, vocab: list | None, n_classes: int | None) -> EncodedLabels:
    items = [v.item() if hasattr(v, "item") else v for v in values]
    if vocab is None:
        try:
            classes = sorted(set(items))
        except TypeError:
            classes = sorted(set(items), key=str)
    else:
        classes = vocab
        known = set(vocab)
        missing = sorted({str(v) for v in items if v not in known})
        if missing:
            raise ValueError(
                f"labels {missing[:10]} are not in the vocab{closest(missing[0], vocab)}; "
                f"vocab: {vocab}"
            )
    if n_classes is not None and n_classes != len(classes):
        raise ValueError(
            f"n_classes={n_classes} does not match the {len(classes)} classes {classes[:20]}"
        )
    index = {c: i for i, c in enumerate(classes)}
    codes = np.fromiter((index[v] for v in items), dtype=np.int64, count=len(items))
    return EncodedLabels(codes, list(classes), multilabel=False)


def _encode_multi_hot(
    values: np.ndarray, vocab: list | None, n_classes: int | None
) -> EncodedLabels:
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"multi-hot labels must be non-empty, got shape {values.shape}")
    if values.dtype.kind not in "iubf" or not np.isin(values, (0, 1)).all():
        raise ValueError(
            "2-D labels must be multi-hot: every entry 0 or 1 (bool, int or float), "
            f"got dtype {values.dtype} with values outside {{0, 1}}"
        )
    n_cols = values.shape[1]
    if vocab is not None and len(vocab) != n_cols:
        raise ValueError(f"multi-hot labels have {n_cols} columns but the vocab has {len(vocab)}")
    if n_classes is not None and n_classes != n_cols:
        raise ValueError(f"multi-hot labels have {n_cols} columns but n_classes={n_classes}")
    classes = vocab if vocab is not None else list(range(n_cols))
    return EncodedLabels(values.astype(np.int64), list(classes), multilabel=True)
