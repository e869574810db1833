"""Built-in datasets, user-data loaders, the tensor DataLoader and the small models."""

from __future__ import annotations

import random
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fasttricks import datasets
from fasttricks.datasets import Split, load_dataset
from fasttricks.loaders import TensorDataLoader, splits_dataloaders
from fasttricks.models import create_model
from fasttricks.recipes import build_learner, evaluate, fit_learner, load_recipe


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


# ---------------------------------------------------------------------------------- datasets


def test_digits_splits_partition_the_data_stratified_and_fixed_by_seed():
    from sklearn.datasets import load_digits

    s = load_dataset("digits", seed=0)
    assert s.kind == "array" and not s.multilabel and s.vocab == [str(i) for i in range(10)]
    assert s.train.x.shape[1:] == (1, 8, 8) and s.train.x.dtype == np.float32
    assert len(s.train) + len(s.valid) + len(s.test) == 1797
    assert 0.0 <= s.train.x.min() and s.train.x.max() <= 1.0
    # every image lands in exactly one split, with its own label
    ref = load_digits()
    lookup = {(img / 16.0).astype(np.float32).tobytes(): y
              for img, y in zip(ref.images, ref.target)}
    for split in (s.train, s.valid, s.test):
        for x, y in zip(split.x, split.y):
            assert lookup[x[0].tobytes()] == y
    assert not _rows(s.train.x) & _rows(s.test.x)
    counts = np.bincount(s.test.y)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each class (~180 each)
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.test.y, s.test.y)
    assert not np.array_equal(load_dataset("digits", seed=1).test.y, s.test.y)


@pytest.mark.slow
def test_mnist1d_is_the_standard_split_cached_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    monkeypatch.setattr(datasets, "_cache_dir", lambda: tmp_path)
    random.seed(123)
    np.random.seed(123)
    expected_py, expected_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    s = load_dataset("mnist1d", seed=0)  # generates (cache is empty)
    assert (random.random(), np.random.rand()) == (expected_py, expected_np)
    assert (tmp_path / "mnist1d_standard_v1.npz").exists()
    assert len(s.train) + len(s.valid) == 4000 and len(s.test) == 1000
    assert abs(len(s.valid) - 400) <= 5  # 10% of each class, rounded per class
    assert s.train.x.shape[1:] == (1, 40)
    ref = make_dataset(get_dataset_args())
    np.testing.assert_allclose(s.test.x[:, 0], ref["x_test"], rtol=1e-6)
    np.testing.assert_array_equal(s.test.y, ref["y_test"])
    pool = s.pool()
    assert _rows(pool.x[:, 0]) == _rows(ref["x"].astype(np.float32))
    cached = load_dataset("mnist1d", seed=0)  # from the cache this time
    np.testing.assert_array_equal(cached.train.x, s.train.x)


def test_longtail_follows_the_exponential_profile_and_keeps_test_balanced():
    s = load_dataset("longtail", base="digits", imbalance=10.0)
    counts = np.bincount(s.train.y, minlength=10)
    base = np.bincount(load_dataset("digits", valid_pct=0.1, seed=0).train.y)
    expected = [min(base[c], max(1, int(base.max() * 10.0 ** (-c / 9)))) for c in range(10)]
    assert counts.tolist() == expected
    assert counts[0] / counts[-1] == pytest.approx(10.0, rel=0.1)
    test_counts = np.bincount(s.test.y)
    assert test_counts.max() - test_counts.min() <= 2
    m = load_dataset("longtail")  # default: MNIST-1D, 50:1
    c = np.bincount(m.train.y, minlength=10)
    n_max = np.bincount(load_dataset("mnist1d").train.y).max()
    assert c[-1] == int(n_max / 50) and c[0] / c[-1] >= 45


def test_multilabel_has_multi_hot_targets_standardised_with_train_stats():
    s = load_dataset("multilabel")
    assert s.multilabel and s.train.y.ndim == 2 and s.train.y.shape[1] == len(s.vocab) == 10
    assert set(np.unique(s.train.y)) == {0.0, 1.0}
    np.testing.assert_allclose(s.train.x.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(s.train.x.std(0), 1.0, atol=1e-3)


def test_pool_and_resplit_draw_from_train_then_valid_and_keep_test():
    s = load_dataset("synthetic", n_samples=200)
    pool = s.pool()
    assert len(pool) == len(s.train) + len(s.valid)
    np.testing.assert_array_equal(pool.x[len(s.train):], s.valid.x)
    r = s.resplit([0, 5, len(s.train)], [1, len(pool) - 1])
    np.testing.assert_array_equal(r.train.x, pool.x[[0, 5, len(s.train)]])
    np.testing.assert_array_equal(r.valid.y, pool.y[[1, len(pool) - 1]])
    assert r.test is s.test
    with pytest.raises(IndexError, match="pool of"):
        s.resplit([len(pool)], [0])


def test_unknown_dataset_and_argument_are_rejected_with_closest_match():
    with pytest.raises(KeyError, match="Did you mean 'mnist1d'"):
        load_dataset("mnist_1d")
    with pytest.raises(KeyError, match="Did you mean 'imbalance'"):
        load_dataset("longtail", imbalanse=3)
    with pytest.raises(ValueError, match="valid_pct \\+ test_pct must be below 1"):
        load_dataset("digits", valid_pct=0.5, test_pct=0.5)


def test_registered_datasets_and_models_are_usable_from_a_recipe():
    from fasttricks.datasets import DATASETS, list_datasets, register_dataset
    from fasttricks.models import MODELS, model_input_kind, register_model

    def halves(n_samples: int = 60, seed: int = 0):
        return datasets.synthetic(n_samples=n_samples, seed=seed)

    def linear(n_in: int, n_out: int, bias: bool = True):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, n_out, bias=bias))

    register_dataset("halves_test", halves)
    register_model("linear_test", linear, "features")
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_dataset("halves_test", halves)
        register_dataset("halves_test", halves, overwrite=True)
        assert list_datasets("halves*") == ["halves_test"]
        assert model_input_kind("linear_test") == "features"
        with pytest.raises(KeyError, match="Did you mean 'features'"):
            register_model("linear_bad", linear, "feature")
        recipe = load_recipe({"data": {"name": "halves_test", "n_samples": "2e2"},
                              "model": {"name": "linear_test", "bias": False},
                              "schedule": {"epochs": 1}})
        assert recipe["data"]["n_samples"] == 200 and recipe["model"]["bias"] is False
        with pytest.raises(KeyError, match="Did you mean 'n_samples'"):
            load_recipe(recipe, ["data.n_sample=10"])
        learn = build_learner(recipe)
        sp = learn.dls.splits
        assert learn.model[1].bias is None and len(sp.train) + len(sp.valid) + len(sp.test) == 200
    finally:
        DATASETS._entries.pop("halves_test", None)
        MODELS._entries.pop("linear_test", None)


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        Split(np.zeros((3, 2)), np.zeros(2))


# ---------------------------------------------------------------------------------- loaders


def test_tensor_dataloader_slices_batches_that_match_the_arrays():
    s = load_dataset("digits")
    dls = splits_dataloaders(s, bs=50, device="cpu")
    assert isinstance(dls.train, TensorDataLoader)
    xs, ys = zip(*list(dls.valid))
    np.testing.assert_array_equal(torch.cat(xs).numpy(), s.valid.x)  # valid keeps its order
    np.testing.assert_array_equal(torch.cat(ys).numpy(), s.valid.y)
    train = list(dls.train)
    assert len(train) == len(s.train) // 50  # drop_last on the shuffled training loader
    seen = torch.cat([b[1] for b in train]).numpy()
    assert len(seen) == 50 * len(train) and not np.array_equal(seen, s.train.y[:len(seen)])
    assert dls.vocab == s.vocab


def test_an_epoch_of_digits_batches_is_fast():
    dls = splits_dataloaders(load_dataset("digits"), bs=64, device="cpu")
    start = time.perf_counter()
    for _ in range(5):
        for _ in dls.train:
            pass
    assert (time.perf_counter() - start) / 5 < 0.25  # ~20 batches: milliseconds when idle


def test_multilabel_predict_decodes_to_label_names():
    learn = build_learner(_multilabel_recipe())
    fit_learner(learn)
    names, mask, probs = learn.predict(torch.as_tensor(learn.dls.splits.test.x[0]))
    assert names == [learn.dls.vocab[i] for i in torch.nonzero(mask).flatten().tolist()]
    assert probs.shape == (10,) and ((probs > 0.5) == mask).all()


def _multilabel_recipe() -> dict:
    return load_recipe({"data": {"name": "multilabel", "n_samples": 400}, "model": "mlp",
                        "schedule": {"epochs": 1}, "metrics": ["accuracy_multi", "f1_multi"]})


# ---------------------------------------------------------------------------------- user data


def _write_images(root, classes=("cat", "dog"), per_class=6, splits=("train", "valid")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for k, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                base = np.full((20, 20, 3), 40 + 160 * k, dtype=np.uint8)
                noise = rng.integers(0, 30, size=base.shape, dtype=np.uint8)
                Image.fromarray(base + noise).save(d / f"{i}.png")


def test_image_folder_follows_fastai_folder_convention_and_trains(tmp_path):
    _write_images(tmp_path)
    s = load_dataset("image_folder", path=str(tmp_path), size=16)
    assert s.kind == "image" and s.vocab == ["cat", "dog"]
    assert len(s.train) == 12 and len(s.valid) == 12 and s.test is s.valid  # no test folder
    recipe = load_recipe({"name": "img", "data": {"name": "image_folder", "path": str(tmp_path),
                                                  "size": 16, "bs": 4},
                          "model": {"name": "cnn2d", "channels": [8, 16]},
                          "optimizer": {"lr": 1e-2}, "schedule": {"epochs": 3}})
    learn = build_learner(recipe)
    xb, yb = learn.dls.one_batch()
    assert xb.shape == (4, 3, 16, 16)
    fit_learner(learn)
    res = evaluate(learn, ds_idx=2)
    preds, targs = learn.get_preds(ds_idx=2)
    assert res["accuracy"] == pytest.approx((preds.argmax(1) == targs).float().mean().item())
    assert res["accuracy"] >= 0.9  # dark vs bright images


def test_image_folder_without_valid_folder_holds_out_valid_pct(tmp_path):
    _write_images(tmp_path, per_class=10, splits=("train", "test"))
    s = load_dataset("image_folder", path=tmp_path, valid_pct=0.2)
    assert (len(s.train), len(s.valid), len(s.test)) == (16, 4, 20)
    with pytest.raises(FileNotFoundError, match="'train' folder"):
        load_dataset("image_folder", path=tmp_path / "train")


def test_tabular_csv_infers_column_kinds_and_trains(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    colour = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(size=n)
    label = np.where((colour == "red") | (size > 1.0), "yes", "no")
    pd.DataFrame({"colour": colour, "size": size, "noise": rng.normal(size=n),
                  "label": label}).to_csv(tmp_path / "t.csv", index=False)
    s = load_dataset("tabular_csv", path=str(tmp_path / "t.csv"), y_name="label")
    assert s.kind == "tabular" and s.vocab == ["no", "yes"]
    assert s.info["cat_names"] == ["colour"] and s.info["cont_names"] == ["size", "noise"]
    recipe = load_recipe({"name": "tab", "data": {"name": "tabular_csv",
                                                  "path": str(tmp_path / "t.csv"),
                                                  "y_name": "label", "bs": 32},
                          "model": {"name": "tabular", "layers": [32]},
                          "optimizer": {"lr": 3e-2}, "schedule": {"epochs": 8}})
    learn = build_learner(recipe)
    fit_learner(learn)
    res = evaluate(learn, ds_idx=2)
    assert len(learn.dls[2].dataset) == len(s.test)
    assert res["accuracy"] > 0.85


def test_tabular_csv_rejects_an_unknown_target_column(tmp_path):
    pd.DataFrame({"a": [1, 2], "b": [0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(KeyError, match="'target' is not a column"):
        load_dataset("tabular_csv", path=tmp_path / "t.csv", y_name="target")


# ---------------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "name, n_in, shape",
    [("mlp", 64, (3, 1, 8, 8)), ("cnn2d", 1, (3, 1, 8, 8)), ("cnn1d", 1, (3, 1, 40)),
     ("cnn1d", 2, (3, 2, 17))],
)
def test_builtin_models_map_items_to_class_logits(name, n_in, shape):
    model = create_model(name, n_in, 7).eval()
    assert model(torch.randn(*shape)).shape == (3, 7)


def test_timm_model_is_built_offline_with_in_chans_and_classes():
    model = create_model("timm:resnet18", n_in=1, n_out=4).eval()
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_model_errors_name_the_problem():
    with pytest.raises(KeyError, match="Did you mean 'cnn1d'"):
        create_model("cnn_1d", 1, 10)
    with pytest.raises(KeyError, match="Did you mean 'channels'"):
        create_model("cnn1d", 1, 10, chanels=[4])
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer, got 4"):
        create_model("cnn1d", 1, 10, kernel_size=4)
    with pytest.raises(KeyError, match="resnet18"):
        create_model("timm:resnet_18", 3, 10)


def test_a_plain_learner_infers_the_loss_from_array_labels_as_fastai_does():
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat

    single = splits_dataloaders(load_dataset("digits"), bs=64)
    learn = Learner(single, create_model("mlp", n_in=64, n_out=10))
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    xb, yb = single.one_batch()
    learn.model.eval()  # no dropout: the same outputs twice
    expected = torch.nn.functional.cross_entropy(learn.model(xb), yb)
    assert learn.loss_func(learn.model(xb), yb).item() == pytest.approx(expected.item(), rel=1e-6)
    multi = splits_dataloaders(load_dataset("multilabel"), bs=64)
    assert isinstance(Learner(multi, create_model("mlp", n_in=multi.one_batch()[0].shape[1],
                                                  n_out=multi.one_batch()[1].shape[1])).loss_func,
                      BCEWithLogitsLossFlat)
