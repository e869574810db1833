"""Oversampling and weighted dataloaders: balance, reproducibility, drawn class rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare

from fasttricks.data import (
    WeightedSampler,
    class_weights,
    item_weights,
    oversample,
    oversample_indices,
    weighted_dataloaders,
)

COUNTS = {"cat": 1400, "dog": 450, "eel": 150}  # 2000 items, 9.3 : 3 : 1
N_TRAIN = 1600


def _labels(seed=0):
    rng = np.random.default_rng(seed)
    names = np.repeat(list(COUNTS), list(COUNTS.values()))
    rng.shuffle(names)
    return names


# ---- oversampling -----------------------------------------------------------------------------


def test_oversample_indices_balance_classes_and_keep_every_original_first():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 20)
    idx = oversample_indices(labels, seed=3)
    assert np.array_equal(idx[: len(labels)], np.arange(len(labels)))
    assert np.bincount(labels[idx]).tolist() == [50, 50, 50]
    # duplicates are spread evenly: each of the 7 rare items appears 7 or 8 times in total
    rare_counts = np.bincount(idx[labels[idx] == 1], minlength=57)[50:57]
    assert set(rare_counts.tolist()) <= {7, 8}


def test_oversample_indices_ratio_and_mapping_strategies():
    labels = np.array(["a"] * 40 + ["b"] * 5 + ["c"] * 30)
    counts = pd.Series(labels[oversample_indices(labels, strategy=0.5)]).value_counts()
    assert counts.to_dict() == {"a": 40, "b": 20, "c": 30}
    counts = pd.Series(labels[oversample_indices(labels, strategy={"b": 12})]).value_counts()
    assert counts.to_dict() == {"a": 40, "b": 12, "c": 30}


def test_oversample_indices_are_reproducible_from_the_seed():
    labels = _labels()
    assert np.array_equal(oversample_indices(labels, seed=1), oversample_indices(labels, seed=1))
    assert not np.array_equal(oversample_indices(labels, seed=1),
                              oversample_indices(labels, seed=2))


def test_oversample_dataframe_by_label_column():
    df = pd.DataFrame({"x": np.arange(8), "label": ["a"] * 6 + ["b"] * 2}, index=list("pqrstuvw"))
    out, labels = oversample(df, "label", seed=0)
    assert len(out) == 12
    assert out["label"].value_counts().to_dict() == {"a": 6, "b": 6}
    assert out.iloc[:8]["x"].tolist() == list(range(8))  # originals first, in order
    assert list(out.index) == list(range(12))
    assert labels.tolist() == out["label"].tolist()


def test_oversample_arrays_tensors_and_lists_stay_aligned():
    x = np.arange(10) * 10
    y = np.array([0] * 8 + [1] * 2)
    for items, labels in [(x, y), (torch.as_tensor(x), torch.as_tensor(y)), (list(x), list(y))]:
        new_items, new_labels = oversample(items, labels, seed=0)
        assert type(new_items) is type(items) and type(new_labels) is type(labels)
        originals = [int(v) // 10 for v in new_items]
        assert originals[:10] == list(range(10))
        assert sorted(originals[10:]) == [8, 8, 8, 9, 9, 9]
        assert [int(v) for v in new_labels] == [int(y[i]) for i in originals]


def test_oversample_refuses_bad_input():
    with pytest.raises(ValueError, match="entries but labels has"):
        oversample(np.arange(3), [0, 1])
    with pytest.raises(ValueError, match="strategy"):
        oversample_indices([0, 1, 1], strategy="min")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        oversample_indices([0, 1, 1], strategy=1.5)
    with pytest.raises(ValueError, match="not in the labels"):
        oversample_indices(["a", "b"], strategy={"c": 3})
    with pytest.raises(ValueError, match="single-label"):
        oversample_indices(np.eye(3))
    with pytest.raises(KeyError, match="did you mean 'label'"):
        oversample(pd.DataFrame({"label": [0, 1]}), "labl")


# ---- per-item weights -------------------------------------------------------------------------


def test_item_weights_give_each_item_its_class_weight():
    labels = ["a"] * 16 + ["b"] * 4 + ["c"] * 1
    weights = item_weights(labels)
    np.testing.assert_allclose(weights, [0.25] * 16 + [0.5] * 4 + [1.0], rtol=1e-6)
    np.testing.assert_allclose(item_weights(labels, "inv"), [1 / 16] * 16 + [0.25] * 4 + [1.0],
                               rtol=1e-6)


def test_item_weights_for_multi_hot_take_the_rarest_label():
    multi_hot = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    # positives per class: 4, 1, 0 -> the empty class is ignored; sqrt_inv weights 0.5, 1
    np.testing.assert_allclose(item_weights(multi_hot), [0.5, 0.5, 0.5, 1.0, 0.5], rtol=1e-6)


# ---- weighted dataloaders: three kinds of fastai loaders ---------------------------------------


def _image_dls():
    from fastai.data.all import Categorize, Datasets
    from fastai.torch_core import TensorImage

    names = _labels()
    x = torch.randn(len(names), 3, 8, 8)
    splits = [list(range(N_TRAIN)), list(range(N_TRAIN, len(names)))]
    dsets = Datasets(list(range(len(names))),
                     tfms=[[lambda i: TensorImage(x[i])], [lambda i: names[i], Categorize()]],
                     splits=splits)
    return dsets.dataloaders(bs=400), names[:N_TRAIN]


def _plain_dls():
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader

    names = _labels()
    y = torch.as_tensor(pd.Categorical(names, categories=list(COUNTS)).codes.astype(np.int64))
    x = torch.randn(len(names), 4)
    train = list(zip(x[:N_TRAIN], y[:N_TRAIN]))
    valid = list(zip(x[N_TRAIN:], y[N_TRAIN:]))
    dls = DataLoaders(DataLoader(train, bs=400, shuffle=True), DataLoader(valid, bs=400))
    return dls, names[:N_TRAIN]


def _tabular_dls():
    from fastai.tabular.all import Categorify, CategoryBlock, Normalize, TabularPandas

    names = _labels()
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"num": rng.normal(size=len(names)),
                       "colour": rng.choice(["red", "blue"], size=len(names)),
                       "animal": names})
    splits = (list(range(N_TRAIN)), list(range(N_TRAIN, len(names))))
    to = TabularPandas(df, procs=[Categorify, Normalize], cat_names=["colour"],
                       cont_names=["num"], y_names="animal", y_block=CategoryBlock(),
                       splits=splits)
    return to.dataloaders(bs=400), names[:N_TRAIN]


LOADERS = {"image_tfmddl": _image_dls, "plain_dataloader": _plain_dls, "tabular": _tabular_dls}


def _drawn_labels(dl, epochs):
    drawn = []
    for _ in range(epochs):
        for batch in dl:
            drawn.append(torch.as_tensor(batch[-1]).reshape(-1))
    return torch.cat(drawn).numpy()


def _expected_rates(train_labels, method):
    counts = pd.Series(train_labels).value_counts().reindex(list(COUNTS)).to_numpy()
    weights = class_weights(train_labels, method, vocab=list(COUNTS)).double().numpy()
    mass = counts * weights
    return mass / mass.sum(), counts / counts.sum()


@pytest.mark.parametrize("kind", list(LOADERS))
@pytest.mark.parametrize("method", ["sqrt_inv", "inv"])
def test_weighted_dataloaders_draw_classes_at_the_requested_rates(kind, method):
    dls, train_labels = LOADERS[kind]()
    weighted = weighted_dataloaders(dls, method=method, seed=0)
    drawn = _drawn_labels(weighted.train, epochs=7)  # >= 10k draws
    assert len(drawn) >= 10_000
    observed = np.bincount(drawn, minlength=3)
    expected, natural = _expected_rates(train_labels, method)
    assert chisquare(observed, expected * observed.sum()).pvalue > 1e-3
    assert chisquare(observed, natural * observed.sum()).pvalue < 1e-12  # it did reweight
    assert weighted.valid is dls.valid
    assert dls.train.shuffle_fn is not weighted.train.shuffle_fn


@pytest.mark.parametrize("kind", list(LOADERS))
def test_weighted_dataloaders_are_reproducible_from_the_seed(kind):
    dls, _ = LOADERS[kind]()
    first = _drawn_labels(weighted_dataloaders(dls, seed=5).train, epochs=2)
    again = _drawn_labels(weighted_dataloaders(dls, seed=5).train, epochs=2)
    other = _drawn_labels(weighted_dataloaders(dls, seed=6).train, epochs=2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_weighted_dataloaders_use_explicit_per_item_weights():
    dls, train_labels = _plain_dls()
    weights = (train_labels == "eel").astype(float)  # only eels
    drawn = _drawn_labels(weighted_dataloaders(dls, weights, seed=0).train, epochs=1)
    assert set(drawn.tolist()) == {list(COUNTS).index("eel")}


def test_weighted_tabular_dataloaders_train_a_tabular_learner():
    from fastai.tabular.all import accuracy, tabular_learner

    dls, _ = _tabular_dls()
    weighted = weighted_dataloaders(dls, method="inv", seed=0)
    learn = tabular_learner(weighted, layers=[8], metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    assert np.isfinite(learn.recorder.values[-1]).all()
    # validation untouched: sequential, every item exactly once
    valid_y = torch.cat([b[-1].reshape(-1) for b in weighted.valid]).numpy()
    assert len(valid_y) == 400


def test_weighted_sampler_draws_by_probability():
    sampler = WeightedSampler([0.0, 1.0, 3.0], seed=0)
    draws = sampler(list(range(3)) * 1) + [i for _ in range(3000) for i in sampler([0, 1, 2])]
    counts = np.bincount(draws, minlength=3)
    assert counts[0] == 0
    assert chisquare(counts[1:], np.array([0.25, 0.75]) * counts.sum()).pvalue > 1e-3


@pytest.mark.parametrize(
    "weights,message",
    [
        (np.ones(5), "5 entries but the training set has 1600"),
        (-np.ones(N_TRAIN), "must be >= 0"),
        (np.zeros(N_TRAIN), "all zero"),
        (np.full(N_TRAIN, np.nan), "finite"),
    ],
)
def test_weighted_dataloaders_refuse_bad_weights(weights, message):
    dls, _ = _plain_dls()
    with pytest.raises(ValueError, match=message):
        weighted_dataloaders(dls, weights)


def test_weighted_dataloaders_refuse_bad_labels_and_methods():
    dls, train_labels = _plain_dls()
    with pytest.raises(ValueError, match="labels has 3 entries"):
        weighted_dataloaders(dls, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="Did you mean 'sqrt_inv'"):
        weighted_dataloaders(dls, method="sqrtinv")
    with pytest.raises(ValueError, match="either weights or labels"):
        weighted_dataloaders(dls, np.ones(N_TRAIN), labels=train_labels)
    with pytest.raises(TypeError, match="DataLoaders"):
        weighted_dataloaders([1, 2, 3])
    with pytest.raises(ValueError, match="not in the vocab"):
        item_weights(["cat", "cow"], vocab=["cat", "dog"])
