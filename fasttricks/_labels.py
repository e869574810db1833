"""Turn user labels (ints, strings, multi-hot rows) into class indices, per-class counts and
per-class weights.

Shared by `fasttricks.losses` (class-weighted losses) and `fasttricks.data` (oversampling,
weighted sampling), so both read labels and weigh classes the same way. :func:`class_weights`
is public through `fasttricks.data` and `fasttricks.losses`; the rest is private.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fasttricks._validate import check_choice, check_range, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CLASS_WEIGHT_METHODS", "EncodedLabels", "as_array", "class_weights", "encode_labels"]

CLASS_WEIGHT_METHODS = ("sqrt_inv", "inv", "effective_number")


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
                f"labels {missing[:10]} are not in the vocab{did_you_mean(missing[0], vocab)}; "
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


def class_weights(
    labels: Any,
    method: str = "sqrt_inv",
    vocab: Sequence | None = None,
    beta: float = 0.999,
    *,
    n_classes: int | None = None,
) -> Tensor:
    """Per-class loss weights from the training labels, ordered like the vocab.

    With ``n_c`` items of class ``c`` (positives of class ``c`` for multi-label) and ``n_min``
    the rarest class's count, the weights are scaled so that the rarest class gets 1:

    * ``"sqrt_inv"`` (default, the fast.ai cheatsheet's rule): ``w_c = sqrt(n_min / n_c)``.
    * ``"inv"``: ``w_c = n_min / n_c`` (inverse frequency; every class carries equal total
      weight).
    * ``"effective_number"`` (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number
      of Samples", https://arxiv.org/abs/1901.05555): ``w_c ∝ (1 - beta) / (1 - beta**n_c)``.
      Cui et al. rescale to sum to the number of classes; here the rarest class gets 1, which
      differs only by a constant factor.

    Args:
        labels: training labels: 1-D class indices or class names (str, int, ...), or a 2-D
            multi-hot array (items x classes).
        method: one of ``CLASS_WEIGHT_METHODS``.
        vocab: class names in index order (fastai's ``dls.vocab``). Integer labels index into
            it; other labels must all be in it. Default: ``range(max + 1)`` for integer labels,
            the sorted unique labels otherwise.
        beta: ``effective_number``'s beta in [0, 1); ignored by the other methods.
        n_classes: number of classes for integer labels without a vocab, so that a class with
            no sample is caught.

    Returns:
        A float32 tensor with one weight per class.

    Raises:
        ValueError: a class has no sample, labels are missing from the vocab, an unknown
            method, or ``beta`` outside [0, 1).

    Example::

        >>> class_weights([0] * 100 + [1] * 25 + [2] * 4)
        tensor([0.2000, 0.4000, 1.0000])
    """
    import torch

    check_choice("class weight method", method, CLASS_WEIGHT_METHODS)
    check_range("beta", beta, 0.0, 1.0, high_inclusive=False)
    encoded = encode_labels(labels, vocab=vocab, n_classes=n_classes)
    counts = encoded.counts()
    empty = [encoded.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(
            f"class {empty[0]!r} has no samples in labels (classes without samples: "
            f"{empty[:10]}); class weights need at least one sample per class"
        )
    counts = counts.astype(np.float64)
    if method == "sqrt_inv":
        weights = np.sqrt(counts.min() / counts)
    elif method == "inv":
        weights = counts.min() / counts
    else:
        inverse_effective = (1.0 - beta) / -np.expm1(counts * math.log(beta)) if beta > 0 else 1.0
        weights = np.broadcast_to(inverse_effective, counts.shape).astype(np.float64)
        weights = weights / weights.max()
    return torch.as_tensor(weights, dtype=torch.float32)
