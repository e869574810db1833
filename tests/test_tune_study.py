"""Studies on the real digits recipe (tiny epochs): pruners, results, resume, bad input, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from fasttricks.recipes import build_learner, fit_learner, load_recipe
from fasttricks.tune import load_space, make_storage, tune
from fasttricks.tune._cli import main
from fasttricks.tune._study import WORKER_ATTR, count_trials

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
SPACE = {
    # a wide lr range: the low end barely learns in 4 epochs, so pruners have work to do
    "optimizer.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
    "optimizer.wd": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _recipe():
    return load_recipe(REPO / "recipes" / "digits.yaml", {"schedule.epochs": EPOCHS})


def _tune(tmp_path, **kwargs):
    options = dict(space=SPACE, sampler="random", n_trials=6, seed=0, root=tmp_path / "runs",
                   threads=1)
    options.update(kwargs)
    return tune(_recipe(), options.pop("space"), **options)


def _finished(study):
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.mark.parametrize("pruner", ["none", "median", "asha", "hyperband"])
def test_each_pruner_runs_a_short_digits_study(tmp_path, pruner, capsys):
    kwargs = {"n_trials": 8} if pruner == "hyperband" else {}
    study = _tune(tmp_path, pruner=pruner, study_name=f"digits-{pruner}", **kwargs)
    trials = study.trials
    assert len(_finished(study)) == len(trials) == kwargs.get("n_trials", 6)
    for trial in trials:
        epochs = trial.user_attrs["epochs"]
        # one report per epoch trained, at steps 1..epochs
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        if trial.state == TrialState.COMPLETE:
            assert epochs == EPOCHS
            assert trial.value == trial.intermediate_values[EPOCHS]
        else:
            assert trial.state == TrialState.PRUNED and epochs < EPOCHS
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if pruner == "none":
        assert not pruned
    if pruner == "median":  # warm-up: max(1, 4 // 3) = 1 epoch is never pruned
        assert all(t.user_attrs["epochs"] >= 2 for t in pruned)
    if pruner == "hyperband":
        assert len(pruned) >= 1
    out = capsys.readouterr().out
    assert f"pruner: {pruner}" in out
    assert out.count("trial ") >= len(trials)  # one progress line per trial
    assert "best trial" in out


def test_results_and_best_yaml_reproduce_the_best_trial(tmp_path):
    study = _tune(tmp_path, pruner="hyperband", study_name="best", n_trials=5)
    out = tmp_path / "runs" / "best"
    for name in ("best.yaml", "trials.csv", "optimization_history.png",
                 "param_importances.png", "intermediate_values.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    table = pd.read_csv(out / "trials.csv")
    assert list(table["number"]) == [t.number for t in study.trials]
    assert set(table["state"]) <= {"COMPLETE", "PRUNED"}

    best = load_recipe(out / "best.yaml")
    assert best["optimizer"]["lr"] == study.best_params["optimizer.lr"]
    assert best["optimizer"]["wd"] == study.best_params["optimizer.wd"]
    assert best["schedule"]["epochs"] == EPOCHS
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial ran
    try:
        learn = build_learner(best)
        with learn.no_bar(), learn.no_logging():
            fit_learner(learn, best)
    finally:
        torch.set_num_threads(before)
    accuracy = float(learn.recorder.values[-1][2])
    # a seeded recipe trains the same again: best.yaml reproduces the best trial's value
    assert accuracy == pytest.approx(study.best_value, abs=1.5 / len(learn.dls.valid_ds))


def test_resume_continues_to_exactly_n_trials(tmp_path):
    first = _tune(tmp_path, pruner="asha", study_name="resume", n_trials=3)
    assert len(_finished(first)) == 3
    second = _tune(tmp_path, pruner="asha", study_name="resume", n_trials=5)
    assert len(_finished(second)) == 5
    assert [t.number for t in second.trials] == [0, 1, 2, 3, 4]
    third = _tune(tmp_path, pruner="asha", study_name="resume", n_trials=5)
    assert len(third.trials) == 5  # already done: no trial runs


def test_resume_fails_a_trial_left_running_by_a_dead_process(tmp_path):
    study = _tune(tmp_path, pruner="none", study_name="orphan", n_trials=1)
    storage = make_storage(None, "orphan", root=tmp_path / "runs")
    stale = optuna.load_study(study_name="orphan", storage=storage).ask()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:{dead.stdout.strip()}")
    study = _tune(tmp_path, pruner="none", study_name="orphan", n_trials=2)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert count_trials(study) == {"finished": 2, "running": 0, "waiting": 0, "failed": 1}


@pytest.mark.parametrize("kwargs,error,needle", [
    ({"pruner": "hyperbnad"}, KeyError, "Did you mean 'hyperband'"),
    ({"sampler": "tpee"}, KeyError, "Did you mean 'tpe'"),
    ({"space": {"optimizer.lrr": {"type": "float", "low": 1e-3, "high": 1e-2}}}, KeyError,
     "optimizer.lrr"),
    ({"space": {"model.widht": {"type": "int", "low": 1, "high": 3}}}, KeyError, "model.widht"),
    ({"space": {"optimizer.name": {"type": "categorical", "choices": []}}}, ValueError,
     "choices is empty"),
    ({"space": {"optimizer.lr": {"type": "float", "low": 1e-1, "high": 1e-3}}}, ValueError,
     "low must be <= high"),
    ({"space": {"optimizer.name": {"type": "categorical", "choices": ["adamw", "rangr"]}}},
     ValueError, "rangr"),
    ({"direction": "maximise"}, KeyError, "Did you mean 'maximize'"),
    ({"metric": "acuracy"}, KeyError, "Did you mean 'accuracy'"),
    ({"storage": "redis://localhost"}, ValueError, "unsupported storage"),
])
def test_bad_input_fails_before_any_trial(tmp_path, kwargs, error, needle):
    with pytest.raises(error) as info:
        _tune(tmp_path, study_name="bad", **kwargs)
    assert needle in str(info.value)
    assert not (tmp_path / "runs").exists()  # nothing created, no trial run


def test_cli_reports_bad_input_as_one_line_and_exit_code_1(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["--recipe", str(REPO / "recipes" / "digits.yaml"), "--pruner", "asah"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown pruner 'asah'") and "Did you mean 'asha'" in err
    assert not (tmp_path / "runs").exists()


def test_cli_mlflow_without_the_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    code = main(["--mlflow", "file:./mlruns"])
    assert code == 1
    assert "pip install 'fasttricks[mlflow]'" in capsys.readouterr().err


def test_cli_with_two_workers_on_the_journal_file(tmp_path):
    recipe = yaml.safe_load((REPO / "recipes" / "digits.yaml").read_text())
    recipe["schedule"]["epochs"] = 3
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "tiny.space.yaml").write_text(yaml.safe_dump(SPACE))
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, "-m", "fasttricks.tune", "--recipe", "tiny.yaml", "--n-trials", "4",
         "--workers", "2", "--pruner", "asha", "--sampler", "random", "--threads", "1",
         "--study-name", "tiny-asha"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "2 workers on this machine" in result.stdout
    assert "[w0] trial" in result.stdout or "[w1] trial" in result.stdout
    out = tmp_path / "runs" / "tiny-asha"
    study = optuna.load_study(study_name="tiny-asha",
                              storage=make_storage(None, "tiny-asha", root=tmp_path / "runs"))
    assert len(_finished(study)) == 4
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert (out / "best.yaml").is_file() and (out / "trials.csv").is_file()
    assert load_space(out / "space.yaml").keys() == SPACE.keys()


def test_ctrl_c_marks_the_running_trial_failed_and_keeps_the_rest(tmp_path):
    import signal
    import time

    recipe = yaml.safe_load((REPO / "recipes" / "digits.yaml").read_text())
    recipe["schedule"]["epochs"] = 30  # long enough to be interrupted mid-trial
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "long.space.yaml").write_text(yaml.safe_dump(SPACE))
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fasttricks.tune", "--recipe", "long.yaml", "--study-name",
         "long", "--n-trials", "3", "--pruner", "none", "--threads", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    storage = None
    interrupted = None
    deadline = time.monotonic() + 120
    while interrupted is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if not (tmp_path / "runs" / "long" / "journal.log").exists():
            continue
        storage = storage or make_storage(None, "long", root=tmp_path / "runs")
        try:
            running = optuna.load_study(study_name="long", storage=storage).get_trials(
                states=(TrialState.RUNNING,))
        except KeyError:
            continue
        if running and len(running[0].intermediate_values) >= 2:
            proc.send_signal(signal.SIGINT)
            interrupted = running[0].number
    out, err = proc.communicate(timeout=120)
    assert interrupted is not None, err
    assert proc.returncode == 130, err
    assert "re-run the same command to resume" in err
    study = optuna.load_study(study_name="long", storage=storage)
    assert study.trials[interrupted].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert (tmp_path / "runs" / "long" / "trials.csv").is_file()


def test_metric_defaults_to_the_recipe_primary_metric_and_loss_is_minimized():
    from fasttricks.tune._study import resolve_metric

    recipe = _recipe()
    assert resolve_metric(recipe) == ("accuracy", "maximize")
    assert resolve_metric(recipe, "valid_loss") == ("valid_loss", "minimize")
    assert resolve_metric(recipe, "accuracy", "minimize") == ("accuracy", "minimize")


def test_resuming_a_study_with_another_metric_or_direction_is_refused(tmp_path):
    from fasttricks.tune import prepare_study

    options = dict(space=SPACE, study_name="fixed", root=tmp_path / "runs")
    study, *_ = prepare_study(_recipe(), **options)
    assert study.user_attrs["metric"] == "accuracy" and not study.trials
    with pytest.raises(ValueError, match="already tunes metric 'accuracy'"):
        prepare_study(_recipe(), metric="train_loss", direction="maximize", **options)
    with pytest.raises(ValueError, match="already exists and maximizes"):
        prepare_study(_recipe(), metric="valid_loss", **options)
