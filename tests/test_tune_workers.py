"""Worker processes: GPU pinning, the command each worker runs, and GPU trials (CUDA only)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fasttricks.tune._options import STORAGE_ENV
from fasttricks.tune._workers import worker_command, worker_env

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


def test_worker_command_holds_only_its_index_and_the_options_file(tmp_path):
    from fasttricks.tune import TuneOptions

    options = TuneOptions(pruner="asha", n_trials=7, timeout=60.0, metric="accuracy",
                          direction="maximize", seed=10, heartbeat=5, max_retry=2, threads=1,
                          storage="postgresql://u:pw@h/db", workers=2)
    path = options.save(tmp_path / "options.json")
    cmd = worker_command(2, path)
    assert cmd == [sys.executable, "-m", "fasttricks.tune", "--worker", "2",
                   "--worker-options", str(path)]
    # every option reaches the worker through the file, the URL through the environment
    env = worker_env(2, None, options.storage)
    saved = json.loads(path.read_text())
    assert saved["storage"] is None and "pw" not in path.read_text()
    assert TuneOptions.from_dict({**saved, "storage": env[STORAGE_ENV]}) == options


def test_a_dead_local_worker_is_not_waited_for_but_a_live_one_is(tmp_path):
    import optuna

    from fasttricks.tune._workers import WORKER_ATTR, fail_orphaned_trials, live_local_trials

    study = optuna.create_study()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, sleeper.pid):
            study.ask().set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{pid}")
        assert live_local_trials(study) == [1]
        assert fail_orphaned_trials(study) == [0]
        sleeper.kill()
        assert live_local_trials(study) == [1]  # a zombie still looks alive ...
        sleeper.wait()  # ... until it is reaped, as the launcher does at once
        assert live_local_trials(study) == []
        assert fail_orphaned_trials(study, [sleeper.pid]) == [1]
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.cuda
def test_trials_run_on_the_gpu_with_fp16(tmp_path):
    import optuna

    from fasttricks.recipes import load_recipe
    from fasttricks.tune import tune

    recipe = load_recipe("digits", {"schedule.epochs": 2})
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    study = tune(recipe, space, pruner="none", n_trials=2, root=str(tmp_path / "runs"),
                 study_name="gpu", gpus=["0"])
    trials = optuna.load_study(study_name="gpu", storage=study._storage).trials
    assert len(trials) == 2
    assert all(t.user_attrs["device"].startswith("cuda") for t in trials)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_only_the_last_worker_to_finish_is_told_so(tmp_path):
    from fasttricks.tune._workers import LastWorker

    first, second = LastWorker(tmp_path), LastWorker(tmp_path)
    assert not first.done()  # the second one may still add trials
    assert second.done()  # nobody else holds the file
    second.close()
    first.close()
    late = LastWorker(tmp_path)  # a worker that starts after both: alone, so the last
    assert late.done()
    late.close()


def test_a_dead_worker_does_not_keep_the_last_one_waiting(tmp_path):
    from fasttricks.tune._workers import LastWorker

    code = ("import sys, time; from fasttricks.tune._workers import LastWorker; "
            "w = LastWorker(sys.argv[1]); print('held', flush=True); time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        alive = LastWorker(tmp_path)
        assert not alive.done()  # the other process still holds its share
        alive.close()
        proc.kill()
        proc.wait()
        survivor = LastWorker(tmp_path)
        assert survivor.done()  # the kernel dropped the dead process's lock
        survivor.close()
    finally:
        proc.kill()
        proc.wait()
