"""Training subsets for ablations: keep all items but part of one class.

The cheatsheet's test of whether a dominant, well-performing class can give up data: train
without a share of its items and see what happens to its F1 and every other class's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fasttricks._validate import check_range

__all__ = ["drop_class_indices"]


def drop_class_indices(labels: Any, cls: int, fraction: float, seed: int | None = 0
                       ) -> np.ndarray:
    """Indices of the items to keep when ``fraction`` of class ``cls``'s items are removed.

    Exactly ``round(fraction * n_cls)`` items of the class are removed (chosen at random with
    ``seed``, without replacement); every other item is kept. Multi-hot labels (2-D) count an
    item as a member of ``cls`` when its ``cls`` column is positive.

    Args:
        labels: class indices (1-D) or multi-hot rows (2-D), one per training item.
        cls: the class index.
        fraction: share of the class's items to remove, in [0, 1].
        seed: seed of which items go (None: not reproducible).

    Returns:
        Sorted int64 positions of the kept items.

    Example::

        >>> drop_class_indices([0, 1, 1, 1, 1], cls=1, fraction=0.5, seed=0).size
        3
    """
    y = np.asarray(labels)
    check_range("fraction", fraction, 0.0, 1.0)
    n_classes = y.shape[1] if y.ndim == 2 else (int(y.max()) + 1 if y.size else 0)
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or not (
            0 <= cls < max(n_classes, 1)):
        raise ValueError(f"cls must be a class index in 0..{max(n_classes - 1, 0)}, got {cls!r}")
    members = np.flatnonzero(y[:, cls] > 0 if y.ndim == 2 else y == cls)
    n_drop = int(math.floor(fraction * len(members) + 0.5))
    dropped = np.random.default_rng(seed).choice(members, size=n_drop, replace=False)
    keep = np.ones(len(y), dtype=bool)
    keep[dropped] = False
    return np.flatnonzero(keep).astype(np.int64)
