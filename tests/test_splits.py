"""One stratified split: partition, sizes, label rates against a plain random split, datasets."""

from __future__ import annotations

import numpy as np
import pytest

from fasttricks.data import stratified_split
from fasttricks.datasets import load_dataset


def _multi_hot(n=2000, n_labels=12, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.geomspace(0.4, 0.01, n_labels)  # common to rare labels
    return (rng.random((n, n_labels)) < rates).astype(np.int64)


def _max_rate_gap(y, parts):
    rates = [y[p].mean(0) for p in parts]
    return max(np.abs(a - b).max() for i, a in enumerate(rates) for b in rates[i + 1:])


def _random_parts(n, fractions, seed):
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(perm, cuts)


def test_three_parts_partition_the_items_with_the_requested_sizes():
    y = _multi_hot()
    train, valid, test = stratified_split(y, valid_pct=0.15, test_pct=0.2, seed=3)
    everything = np.concatenate([train, valid, test])
    assert np.array_equal(np.sort(everything), np.arange(len(y)))
    for part in (train, valid, test):
        assert part.dtype == np.int64 and np.array_equal(part, np.sort(part))
    for part, pct in ((train, 0.65), (valid, 0.15), (test, 0.2)):
        assert abs(len(part) - pct * len(y)) <= 0.02 * len(y)


def test_label_rates_are_closer_than_a_random_split():
    y = _multi_hot()
    gaps_strat, gaps_random = [], []
    for seed in range(5):
        gaps_strat.append(_max_rate_gap(y, stratified_split(y, 0.15, 0.2, seed)))
        gaps_random.append(_max_rate_gap(y, _random_parts(len(y), [0.65, 0.15, 0.2], seed)))
    assert max(gaps_strat) < min(gaps_random)
    assert np.mean(gaps_strat) < 0.3 * np.mean(gaps_random)
    # every part gets its share of the rarest label (0.01 * 2000 = about 20 positives)
    train, valid, test = stratified_split(y, 0.15, 0.2, 0)
    rare = y[:, -1]
    assert abs(rare[valid].sum() - 0.15 * rare.sum()) <= 1.5
    assert abs(rare[test].sum() - 0.2 * rare.sum()) <= 1.5


def test_two_parts_single_label_and_label_lists():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1 + [1] * 100)
    train, valid = stratified_split(labels, valid_pct=0.1, seed=0)
    assert len(train) + len(valid) == 200
    counts = np.bincount(labels[valid], minlength=3)
    assert abs(counts[0] - 9) <= 1 and abs(counts[1] - 10.9) <= 1
    as_lists = [["cat"], ["cat", "dog"], [], ["dog"]] * 25
    train, valid = stratified_split(as_lists, valid_pct=0.2, seed=1)
    has_dog = np.array(["dog" in row for row in as_lists])
    assert has_dog[valid].mean() == pytest.approx(has_dog.mean(), abs=0.05)


def test_same_seed_same_split_other_seed_other_split():
    y = _multi_hot(500)
    a = stratified_split(y, 0.2, seed=7)
    b = stratified_split(y, 0.2, seed=7)
    c = stratified_split(y, 0.2, seed=8)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"valid_pct": 0.0}, ValueError, "valid_pct must be > 0.0 and < 1.0, got 0.0"),
        ({"valid_pct": 1.2}, ValueError, "valid_pct.*1.2"),
        ({"valid_pct": 0.5, "test_pct": 0.5}, ValueError, "must be below 1.*0.5 \\+ 0.5"),
        ({"test_pct": -0.1}, ValueError, "test_pct"),
        ({"seed": 1.5}, TypeError, "seed must be an int, got 1.5"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        stratified_split(_multi_hot(100), **kwargs)


def test_too_few_items_is_an_error():
    with pytest.raises(ValueError, match="3 items are too few"):
        stratified_split(np.eye(3, dtype=int), valid_pct=0.1, test_pct=0.1)
    with pytest.raises(ValueError, match="multi-hot"):
        stratified_split(np.array([[0, 2], [1, 0]]))


def test_builtin_multilabel_dataset_rates_agree_across_splits():
    from sklearn.datasets import make_multilabel_classification

    splits = load_dataset("multilabel")
    gap = np.abs(splits.train.y.mean(0) - splits.valid.y.mean(0)).max()
    # the split this dataset had before: one shuffle with the seed, cut 20% test, 15% valid
    _, y = make_multilabel_classification(n_samples=3000, n_features=40, n_classes=10,
                                          n_labels=2, allow_unlabeled=False, random_state=0)
    perm = np.random.default_rng(0).permutation(len(y))
    old_valid, old_train = perm[600:1050], perm[1050:]
    old_gap = np.abs(y[old_train].mean(0) - y[old_valid].mean(0)).max()
    assert old_gap == pytest.approx(0.0436, abs=5e-4)
    assert gap < 0.25 * old_gap, (gap, old_gap)
    test_gap = np.abs(splits.train.y.mean(0) - splits.test.y.mean(0)).max()
    assert test_gap < 0.25 * old_gap
    # the same items, the same labels, sizes close to the requested 65/15/20
    assert sorted(map(tuple, np.concatenate([splits.train.y, splits.valid.y, splits.test.y])
                      .astype(int))) == sorted(map(tuple, y))
    assert abs(len(splits.valid) - 450) <= 20 and abs(len(splits.test) - 600) <= 20
