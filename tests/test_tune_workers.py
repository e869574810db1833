"""Worker processes: GPU pinning, the command each worker runs, and GPU trials (CUDA only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fasttricks.tune._workers import _command, worker_env

REPO = Path(__file__).resolve().parents[1]


def test_workers_are_pinned_to_gpus_in_turn():
    gpus = ["0", "3"]
    assert [worker_env(i, gpus)["CUDA_VISIBLE_DEVICES"] for i in range(5)] == \
        ["0", "3", "0", "3", "0"]


def test_without_gpus_cuda_visibility_is_left_alone(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert worker_env(0, None)["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "CUDA_VISIBLE_DEVICES" not in worker_env(1, None)


def test_worker_env_puts_the_package_on_the_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    paths = worker_env(0, None)["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(REPO), "/somewhere/else"]


def test_worker_command_passes_every_option_and_offsets_the_seed():
    study = SimpleNamespace(study_name="s")
    args = dict(pruner="asha", sampler="tpe", n_trials=7, timeout=60.0, metric="accuracy",
                direction="maximize", seed=10, heartbeat=5, max_retry=2, mlflow=None,
                threads=1)
    cmd = _command(2, study, Path("r.yaml"), Path("s.yaml"), "postgresql://h/db", args)
    assert cmd[:3] == [sys.executable, "-m", "fasttricks.tune"]
    pairs = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert pairs == {
        "--recipe": "r.yaml", "--space": "s.yaml", "--study-name": "s",
        "--storage": "postgresql://h/db", "--pruner": "asha", "--sampler": "tpe",
        "--n-trials": "7", "--metric": "accuracy", "--direction": "maximize",
        "--worker": "2", "--seed": "12", "--timeout": "60.0", "--heartbeat": "5",
        "--max-retry": "2", "--threads": "1",
    }


@pytest.mark.cuda
def test_trials_run_on_the_gpu_with_fp16(tmp_path):
    import optuna

    from fasttricks.recipes import load_recipe
    from fasttricks.tune import tune

    recipe = load_recipe(REPO / "recipes" / "digits.yaml", {"schedule.epochs": 2})
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    study = tune(recipe, space, pruner="none", n_trials=2, root=tmp_path / "runs",
                 study_name="gpu", gpus=["0"])
    trials = optuna.load_study(study_name="gpu", storage=study._storage).trials
    assert len(trials) == 2
    assert all(t.user_attrs["device"].startswith("cuda") for t in trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
