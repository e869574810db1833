"""kfold_splits: partitions, class and label ratios, groups, determinism and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fasttricks.data import kfold_splits


def _assert_partition(folds, n):
    valid = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(valid), np.arange(n)), "valid parts must cover each item once"
    for train, val in folds:
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
        assert np.intersect1d(train, val).size == 0
        assert train.dtype == np.int64 and val.dtype == np.int64


def _imbalanced_labels(n=203, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(4, size=n, p=[0.55, 0.25, 0.15, 0.05])


@pytest.mark.parametrize("stratify", [True, False])
def test_single_label_folds_partition_the_items(stratify):
    y = _imbalanced_labels()
    folds = kfold_splits(y, n_splits=5, seed=1, stratify=stratify)
    assert len(folds) == 5
    _assert_partition(folds, len(y))


def test_stratified_folds_keep_every_class_count_within_one_item_of_its_share():
    y = _imbalanced_labels()
    k = 5
    for _, val in kfold_splits(y, n_splits=k, seed=3):
        for c in np.unique(y):
            share = (y == c).sum() / k
            assert abs((y[val] == c).sum() - share) < 1.0


def test_string_labels_and_tensors_are_accepted():
    y = np.array(["cat", "dog", "cat", "dog", "bird", "bird", "cat", "dog", "bird"])
    folds = kfold_splits(list(y), n_splits=3)
    _assert_partition(folds, len(y))
    for _, val in folds:
        assert sorted(y[val]) == ["bird", "cat", "dog"]
    yt = torch.tensor(_imbalanced_labels())
    a = kfold_splits(yt, n_splits=4, seed=0)
    b = kfold_splits(yt.numpy(), n_splits=4, seed=0)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))


def test_same_seed_gives_the_same_folds_and_another_seed_different_ones():
    y = _imbalanced_labels()
    a = kfold_splits(y, n_splits=5, seed=7)
    b = kfold_splits(y, n_splits=5, seed=7)
    c = kfold_splits(y, n_splits=5, seed=8)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))
    assert not all(np.array_equal(x[1], z[1]) for x, z in zip(a, c))


def test_unstratified_kfold_is_a_shuffled_split_of_equal_sizes():
    folds = kfold_splits(np.zeros(23), n_splits=4, seed=0, stratify=False)
    _assert_partition(folds, 23)
    assert sorted(len(v) for _, v in folds) == [5, 6, 6, 6]
    assert not np.array_equal(folds[0][1], np.arange(6)), "items must be shuffled"


def _multilabel(n=300, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.array([0.5, 0.3, 0.15, 0.08, 0.04])
    return (rng.random((n, rates.size)) < rates).astype(np.int64)


def test_multilabel_folds_partition_and_keep_label_rates_close():
    y = _multilabel()
    k = 5
    folds = kfold_splits(y, n_splits=k, seed=0)
    _assert_partition(folds, len(y))
    overall = y.sum(axis=0) / k
    worst = max(np.abs(y[val].sum(axis=0) - overall).max() for _, val in folds)
    # iterative stratification keeps every label's positives per fold within ~1 of its share;
    # a plain shuffled split of the same data drifts several items away
    assert worst <= 1.5
    random = kfold_splits(y, n_splits=k, seed=0, stratify=False)
    worst_random = max(np.abs(y[val].sum(axis=0) - overall).max() for _, val in random)
    assert worst_random > worst


def test_multilabel_given_as_label_lists_matches_the_multi_hot_matrix():
    y = _multilabel(60)
    names = ["a", "b", "c", "d", "e"]
    lists = [[names[j] for j in np.flatnonzero(row)] for row in y]
    a = kfold_splits(lists, n_splits=3, seed=2)
    b = kfold_splits(y, n_splits=3, seed=2)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))


@pytest.mark.parametrize("stratify", [True, False])
def test_a_group_never_spans_two_folds(stratify):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=250)
    y = rng.integers(0, 2, size=250)
    folds = kfold_splits(y, n_splits=4, seed=0, groups=groups, stratify=stratify)
    _assert_partition(folds, len(y))
    for train, val in folds:
        assert np.intersect1d(groups[train], groups[val]).size == 0


def test_n_splits_below_two_is_an_error():
    with pytest.raises(ValueError, match="n_splits must be >= 2.*got 1"):
        kfold_splits([0, 1, 0, 1], n_splits=1)
    with pytest.raises(TypeError, match="n_splits"):
        kfold_splits([0, 1, 0, 1], n_splits=2.5)


def test_a_class_with_fewer_members_than_folds_is_named_in_the_error():
    y = ["a"] * 10 + ["b"] * 10 + ["rare"] * 2
    with pytest.raises(ValueError, match=r"'rare' \(2\)"):
        kfold_splits(y, n_splits=3)
    # unstratified splitting does not care
    _assert_partition(kfold_splits(y, n_splits=3, stratify=False), len(y))


def test_labels_and_groups_of_different_length_is_an_error():
    with pytest.raises(ValueError, match="10 labels and 9 groups"):
        kfold_splits(np.arange(10) % 2, n_splits=2, groups=np.arange(9))


def test_more_folds_than_groups_or_items_is_an_error():
    with pytest.raises(ValueError, match="distinct groups \\(2\\)"):
        kfold_splits(np.arange(10) % 2, n_splits=3, groups=np.arange(10) % 2, stratify=False)
    with pytest.raises(ValueError, match="number of items \\(3\\)"):
        kfold_splits([0, 1, 2], n_splits=4, stratify=False)


def test_multilabel_with_groups_and_non_binary_matrices_are_errors():
    y = _multilabel(40)
    with pytest.raises(ValueError, match="stratify=False"):
        kfold_splits(y, n_splits=2, groups=np.arange(40) % 5)
    with pytest.raises(ValueError, match="0/1"):
        kfold_splits(np.full((10, 3), 2), n_splits=2)
