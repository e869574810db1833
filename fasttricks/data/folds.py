"""K-fold splits: stratified for single-label, iterative stratification for multi-label, grouped.

A fold is a ``(train_idx, valid_idx)`` pair of sorted ``int64`` index arrays into ``labels``. The
valid parts of the ``n_splits`` folds partition ``range(len(labels))``.

Which splitter runs:

=========================  ==================  ===========================================
labels                     ``groups`` is None  ``groups`` given
=========================  ==================  ===========================================
1-D, ``stratify=True``     StratifiedKFold     StratifiedGroupKFold
2-D multi-hot, stratify    MultilabelStrat...  (error: not supported, use stratify=False)
any, ``stratify=False``    KFold               GroupKFold
=========================  ==================  ===========================================

Multi-label stratification is the iterative stratification of Sechidis, Tsoumakas and Vlahavas,
"On the Stratification of Multi-Label Data" (ECML PKDD 2011), as implemented by the
``iterative-stratification`` package; the others are scikit-learn's splitters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["kfold_splits"]

logger = logging.getLogger(__name__)

Fold = tuple[np.ndarray, np.ndarray]


def _as_label_array(labels: Any) -> np.ndarray:
    """Labels as a numpy array: 1-D class labels or a 2-D 0/1 multi-hot matrix.

    A sequence of label collections (``[["cat"], ["cat", "dog"], []]``) is multi-hot encoded.
    """
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    elif hasattr(labels, "to_numpy"):  # pandas Series / DataFrame
        labels = labels.to_numpy()
    if isinstance(labels, np.ndarray):
        arr = labels
    else:
        items = list(labels)
        if items and all(isinstance(v, (list, tuple, set, frozenset)) for v in items):
            vocab = sorted({v for row in items for v in row}, key=str)
            col = {v: i for i, v in enumerate(vocab)}
            arr = np.zeros((len(items), len(vocab)), dtype=np.int64)
            for r, row in enumerate(items):
                for v in row:
                    arr[r, col[v]] = 1
            return arr
        arr = np.asarray(items)
    if arr.ndim == 0:
        raise ValueError(f"labels must be a 1-D or 2-D array-like, got a scalar: {arr!r}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim > 2:
        raise ValueError(
            "labels must be 1-D (one class per item) or 2-D multi-hot (items x labels), "
            f"got shape {arr.shape}"
        )
    if arr.ndim == 2:
        if arr.dtype == object or not np.isin(arr, (0, 1)).all():
            bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5] if arr.dtype != object else "objects"
            raise ValueError(
                "2-D labels must be a multi-hot matrix of 0/1 (or bool) values, "
                f"found other values: {bad}"
            )
        arr = arr.astype(np.int64)
    return arr


def _check_min_members(labels: np.ndarray, n_splits: int) -> None:
    """Raise if a class has fewer members than folds (a stratified split cannot cover it)."""
    classes, counts = np.unique(labels, return_counts=True)
    small = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n < n_splits]
    if small:
        listed = ", ".join(f"{c!r} ({n})" for c, n in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        raise ValueError(
            f"stratified k-fold with n_splits={n_splits} needs at least {n_splits} items of every "
            f"class; these classes have fewer (count in brackets): {listed}{more}. "
            "Use fewer folds, merge rare classes, or pass stratify=False."
        )


def kfold_splits(
    labels: Any,
    n_splits: int = 5,
    seed: int = 0,
    stratify: bool = True,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> list[Fold]:
    """Split item indices into ``n_splits`` folds for cross-validation.

    Single-label data (1-D ``labels``) is split with scikit-learn's ``StratifiedKFold`` (each
    fold keeps the class ratios to within one item per class); multi-hot labels (2-D 0/1
    matrix, or a list of label lists) use ``MultilabelStratifiedKFold`` from
    iterative-stratification (Sechidis et al., ECML PKDD 2011), which keeps every label's
    positive rate close to the overall rate. With ``groups``, all items of a group land in the
    same fold (``StratifiedGroupKFold``, or ``GroupKFold`` when ``stratify=False``); with
    ``stratify=False`` and no groups the split is a shuffled ``KFold``.

    Args:
        labels: one label per item (ints, strings, ...), or a multi-hot ``(n_items, n_labels)``
            matrix, or a sequence of label collections. Only used for stratification when
            ``stratify=False`` (its length is still the number of items).
        n_splits: number of folds, at least 2 (default 5).
        seed: shuffling seed; the same seed gives the same folds (default 0).
        stratify: keep label ratios in every fold (default True).
        groups: optional group id per item (e.g. patient, user); a group never spans folds.

    Returns:
        A list of ``n_splits`` ``(train_idx, valid_idx)`` pairs of sorted ``int64`` arrays.

    Raises:
        ValueError: ``n_splits`` < 2 or more than the number of items (or groups); labels and
            groups of different lengths; a class with fewer than ``n_splits`` items when
            stratifying single-label data (the message names the classes); multi-label
            stratification combined with groups.

    Example:
        >>> folds = kfold_splits([0, 0, 0, 1, 1, 1], n_splits=3, seed=0)
        >>> [sorted(v.tolist()) for _, v in folds]  # doctest: +SKIP
        [[0, 3], [1, 4], [2, 5]]
    """
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        StratifiedGroupKFold,
        StratifiedKFold,
    )

    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)):
        raise TypeError(f"n_splits must be an int >= 2, got {n_splits!r}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2 (one fold has no training data), got {n_splits}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    y = _as_label_array(labels)
    n = len(y)
    if n_splits > n:
        raise ValueError(f"n_splits={n_splits} is more than the number of items ({n})")
    multilabel = y.ndim == 2
    x = np.zeros((n, 1))
    seed = int(seed)

    if groups is not None:
        if hasattr(groups, "detach"):
            groups = groups.detach().cpu().numpy()
        g = np.asarray(groups.to_numpy() if hasattr(groups, "to_numpy") else groups)
        if g.ndim != 1:
            raise ValueError(f"groups must be 1-D (one group id per item), got shape {g.shape}")
        if len(g) != n:
            raise ValueError(
                f"labels and groups must have the same length, got {n} labels and {len(g)} groups"
            )
        n_groups = len(np.unique(g))
        if n_splits > n_groups:
            raise ValueError(
                f"n_splits={n_splits} is more than the number of distinct groups ({n_groups})"
            )
        if stratify and multilabel:
            raise ValueError(
                "multi-label stratification with groups is not supported; pass stratify=False "
                "for a GroupKFold split of the groups"
            )
        if stratify:
            _check_min_members(y, n_splits)
            splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            parts = splitter.split(x, y, g)
        else:
            splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            parts = splitter.split(x, None, g)
    elif not stratify:
        parts = KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x)
    elif multilabel:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        rare = np.flatnonzero(y.sum(axis=0) < n_splits)
        if rare.size:
            logger.warning(
                "labels %s have fewer than n_splits=%d positives; some folds will have none",
                rare.tolist()[:10],
                n_splits,
            )
        splitter = MultilabelStratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        parts = splitter.split(x, y)
    else:
        _check_min_members(y, n_splits)
        parts = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x, y)

    folds = [
        (np.sort(tr).astype(np.int64), np.sort(va).astype(np.int64)) for tr, va in parts
    ]
    logger.debug("kfold_splits: %d folds of sizes %s", n_splits, [len(v) for _, v in folds])
    return folds
