"""Studies on the real digits recipe (a small CNN, few epochs): pruners, results, resume, bad
input, failure cap, sampler seeds, killed workers and launchers, the CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from fasttricks.recipes import build_learner, builtin_recipe_path, fit_learner, load_recipe
from fasttricks.tune import load_space, make_storage, tune
from fasttricks.tune._cli import main
from fasttricks.tune._study import WORKER_ATTR, count_trials

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
SMALL = {"schedule.epochs": EPOCHS, "model.channels": [8, 16]}  # still learns: ~93% in 4 epochs
SPACE = {
    # a wide lr range: the low end barely learns in 4 epochs, so pruners have work to do
    "optimizer.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True},
    "optimizer.wd": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _recipe():
    return load_recipe("digits", SMALL)


def _recipe_file(tmp_path, name, epochs, space=SPACE):
    """A small digits recipe and its space beside it, for command-line runs."""
    recipe = yaml.safe_load(builtin_recipe_path("digits").read_text())
    recipe["schedule"]["epochs"] = epochs
    recipe["model"]["channels"] = [8, 16]
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / f"{name}.space.yaml").write_text(yaml.safe_dump(space))
    return tmp_path / f"{name}.yaml"


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


def test_cli_reports_bad_input_as_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["--recipe", "digits", "--pruner", "asah"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown pruner 'asah'") and "Did you mean 'asha'" in err
    assert not (tmp_path / "runs").exists()


def test_cli_mlflow_without_the_package_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    code = main(["--mlflow", "file:./mlruns"])
    assert code == 2
    assert "pip install 'fasttricks[mlflow]'" in capsys.readouterr().err


def test_ctrl_c_marks_the_running_trial_failed_and_keeps_the_rest(tmp_path):
    import signal
    import time

    _recipe_file(tmp_path, "long", 200)  # long enough to be interrupted mid-trial
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
    last = err.strip().splitlines()[-1]  # one line (import-time warnings may come before)
    assert last.startswith("interrupted: 0/3 finished trials are saved in runs/long/journal.log")
    assert "re-run the same command to resume" in last and "Traceback" not in err
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


# ---------------------------------------------------------------- metric direction


def test_error_rate_is_minimized_and_the_best_trial_is_the_lowest(tmp_path):
    recipe = load_recipe(_recipe(), {"metrics": ["accuracy", "error_rate"]})
    study = tune(recipe, SPACE, pruner="none", sampler="random", n_trials=3, seed=0,
                 metric="error_rate", root=tmp_path / "runs", threads=1, progress=False)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in study.trials]
    assert len(values) == 3 and len(set(values)) > 1
    assert study.best_value == min(values)


# ---------------------------------------------------------------- one validation per trial


def test_a_trial_recipe_is_one_load_recipe_call_with_every_override(monkeypatch):
    import fasttricks.recipes as recipes
    from fasttricks.tune._space import TrialSampler

    space = load_space({
        "optimizer.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "optimizer.eps": {"type": "float", "low": 1e-8, "high": 1e-6, "log": True},
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2},
        "callbacks.ema": {"type": "bool"},
    })
    sampler = TrialSampler(_recipe(), space)
    values = {"optimizer.name": "adamw", "optimizer.eps": 1e-7, "optimizer.lr": 0.005,
              "callbacks.ema": True}
    sampler.recipe_for(lambda p: values[p.key])  # learns which keys this structure accepts
    calls = []
    real = recipes.load_recipe
    monkeypatch.setattr(recipes, "load_recipe",
                        lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    monkeypatch.setattr(recipes, "set_in_recipe", lambda *a, **k: calls.append("set"))
    values["optimizer.lr"] = 0.007
    trial_recipe = sampler.recipe_for(lambda p: values[p.key])
    assert len(calls) == 1 and calls[0] != "set"
    overrides = calls[0][0][1]
    assert overrides["optimizer.lr"] == 0.007 and overrides["optimizer.eps"] == 1e-7
    assert trial_recipe["optimizer"]["lr"] == 0.007
    assert [c["name"] for c in trial_recipe["callbacks"]] == ["ema"]
    # sgd has no eps: not sampled, and still one call once the structure is known
    values["optimizer.name"] = "sgd"
    asked = []
    monkeypatch.setattr(recipes, "load_recipe", real)
    sampler.recipe_for(lambda p: asked.append(p.key) or values[p.key])
    assert "optimizer.eps" not in asked


# ---------------------------------------------------------------- failures are capped


def test_a_space_whose_trials_all_diverge_stops_at_the_failure_cap(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"optimizer.name": {"type": "categorical", "choices": ["sgd_momentum"]},
             "optimizer.lr": {"type": "float", "low": 50.0, "high": 100.0}}
    recipe = _recipe_file(tmp_path, "diverge", 2, space)
    code = main(["--recipe", str(recipe), "--n-trials", "3", "--pruner", "none",
                 "--metric", "valid_loss", "--threads", "1", "--study-name", "diverge"])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("error: stopped after 3 failed trials (--max-failures 3); "
                                "most common failure (3 of 3): ")
    study = optuna.load_study(study_name="diverge",
                              storage=make_storage(None, "diverge", root=tmp_path / "runs"))
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3  # not 147
    assert (tmp_path / "runs" / "diverge" / "trials.csv").is_file()


def test_max_failures_option_sets_the_cap(tmp_path):
    from fasttricks.tune import TooManyFailures

    space = {"optimizer.name": {"type": "categorical", "choices": ["sgd_momentum"]},
             "optimizer.lr": {"type": "float", "low": 50.0, "high": 100.0}}
    recipe = load_recipe(_recipe(), {"schedule.epochs": 1})
    with pytest.raises(TooManyFailures, match="after 1 failed trials"):
        tune(recipe, space, pruner="none", n_trials=5, max_failures=1, metric="valid_loss",
             root=tmp_path / "runs", threads=1, progress=False)


# ---------------------------------------------------------------- sampler seeds


def _asked(tmp_path, name, n, worker=None, seed=0):
    """Parameters of ``n`` trials asked (no training) from a freshly prepared study."""
    from fasttricks.tune import prepare_study

    prepared = prepare_study(_recipe(), SPACE, study_name=name, root=tmp_path, seed=seed,
                             sampler="random", worker=worker, n_trials=20)
    params = []
    for _ in range(n):
        trial = prepared.study.ask()
        params.append({p.key: p.suggest(trial) for p in prepared.space.values()})
        prepared.study.tell(trial, 0.5)
    return params


def test_an_uninterrupted_run_is_reproducible_from_its_seed(tmp_path):
    first = _asked(tmp_path / "a", "same", 3)
    again = _asked(tmp_path / "b", "same", 3)
    assert first == again
    assert first != _asked(tmp_path / "c", "same", 3, seed=1)
    assert len({tuple(p.values()) for p in first}) == 3


def test_a_restarted_study_samples_new_points(tmp_path):
    before = _asked(tmp_path, "restart", 2)
    after = _asked(tmp_path, "restart", 2)  # same command again on the same study
    points = [tuple(p.values()) for p in before + after]
    assert len(set(points)) == 4


def test_parallel_workers_on_one_study_sample_different_points(tmp_path):
    from fasttricks.tune import prepare_study

    studies = [prepare_study(_recipe(), SPACE, study_name="par", root=tmp_path, seed=0,
                             sampler="random", worker=w).study for w in (0, 1)]
    trials = [s.ask() for s in studies]  # both start before either finishes
    params = [{k: p.suggest(t) for k, p in load_space(SPACE).items()} for t in trials]
    assert params[0] != params[1]
    # two identical launchers (same worker index) still differ: the trial number differs
    twin = prepare_study(_recipe(), SPACE, study_name="par", root=tmp_path, seed=0,
                         sampler="random", worker=0).study
    third = twin.ask()
    assert {k: p.suggest(third) for k, p in load_space(SPACE).items()} not in params


# ---------------------------------------------------------------- options and the CLI


def test_options_file_keeps_the_database_url_out_and_workers_get_it_from_the_env(
        tmp_path, monkeypatch):
    from fasttricks.tune import TuneOptions
    from fasttricks.tune._options import STORAGE_ENV
    from fasttricks.tune._workers import worker_command, worker_env

    url = "postgresql://user:s3cret@db.example/tune"
    options = TuneOptions(storage=url, workers=2, n_trials=7, pruner="asha")
    path = options.save(tmp_path / "options.json")
    assert "s3cret" not in path.read_text() and "db.example" not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) in ("0o600", "0o644", "0o664")
    command = worker_command(1, path)
    assert not [part for part in command if "s3cret" in part or "postgresql" in part]
    assert command[-4:] == ["--worker", "1", "--worker-options", str(path)]
    env = worker_env(1, None, url)
    monkeypatch.setenv(STORAGE_ENV, env[STORAGE_ENV])
    loaded = TuneOptions.load(path)
    assert loaded == options


@pytest.mark.parametrize("flags,needle", [
    (["--threads", "-1"], "--threads: expected an integer >= 1, got '-1'"),
    (["--study-name", "../escape"], "study name must be usable as a folder name"),
    (["--study-name", ".."], "study name must be usable as a folder name"),
    (["--space", "missing.yaml"], "search space file not found: 'missing.yaml'"),
])
def test_cli_refuses_bad_flags_in_one_line(tmp_path, capsys, monkeypatch, flags, needle):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["--recipe", "digits", *flags])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists()


def test_library_refuses_negative_threads_and_path_like_study_names(tmp_path):
    from fasttricks.tune import TuneOptions

    with pytest.raises(ValueError, match="threads must be >= 1, got -1"):
        TuneOptions(threads=-1)
    with pytest.raises(ValueError, match="got 'a/b'"):
        TuneOptions(study_name="a/b")


def test_cli_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyError, match="asah"):
        main(["--recipe", "digits", "--pruner", "asah", "--debug"])


# ---------------------------------------------------------------- worker processes


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")


def _load(tmp_path, name):
    return optuna.load_study(study_name=name,
                             storage=make_storage(None, name, root=tmp_path / "runs"))


def _wait_for(predicate, seconds, proc=None):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError, FileNotFoundError, ValueError):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    return None


def _running_trial_of_a_worker(tmp_path, name):
    """A running trial with at least one epoch reported, and its worker's pid."""
    if not (tmp_path / "runs" / name / "journal.log").exists():
        return None
    for trial in _load(tmp_path, name).get_trials(states=(TrialState.RUNNING,)):
        if trial.intermediate_values and WORKER_ATTR in trial.user_attrs:
            return trial.number, int(trial.user_attrs[WORKER_ATTR].rsplit(":", 1)[1])
    return None


def test_two_workers_survive_a_killed_worker_and_reach_n_trials(tmp_path):
    import signal

    _recipe_file(tmp_path, "tiny", 6)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fasttricks.tune", "--recipe", "tiny.yaml", "--n-trials", "4",
         "--workers", "2", "--pruner", "asha", "--sampler", "random", "--threads", "1",
         "--study-name", "tiny-asha"],
        cwd=tmp_path, env=_env(), stdout=(tmp_path / "out.txt").open("w"),
        stderr=(tmp_path / "err.txt").open("w"),  # files, not pipes: nothing blocks a writer
    )
    victim = _wait_for(lambda: _running_trial_of_a_worker(tmp_path, "tiny-asha"), 120)
    assert victim is not None
    number, pid = victim
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=300)
    out, err = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 0, err
    assert "2 workers on this machine" in out
    assert "[w0] trial" in out or "[w1] trial" in out
    assert f"(pid {pid}) ended with signal 9" in out
    study = _load(tmp_path, "tiny-asha")
    assert study.trials[number].state == TrialState.FAIL  # reaped and failed at once
    assert len(_finished(study)) == 4  # the study still reaches N
    assert len({t.number for t in study.trials}) == len(study.trials)
    folder = tmp_path / "runs" / "tiny-asha"
    assert (folder / "best.yaml").is_file() and (folder / "trials.csv").is_file()
    assert load_space(folder / "space.yaml").keys() == SPACE.keys()
    assert "postgresql" not in (folder / "options.json").read_text()


def test_a_killed_launcher_leaves_the_results_to_its_last_worker(tmp_path, capsys,
                                                                 monkeypatch):
    import signal

    _recipe_file(tmp_path, "orphans", 3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fasttricks.tune", "--recipe", "orphans.yaml", "--n-trials",
         "3", "--workers", "2", "--pruner", "none", "--sampler", "random", "--threads", "1",
         "--study-name", "orphans"],
        cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    assert _wait_for(lambda: _running_trial_of_a_worker(tmp_path, "orphans"), 120)
    proc.kill()
    proc.wait()
    folder = tmp_path / "runs" / "orphans"

    def done():
        study = _load(tmp_path, "orphans")
        return (len(_finished(study)) == 3 and not study.get_trials(states=(TrialState.RUNNING,))
                and (folder / "best.yaml").is_file() and (folder / "trials.csv").is_file())

    assert _wait_for(done, 180)
    assert len(pd.read_csv(folder / "trials.csv")) == len(_load(tmp_path, "orphans").trials)
    # --report writes them again from the study folder
    (folder / "best.yaml").unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["--report", "--study-name", "orphans"]) == 0
    assert (folder / "best.yaml").is_file()
    assert "best trial" in capsys.readouterr().out
