"""k-fold, seed and snapshot ensembles trained through the recipe API (tiny models, 1-2 epochs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback

from fasttricks.ensemble import (
    kfold_fit,
    load_ensemble_member,
    predict_ensemble,
    seed_ensemble,
    snapshot_ensemble,
)
from fasttricks.recipes import build_dataloaders, load_recipe



def tiny_digits(**changes):
    recipe = {
        "name": "tiny_digits",
        "data": {"name": "digits", "bs": 128},
        "model": {"name": "mlp", "hidden": [32], "dropout": 0.0},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"fit": "flat_cos", "epochs": 2},
        "metrics": ["accuracy"],
        "seed": 0,
    }
    recipe.update(changes)
    return load_recipe(recipe)


class CountFits(Callback):
    """Counts fits and remembers the first weight matrix at the start of each."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fits = 0
        self.start_weights: list[torch.Tensor] = []
        self.had_optimizer_state: list[bool] = []
        self.fail_at = fail_at

    def before_fit(self) -> None:
        if not self.training and hasattr(self.learn, "gather_preds"):
            return
        self.fits += 1
        self.start_weights.append(_first_weight(self.learn.model).detach().clone())
        self.had_optimizer_state.append(_has_optimizer_state(self.learn.opt))
        if self.fail_at is not None and self.fits == self.fail_at:
            raise RuntimeError("simulated crash")


def _has_optimizer_state(opt) -> bool:
    """Whether an optimizer (fastai's, or a wrapped torch one) holds per-parameter moments."""
    state = opt.state_dict()["state"]
    return any(bool(v) for v in (state.values() if isinstance(state, dict) else state))


def _first_weight(model):
    return next(p for p in model.parameters() if p.ndim == 2)


def _softmax_predictions(model, x):
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.as_tensor(x)), dim=1)


@pytest.fixture(scope="module")
def digits_kfold(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    recipe = tiny_digits()
    counter = CountFits()
    result = kfold_fit(recipe, n_splits=3, seed=0, out_dir=out, cbs=[counter], progress=False)
    return recipe, result, out, counter


def test_oof_predictions_cover_every_pool_item_once_by_the_model_that_did_not_train_on_it(
    digits_kfold,
):
    from fasttricks.datasets import load_dataset

    recipe, result, _, counter = digits_kfold
    assert counter.fits == 3
    pool = load_dataset("digits").pool()
    valid = np.concatenate([f.valid_idx for f in result.folds])
    assert np.array_equal(np.sort(valid), np.arange(len(pool)))
    assert result.oof_preds.shape == (len(pool), 10)
    assert torch.equal(result.oof_targets, torch.as_tensor(pool.y))
    for f in result.folds:
        assert np.intersect1d(f.train_idx, f.valid_idx).size == 0
        model = load_ensemble_member(f.model_path)
        own = _softmax_predictions(model, pool.x[f.valid_idx])
        torch.testing.assert_close(result.oof_preds[f.valid_idx], own, atol=1e-5, rtol=1e-4)
        # the saved model is the best epoch's (SaveBestCallback), not the last one
        assert f.best_epoch is not None and f.valid["accuracy"] == pytest.approx(f.best_value)
    # out-of-fold metric computed here from the predictions
    acc = (result.oof_preds.argmax(1).numpy() == pool.y).mean()
    assert result.oof["accuracy"] == pytest.approx(acc)
    nll = torch.nn.functional.nll_loss(torch.log(result.oof_preds), result.oof_targets).item()
    assert result.oof["loss"] == pytest.approx(nll, rel=1e-4)


def test_test_predictions_are_the_mean_of_the_fold_models(digits_kfold):
    from fasttricks.datasets import load_dataset

    _, result, _, _ = digits_kfold
    test = load_dataset("digits").test
    each = [_softmax_predictions(load_ensemble_member(p), test.x) for p in result.model_paths]
    want = torch.stack(each).mean(0)
    torch.testing.assert_close(result.test_preds, want, atol=1e-5, rtol=1e-4)
    assert result.test["accuracy"] == pytest.approx((want.argmax(1).numpy() == test.y).mean())
    singles = [(p.argmax(1).numpy() == test.y).mean() for p in each]
    np.testing.assert_allclose(result.fold_test_scores, singles)


def test_kfold_writes_results_plot_and_a_one_line_summary(digits_kfold):
    _, result, out, _ = digits_kfold
    kdir = out / "tiny_digits" / "kfold"
    assert result.out_dir == kdir
    saved = json.loads((kdir / "result.json").read_text())
    assert saved["oof"]["accuracy"] == pytest.approx(result.oof["accuracy"])
    assert [f["valid"]["accuracy"] for f in saved["folds"]] == pytest.approx(result.fold_scores)
    png = (kdir / "kfold.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    oof = torch.load(kdir / "oof.pt", weights_only=True)
    torch.testing.assert_close(oof["preds"], result.oof_preds)
    for f in result.folds:
        assert (oof["fold"][f.valid_idx] == f.fold).all()
    import pandas as pd

    table = pd.read_csv(kdir / "oof.csv")
    assert list(table.columns) == ["item", "fold", "target"] + [f"p_{c}" for c in range(10)]
    np.testing.assert_allclose(table[[f"p_{c}" for c in range(10)]].to_numpy(),
                               result.oof_preds.numpy(), atol=1e-6)
    assert (table["fold"].to_numpy() == oof["fold"].numpy()).all()
    assert len(pd.read_csv(kdir / "test.csv")) == len(result.test_preds)
    line = result.summary()
    assert "\n" not in line
    assert f"{result.oof['accuracy']:.4f}" in line and f"{result.test['accuracy']:.4f}" in line
    frame = result.to_frame()
    assert list(frame["valid_accuracy"]) == pytest.approx(result.fold_scores)


def test_rerun_after_a_crash_trains_only_the_unfinished_folds(tmp_path):
    recipe = tiny_digits(schedule={"fit": "flat_cos", "epochs": 1})
    with pytest.raises(RuntimeError, match="simulated crash"):
        kfold_fit(recipe, n_splits=3, out_dir=tmp_path, cbs=[CountFits(fail_at=2)],
                  progress=False)
    kdir = tmp_path / "tiny_digits" / "kfold"
    assert (kdir / "fold_0.pt").exists() and not (kdir / "fold_1.pt").exists()
    first = torch.load(kdir / "fold_0.pt", weights_only=True)
    counter = CountFits()
    result = kfold_fit(recipe, n_splits=3, out_dir=tmp_path, cbs=[counter], progress=False)
    assert counter.fits == 2
    assert [f.resumed for f in result.folds] == [True, False, False]
    torch.testing.assert_close(result.oof_preds[first["valid_idx"]], first["valid_preds"])
    # a finished run is not trained again; other settings retrain every fold
    again = CountFits()
    kfold_fit(recipe, n_splits=3, out_dir=tmp_path, cbs=[again], progress=False)
    assert again.fits == 0
    changed = CountFits()
    other = load_recipe(recipe, ["optimizer.lr=0.005"])
    kfold_fit(other, n_splits=3, out_dir=tmp_path, cbs=[changed], progress=False)
    assert changed.fits == 3


def test_multilabel_recipe_runs_end_to_end_with_multilabel_stratified_folds(tmp_path):
    from fasttricks.datasets import load_dataset

    recipe = load_recipe("multilabel",
                         {"schedule.epochs": 1, "model.hidden": [32], "data.n_samples": 600})
    result = kfold_fit(recipe, n_splits=3, out_dir=tmp_path, progress=False)
    pool = load_dataset("multilabel", n_samples=600).pool()
    assert result.oof_preds.shape == pool.y.shape
    valid = np.concatenate([f.valid_idx for f in result.folds])
    assert np.array_equal(np.sort(valid), np.arange(len(pool)))
    for f in result.folds:  # label rates of each held-out fold stay close to the pool's
        np.testing.assert_allclose(pool.y[f.valid_idx].mean(0), pool.y.mean(0), atol=0.03)
        model = load_ensemble_member(f.model_path).eval()
        with torch.no_grad():
            own = torch.sigmoid(model(torch.as_tensor(pool.x[f.valid_idx])))
        torch.testing.assert_close(result.oof_preds[f.valid_idx], own, atol=1e-5, rtol=1e-4)
    hits = ((result.oof_preds > 0.5).float() == torch.as_tensor(pool.y)).float().mean().item()
    assert result.oof["accuracy_multi"] == pytest.approx(hits)
    assert result.metric == "f1_multi" and 0.0 < result.test["f1_multi"] <= 1.0


def test_seed_ensemble_averages_members_and_reports_their_spread(tmp_path):
    recipe = tiny_digits(schedule={"fit": "flat_cos", "epochs": 1})
    result = seed_ensemble(recipe, seeds=[0, 1, 2], out_dir=tmp_path, progress=False)
    dls = build_dataloaders(recipe)
    test_y = dls.splits.test.y
    each = [predict_ensemble([p], dls, ds_idx=2) for p in result.model_paths]
    assert not torch.allclose(each[0], each[1]), "different seeds must give different models"
    torch.testing.assert_close(result.test_preds, torch.stack(each).mean(0), atol=1e-5, rtol=1e-4)
    scores = np.array([(p.argmax(1).numpy() == test_y).mean() for p in each])
    np.testing.assert_allclose(result.member_scores(), scores)
    assert result.mean == pytest.approx(scores.mean())
    assert result.std == pytest.approx(scores.std(ddof=1), rel=1e-4)
    assert result.sem == pytest.approx(scores.std(ddof=1) / np.sqrt(3), rel=1e-4)
    ens = (result.test_preds.argmax(1).numpy() == test_y).mean()
    assert result.ensemble_score == pytest.approx(ens)
    assert (tmp_path / "tiny_digits" / "seeds" / "seed.png").exists()
    # adding a seed reuses the three finished ones
    counter = CountFits()
    more = seed_ensemble(recipe, seeds=[0, 1, 2, 3], out_dir=tmp_path, cbs=[counter],
                         progress=False)
    assert counter.fits == 1 and [m.resumed for m in more.members] == [True, True, True, False]


def test_snapshot_ensemble_continues_each_cycle_from_the_last_and_averages_snapshots(tmp_path):
    recipe = tiny_digits(schedule={"fit": "one_cycle", "epochs": 1})
    counter = CountFits()
    result = snapshot_ensemble(recipe, cycles=2, out_dir=tmp_path, cbs=[counter], progress=False)
    assert counter.fits == 2
    snap0 = load_ensemble_member(result.model_paths[0])
    # cycle 2 starts from exactly the weights cycle 1 ended with
    torch.testing.assert_close(counter.start_weights[1], _first_weight(snap0))
    assert counter.had_optimizer_state == [False, True]  # Adam moments carry over
    dls = build_dataloaders(recipe)
    each = [predict_ensemble([p], dls, ds_idx=2) for p in result.model_paths]
    assert not torch.allclose(each[0], each[1])
    torch.testing.assert_close(result.test_preds, (each[0] + each[1]) / 2, atol=1e-5, rtol=1e-4)
    # asking for one more cycle trains only that one, from the second snapshot
    more = CountFits()
    longer = snapshot_ensemble(recipe, cycles=3, out_dir=tmp_path, cbs=[more], progress=False)
    assert more.fits == 1 and len(longer.members) == 3
    snap1 = load_ensemble_member(result.model_paths[1])
    torch.testing.assert_close(more.start_weights[0], _first_weight(snap1))
    assert more.had_optimizer_state == [True]


def test_snapshot_ensemble_rejects_bad_cycles():
    with pytest.raises(ValueError, match="cycles must be >= 1, got 0"):
        snapshot_ensemble(tiny_digits(), cycles=0)


def test_train_cli_runs_kfold(tmp_path, capsys):
    from fasttricks.train import main

    argv = ["digits", "--kfold", "2", "--out", str(tmp_path),
            "--no-progress", "--threads", "1", "--set", "schedule.epochs=1",
            "--set", "model.channels=[8]"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "digits" / "kfold" / "result.json").read_text())
    assert len(saved["folds"]) == 2
    assert "2-fold" in out and f"{saved['oof']['accuracy']:.4f}" in out


def test_train_cli_rejects_a_single_fold_and_kfold_with_seeds(tmp_cwd, capsys):
    from fasttricks.train import main

    recipe = "digits"
    assert main([recipe, "--kfold", "1", "--no-progress"]) == 2
    assert "n_splits must be >= 2" in capsys.readouterr().err
    assert main([recipe, "--kfold", "3", "--seeds", "2"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    assert not (tmp_cwd / "runs").exists()


@pytest.mark.cuda
def test_kfold_with_fp16_on_cuda_keeps_oof_equal_to_each_fold_models_predictions(tmp_path):
    from fasttricks.datasets import load_dataset

    recipe = tiny_digits(fp16=True)
    result = kfold_fit(recipe, n_splits=2, out_dir=tmp_path, progress=False)
    pool = load_dataset("digits").pool()
    for f in result.folds:
        model = load_ensemble_member(f.model_path, device="cuda").eval()
        x = torch.as_tensor(pool.x[f.valid_idx]).cuda()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            own = torch.softmax(model(x).float(), dim=1).cpu()
        torch.testing.assert_close(result.oof_preds[f.valid_idx], own, atol=2e-3, rtol=1e-2)
    dls = build_dataloaders(recipe)
    fp32 = predict_ensemble(result.model_paths, dls, ds_idx=2, device="cuda")
    torch.testing.assert_close(fp32, result.test_preds, atol=1e-2, rtol=5e-2)


def test_grouped_kfold_without_test_keeps_groups_together_and_skips_the_test_split(tmp_path):
    from fasttricks.datasets import load_dataset

    recipe = tiny_digits(schedule={"fit": "flat_cos", "epochs": 1})
    n = len(load_dataset("digits").pool())
    groups = np.arange(n) // 7
    result = kfold_fit(recipe, n_splits=2, test=False, groups=groups, stratify=False,
                       out_dir=tmp_path, progress=False)
    for f in result.folds:
        assert np.intersect1d(groups[f.train_idx], groups[f.valid_idx]).size == 0
        assert f.test is None
    assert result.test is None and result.test_preds is None
    assert "test" not in result.summary()
    assert result.plot().exists()
    with pytest.raises(ValueError, match="labels and groups must have the same length"):
        kfold_fit(recipe, n_splits=2, groups=groups[:-1], out_dir=tmp_path, progress=False)


class PoisonWeights(Callback):
    """After fit (and after SaveBestCallback reloaded the best weights): every weight NaN."""

    order = 100

    def after_fit(self) -> None:
        with torch.no_grad():
            for p in self.learn.model.parameters():
                p.fill_(float("nan"))


def _strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_result_json_is_strict_json_with_null_for_a_nan_metric(tmp_path):
    recipe = tiny_digits(schedule={"fit": "flat_cos", "epochs": 1}, metrics=[])
    seeds = seed_ensemble(recipe, seeds=[0], out_dir=tmp_path, cbs=[PoisonWeights()],
                          progress=False)
    assert np.isnan(seeds.valid["loss"]) and np.isnan(seeds.mean)
    saved = _strict_json(tmp_path / "tiny_digits" / "seeds" / "result.json")
    assert saved["valid"]["loss"] is None and saved["test"]["loss"] is None
    assert saved["members"][0]["valid"]["loss"] is None and saved["mean"] is None
    assert saved["std"] == 0.0 and saved["metric"] == "loss"
    assert (tmp_path / "tiny_digits" / "seeds" / "seed.png").exists()
    folds = kfold_fit(recipe, n_splits=2, out_dir=tmp_path, cbs=[PoisonWeights()],
                      progress=False)
    assert np.isnan(folds.oof["loss"])
    saved = _strict_json(tmp_path / "tiny_digits" / "kfold" / "result.json")
    assert saved["oof"]["loss"] is None and saved["test"]["loss"] is None
    assert [f["valid"]["loss"] for f in saved["folds"]] == [None, None]
    assert all(f["best_value"] is not None for f in saved["folds"])  # training itself was fine


class RecordEpochs(Callback):
    """The recorder's per-epoch values of every fit, by name."""

    order = 100

    def __init__(self) -> None:
        self.fits: list[dict[str, list[float]]] = []

    def after_fit(self) -> None:
        rec = self.learn.recorder
        names = list(rec.metric_names[1:-1])  # without "epoch" and "time"
        self.fits.append({n: [float(v[j]) for v in rec.values] for j, n in enumerate(names)})


def test_kfold_on_error_rate_keeps_the_epoch_with_the_lowest_error(tmp_path):
    recipe = tiny_digits(schedule={"fit": "flat_cos", "epochs": 3}, metrics=["error_rate"],
                         optimizer={"name": "adamw", "lr": 3e-3})
    epochs = RecordEpochs()
    result = kfold_fit(recipe, n_splits=2, test=False, out_dir=tmp_path, cbs=[epochs],
                       progress=False)
    assert result.direction == "minimize" and result.metric == "error_rate"
    assert len(epochs.fits) == 2
    for fold, fit in zip(result.folds, epochs.fits):
        errors = fit["error_rate"]
        assert len(set(errors)) > 1, f"every epoch had the same error {errors}: nothing to pick"
        assert fold.best_epoch == int(np.argmin(errors))
        assert fold.best_value == pytest.approx(min(errors))
        assert fold.valid["error_rate"] == pytest.approx(min(errors))
    saved = json.loads((tmp_path / "tiny_digits" / "kfold" / "result.json").read_text())
    assert saved["direction"] == "minimize"
    ens = seed_ensemble(recipe, seeds=[0], test=False, out_dir=tmp_path, progress=False)
    assert ens.direction == "minimize"


class _Payload:
    """Pickles to ``os.mkdir(marker)``: unpickling it fully runs that call."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_planted_pickles_in_a_run_folder_are_refused_and_never_run(tmp_path):
    recipe = tiny_digits(schedule={"fit": "one_cycle", "epochs": 1})
    out = tmp_path / "runs"
    sdir = out / "tiny_digits" / "snapshots"
    marker = tmp_path / "payload_ran"
    probe = tmp_path / "probe.pth"
    torch.save(_Payload(marker), probe)
    torch.load(probe, weights_only=False)  # the payload works when fully unpickled
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(ValueError, match="allow_pickle=False refuses"):
        load_ensemble_member(probe, allow_pickle=False)
    assert not marker.exists()

    snapshot_ensemble(recipe, cycles=1, out_dir=out, progress=False)
    torch.save(_Payload(marker), sdir / "resume.pth")  # planted optimizer state
    counter = CountFits()
    result = snapshot_ensemble(recipe, cycles=2, out_dir=out, cbs=[counter], progress=False)
    assert not marker.exists()
    # without a readable resume state nothing is continued: both cycles are trained afresh
    assert counter.fits == 2 and [m.resumed for m in result.members] == [False, False]
    assert counter.had_optimizer_state == [False, True]
    state = torch.load(sdir / "resume.pth", weights_only=True)
    assert state["cycle"] == 1 and set(state) >= {"model", "opt"}

    torch.save(_Payload(marker), sdir / "cycle_0.pt")  # planted member record
    again = CountFits()
    result = snapshot_ensemble(recipe, cycles=2, out_dir=out, cbs=[again], progress=False)
    assert not marker.exists()
    assert again.fits == 2 and [m.resumed for m in result.members] == [False, False]
