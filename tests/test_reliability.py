"""Faults done for real: diverging runs, NaN/inf data, full disks, killed writers, bad input.

Each test makes the fault happen (an infinite lr, SGD at lr=100, a NaN pixel, an inf column, a
write that fails with ENOSPC or past RLIMIT_FSIZE, Ctrl-C in the middle of training) and checks
that nothing diverged or half-written counts as a finished run, and that the command says so
in one line.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_recipe

from fasttricks.callbacks import NaNGuardCallback, NonFiniteLossError
from fasttricks.data.checks import NonFiniteDataError, check_finite
from fasttricks.datasets import DataSplits, Split, register_dataset
from fasttricks.recipes import RecipeError, build_learner, load_recipe, recipe_to_dict, run_recipe
from fasttricks.runs import RUN_FILES, check_out_dir, read_run, recover_run_dir, write_run
from fasttricks.train import main

REPO = Path(__file__).resolve().parents[1]


def _write_recipe(folder: Path, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe_to_dict(tiny_recipe(**changes))))
    return path


def _cli(args, capsys):
    code = main([str(a) for a in args] + ["--no-progress", "--threads", "1"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("WARNING", " "))
             and "Warning" not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith(("error: ", "interrupted: ")), err
    return lines[0]


# ------------------------------------------------------------------ divergence never succeeds


def test_every_recipe_has_the_nan_guard_unless_it_opts_out():
    guards = [cb for cb in build_learner(tiny_recipe()).cbs if isinstance(cb, NaNGuardCallback)]
    assert len(guards) == 1
    off = build_learner(tiny_recipe(nan_guard=False))
    assert not any(isinstance(cb, NaNGuardCallback) for cb in off.cbs)
    # a recipe that lists its own guard keeps its options and gets no second one
    own = build_learner(tiny_recipe(callbacks=[{"name": "nan_guard", "max_skipped_steps": 3}]))
    guards = [cb for cb in own.cbs if isinstance(cb, NaNGuardCallback)]
    assert [g.max_skipped_steps for g in guards] == [3]
    assert load_recipe(tiny_recipe(), ["nan_guard=false"])["nan_guard"] is False
    with pytest.raises(TypeError, match="'nan_guard' must be true or false"):
        load_recipe(tiny_recipe(), {"nan_guard": "no"})


def test_an_infinite_lr_is_refused_before_training(tmp_path, capsys):
    recipe = _write_recipe(tmp_path)
    code, _, err = _cli([recipe, "--set", "optimizer.lr=.inf", "--out", tmp_path / "runs"],
                        capsys)
    assert code == 2
    assert _one_error_line(err) == ("error: recipe key 'optimizer.lr' must be a finite number, "
                                    "got inf")
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_momentum"])
def test_sgd_at_lr_100_exits_1_naming_the_loss_and_the_remedies(tmp_path, capsys, optimizer):
    recipe = _write_recipe(tmp_path)
    code, out, err = _cli([recipe, "--set", f"optimizer.name={optimizer}", "--set",
                           "optimizer.lr=100", "--out", tmp_path / "runs"], capsys)
    assert code == 1, out + err
    line = _one_error_line(err)
    assert "the training loss is" in line and "Exception occured" not in line
    assert "lower the learning rate about 10x (lr in effect: 100; try 10)" in line
    assert not (tmp_path / "runs" / "tiny").exists()  # no "finished" summary of a NaN model


def test_a_run_whose_final_loss_is_nan_without_the_guard_still_fails(tmp_path):
    # the guard is off: the final check on the validation / test scores refuses the run
    recipe = tiny_recipe(nan_guard=False, **{"optimizer.name": "sgd", "optimizer.lr": 1e12})
    with pytest.raises(NonFiniteLossError, match="the final valid loss is nan"):
        run_recipe(recipe, out_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_guard_stops_a_finite_but_exploding_loss():
    learn = build_learner(tiny_recipe(**{"optimizer.name": "sgd", "optimizer.lr": 100.0}))
    guard = next(cb for cb in learn.cbs if isinstance(cb, NaNGuardCallback))
    with pytest.raises(NonFiniteLossError):
        with learn.no_bar(), learn.no_logging():
            learn.fit(2)
    # it stopped at the first batch above 1e4 times the first loss, not later
    assert "times its first value" in guard.message or "is nan" in guard.message
    assert guard.iter < len(learn.dls.train) * 2


# ------------------------------------------------------------------ NaN / inf data


def _digits_with(value: float, split: str = "train", item: int = 5) -> DataSplits:
    from fasttricks.datasets import digits

    splits = digits()
    x = getattr(splits, split).x.copy()
    x[item, 0, 3, 4] = value
    return splits.__class__(**{**splits.__dict__, split: Split(x, getattr(splits, split).y)})


@pytest.mark.parametrize("value,kind", [(np.nan, "nan"), (np.inf, "inf")])
def test_one_bad_pixel_is_refused_naming_the_item(value, kind):
    with pytest.raises(NonFiniteDataError) as err:
        check_finite(_digits_with(value, "valid", 7))
    assert str(err.value).startswith(f"the valid split's item 7 has a {kind} feature value (at "
                                     "position (0, 3, 4); 1 of ")
    assert "data.impute: median" in str(err.value)


def test_impute_fills_a_bad_pixel_with_the_training_median():
    splits = _digits_with(np.nan, "train", 5)
    fixed = check_finite(splits, "median")
    expected = np.median(np.delete(splits.train.x[:, 0, 3, 4], 5))  # the other items' median
    assert fixed.train.x[5, 0, 3, 4] == pytest.approx(expected)
    assert np.isfinite(fixed.train.x).all()
    assert np.array_equal(fixed.train.x[6], splits.train.x[6])  # other items untouched
    mean = check_finite(splits, "mean")
    assert mean.train.x[5, 0, 3, 4] == pytest.approx(np.delete(splits.train.x[:, 0, 3, 4],
                                                               5).mean(), rel=1e-5)


def test_train_cli_refuses_a_nan_pixel_in_one_line(tmp_path, capsys):
    register_dataset("digits_nan_pixel", lambda: _digits_with(np.nan, "train", 11),
                     overwrite=True)
    recipe = _write_recipe(tmp_path, **{"data": {"name": "digits_nan_pixel", "bs": 64},
                                        "model": {"name": "mlp", "hidden": [8]}})
    code, _, err = _cli([recipe, "--out", tmp_path / "runs"], capsys)
    assert code == 2
    assert _one_error_line(err).startswith("error: dataset 'digits_nan_pixel': the train "
                                           "split's item 11 has a nan feature value")
    code, out, err = _cli([recipe, "--set", "data.impute=median", "--set", "schedule.epochs=1",
                           "--out", tmp_path / "runs"], capsys)
    assert code == 0, err
    assert read_run(tmp_path / "runs" / "tiny")["summary"]["test"]["loss"] < 3.0


def _table(tmp_path: Path, column: list[float]) -> Path:
    rng = np.random.default_rng(0)
    n = len(column)
    df = pd.DataFrame({"a": rng.normal(size=n), "bad": column,
                       "target": np.where(rng.normal(size=n) > 0, "yes", "no")})
    path = tmp_path / "table.csv"
    df.to_csv(path, index=False)
    return path


def _table_recipe(tmp_path: Path, csv: Path) -> Path:
    return _write_recipe(tmp_path, **{"data": {"name": "tabular_csv", "path": str(csv),
                                               "y_name": "target", "bs": 32},
                                      "model": {"name": "tabular", "layers": [8]},
                                      "schedule.epochs": 1})


def test_an_inf_column_is_refused_naming_the_column(tmp_path, capsys):
    column = [float(i) for i in range(100)]
    column[40] = np.inf
    recipe = _table_recipe(tmp_path, _table(tmp_path, column))
    code, _, err = _cli([recipe, "--out", tmp_path / "runs"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "column 'bad' has infinite values (1 in the " in line, line
    assert not (tmp_path / "runs").joinpath("tiny").exists()
    code, _, err = _cli([recipe, "--set", "data.impute=median", "--out", tmp_path / "runs"],
                        capsys)
    assert code == 0, err
    assert np.isfinite(read_run(tmp_path / "runs" / "tiny")["summary"]["test"]["loss"])


def test_an_all_nan_column_is_refused_naming_the_column(tmp_path, capsys):
    recipe = _table_recipe(tmp_path, _table(tmp_path, [np.nan] * 100))
    code, _, err = _cli([recipe, "--out", tmp_path / "runs"], capsys)
    assert code == 2
    assert _one_error_line(err).startswith("error: dataset 'tabular_csv': column 'bad' has no "
                                           "finite value in the training split (all NaN)")


def test_a_nan_label_is_refused_naming_the_row(tmp_path, capsys):
    csv = _table(tmp_path, [float(i) for i in range(100)])
    df = pd.read_csv(csv)
    df.loc[17, "target"] = np.nan
    df.to_csv(csv, index=False)
    code, _, err = _cli([_table_recipe(tmp_path, csv), "--out", tmp_path / "runs"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "label column 'target'" in line and "data row 18 (file line 19)" in line, line


def test_nan_multi_hot_labels_are_refused_naming_the_item():
    from fasttricks.datasets import multilabel

    splits = multilabel(n_samples=200)
    y = splits.test.y.copy()
    y[3, 1] = np.nan
    bad = splits.__class__(**{**splits.__dict__, "test": Split(splits.test.x, y)})
    with pytest.raises(NonFiniteDataError, match="the test split's label of item 3 is nan"):
        check_finite(bad, "median")  # labels are never imputed


# ------------------------------------------------------------------ run folders are whole


def _result(**changes):
    return run_recipe(tiny_recipe(**{"schedule.epochs": 1, **changes}), progress=False)


def _assert_whole(run: Path, result) -> None:
    back = read_run(run)
    assert back["summary"]["test"] == pytest.approx(result.test)
    assert len(back["history"]) == len(result.history)
    weights = torch.load(run / "model.pth", weights_only=True)
    for k, v in result.learn.model.state_dict().items():
        assert torch.equal(weights[k], v)


def test_a_full_disk_leaves_the_previous_run_intact(tmp_path, monkeypatch):
    import fasttricks.runs as runs

    old, new = _result(seed=0), _result(seed=1)
    run = tmp_path / "tiny"
    write_run(old, run)
    (run / "kfold").mkdir()
    (run / "kfold" / "fold_0.pth").write_bytes(b"fold")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    def disk_full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runs, "atomic_torch_save", disk_full)
    with pytest.raises(OSError) as err:
        write_run(new, run)
    assert err.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert (run / "kfold" / "fold_0.pth").read_bytes() == b"fold"  # other entries stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folder left
    _assert_whole(run, old)
    monkeypatch.undo()
    write_run(new, run)  # the next write replaces it whole and keeps the other entries
    _assert_whole(run, new)
    assert (run / "kfold" / "fold_0.pth").read_bytes() == b"fold"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


_FSIZE_SCRIPT = """
import resource, sys
sys.path.insert(0, {tests!r})
from conftest import tiny_recipe
from fasttricks.recipes import run_recipe
from fasttricks.runs import write_run
result = run_recipe(tiny_recipe(**{{"schedule.epochs": 1, "seed": 1,
                                    "model.hidden": [256, 256]}}), progress=False)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # model.pth is ~290 kB
try:
    write_run(result, {run!r})
except OSError as err:
    print("errno", err.errno)
    sys.exit(3)
"""


def test_a_real_file_size_limit_leaves_the_previous_run_intact(tmp_path):
    old = _result()
    run = tmp_path / "tiny"
    write_run(old, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    script = _FSIZE_SCRIPT.format(tests=str(REPO / "tests"), run=str(run))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"errno {errno.EFBIG}" in proc.stdout  # the kernel refused the write
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    _assert_whole(run, old)


def test_a_swap_killed_between_its_renames_is_undone(tmp_path):
    old = _result()
    run = tmp_path / "tiny"
    write_run(old, run)
    # a kill after the previous run moved aside and before the new one moved in
    partial = tmp_path / ".tiny.partial-x"
    partial.mkdir()
    (partial / "recipe.yaml").write_text("half")
    (partial / "seed_0").mkdir()
    os.rename(run, tmp_path / ".tiny.previous-y")
    # readers find the previous run meanwhile
    assert read_run(run)["summary"]["test"] == pytest.approx(old.test)
    recover_run_dir(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert (run / "seed_0").is_dir()
    _assert_whole(run, old)


def test_read_run_refuses_a_folder_that_is_not_one_whole_run(tmp_path):
    run = tmp_path / "tiny"
    write_run(_result(), run)
    (run / "model.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a whole run folder \(no model.pth\)"):
        read_run(run)
    assert RUN_FILES[-1] == "summary.json"


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    recipe = _write_recipe(tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, out, err = _cli([recipe, "--out", blocker / "runs"], capsys)
    assert code == 2 and out == ""
    assert _one_error_line(err) == (f"error: --out '{blocker / 'runs'}': '{blocker}' is a "
                                    "file, not a folder; choose another --out")
    with pytest.raises(ValueError, match="--out must name a folder"):
        check_out_dir("")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot be written"):
            check_out_dir(locked / "runs")


# ------------------------------------------------------------------ one-line errors


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {name: digits\nmodel: mlp\n")
    code, _, err = _cli([bad], capsys)
    assert code == 2
    assert _one_error_line(err) == (f"error: recipe file '{bad}' is not valid YAML: line 3, "
                                    "column 6: expected ',' or '}', but got ':'")
    code, _, err = _cli([_write_recipe(tmp_path), "--set", "optimizer.lr=[1"], capsys)
    assert code == 2
    assert _one_error_line(err).startswith("error: override 'optimizer.lr=[1': the value is "
                                           "not valid YAML (line 1, column 3: ")


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [\n")
    with pytest.raises(RecipeError, match="not valid YAML: line 2"):
        main([str(bad), "--debug"])


def test_bad_paths_and_options_are_one_line(tmp_path, capsys):
    code, _, err = _cli([tmp_path], capsys)
    assert code == 2
    assert _one_error_line(err) == (f"error: recipe path '{tmp_path}' is a folder, not a YAML "
                                    f"file (e.g. '{tmp_path / 'digits.yaml'}')")
    recipe = _write_recipe(tmp_path)
    for option, message in ((["--seeds", "0"], "error: --seeds must be an integer >= 1 (the "
                                                "number of seeds to train), got 0"),
                            (["--seeds", "-3"], "error: --seeds must be an integer >= 1 (the "
                                                "number of seeds to train), got -3")):
        code, _, err = _cli([recipe, *option], capsys)
        assert code == 2 and _one_error_line(err) == message
    code = main([str(recipe), "--threads", "-1"])
    assert code == 2
    assert _one_error_line(capsys.readouterr().err) == ("error: --threads must be an integer "
                                                        ">= 1, got -1")


def test_a_metric_that_does_not_fit_the_data_is_refused_at_load_time():
    with pytest.raises(RecipeError) as err:
        tiny_recipe(metrics=["roc_auc_multi"])
    assert str(err.value).startswith("recipe key 'metrics.0': metric 'roc_auc_multi' needs "
                                     "multi-label targets but the data are single-label; ")
    assert "'accuracy'" in str(err.value) and "'f1_multi'" not in str(err.value)
    with pytest.raises(RecipeError, match="'accuracy' needs single-label targets"):
        load_recipe({"data": "multilabel", "model": "mlp", "metrics": ["accuracy"]})


def test_a_metric_that_does_not_fit_a_registered_dataset_is_refused_once_loaded():
    from fasttricks.datasets import multilabel

    register_dataset("my_multi", lambda: multilabel(n_samples=120), overwrite=True)
    recipe = load_recipe({"data": "my_multi", "model": "mlp", "loss": "bce",
                          "metrics": ["accuracy"]})  # the schema cannot know its labels
    with pytest.raises(RecipeError, match="metric 'accuracy' needs single-label targets but "
                                          "the data are multi-label"):
        build_learner(recipe)


def test_ctrl_c_during_training_is_one_line_saying_what_was_saved(tmp_path, capsys,
                                                                   monkeypatch):
    from fastai.callback.core import Callback

    import fasttricks.recipes._build as build

    class CtrlC(Callback):
        def after_batch(self):
            if self.iter == 2:
                raise KeyboardInterrupt

    real = build._guard
    monkeypatch.setattr(build, "_guard", lambda recipe: [*real(recipe), CtrlC()])
    recipe = _write_recipe(tmp_path)
    code, _, err = _cli([recipe, "--out", tmp_path / "runs"], capsys)
    assert code == 130
    assert _one_error_line(err) == (f"interrupted: nothing of this run was saved (a previous "
                                    f"run in {tmp_path / 'runs' / 'tiny'} is kept as it was); "
                                    "re-run the same command to train again")
    code, _, err = _cli([recipe, "--kfold", "2", "--out", tmp_path / "runs"], capsys)
    assert code == 130
    assert _one_error_line(err) == (f"interrupted: the finished folds are kept in "
                                    f"{tmp_path / 'runs' / 'tiny' / 'kfold'}; re-run the same "
                                    "command to resume from them")


def test_class_errors_name_the_class_not_its_index():
    from fasttricks.datasets import synthetic

    splits = synthetic(n_samples=300)
    keep = splits.train.y != 2
    vocab = ["cat", "dog", "eel"]
    no_eel = splits.__class__(**{**splits.__dict__, "vocab": vocab,
                                 "train": Split(splits.train.x[keep], splits.train.y[keep])})
    register_dataset("no_eel", lambda: no_eel, overwrite=True)
    recipe = load_recipe({"data": "no_eel", "model": "mlp",
                          "loss": {"name": "weighted_cross_entropy"}})
    with pytest.raises(RecipeError, match="class 'eel' has no samples"):
        build_learner(recipe)


def test_summary_of_a_finished_run_is_strict_json(tmp_path):
    run = tmp_path / "tiny"
    write_run(_result(), run)
    json.loads((run / "summary.json").read_text(), parse_constant=pytest.fail)


def test_a_space_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from fasttricks.tune import load_space

    bad = tmp_path / "bad.space.yaml"
    bad.write_text("optimizer.lr: {type: float, low: 1e-3\noptimizer.wd: 1\n")
    with pytest.raises(ValueError) as err:
        load_space(bad)
    assert str(err.value).startswith(f"search space file '{bad}' is not valid YAML: line 2, "
                                     "column ")
