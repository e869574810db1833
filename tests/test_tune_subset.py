"""Trials on a stratified subset of the training data, the best retrained on all of it, and
MLflow logging of trials and run folders into a local file store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from fasttricks.recipes import RecipeError, build_dataloaders, load_recipe
from fasttricks.recipes._build import subset_indices
from fasttricks.tune import TuneOptions, subset_correlation, tune

REPO = Path(__file__).resolve().parents[1]
SPACE = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _recipe(**overrides):
    return load_recipe("digits",
                       {"schedule.epochs": 1, "model.channels": [8, 16], **overrides})


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
def test_subset_keeps_each_class_in_proportion_within_one_item(fraction):
    counts = [50, 33, 17, 100, 7]
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.RandomState(0).shuffle(labels)
    idx = subset_indices(labels, fraction, seed=3)
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    kept = np.bincount(labels[idx], minlength=len(counts))
    assert np.all(np.abs(kept - fraction * np.array(counts)) <= 1), kept
    assert abs(len(idx) - fraction * labels.size) <= 1 + 1e-9 * labels.size or \
        abs(len(idx) - fraction * labels.size) <= len(counts)


def test_data_subset_trains_on_the_stratified_fraction_of_the_digits_training_split():
    full = build_dataloaders(_recipe()).splits.train.y
    part = build_dataloaders(_recipe(**{"data.subset": 0.25})).splits.train.y
    n_full = np.bincount(full)
    assert np.all(np.abs(np.bincount(part, minlength=10) - 0.25 * n_full) <= 1)
    assert build_dataloaders(_recipe(**{"data.subset": 1.0})).splits.train.y.tolist() == \
        full.tolist()


@pytest.mark.parametrize("value", [0, 1.5, -0.1, "half"])
def test_bad_subsets_are_refused_with_the_key_and_value(value):
    with pytest.raises((RecipeError, TypeError, ValueError), match="data.subset"):
        _recipe(**{"data.subset": value})
    with pytest.raises((TypeError, ValueError), match="subset"):
        TuneOptions(subset=value if value != 0 else 1.0)


def test_retrain_best_needs_a_subset():
    with pytest.raises(ValueError, match="needs subset"):
        TuneOptions(retrain_best=True)
    assert TuneOptions(subset=0.5).retrains and not TuneOptions().retrains
    assert not TuneOptions(subset=0.5, retrain_best=False).retrains


def test_spearman_correlation_matches_the_rank_formula():
    table = pd.DataFrame({"trial": [0, 1, 2, 3], "subset": [0.9, 0.8, 0.7, 0.6],
                          "full": [0.95, 0.7, 0.8, 0.5]})
    # ranks 4 3 2 1 vs 4 2 3 1: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    rho, text = subset_correlation(table)
    assert rho == pytest.approx(0.8) and "0.800" in text
    rho, text = subset_correlation(table.head(2))
    assert rho is None and "needs at least 3 retrained trials, have 2" in text


def test_subset_study_retrains_the_top_trials_on_all_the_data(tmp_path, capsys):
    space = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}}
    study = tune(_recipe(**{"schedule.epochs": 3}), space, sampler="random", pruner="none",
                 n_trials=3, subset=0.5,
                 retrain_top=3, root=tmp_path, threads=1, study_name="sub")
    out = tmp_path / "sub"
    retrained = pd.read_csv(out / "retrained.csv")
    assert sorted(retrained["trial"]) == [0, 1, 2]
    values = {t.number: t.value for t in study.trials}
    assert retrained["subset"].tolist() == [values[n] for n in retrained["trial"]]
    for row in retrained.itertuples():
        summary = pd.read_csv(out / "retrained" / f"trial_{row.trial}" / "metrics.csv")
        assert row.full == pytest.approx(summary["accuracy"].iloc[-1])
    printed = capsys.readouterr().out
    assert "subset vs full" in printed and "over 3 trials" in printed
    assert printed.count("retrained on all the data") == 3
    best = load_recipe(out / "best.yaml")
    assert "subset" not in best["data"]  # best.yaml trains on all the data
    trial_recipe = load_recipe(out / "recipe.yaml")
    assert "subset" not in trial_recipe["data"]


def test_mlflow_file_store_gets_trials_and_a_train_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from fasttricks.train import main as train_main

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)
    uri = f"file:{tmp_path / 'mlruns'}"
    study = tune(_recipe(**{"schedule.epochs": 2}), SPACE, sampler="random", pruner="none",
                 n_trials=2, root=tmp_path / "runs", threads=1, progress=False,
                 mlflow=uri, study_name="ml")
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ml").experiment_id])
    assert len(runs) == 2
    by_trial = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    for trial in study.trials:
        run = by_trial[trial.number]
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(trial.params["optimizer.lr"])
        history = client.get_metric_history(run.info.run_id, "accuracy")
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)
        assert run.data.metrics["final_valid_loss"] == pytest.approx(trial.user_attrs["valid_loss"])
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["recipe.yaml"]

    recipe = tmp_path / "tiny.yaml"
    from fasttricks.recipes import save_recipe

    save_recipe(_recipe(**{"schedule.epochs": 2}), recipe)
    assert train_main([str(recipe), "--mlflow", uri, "--out", "out", "--no-progress"]) == 0
    exp = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["optimizer.name"] == "adamw"
    assert run.data.params["schedule.epochs"] == "2"
    metrics = pd.read_csv(tmp_path / "out" / "digits" / "metrics.csv")
    logged = client.get_metric_history(run.info.run_id, "valid_loss")
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == \
        pytest.approx(metrics["valid_loss"].tolist())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "metrics.csv", "summary.json", "model.pth"} <= artifacts
    summary = pd.read_json(tmp_path / "out" / "digits" / "summary.json", typ="series")
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert run.data.metrics["final_valid_loss"] == pytest.approx(summary["valid"]["loss"])
