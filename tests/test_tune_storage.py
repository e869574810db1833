"""Storage selection: journal file by default, RDB for databases, SQLite refused for workers."""

from __future__ import annotations

import multiprocessing as mp
import os

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage

from fasttricks.tune import make_storage
from fasttricks.tune._storage import storage_kind

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_default_storage_is_a_journal_file_under_runs(tmp_cwd):
    storage = make_storage(None, "digits-hyperband")
    assert isinstance(storage, JournalStorage)
    assert (tmp_cwd / "runs" / "digits-hyperband" / "journal.log").is_file()


def test_a_path_is_a_journal_file_there(tmp_path):
    storage = make_storage(str(tmp_path / "sub" / "study.log"), "x", workers=4)
    assert isinstance(storage, JournalStorage)
    assert (tmp_path / "sub" / "study.log").is_file()


def test_sqlite_is_accepted_for_one_worker(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", workers=1)
    assert isinstance(storage, RDBStorage)


def test_sqlite_with_several_workers_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError) as info:
        make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", workers=2)
    message = str(info.value)
    assert "2 workers" in message and "database is locked" in message
    assert "postgresql://" in message


def test_heartbeat_needs_an_rdb_storage_and_retry_needs_a_heartbeat(tmp_path):
    with pytest.raises(ValueError, match="RDB storage"):
        make_storage(None, "x", heartbeat=5, root=tmp_path)
    with pytest.raises(ValueError, match="needs a heartbeat"):
        make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", max_retry=2)


def test_sqlite_heartbeat_and_retry_are_wired_into_optuna(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", heartbeat=3, max_retry=2)
    assert storage.get_heartbeat_interval() == 3
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert callback._max_retry == 2


@pytest.mark.parametrize("url,kind", [
    (None, "journal"), ("runs/x.log", "journal"), ("postgresql://u@h/db", "postgresql"),
    ("postgresql+psycopg2://u@h/db", "postgresql"), ("postgres://u@h/db", "postgresql"),
    ("sqlite:///a.db", "sqlite"), ("mysql://u@h/db", "mysql"),
])
def test_storage_kind_from_url(url, kind):
    assert storage_kind(url) == kind


def test_unknown_storage_scheme_lists_the_supported_ones():
    with pytest.raises(ValueError, match="redis://h.*postgresql://"):
        storage_kind("redis://h")


def _add_trials(path, n, out):
    storage = make_storage(path, "shared")
    study = optuna.load_study(study_name="shared", storage=storage)
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, float(trial.number))
    out.put(os.getpid())


def test_journal_file_is_safe_for_concurrent_processes(tmp_path):
    path = str(tmp_path / "journal.log")
    optuna.create_study(study_name="shared", storage=make_storage(path, "shared"))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_add_trials, args=(path, 15, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    study = optuna.load_study(study_name="shared", storage=make_storage(path, "shared"))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(30))  # no lost and no duplicate trial numbers
    assert all(t.value == t.number for t in study.trials)
