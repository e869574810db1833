"""Recipes: validation, overrides, building and running learners, the runs folder, the CLI."""

from __future__ import annotations

import functools
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import tiny_recipe

from fasttricks.recipes import (
    build_dataloaders,
    build_learner,
    evaluate,
    fit_learner,
    load_recipe,
    primary_metric,
    run_recipe,
    set_in_recipe,
)
from fasttricks.recipes._builtin import BUILTIN_DIR

RECIPES = sorted(BUILTIN_DIR.glob("*.yaml"))
SHIPPED = [p for p in RECIPES if not p.name.endswith(".space.yaml")]


# ---------------------------------------------------------------------------------- validation


def test_defaults_are_filled_in_and_resolved():
    r = load_recipe({"data": {"name": "synthetic"}, "model": {"name": "mlp"}})
    assert r["name"] == "recipe"
    assert r["loss"] == {"name": "cross_entropy"}
    assert r["schedule"] == {"fit": "flat_cos", "epochs": 5, "pct_start": 0.75, "div": 25.0,
                             "div_final": 1e5}
    assert r["metrics"] == ["accuracy"]
    assert r["fp16"] == "auto" and r["channels_last"] == "auto" and r["seed"] == 0
    assert r["data"]["bs"] == 64 and r["data"]["sampler"] == "random"
    assert load_recipe(r) == r  # a resolved recipe is a fixed point


def test_multilabel_data_defaults_to_bce_and_accuracy_multi():
    r = load_recipe({"data": {"name": "multilabel"}, "model": {"name": "mlp"}})
    assert r["loss"]["name"] == "bce"
    assert r["metrics"] == ["accuracy_multi"]


def test_one_cycle_default_pct_start_is_fastais():
    r = load_recipe({"data": "synthetic", "model": "mlp", "schedule": {"fit": "one_cycle"}})
    assert r["schedule"]["pct_start"] == 0.25


def test_exponent_numbers_that_yaml_reads_as_strings_are_coerced(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {name: synthetic}\nmodel: {name: mlp}\n"
                    "optimizer: {name: adamw, lr: 1e-3, eps: 1e-7}\n"
                    "schedule: {epochs: 1e1, div_final: 1e4}\n")
    assert isinstance(yaml.safe_load(path.read_text())["optimizer"]["lr"], str)  # the pitfall
    r = load_recipe(path)
    assert r["optimizer"]["lr"] == 1e-3 and isinstance(r["optimizer"]["lr"], float)
    assert r["optimizer"]["eps"] == 1e-7
    assert r["schedule"]["epochs"] == 10 and isinstance(r["schedule"]["epochs"], int)
    assert r["schedule"]["div_final"] == 1e4
    assert r["name"] == "r"  # from the file name


def test_unknown_section_names_it_lists_allowed_and_suggests_closest():
    with pytest.raises(KeyError) as err:
        load_recipe({"data": "synthetic", "model": "mlp", "optimzer": {"lr": 1e-3}})
    msg = str(err.value)
    assert "'optimzer'" in msg
    assert "'optimizer'" in msg and "'schedule'" in msg and "'callbacks'" in msg
    assert "Did you mean 'optimizer'?" in msg


@pytest.mark.parametrize(
    "section, key, closest",
    [
        ("schedule", "epoch", "epochs"),
        ("data", "valid_pc", "valid_pct"),
        ("model", "hiden", "hidden"),
    ],
)
def test_unknown_key_names_its_path_allowed_keys_and_closest_match(section, key, closest):
    raw = {"data": {"name": "synthetic"}, "model": {"name": "mlp"}}
    raw.setdefault(section, {})[key] = 1
    with pytest.raises(KeyError) as err:
        load_recipe(raw)
    msg = str(err.value)
    assert f"'{section}.{key}'" in msg
    assert "allowed keys" in msg and f"'{closest}'" in msg
    assert f"Did you mean '{closest}'?" in msg


def test_unknown_optimizer_override_is_rejected_with_closest_match():
    with pytest.raises(KeyError) as err:
        load_recipe({"data": "synthetic", "model": "mlp", "optimizer": {"name": "adamw", "ws": 1}})
    msg = str(err.value)
    assert "'optimizer.ws'" in msg and "Did you mean 'wd'?" in msg


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("optimizer.lr", "fast", "a number"),
        ("schedule.epochs", "ten", "an integer"),
        ("schedule.epochs", 2.5, "an integer"),
        ("fp16", "yes", "true, false or 'auto'"),
        ("seed", [1], "an integer"),
        ("retrain_at_best", "no", "true or false"),
        ("data.bs", "big", "an integer"),
        ("data.valid_pct", "a lot", "a number"),
    ],
)
def test_wrong_type_names_the_dotted_path_and_echoes_the_value(path, value, expected):
    with pytest.raises(TypeError) as err:
        tiny_recipe(**{path: value})
    msg = str(err.value)
    assert f"'{path}'" in msg and repr(value) in msg and expected in msg


@pytest.mark.parametrize(
    "path, value, known, closest",
    [
        ("data.name", "digit", "mnist1d", "digits"),
        ("model.name", "cnn_2d", "cnn1d", "cnn2d"),
        ("loss.name", "focall", "cross_entropy", "focal"),
        ("schedule.fit", "flatcos", "one_cycle", "flat_cos"),
        ("metrics", ["acuracy"], "error_rate", "accuracy"),
        ("optimizer.name", "adamm", "sgd", "adamw"),
    ],
)
def test_unknown_names_list_known_ones_and_closest(path, value, known, closest):
    with pytest.raises(KeyError) as err:
        tiny_recipe(**{path: value})
    msg = str(err.value)
    assert repr(value if not isinstance(value, list) else value[0]) in msg
    assert f"'{known}'" in msg and f"Did you mean '{closest}'?" in msg


def test_unknown_callback_and_bad_callback_option_fail_before_training():
    with pytest.raises(KeyError, match="Did you mean 'ema'"):
        tiny_recipe(callbacks=[{"name": "emma"}])
    with pytest.raises(TypeError, match="decay"):
        tiny_recipe(callbacks=[{"name": "ema", "decayy": 0.9}])


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        ("schedule.epochs", 0, "'schedule.epochs' must be > 0, got 0"),
        ("optimizer.lr", -1e-3, "'optimizer.lr' must be > 0, got -0.001"),
        ("schedule.pct_start", 1.5, "'schedule.pct_start' must be in [0, 1], got 1.5"),
        ("data.bs", 0, "'data.bs' must be > 0, got 0"),
        ("name", "a/b", "folder name"),
    ],
)
def test_out_of_range_values_raise_value_error_with_path_and_value(path, value, fragment):
    with pytest.raises(ValueError) as err:
        tiny_recipe(**{path: value})
    assert fragment in str(err.value)


def test_missing_dataset_name_lists_known_datasets():
    with pytest.raises(ValueError, match="needs a 'name'.*digits.*mnist1d"):
        load_recipe({"data": {"bs": 32}, "model": "mlp"})


def test_a_required_dataset_argument_is_reported_at_load_time():
    with pytest.raises(ValueError, match="dataset 'tabular_csv' needs data.path"):
        load_recipe({"data": {"name": "tabular_csv"}, "model": "tabular"})


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------- overrides


def test_string_overrides_are_parsed_as_yaml_then_coerced():
    r = load_recipe(SHIPPED[0], ["optimizer.lr=1e-3", "schedule.epochs=5",
                                 "schedule.fit=one_cycle", "seed=7", "fp16=false"])
    assert r["optimizer"]["lr"] == 1e-3
    assert r["schedule"]["epochs"] == 5 and r["schedule"]["fit"] == "one_cycle"
    assert r["seed"] == 7 and r["fp16"] is False


def test_override_of_a_list_and_a_mapping_of_overrides():
    r = load_recipe("digits", {"model.channels": [8, 16],
                                                      "data.valid_pct": "2e-1"})
    assert r["model"]["channels"] == [8, 16]
    assert r["data"]["valid_pct"] == 0.2


def test_callbacks_can_be_overridden_by_name_or_position():
    r = tiny_recipe(callbacks=[{"name": "ema", "decay": 0.9}])
    assert load_recipe(r, ["callbacks.ema.decay=0.99"])["callbacks"][0]["decay"] == 0.99
    assert load_recipe(r, ["callbacks.0.decay=0.5"])["callbacks"][0]["decay"] == 0.5


def test_bad_override_keys_and_syntax_are_rejected():
    with pytest.raises(KeyError, match="Did you mean 'optimizer'"):
        load_recipe(SHIPPED[0], ["optimiser.lr=1e-3"])
    with pytest.raises(KeyError, match="schedule.epoch"):
        load_recipe(SHIPPED[0], ["schedule.epoch=3"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe(SHIPPED[0], ["schedule.epochs"])


def test_set_in_recipe_returns_a_changed_copy_and_rejects_unknown_paths():
    r = tiny_recipe()
    r2 = set_in_recipe(r, "optimizer.lr", "3e-3")
    assert r2["optimizer"]["lr"] == 3e-3 and r["optimizer"]["lr"] == 1e-2
    with pytest.raises(KeyError, match="schedule.warmup"):
        set_in_recipe(r, "schedule.warmup", 3)
    with pytest.raises(KeyError, match="'epochs' is a value|schedule.epochs"):
        set_in_recipe(r, "schedule.epochs.x", 3)


def test_primary_metric_and_its_direction():
    assert primary_metric(tiny_recipe()) == ("accuracy", "maximize")
    assert primary_metric(tiny_recipe(metrics=["error_rate"])) == ("error_rate", "minimize")
    assert primary_metric(tiny_recipe(metrics=[])) == ("valid_loss", "minimize")


# ---------------------------------------------------------------------------------- learners


def test_build_learner_wires_the_recipe():
    from fastai.callback.fp16 import MixedPrecision

    learn = build_learner(tiny_recipe(callbacks=[{"name": "ema", "decay": 0.9}]))
    assert learn.recipe["name"] == "tiny"
    assert [m.name for m in learn.metrics] == ["accuracy"]
    assert any(type(cb).__name__ == "EMACallback" for cb in learn.cbs)
    assert len(learn.dls.loaders) == 3
    assert learn.dls.vocab == ["0", "1", "2"]
    assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs) or torch.cuda.is_available()


def test_evaluate_matches_an_independent_accuracy_on_the_test_split():
    learn = build_learner(tiny_recipe())
    fit_learner(learn)
    res = evaluate(learn, ds_idx=2)
    test = learn.dls.splits.test
    with torch.no_grad():
        learn.model.eval()
        logits = learn.model(torch.as_tensor(test.x))
    acc = (logits.argmax(1).numpy() == test.y).mean()
    ce = torch.nn.functional.cross_entropy(logits, torch.as_tensor(test.y)).item()
    assert res["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert res["loss"] == pytest.approx(ce, rel=1e-4)


def test_get_preds_on_loader_2_follows_the_test_split_order_and_predict_decodes_names():
    learn = build_learner(tiny_recipe())
    fit_learner(learn)
    preds, targs = learn.get_preds(ds_idx=2)
    test = learn.dls.splits.test
    assert preds.shape == (len(test), 3)
    np.testing.assert_array_equal(targs.numpy(), test.y)
    name, idx, probs = learn.predict(torch.as_tensor(test.x[0]))
    assert name == learn.dls.vocab[int(idx)]
    assert torch.allclose(probs, preds[0], atol=1e-5)


def _cos(start: float, end: float, pos: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * pos)) / 2


def test_flat_cos_schedule_keeps_lr_flat_then_anneals_to_lr_over_div_final():
    learn = build_learner(tiny_recipe(**{"schedule.div_final": 100.0, "schedule.epochs": 4}))
    fit_learner(learn)
    lrs = np.asarray(learn.recorder.lrs)
    n = len(lrs)
    lr, pct = 1e-2, 0.75
    expected = [lr if i / n < pct else _cos(lr, lr / 100, (i / n - pct) / (1 - pct))
                for i in range(n)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_one_cycle_schedule_warms_up_from_lr_over_div_then_anneals():
    learn = build_learner(tiny_recipe(**{"schedule.fit": "one_cycle", "schedule.div": 10.0,
                                  "schedule.epochs": 4}))
    fit_learner(learn)
    lrs = np.asarray(learn.recorder.lrs)
    n = len(lrs)
    lr, pct = 1e-2, 0.25
    expected = [_cos(lr / 10, lr, (i / n) / pct) if i / n < pct
                else _cos(lr, lr / 1e5, (i / n - pct) / (1 - pct)) for i in range(n)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_same_seed_gives_the_same_metric_and_another_seed_does_not():
    a = run_recipe(tiny_recipe(), progress=False)
    b = run_recipe(tiny_recipe(), progress=False)
    c = run_recipe(tiny_recipe(seed=1), progress=False)
    assert a.test == b.test
    pd.testing.assert_frame_equal(a.history.drop(columns=["seconds", "timestamp"]),
                                  b.history.drop(columns=["seconds", "timestamp"]))
    assert a.history["train_loss"].tolist() != c.history["train_loss"].tolist()


def test_build_dataloaders_uses_the_given_splits_and_keeps_test_unshuffled():
    from fasttricks.datasets import load_dataset

    recipe = tiny_recipe()
    splits = load_dataset("synthetic", n_samples=300)
    folds = splits.resplit(np.arange(0, 150), np.arange(150, len(splits.pool())))
    dls = build_dataloaders(recipe, splits=folds)
    assert dls.splits is folds
    assert len(dls.train.dataset) == 150 and len(dls.valid.dataset) == len(folds.valid)
    ys = torch.cat([b[1] for b in dls[2]]).numpy()
    np.testing.assert_array_equal(ys, folds.test.y)
    ys_again = torch.cat([b[1] for b in dls[2]]).numpy()
    np.testing.assert_array_equal(ys_again, ys)


def _longtail(*changes: str) -> dict:
    return load_recipe({"name": "lt", "data": {"name": "longtail", "base": "digits",
                                               "imbalance": 10, "bs": 32},
                        "model": {"name": "mlp", "hidden": [16]},
                        "schedule": {"epochs": 1}}, list(changes))


def test_oversample_true_grows_every_training_class_to_the_largest():
    plain = build_dataloaders(_longtail())
    over = build_dataloaders(_longtail("data.oversample=true"))
    counts = np.bincount(over.splits.train.y)
    assert (counts == np.bincount(plain.splits.train.y).max()).all()
    assert len(over.train.dataset) == counts.sum()
    np.testing.assert_array_equal(over.splits.test.y, plain.splits.test.y)  # test untouched
    half = build_dataloaders(_longtail("data.oversample=0.5"))
    c = np.bincount(half.splits.train.y)
    assert c.min() == math.ceil(0.5 * c.max())
    with pytest.raises(ValueError, match="data.oversample"):
        _longtail("data.oversample=3")


def test_weighted_sampler_draws_classes_with_inverse_frequency():
    dls = build_dataloaders(_longtail("data.sampler=weighted", "data.weights=inv"))
    y = dls.splits.train.y
    drawn = np.concatenate([torch.cat([b[1] for b in dls.train]).numpy() for _ in range(20)])
    share = np.bincount(drawn, minlength=10) / len(drawn)
    np.testing.assert_allclose(share, 0.1, atol=0.02)  # balanced, although y is 10:1
    assert np.bincount(y)[0] >= 8 * np.bincount(y)[-1]
    sqrt = build_dataloaders(_longtail("data.sampler=weighted"))
    drawn = np.concatenate([torch.cat([b[1] for b in sqrt.train]).numpy() for _ in range(20)])
    n = np.bincount(y).astype(float)
    np.testing.assert_allclose(np.bincount(drawn, minlength=10) / len(drawn),
                               np.sqrt(n) / np.sqrt(n).sum(), atol=0.02)
    with pytest.raises(KeyError, match="Did you mean 'inv'"):
        _longtail("data.sampler=weighted", "data.weights=invv")


def test_retrain_at_best_retrains_from_scratch_for_best_epoch_plus_one(tmp_cwd):
    recipe = tiny_recipe(**{"retrain_at_best": True, "schedule.epochs": 5, "optimizer.lr": 3e-2})
    result = run_recipe(recipe, out_dir="runs", progress=False)
    best = result.extra["save_best"]
    first = pd.DataFrame(best["history"])
    assert len(first) == 5
    # best_epoch is the 0-based index of the best valid accuracy (first one on ties)
    assert best["best_epoch"] == int(first["accuracy"].to_numpy().argmax())
    assert best["best_value"] == pytest.approx(first["accuracy"].max())
    assert result.extra["retrain"]["epochs"] == best["best_epoch"] + 1
    assert len(result.history) == best["best_epoch"] + 1
    summary = json.loads((tmp_cwd / "runs" / "tiny" / "summary.json").read_text())
    assert summary["save_best"]["best_epoch"] == best["best_epoch"]
    assert summary["retrain"]["test"] == pytest.approx(result.test)
    assert not (tmp_cwd / "models").exists()  # the save-best checkpoint went to a temp folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_fp16_auto_is_off_without_cuda():
    from fastai.callback.fp16 import MixedPrecision

    for flag in ("auto", True):
        learn = build_learner(tiny_recipe(fp16=flag))
        assert not any(isinstance(cb, MixedPrecision) for cb in learn.cbs)


@pytest.mark.cuda
def test_fp16_auto_is_on_with_cuda_and_channels_last_for_conv_nets():
    from fastai.callback.fp16 import MixedPrecision

    learn = build_learner(load_recipe("digits",
                                      ["schedule.epochs=1", "fp16=auto"]))
    assert any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    fit_learner(learn)
    assert math.isfinite(evaluate(learn)["loss"])
    off = build_learner(load_recipe("digits", ["fp16=false"]))
    assert not any(isinstance(cb, MixedPrecision) for cb in off.cbs)


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_recipe_runs_one_short_epoch(path):
    result = run_recipe(load_recipe(path, ["schedule.epochs=1"]), progress=False)
    assert len(result.history) == 1
    metric, _ = primary_metric(result.learn.recipe)
    assert math.isfinite(result.test["loss"]) and 0.0 <= result.test[metric] <= 1.0


# ---------------------------------------------------------------------------------- runs folder


def test_run_folder_holds_config_metrics_model_and_curves(tmp_cwd):
    recipe = tiny_recipe(**{"schedule.epochs": 3})
    result = run_recipe(recipe, out_dir="runs", progress=False)
    run = tmp_cwd / "runs" / "tiny"
    assert result.out_dir == Path("runs") / "tiny"
    assert sorted(p.name for p in run.iterdir()) == [
        "curves.png", "metrics.csv", "model.pth", "recipe.yaml", "summary.json"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files left
    assert load_recipe(run / "recipe.yaml") == recipe
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1, 2]
    assert {"train_loss", "valid_loss", "accuracy", "seconds", "timestamp"} <= set(metrics)
    stamps = [datetime.fromisoformat(t) for t in metrics["timestamp"]]
    assert stamps == sorted(stamps)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"] == pytest.approx(result.test)
    # the saved weights reproduce the reported test numbers in a freshly built learner
    fresh = build_learner(recipe)
    fresh.model.load_state_dict(torch.load(run / "model.pth"))
    assert evaluate(fresh)["accuracy"] == pytest.approx(result.test["accuracy"])


def test_an_interrupted_write_leaves_no_half_written_file(tmp_path, monkeypatch):
    import fasttricks.runs as runs
    from fasttricks._io import atomic_path

    result = run_recipe(tiny_recipe(), progress=False)
    run = tmp_path / "run"

    def broken_plot(history, metric, path):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt

    monkeypatch.setattr(runs, "plot_history", broken_plot)
    with pytest.raises(KeyboardInterrupt):
        runs.write_run(result, run)
    # a run folder is one whole run: none at all, and no temporary folder left behind
    assert not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _cli(args, cwd, capsys, monkeypatch):
    """``python -m fasttricks.train ARGS`` in-process in ``cwd``: (exit code, stdout, stderr)."""
    from fasttricks.train import main

    monkeypatch.chdir(cwd)
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_trains_writes_the_run_and_prints_one_summary_line(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    code, stdout, stderr = _cli([recipe, "--set", "schedule.epochs=2", "--set",
                                 "optimizer.lr=5e-3", "--no-progress", "--threads", "1"],
                                tmp_path, capsys, monkeypatch)
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiny (seed 0): test accuracy ")
    saved = load_recipe(tmp_path / "runs" / "tiny" / "recipe.yaml")
    assert saved["optimizer"]["lr"] == 5e-3 and saved["schedule"]["epochs"] == 2


def test_cli_reports_a_bad_recipe_without_a_traceback(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data: {name: synthetic}\nmodel: {name: mlp}\nschedule: {epoch: 3}\n")
    code, _, stderr = _cli([recipe], tmp_path, capsys, monkeypatch)
    assert code == 2
    assert "schedule.epoch" in stderr and "Traceback" not in stderr


def test_cli_seeds_report_mean_std_and_standard_error(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    code, stdout, stderr = _cli([recipe, "--seeds", "2", "--no-progress", "--threads", "1"],
                                tmp_path, capsys, monkeypatch)
    assert code == 0, stderr
    base = tmp_path / "runs" / "tiny"
    assert sorted(p.name for p in base.glob("seed_*")) == ["seed_0", "seed_1"]
    table = pd.read_csv(base / "seeds.csv")
    summary = json.loads((base / "seeds.json").read_text())
    vals = table["test_accuracy"].to_numpy()
    mean = vals.sum() / 2
    std = math.sqrt(((vals - mean) ** 2).sum() / 1)
    assert summary["test"]["mean"] == pytest.approx(mean)
    assert summary["test"]["std"] == pytest.approx(std)
    assert summary["test"]["stderr"] == pytest.approx(std / math.sqrt(2))
    assert "over 2 seeds: mean" in stdout.strip().splitlines()[-1]


def test_cli_seeds_rerun_skips_finished_seeds_and_retrains_a_changed_recipe(
        tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**{"schedule.epochs": 1})))
    base = tmp_path / "runs" / "tiny"
    args = [recipe, "--no-progress", "--threads", "1"]
    code, first, err = _cli([*args, "--seeds", "2"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    stamps = {p: p.stat().st_mtime_ns for p in base.glob("seed_*/*")}
    assert len(stamps) == 2 * 5  # two whole run folders

    code, again, err = _cli([*args, "--seeds", "3"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    lines = again.strip().splitlines()
    assert [line.endswith("(already done)") for line in lines[:3]] == [True, True, False]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # seeds 0 and 1 untouched
    table = pd.read_csv(base / "seeds.csv")
    assert list(table["seed"]) == [0, 1, 2]
    for seed in (0, 1, 2):  # every row is its run folder's own test score
        saved = json.loads((base / f"seed_{seed}" / "summary.json").read_text())
        assert table.loc[seed, "test_accuracy"] == saved["test"]["accuracy"]
    assert first.splitlines()[0].split(" -> ")[0] == lines[0].split(" -> ")[0]

    # another recipe in the same folders: its seeds are trained again, not reused
    code, changed, err = _cli([*args, "--seeds", "2", "--set", "optimizer.lr=3e-3"], tmp_path,
                              capsys, monkeypatch)
    assert code == 0, err
    assert "already done" not in changed
    assert load_recipe(base / "seed_0" / "recipe.yaml")["optimizer"]["lr"] == 3e-3


@pytest.mark.slow
def test_timm_model_from_a_recipe_trains_with_body_and_head_groups():
    from fasttricks.lr import fine_tune_staged

    recipe = load_recipe("digits",
                         {"model": {"name": "timm:test_resnet"}, "schedule.epochs": 1})
    learn = build_learner(recipe)
    learn.create_opt()
    head = {id(p) for p in learn.model.get_classifier().parameters()}
    groups = learn.opt.param_lists
    assert len(groups) == 3  # early body, late body, head: freeze_to(-2) keeps the early body
    assert {id(p) for p in groups[2]} == head
    assert not head & {id(p) for g in groups[:2] for p in g}
    stages = fine_tune_staged(learn, 1e-3, epochs=(1, 0, 1))
    assert stages[0]["trainable"] == [False, False, True]
    np.testing.assert_allclose(stages[1]["lrs"], [1e-5, math.sqrt(1e-5 * 5e-4), 5e-4])
    assert math.isfinite(evaluate(learn)["loss"])


# ---------------------------------------------------------------------------------- validated once


def test_load_recipe_returns_a_read_only_recipe_and_a_recipe_is_a_fixed_point():
    from fasttricks.recipes import Recipe

    r = tiny_recipe(callbacks=[{"name": "ema", "decay": 0.9}])
    assert isinstance(r, Recipe)
    assert load_recipe(r) is r and load_recipe(r, []) is r and load_recipe(r, {}) is r
    assert r["optimizer"]["lr"] == 1e-2  # nested sections still read like dicts
    for write in (lambda: r.__setitem__("seed", 1),
                  lambda: r["optimizer"].__setitem__("lr", 1.0),
                  lambda: r["optimizer"].update(lr=1.0),
                  lambda: r["callbacks"].append({"name": "sam"}),
                  lambda: r["callbacks"][0].__setitem__("decay", 0.5),
                  lambda: r["metrics"].__setitem__(0, "error_rate")):
        with pytest.raises(TypeError, match="read-only.*set_in_recipe"):
            write()
    assert r["optimizer"]["lr"] == 1e-2 and r["callbacks"] == [{"name": "ema", "decay": 0.9}]
    r2 = set_in_recipe(r, "optimizer.lr", 3e-3)
    assert isinstance(r2, Recipe) and r2["optimizer"]["lr"] == 3e-3 and r2 is not r


def test_a_recipe_round_trips_through_yaml_json_pickle_and_copies():
    import copy
    import pickle

    from fasttricks.recipes import Recipe, recipe_to_dict

    r = tiny_recipe(callbacks=[{"name": "ema", "decay": 0.9}])
    plain = recipe_to_dict(r)
    assert type(plain) is dict and type(plain["callbacks"]) is list and plain == r
    plain["optimizer"]["lr"] = 5.0  # the plain copy is mutable and independent
    assert r["optimizer"]["lr"] == 1e-2
    assert yaml.safe_load(yaml.safe_dump(r)) == r
    assert json.loads(json.dumps(r)) == r
    back = pickle.loads(pickle.dumps(r))
    assert isinstance(back, Recipe) and back == r
    assert copy.deepcopy(r) is r and copy.copy(r) is r


def test_mapping_overrides_are_all_applied_in_one_validation(monkeypatch):
    import fasttricks.recipes._schema as schema

    base = tiny_recipe()
    calls = []
    real = schema._validate
    monkeypatch.setattr(schema, "_validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = load_recipe(base, {"optimizer.lr": 3e-3, "schedule.epochs": 4, "seed": 3,
                           "loss.label_smoothing": 0.1})
    assert len(calls) == 1
    assert (r["optimizer"]["lr"], r["schedule"]["epochs"], r["seed"]) == (3e-3, 4, 3)
    assert r["loss"]["label_smoothing"] == 0.1


def _count_validations_and_optimizer_builds(monkeypatch):
    import fasttricks.optim
    import fasttricks.recipes._schema as schema

    counts = {"validate": 0, "get_optimizer": 0}
    real_validate, real_get = schema._validate, fasttricks.optim.get_optimizer

    def validate(*args, **kwargs):
        counts["validate"] += 1
        return real_validate(*args, **kwargs)

    def get_optimizer(*args, **kwargs):
        counts["get_optimizer"] += 1
        return real_get(*args, **kwargs)

    monkeypatch.setattr(schema, "_validate", validate)
    monkeypatch.setattr(fasttricks.optim, "get_optimizer", get_optimizer)
    return counts


def test_one_run_validates_the_recipe_once_and_builds_the_optimizer_once(tmp_path, monkeypatch):
    raw = {"name": "tiny", "data": {"name": "synthetic", "n_samples": 300, "bs": 32},
           "model": {"name": "mlp", "hidden": [16]},
           "optimizer": {"name": "ranger", "lr": 1e-2, "eps": 1e-6},
           "schedule": {"epochs": 1}, "callbacks": [{"name": "ema", "decay": 0.9}]}
    counts = _count_validations_and_optimizer_builds(monkeypatch)
    result = run_recipe(raw, out_dir=tmp_path / "runs", progress=False)
    assert counts == {"validate": 1, "get_optimizer": 1}
    assert (tmp_path / "runs" / "tiny" / "summary.json").is_file()
    assert math.isfinite(result.test["loss"])


def test_one_train_command_validates_the_recipe_once(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    counts = _count_validations_and_optimizer_builds(monkeypatch)
    code, _, stderr = _cli([recipe, "--set", "schedule.epochs=1", "--set", "optimizer.lr=5e-3",
                            "--no-save", "--no-progress"], tmp_path, capsys, monkeypatch)
    assert code == 0, stderr
    assert counts == {"validate": 1, "get_optimizer": 1}


def test_validation_constructs_no_callback(monkeypatch):
    from fasttricks.callbacks import EMACallback, SAMCallback

    built = []

    def counting(init):
        @functools.wraps(init)  # keeps the signature the schema reads
        def wrapper(self, *args, **kwargs):
            built.append(type(self).__name__)
            init(self, *args, **kwargs)

        return wrapper

    for cls in (EMACallback, SAMCallback):
        monkeypatch.setattr(cls, "__init__", counting(cls.__init__))
    r = tiny_recipe(callbacks=[{"name": "ema", "decay": "0.9"}, {"name": "sam", "rho": 0.1}])
    assert built == []
    assert r["callbacks"][0]["decay"] == 0.9  # coerced to the default's type
    learn = build_learner(r)
    assert len(built) == 2 and next(c for c in learn.cbs if isinstance(c, EMACallback)).decay == 0.9


def test_callback_value_out_of_range_fails_in_the_builder_naming_the_key():
    from fasttricks.recipes import RecipeError

    r = tiny_recipe(callbacks=[{"name": "ema", "decay": 2.0}])
    with pytest.raises(RecipeError, match=r"'callbacks.ema'.*decay must be .*got 2.0"):
        build_learner(r)


def test_the_learning_rate_is_the_recipes_and_fastai_gets_it_as_learn_lr():
    learn = build_learner(tiny_recipe(**{"optimizer.lr": 4e-3, "schedule.epochs": 1}))
    assert learn.lr == 4e-3
    fit_learner(learn)
    assert max(learn.recorder.lrs) == pytest.approx(4e-3)
    other = tiny_recipe(**{"optimizer.lr": 2e-3, "schedule.epochs": 1})
    fit_learner(learn, other)  # an explicit recipe brings its own learning rate
    assert learn.lr == 2e-3 and max(learn.recorder.lrs) == pytest.approx(2e-3)


# ---------------------------------------------------------------------------------- loss options


@pytest.mark.parametrize(
    "overrides, path, closest",
    [
        (["loss.name=focal", "loss.gama=2"], "loss.gama", "gamma"),
        (["loss.name=asl", "loss.clipp=0.1"], "loss.clipp", "clip"),
        (["callbacks=[ema]", "callbacks.ema.decayy=0.9"], "callbacks.ema.decayy", "decay"),
        (["callbacks=[{name: sam, rh: 0.1}]"], "callbacks.sam.rh", "rho"),
    ],
)
def test_loss_and_callback_options_are_checked_at_load_time(overrides, path, closest):
    with pytest.raises(KeyError) as err:
        load_recipe("digits", overrides)
    msg = str(err.value)
    assert f"'{path}'" in msg and "allowed keys" in msg and f"Did you mean '{closest}'?" in msg
    assert isinstance(err.value, TypeError)  # also the unexpected keyword argument it would be


def test_loss_options_are_coerced_and_class_weight_names_kept():
    r = tiny_recipe(**{"loss.name": "focal", "loss.gamma": "1e0", "loss.alpha": "sqrt_inv"})
    assert r["loss"] == {"name": "focal", "gamma": 1.0, "alpha": "sqrt_inv"}
    with pytest.raises(TypeError, match="'loss.gamma' must be a number"):
        tiny_recipe(**{"loss.name": "focal", "loss.gamma": "big"})
    learn = build_learner(r)
    assert learn.loss_func.gamma == 1.0


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "loss.name=focal", "--set", "loss.gama=2"], ["'loss.gama'", "'gamma'"]),
        (["--set", "callbacks=[ema]", "--set", "callbacks.ema.decayy=0.9"],
         ["'callbacks.ema.decayy'", "'decay'"]),
        (["--set", "optimizer.lr=-1"], ["'optimizer.lr' must be > 0"]),
        (["--set", "callbacks=[{name: ema, decay: 2}]", "--no-save"],
         ["'callbacks.ema'", "decay must be"]),
        (["--set", "model={name: cnn1d}", "--no-save"], ["conv net", "use model 'mlp'"]),
    ],
)
def test_cli_prints_one_error_line_for_every_recipe_error(tmp_path, capsys, monkeypatch, args,
                                                         fragments):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    code, stdout, stderr = _cli([recipe, *args, "--no-progress"], tmp_path, capsys, monkeypatch)
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert "Traceback" not in stderr


def test_cli_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    with pytest.raises(KeyError, match="loss.gama"):
        _cli([recipe, "--set", "loss.name=focal", "--set", "loss.gama=2", "--debug"], tmp_path,
             capsys, monkeypatch)


# ---------------------------------------------------------------------------------- direction


def test_error_rate_first_is_minimized_by_primary_metric_save_best_and_the_run_folder(tmp_cwd):
    recipe = tiny_recipe(**{"metrics": ["error_rate", "accuracy"], "retrain_at_best": True,
                            "schedule.epochs": 5, "optimizer.lr": 3e-2})
    assert primary_metric(recipe) == ("error_rate", "minimize")
    result = run_recipe(recipe, out_dir="runs", progress=False)
    best = result.extra["save_best"]
    errors = pd.DataFrame(best["history"])["error_rate"].to_numpy()
    assert best["monitor"] == "error_rate"
    assert best["best_epoch"] == int(errors.argmin())  # the lowest error, first one on ties
    assert best["best_value"] == pytest.approx(errors.min())
    summary = json.loads((tmp_cwd / "runs" / "tiny" / "summary.json").read_text())
    assert summary["primary_metric"] == "error_rate" and summary["direction"] == "minimize"


def test_save_best_and_primary_metric_follow_the_metrics_registry():
    from fasttricks.callbacks import SaveBestCallback
    from fasttricks.metrics import METRICS, MetricSpec, register_metric

    # a lower-is-better metric whose name says neither "loss" nor "error"
    register_metric("brier", MetricSpec(lambda: None, lower_is_better=True))
    try:
        assert SaveBestCallback(monitor="brier").lower_is_better
        assert not SaveBestCallback(monitor="accuracy").lower_is_better
        assert primary_metric({"metrics": ["brier"]}) == ("brier", "minimize")
    finally:
        METRICS._entries.pop("brier", None)
