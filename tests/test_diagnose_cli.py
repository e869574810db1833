"""Diagnosing finished runs from disk (no retraining), the command line, validation/test
correlation of a constructed study, and class ablation counted item by item."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import f1_score, precision_recall_fscore_support

from fasttricks.diagnose import class_ablation, diagnose_run, load_run, study_correlation
from fasttricks.diagnose._cli import main
from fasttricks.recipes import build_learner, load_recipe, run_recipe


@pytest.fixture(scope="module")
def tiny_recipe():
    return load_recipe({
        "name": "digits_tiny",
        "data": {"name": "digits", "bs": 64},
        "model": {"name": "cnn2d", "channels": [4, 8]},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"epochs": 2},
        "metrics": ["accuracy"],
        "seed": 0,
    })


@pytest.fixture(scope="module")
def run_dir(tiny_recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = run_recipe(tiny_recipe, out_dir=out, progress=False)
    return result.out_dir


def _saved_predictions(run_dir, ds_idx):
    """The saved model's predictions, loaded here independently of the diagnosis code."""
    learn = build_learner(run_dir / "recipe.yaml")
    learn.model.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))
    with learn.no_bar():
        probs, targets = learn.get_preds(ds_idx=ds_idx)
    return probs.numpy(), targets.numpy()


def test_diagnose_run_report_matches_scikit_learn_on_the_saved_model(run_dir):
    result = diagnose_run(run_dir, "test", top_k=7)
    probs, y = _saved_predictions(run_dir, 2)
    pred = probs.argmax(1)
    per_class = pd.read_csv(result.out_dir / "per_class.csv").set_index("class").sort_index()
    p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    np.testing.assert_allclose(per_class["precision"], p, atol=1e-6)
    np.testing.assert_allclose(per_class["recall"], r, atol=1e-6)
    np.testing.assert_allclose(per_class["f1"], f, atol=1e-6)
    np.testing.assert_array_equal(per_class["support"], s)
    overall = json.loads((result.out_dir / "overall.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    # the weights on disk score exactly what training reported: nothing was retrained
    assert overall["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-6)
    assert overall["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    tops = pd.read_csv(result.out_dir / "top_losses.csv")
    assert len(tops) == 7
    losses = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))
    np.testing.assert_allclose(tops["loss"], np.sort(losses)[::-1][:7], rtol=1e-5)
    assert tops["item"].str.startswith("test/").all()
    pairs = pd.read_csv(result.out_dir / "confused_pairs.csv")
    off = [(a, b) for a, b in zip(y, pred) if a != b]
    top_pair = max(set(off), key=off.count)
    assert pairs.iloc[0]["count"] == off.count(top_pair)
    text = result.report.read_text()
    assert "## Worst classes" in text and "## Most confused pairs" in text
    for png in ("per_class_f1.png", "confusion_matrix.png", "top_losses.png"):
        assert (result.out_dir / png).stat().st_size > 1000 and png in text


def test_cli_writes_report_and_plots_and_ranks_unlabelled_items(run_dir, tmp_path, capsys):
    from fasttricks.datasets import digits

    unlabelled = digits().test.x[:40]
    np.save(tmp_path / "new.npy", unlabelled)
    code = main([str(run_dir), "--split", "train", "--unlabelled", str(tmp_path / "new.npy"),
                 "--top-k", "5"])
    assert code == 0
    out = capsys.readouterr().out
    assert "train:" in out and "report.md" in out
    diag = run_dir / "diagnosis"
    pngs = sorted(p.name for p in diag.glob("*.png"))
    assert len(pngs) >= 2
    text = (diag / "report.md").read_text()
    assert "## Suspected label noise" in text and "## What to label next" in text
    noise = pd.read_csv(diag / "label_noise.csv")
    assert (noise["given"] != noise["suggested"]).all()
    ranked = pd.read_csv(diag / "labelling_priority.csv")
    assert sorted(ranked["index"]) == list(range(40))
    assert ranked["score"].is_monotonic_decreasing
    learn = build_learner(run_dir / "recipe.yaml")
    learn.model.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))
    learn.model.eval()
    with torch.no_grad():
        p = torch.softmax(learn.model(torch.as_tensor(unlabelled)), 1).numpy()
    top2 = np.sort(p, axis=1)[:, -2:]
    first = ranked.iloc[0]
    assert first["margin"] == pytest.approx(top2[first["index"], 1] - top2[first["index"], 0],
                                            abs=1e-5)


def test_cli_says_in_one_line_when_a_folder_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a finished run folder" in err
    assert len(err.splitlines()) == 1
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([]) == 2
    assert "give exactly one of" in capsys.readouterr().err


def test_kfold_folder_needs_a_recipe_and_uses_out_of_fold_predictions(tiny_recipe, tmp_path):
    from fasttricks.ensemble import kfold_fit

    rec = load_recipe(tiny_recipe, {"schedule.epochs": 1})
    result = kfold_fit(rec, n_splits=2, out_dir=tmp_path, progress=False)
    assert load_run(result.out_dir) is not None  # k-fold folders keep their recipe.yaml
    (result.out_dir / "recipe.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="no recipe.yaml"):
        load_run(result.out_dir)
    diag = diagnose_run(result.out_dir, "train", recipe=rec)
    oof = torch.load(result.out_dir / "oof.pt", weights_only=True)
    assert diag.overall["accuracy"] == pytest.approx(
        (oof["preds"].argmax(1) == oof["targets"]).float().mean().item())
    assert diag.overall["accuracy"] == pytest.approx(result.oof["accuracy"], abs=1e-6)
    assert "out-of-fold" in diag.report.read_text()


# --------------------------------------------------------------------------------------------
# correlation of a constructed study


def _fake_study(root, values, name="fake"):
    """A study folder like the tuner's, with completed trials of known validation values."""
    import optuna
    import yaml

    from fasttricks.recipes import save_recipe
    from fasttricks.tune import TuneOptions, make_storage

    folder = root / name
    folder.mkdir(parents=True)
    save_recipe(load_recipe({"name": "syn", "data": "synthetic", "model": "mlp",
                             "schedule": {"epochs": 1}, "metrics": ["accuracy"]}),
                folder / "recipe.yaml")
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    TuneOptions().save(folder / "options.json")
    study = optuna.create_study(study_name=name, storage=make_storage(None, name, root=root),
                                direction="maximize")
    study.set_user_attr("metric", "accuracy")
    dist = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    for i, v in enumerate(values):
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 1e-3 * (1 + i)},
                                                  distributions=dist, value=v))
    pd.DataFrame({"number": range(len(values)), "value": values}).to_csv(
        folder / "trials.csv", index=False)
    return folder


@pytest.mark.parametrize("sign", [1, -1])
def test_study_correlation_on_a_constructed_study(tmp_path, sign):
    valid = [0.61, 0.70, 0.55, 0.80, 0.66, 0.74, 0.59]
    noise = [0.01, -0.02, 0.0, 0.015, -0.01, 0.005, 0.02]
    folder = _fake_study(tmp_path, valid)
    # the "test" score of a trial is a known function of its learning rate (= its number)
    test_of = {round(1e-3 * (1 + i), 9): sign * v + n for i, (v, n) in
               enumerate(zip(valid, noise))}
    seen = []

    def evaluate(recipe, metric):
        seen.append((float(recipe["optimizer"]["lr"]), metric))
        return test_of[round(float(recipe["optimizer"]["lr"]), 9)]

    res = study_correlation(folder, evaluate=evaluate, progress=False)
    tests = [sign * v + n for v, n in zip(valid, noise)]
    assert res.spearman == pytest.approx(stats.spearmanr(valid, tests)[0])
    assert res.kendall == pytest.approx(stats.kendalltau(valid, tests)[0])
    assert {m for _, m in seen} == {"accuracy"} and len(seen) == 7
    if sign == 1:
        assert "tracks test" in res.verdict
    else:
        assert "not correlated" in res.verdict and "rebuild the validation set" in res.verdict
    trials = pd.read_csv(folder / "trials.csv")
    np.testing.assert_allclose(trials["test_accuracy"], tests)
    assert (folder / "correlation.png").stat().st_size > 1000
    assert json.loads((folder / "correlation.json").read_text())["verdict"] == res.verdict
    # --top N re-evaluates only the N best by validation
    seen.clear()
    top = study_correlation(folder, top=3, evaluate=evaluate, progress=False, write=False)
    assert sorted(top.table["trial"]) == [1, 3, 5]
    assert len(seen) == 3


def test_study_correlation_retrains_with_the_studys_threads(tmp_path):
    import torch

    from fasttricks.tune import TuneOptions

    folder = _fake_study(tmp_path, [0.5, 0.6, 0.7])
    TuneOptions(threads=3).save(folder / "options.json")
    before = torch.get_num_threads()
    seen = []

    def evaluate(recipe, metric):
        seen.append(torch.get_num_threads())
        return 0.5

    study_correlation(folder, evaluate=evaluate, progress=False, write=False)
    assert seen == [3, 3, 3] and torch.get_num_threads() == before != 3


def test_study_cli_retrains_trials_and_reports(tmp_path, capsys):
    folder = _fake_study(tmp_path, [0.5, 0.6, 0.7])
    assert main(["--study", str(folder), "--top", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Spearman rho" in out
    res = pd.read_csv(folder / "correlation.csv")
    assert len(res) == 3 and res["test"].between(0, 1).all()
    base = load_recipe(folder / "recipe.yaml", {"optimizer.lr": 3e-3})
    assert res.set_index("trial").loc[2, "test"] == pytest.approx(
        run_recipe(base, progress=False).test["accuracy"])
    assert main(["--study", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# class ablation


def test_drop_class_removes_exactly_the_stated_number_of_training_items():
    from fasttricks.data import drop_class_indices
    from fasttricks.datasets import load_dataset
    from fasttricks.recipes import build_dataloaders

    base = {"name": "syn", "data": "synthetic", "model": "mlp"}
    full = load_dataset("synthetic").train
    n_cls = int((full.y == 2).sum())
    dls = build_dataloaders(load_recipe(base, {"data.drop_class": 2,
                                               "data.drop_fraction": 0.3}))
    y = dls.splits.train.y
    assert (y == 2).sum() == n_cls - math.floor(0.3 * n_cls + 0.5)
    assert ((y != 2).sum()) == (full.y != 2).sum()
    keep = drop_class_indices(full.y, 2, 1.0, seed=0)
    assert (full.y[keep] == 2).sum() == 0 and len(keep) == (full.y != 2).sum()
    assert len(drop_class_indices(full.y, 2, 0.0)) == len(full.y)
    with pytest.raises(ValueError, match="needs 'data.drop_class'"):
        load_recipe(base, {"data.drop_fraction": 0.5})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        load_recipe(base, {"data.drop_class": 1, "data.drop_fraction": 1.5})
    with pytest.raises(ValueError, match="unknown class 'z'"):
        build_dataloaders(load_recipe(base, {"data.drop_class": "z", "data.drop_fraction": 0.5}))


def test_class_ablation_counts_items_and_summarizes_f1_over_seeds(tmp_path, capsys):
    from fasttricks._stats import summarize
    from fasttricks.datasets import load_dataset

    recipe = {"name": "syn", "data": "synthetic", "model": "mlp", "schedule": {"epochs": 1}}
    n_cls = int((load_dataset("synthetic").train.y == 0).sum())
    res = class_ablation(recipe, 0, fractions=(1.0, 0.5), seeds=2, progress=False,
                         out_dir=tmp_path)
    counts = res.runs.groupby("fraction")["n_ablated_train"].unique()
    assert list(counts[1.0]) == [n_cls]
    assert list(counts[0.5]) == [n_cls - math.floor(0.5 * n_cls + 0.5)]
    assert sorted(res.runs["seed"].unique()) == [0, 1]
    row = res.table[(res.table["fraction"] == 0.5) & (res.table["class"] == "0")].iloc[0]
    f1s = res.runs[(res.runs["fraction"] == 0.5) & (res.runs["class"] == "0")]["f1"]
    base = res.runs[(res.runs["fraction"] == 1.0) & (res.runs["class"] == "0")]["f1"]
    assert row["f1_mean"] == pytest.approx(summarize(f1s)["mean"])
    assert row["f1_stderr"] == pytest.approx(summarize(f1s)["stderr"])
    assert row["delta"] == pytest.approx(f1s.mean() - base.mean())
    assert row["delta_stderr"] == pytest.approx(
        math.hypot(summarize(f1s)["stderr"], summarize(base)["stderr"]))
    assert "keeping 50% of '0'" in res.summary()
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    assert main(["--ablate", "nope", "digits", "--no-progress"]) == 2
    assert "unknown class 'nope'" in capsys.readouterr().err


def test_seed_ensemble_folder_is_diagnosed_on_its_averaged_members(tmp_path):
    from fasttricks.ensemble import seed_ensemble
    from fasttricks.recipes import save_recipe

    rec = load_recipe({"name": "syn", "data": "synthetic", "model": "mlp",
                       "schedule": {"epochs": 1}, "metrics": ["accuracy"]})
    result = seed_ensemble(rec, seeds=(0, 1), out_dir=tmp_path, progress=False)
    save_recipe(rec, tmp_path / "syn" / "recipe.yaml")  # the parent folder's recipe is found
    run = load_run(result.out_dir)
    assert run.description == "seed ensemble of 2"
    diag = diagnose_run(result.out_dir, "test")
    assert diag.overall["accuracy"] == pytest.approx(result.test["accuracy"], abs=1e-6)
    assert "Seed ensemble of 2" in diag.report.read_text()
