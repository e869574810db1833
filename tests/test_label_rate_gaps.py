"""label_rate_gaps: each part's label rate minus the overall rate, against rates counted by
hand, and stratified folds beating shuffled ones on it."""

from __future__ import annotations

import numpy as np
import pytest

from fasttricks.data import kfold_splits, label_rate_gaps


def test_multi_hot_gaps_counted_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])  # overall rates 0.5, 0.5
    gaps = label_rate_gaps(y, [np.array([0, 1]), np.array([2]), np.array([1, 3])])
    np.testing.assert_allclose(gaps, [[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]])


def test_class_labels_are_one_column_per_class():
    y = np.array([0, 0, 0, 1, 2, 2])  # rates 1/2, 1/6, 1/3
    gaps = label_rate_gaps(y, [np.array([0, 3, 4])])  # rates 1/3, 1/3, 1/3
    np.testing.assert_allclose(gaps, [[1 / 6, 1 / 6, 0.0]])


def test_stratified_folds_keep_rates_closer_than_shuffled_ones():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 5)) < [0.05, 0.1, 0.2, 0.3, 0.4]).astype(int)
    worst = {s: label_rate_gaps(y, [v for _, v in kfold_splits(y, 5, seed=0, stratify=s)]).max()
             for s in (True, False)}
    assert worst[True] < worst[False] / 2


def test_an_empty_part_is_refused():
    with pytest.raises(ValueError, match="non-empty parts"):
        label_rate_gaps(np.array([0, 1]), [np.array([], dtype=int)])
