"""Predictions and submission files: runs, k-fold ensembles and exported learners."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fasttricks.predict import main, predict, predict_probs
from fasttricks.recipes import build_learner, fit_learner, load_recipe, run_recipe

# the digits recipe made tiny: a 2-channel CNN for one epoch
DIGITS = ["schedule.epochs=1", "model.channels=[4, 8]", "data.bs=128"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A trained digits run folder, and its learner."""
    out = tmp_path_factory.mktemp("runs")
    result = run_recipe(load_recipe("digits", DIGITS), out_dir=out, progress=False)
    return out / "digits", result.learn


def _test_x(learn) -> np.ndarray:
    return np.asarray(learn.dls.splits.test.x)


def test_run_predictions_are_the_argmax_of_the_learners_own_get_preds_in_order(digits_run):
    run, learn = digits_run
    preds, _ = learn.get_preds(ds_idx=2)
    frame = predict(run, "test")
    assert list(frame.columns) == ["id", "label"]
    assert frame["id"].tolist() == list(range(len(preds)))
    vocab = list(learn.dls.vocab)
    assert frame["label"].tolist() == [vocab[i] for i in preds.argmax(1).tolist()]
    probs = predict(run, "test", probs=True)
    assert list(probs.columns) == ["id", *map(str, vocab)]
    np.testing.assert_allclose(probs[list(map(str, vocab))].to_numpy(), preds.numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs[list(map(str, vocab))].to_numpy().sum(1), 1.0, atol=1e-5)


def test_tta_without_augmentation_changes_nothing(digits_run):
    run, _ = digits_run
    plain = predict_probs(run, "test")
    tta = predict_probs(run, "test", tta=True)
    assert tta.tta and not plain.tta
    np.testing.assert_allclose(tta.probs, plain.probs, rtol=1e-4, atol=1e-6)


def test_feature_csv_and_npy_predict_like_the_test_split_with_their_ids(digits_run, tmp_path):
    run, learn = digits_run
    x = _test_x(learn)[:40]
    expected = predict(run, "test")["label"].tolist()[:40]
    frame = pd.DataFrame(x.reshape(len(x), -1), columns=[f"px{i}" for i in range(64)])
    frame.insert(0, "id", [f"item{i:03d}" for i in range(len(x))])
    frame.to_csv(tmp_path / "items.csv", index=False)
    got = predict(run, tmp_path / "items.csv")
    assert got["id"].tolist() == frame["id"].tolist()
    assert got["label"].tolist() == expected
    np.save(tmp_path / "items.npy", x)
    got = predict(run, tmp_path / "items.npy")
    assert got["id"].tolist() == list(range(40)) and got["label"].tolist() == expected


def test_kfold_prediction_is_the_mean_of_the_fold_models_probabilities(tmp_path):
    from fasttricks.ensemble import kfold_fit, load_ensemble_member

    result = kfold_fit(load_recipe("digits", DIGITS), n_splits=2, out_dir=tmp_path,
                       test=False, progress=False)
    learn = build_learner(load_recipe("digits", DIGITS))
    x = _test_x(learn)[:50]
    np.save(tmp_path / "x.npy", x)
    probs = []
    for path in result.model_paths:  # each fold model by hand, softmax of its outputs
        model = load_ensemble_member(path).eval()
        with torch.no_grad():
            probs.append(torch.softmax(model(torch.as_tensor(x)), dim=1).numpy())
    expected = np.mean(probs, axis=0)
    assert not np.allclose(probs[0], probs[1], atol=1e-3)  # two different models
    got = predict_probs(result.out_dir, tmp_path / "x.npy")
    assert got.kind == "kfold" and got.n_models == 2
    np.testing.assert_allclose(got.probs, expected, rtol=1e-4, atol=1e-6)
    # the run folder above it finds the k-fold models too
    frame = predict(tmp_path / "digits", tmp_path / "x.npy")
    assert frame["label"].tolist() == [str(i) for i in expected.argmax(1)]


def test_multilabel_labels_are_the_classes_above_the_threshold(tmp_path):
    recipe = load_recipe("multilabel", ["schedule.epochs=1"])
    result = run_recipe(recipe, out_dir=tmp_path, progress=False)
    preds, _ = result.learn.get_preds(ds_idx=2)
    vocab = list(result.learn.dls.vocab)
    for threshold in (0.3, 0.5):
        frame = predict(tmp_path / recipe["name"], "test", threshold=threshold)
        expected = [" ".join(v for v, p in zip(vocab, row) if p > threshold)
                    for row in preds.tolist()]
        assert frame["label"].tolist() == expected
    assert any(" " in label for label in frame["label"])  # several labels per item occur


def test_array_learner_exports_and_loaded_learner_predicts_the_same(digits_run, tmp_path):
    from fastai.learner import load_learner

    _, learn = digits_run
    learn.path = tmp_path
    learn.export("export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert len(loaded.dls.valid.dataset) == 0 and list(loaded.dls.vocab) == list(learn.dls.vocab)
    x = _test_x(learn)[:30]
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        expected = torch.softmax(learn.model.eval()(torch.as_tensor(x)), dim=1).numpy()
    got = predict_probs(tmp_path / "export.pkl", tmp_path / "x.npy")
    assert got.kind == "export"
    np.testing.assert_allclose(got.probs, expected, rtol=1e-4, atol=1e-6)
    # the exported learner keeps its recipe, so it predicts the recipe's test split as well
    assert len(predict(tmp_path / "export.pkl", "test")) == len(learn.dls.splits.test)


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
                Image.fromarray(base + noise).save(d / f"{split}_{cls}_{i}.png")


def test_image_folder_learner_exports_and_predicts_a_folder_of_unlabelled_images(tmp_path):
    from fastai.learner import load_learner
    from PIL import Image

    _write_images(tmp_path / "data")
    recipe = load_recipe({"name": "img", "data": {"name": "image_folder",
                                                  "path": str(tmp_path / "data"), "size": 16,
                                                  "bs": 4},
                          "model": {"name": "cnn2d", "channels": [8, 16]},
                          "optimizer": {"lr": 1e-2}, "schedule": {"epochs": 2}})
    result = run_recipe(recipe, out_dir=tmp_path / "runs", progress=False)
    learn = result.learn
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    rng = np.random.default_rng(1)
    for i, level in enumerate([45, 210, 50, 205, 60]):  # dark = cat, bright = dog
        pixels = np.full((20, 20, 3), level, dtype=np.uint8) + rng.integers(0, 20, (20, 20, 3),
                                                                             dtype=np.uint8)
        Image.fromarray(pixels).save(unlabelled / f"img_{i}.png")
    (unlabelled / "notes.txt").write_text("not an image")
    files = sorted(unlabelled.glob("*.png"))
    preds, _ = learn.get_preds(dl=learn.dls.test_dl(files))
    frame = predict(tmp_path / "runs" / "img", unlabelled)
    assert frame["id"].tolist() == [f.stem for f in files]
    assert frame["label"].tolist() == [learn.dls.vocab[i] for i in preds.argmax(1).tolist()]
    assert frame["label"].tolist() == ["cat", "dog", "cat", "dog", "cat"]

    learn.path = tmp_path
    learn.export("img.pkl")
    loaded = load_learner(tmp_path / "img.pkl")
    assert list(loaded.dls.vocab) == ["cat", "dog"]
    got = predict_probs(tmp_path / "img.pkl", unlabelled)
    np.testing.assert_allclose(got.probs, preds.numpy(), rtol=1e-4, atol=1e-5)
    # a CSV naming the images (without their suffix) relative to its folder
    pd.DataFrame({"image_id": [f.stem for f in files]}).to_csv(unlabelled / "test.csv",
                                                               index=False)
    by_csv = predict(tmp_path / "img.pkl", unlabelled / "test.csv")
    assert by_csv.equals(frame)


def test_cli_writes_the_submission_csv(digits_run, tmp_path, capsys):
    run, _ = digits_run
    out = tmp_path / "sub" / "submission.csv"
    assert main([str(run), "test", "--out", str(out), "--no-progress"]) == 0
    written = pd.read_csv(out)
    expected = predict(run, "test")
    assert written["id"].tolist() == expected["id"].tolist()
    assert written["label"].astype(str).tolist() == expected["label"].tolist()
    assert f"{len(expected)} predictions (run, 1 model) -> {out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["submission.csv"]  # no temporary left


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nope", "test"], "does not exist; give a run folder"),
    (["{run}", "{tmp}/missing.csv"], "data '{tmp}/missing.csv' does not exist"),
    (["{run}", "{tmp}/bad.csv"], "the model takes items of shape (1, 8, 8) (64 values each)"),
    (["{tmp}", "test"], "holds no trained model"),
    (["{run}", "test", "--threshold", "2"], "--threshold must be in [0, 1], got 2.0"),
])
def test_cli_errors_are_one_line_with_exit_code_2(digits_run, tmp_path, capsys, args, message):
    run, _ = digits_run
    pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}).to_csv(tmp_path / "bad.csv", index=False)
    argv = [a.format(tmp=tmp_path, run=run) for a in args]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "s.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "s.csv").exists()
