"""Real PostgreSQL: several worker processes share one study; a killed worker's trial is retried.

The server is a throw-away cluster (``pg_cluster.py``). These tests use a tiny synthetic
objective (a few short "epochs") so that the storage machinery, not training, is what is tested;
``test_tune_study.py`` runs real recipes through the command line against the same cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pg_cluster import postgres_cluster

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)

WORKER = textwrap.dedent("""
    import sys, time
    import optuna
    from fasttricks.tune import make_pruner, make_storage
    from fasttricks.tune._study import run_trials, worker_id

    url, n_trials, epochs, seconds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        float(sys.argv[4]), int(sys.argv[5])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(url, "toy", workers=2, heartbeat=1, max_retry=2)
    study = optuna.create_study(
        study_name="toy", storage=storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        pruner=make_pruner("none", max_epochs=epochs))

    def objective(trial):
        trial.set_user_attr("worker", worker_id())
        x = trial.suggest_float("x", -1.0, 1.0)
        for epoch in range(1, epochs + 1):
            time.sleep(seconds)
            trial.report((x - 0.3) ** 2 + 1.0 / epoch, epoch)
        return (x - 0.3) ** 2

    run_trials(study, objective, n_trials)
    print("best", study.best_trial.number, flush=True)
""")


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_cluster() as url:
        yield url


def _start_worker(url, n_trials, epochs, seconds, seed):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, str(n_trials), str(epochs), str(seconds), str(seed)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _fresh_db(url, name):
    import psycopg2

    host_part = url.split("@", 1)[1]
    hostport, _ = host_part.split("/", 1)
    host, port = hostport.split(":")
    conn = psycopg2.connect(host=host, port=int(port), user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


def _load(url):
    return optuna.load_study(study_name="toy", storage=url)


def test_two_workers_share_a_study_without_duplicates(postgres_url):
    url = _fresh_db(postgres_url, "two_workers")
    procs = [_start_worker(url, 8, 2, 0.05, seed) for seed in (1, 2)]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    study = _load(url)
    trials = study.trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) == len(trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8
    # both workers really ran trials
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    # the best is the brute-force minimum, and a second connection sees the same best
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert _load(url).best_value == pytest.approx(best.value)


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(postgres_url):
    url = _fresh_db(postgres_url, "kill_worker")
    n_trials = 6
    procs = [_start_worker(url, n_trials, 6, 0.25, seed) for seed in (3, 4)]
    pids = {proc.pid: proc for proc in procs}
    victim_trial = None
    deadline = time.monotonic() + 120
    while victim_trial is None and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = _load(url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # study not created yet
            continue
        for trial in running:
            pid = int(str(trial.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
            if pid in pids and len(trial.intermediate_values) >= 1:
                os.kill(pid, signal.SIGKILL)  # mid-trial: one epoch reported, five to go
                victim_trial, victim_pid = trial.number, pid
                break
    assert victim_trial is not None, "no running trial to kill"
    pids[victim_pid].wait(timeout=30)
    survivor = next(p for pid, p in pids.items() if pid != victim_pid)
    out, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err
    trials = _load(url).trials
    by_number = {t.number: t for t in trials}
    assert by_number[victim_trial].state == TrialState.FAIL  # failed by the heartbeat check
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim_trial]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].params == by_number[victim_trial].params  # the same point, re-run
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
