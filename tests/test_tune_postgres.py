"""Real PostgreSQL: several worker processes share one study; a killed worker's trial is retried.

The server is a throw-away cluster (``pg_cluster.py``) that asks for a password, and every URL
has the README's form ``postgresql://user:password@host:port/database`` (no driver named: the
storage picks the installed one). The first test uses a synthetic objective (a few short
"epochs") so that the storage machinery alone is tested; the second runs the digits recipe
through the command line with two workers and kills one mid-trial; the last ones check that a
wrong password, a server that is down and an unknown database each give one clear line.
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

from fasttricks.recipes import builtin_recipe_path

from pg_cluster import PASSWORD, _free_port, create_database, postgres_cluster

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
    return create_database(url, name)


def _load(url):
    from fasttricks.tune import make_storage

    return optuna.load_study(study_name="toy", storage=make_storage(url))


def test_two_workers_share_a_study_without_duplicates(postgres_url):
    url = _fresh_db(postgres_url, "two_workers")
    procs = [_start_worker(url, 8, 2, 0.05, seed) for seed in (1, 2)]
    outputs = [proc.communicate(timeout=180) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
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


def _tiny_recipe(tmp_path, epochs):
    import yaml

    recipe = yaml.safe_load(builtin_recipe_path("digits").read_text())
    recipe["schedule"]["epochs"] = epochs
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "tiny.space.yaml").write_text(yaml.safe_dump({
        "optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
    }))


def test_cli_workers_on_postgres_survive_a_killed_worker(postgres_url, tmp_path):
    """The command line end to end: 2 workers, heartbeat 1 s, one SIGKILLed mid-trial."""
    url = _fresh_db(postgres_url, "cli_workers")
    _tiny_recipe(tmp_path, epochs=6)
    n_trials = 3
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fasttricks.tune", "--recipe", "tiny.yaml", "--storage", url,
         "--study-name", "cli", "--workers", "2", "--n-trials", str(n_trials), "--pruner",
         "none", "--heartbeat", "1", "--max-retry", "1", "--threads", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # One storage (one connection pool) for all the polling: a new storage per poll would
    # open a new pool each time and run the server out of connections on a slow machine.
    from fasttricks.tune import make_storage

    storage = make_storage(url)
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name="cli", storage=storage)
        except KeyError:
            continue
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if len(trial.intermediate_values) >= 1 and "worker" in trial.user_attrs:
                pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)
                victim = trial.number
                break
    assert victim is not None, "no running trial to kill"
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err
    assert "ended with signal 9" in out
    trials = optuna.load_study(study_name="cli", storage=storage).trials
    assert trials[victim].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert (tmp_path / "runs" / "cli" / "best.yaml").is_file()


def test_the_readme_url_form_opens_with_the_installed_driver(postgres_url):
    from fasttricks.tune import make_storage

    assert postgres_url.startswith("postgresql://tuner:")  # no "+driver" in the URL
    url = _fresh_db(postgres_url, "readme_form")
    for form in (url, url.replace("postgresql://", "postgres://", 1)):
        storage = make_storage(form, "readme")
        study = optuna.create_study(study_name="readme", storage=storage, load_if_exists=True)
        study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=2)
    trials = _load_named(url, "readme").trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)


def _load_named(url, name):
    from fasttricks.tune import make_storage

    return optuna.load_study(study_name=name, storage=make_storage(url))


def _host_port(url):
    return url.split("@", 1)[1].split("/", 1)[0]


def _failure(url):
    from fasttricks.tune import make_storage
    from fasttricks.tune._storage import StorageError

    with pytest.raises(StorageError) as info:
        make_storage(url, "x")
    message = str(info.value)
    assert "\n" not in message, message
    assert PASSWORD not in message and "wrong-pw-77" not in message
    assert ":***@" in message
    return message


def test_wrong_password_is_one_line_without_the_password(postgres_url):
    message = _failure(postgres_url.replace(PASSWORD, "wrong-pw-77"))
    assert f"the server at {_host_port(postgres_url)} refused user 'tuner'" in message
    assert "check user and password" in message


def test_server_down_is_one_line_naming_host_and_port(postgres_url):
    port = _free_port()  # nothing listens there: the connection is refused
    url = postgres_url.replace(_host_port(postgres_url), f"127.0.0.1:{port}")
    message = _failure(url)
    assert f"no database server answers at 127.0.0.1:{port}" in message


def test_unknown_database_is_one_line_saying_how_to_create_it(postgres_url):
    message = _failure(postgres_url.rsplit("/", 1)[0] + "/no_such_db")
    assert "has no database 'no_such_db'" in message and "CREATE DATABASE no_such_db" in message


def test_cli_with_a_wrong_password_prints_one_line_and_exits_2(postgres_url, tmp_path):
    # torch's own deprecation warnings on import are not the tuner's output
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg",
               PYTHONWARNINGS="ignore::FutureWarning")
    url = postgres_url.replace(PASSWORD, "wrong-pw-77")
    result = subprocess.run(
        [sys.executable, "-m", "fasttricks.tune", "--storage", url, "--n-trials", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot open storage"), result.stderr
    assert "wrong-pw-77" not in result.stderr + result.stdout
