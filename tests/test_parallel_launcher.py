"""The member launcher on CPU (:func:`fasttricks.ensemble._parallel.run_workers`): the launching
process trains members itself as worker 0 and forks the other workers where that is safe.

The jobs here are synthetic (a member is a seeded ``nn.Linear`` and a short sleep), so the
launcher's bookkeeping is tested in seconds; ``tests/test_scale.py`` runs real recipes."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from fasttricks.ensemble import _parallel
from fasttricks.ensemble._members import MemberJob, load_or_train
from fasttricks.ensemble._parallel import _member_of, run_workers, start_method
from fasttricks.ensemble._store import MemberStore, fingerprint
from member_journal import member_study, trained_per_member

N_MEMBERS = 4


def _member(i: int, name: str) -> tuple[dict, SimpleNamespace]:
    """Member ``i``: a linear layer seeded with ``i``; its record says who trained it."""
    time.sleep(0.3)
    torch.manual_seed(100 + i)
    model = nn.Linear(3, 2)
    record = {"weight_sum": float(model.weight.detach().sum()), "pid": os.getpid(),
              "threads": torch.get_num_threads()}
    return record, SimpleNamespace(model=model)


def _job(folder: Path, train=_member) -> MemberJob:
    store = MemberStore(folder, fingerprint({"synthetic": N_MEMBERS, "job": folder.name}))
    job = MemberJob(store=store, names=[f"m_{i}" for i in range(N_MEMBERS)], train=train)
    _BUILT.append(job)
    return job


@pytest.fixture(autouse=True)
def synthetic_kind(monkeypatch):
    """The launcher rebuilds its job from the description, by kind: the synthetic kind is
    whatever job the test last built with :func:`_job`."""
    from fasttricks.ensemble._worker import JOB_KINDS

    _BUILT.clear()
    monkeypatch.setitem(JOB_KINDS, "synthetic", lambda spec: _BUILT[-1])


_BUILT: list[MemberJob] = []


@pytest.fixture
def no_interpreters(monkeypatch):
    """Fail the test if a worker is started as a fresh interpreter instead of forked."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a worker interpreter was started: {args[0]!r}")

    monkeypatch.setattr(_parallel, "subprocess", SimpleNamespace(Popen=refuse))


def test_the_launcher_trains_members_itself_and_forks_the_other_worker(tmp_path,
                                                                        no_interpreters):
    seq = load_or_train(_job(tmp_path / "seq").store, _job(tmp_path / "seq").names, _member)
    job = _job(tmp_path / "par")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the launcher's own count; its members train with the workers'
    try:
        run_workers({"kind": "synthetic"}, job, workers=2, threads=1, progress=False)
        assert torch.get_num_threads() == 2  # restored after the launcher's members
    finally:
        torch.set_num_threads(before)
    records = [job.finished(i) for i in range(N_MEMBERS)]
    assert [r["weight_sum"] for r in records] == [m.record["weight_sum"] for m in seq.members]
    for i, r in enumerate(records):
        a = torch.load(job.store.model_path(f"m_{i}"), weights_only=False).state_dict()
        b = torch.load(_job(tmp_path / "seq").store.model_path(f"m_{i}"),
                       weights_only=False).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    pids = {r["pid"] for r in records}
    assert os.getpid() in pids and len(pids) == 2  # this process and one forked worker
    assert {r["threads"] for r in records} == {1}
    study = member_study(job.store.folder)
    assert trained_per_member(study) == {i: 1 for i in range(N_MEMBERS)}
    assert {t.user_attrs["worker"].rpartition(":")[2] for t in study.get_trials()} == \
        {str(p) for p in pids}

    # a rerun finds every member finished: nothing trains, no process starts
    stamps = {p: p.stat().st_mtime_ns for p in job.store.folder.glob("m_*")}
    run_workers({"kind": "synthetic"}, _job(tmp_path / "par"), workers=2, threads=1,
                progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert trained_per_member(member_study(job.store.folder)) == {i: 1 for i in range(N_MEMBERS)}


def _dies_once_in_a_worker(marker: Path, launcher: int):
    def train(i: int, name: str):
        if os.getpid() != launcher and not marker.exists():
            marker.write_text(str(i))
            os.kill(os.getpid(), signal.SIGKILL)  # mid-member, no chance to clean up
        return _member(i, name)
    return train


def test_a_killed_forked_worker_member_is_trained_by_the_launcher(tmp_path, capfd,
                                                                  no_interpreters):
    marker = tmp_path / "killed"
    job = _job(tmp_path / "par", _dies_once_in_a_worker(marker, os.getpid()))
    run_workers({"kind": "synthetic"}, job, workers=2, threads=1, progress=False)
    killed = int(marker.read_text())
    out = capfd.readouterr().out
    assert "ended with code -9" in out
    records = [job.finished(i) for i in range(N_MEMBERS)]
    assert all(r is not None for r in records)
    assert records[killed]["pid"] == os.getpid()  # retried here, the only worker left
    study = member_study(job.store.folder)
    assert trained_per_member(study) == {i: 1 for i in range(N_MEMBERS)}
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert _member_of(failed) == killed
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_member_that_raises_in_the_launcher_fails_its_trial_and_stops_the_workers(
        tmp_path, no_interpreters):
    import multiprocessing

    launcher = os.getpid()
    busy = tmp_path / "worker_busy"

    def train(i: int, name: str):
        if os.getpid() == launcher:
            deadline = time.monotonic() + 30
            while not busy.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            raise RuntimeError(f"member {i} diverged")
        busy.touch()
        time.sleep(5)  # the forked worker is still mid-member when the launcher fails
        return _member(i, name)

    job = _job(tmp_path / "par", train)
    with pytest.raises(RuntimeError, match=r"^member \d diverged$"):
        run_workers({"kind": "synthetic"}, job, workers=2, threads=1, progress=False)
    stopped = time.time()
    assert busy.exists()
    assert multiprocessing.active_children() == []
    study = member_study(job.store.folder)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    owners = {t.user_attrs["worker"].rpartition(":")[2]: t.state
              for t in study.get_trials(states=(TrialState.FAIL,))}
    assert owners.get(str(launcher)) == TrialState.FAIL and len(owners) == 2
    assert all(job.finished(i) is None for i in range(N_MEMBERS))
    assert stopped - busy.stat().st_mtime < 4  # the worker was stopped, not waited for


def test_start_method_forks_only_where_it_is_safe(monkeypatch):
    from tqdm import tqdm

    with tqdm(total=1, file=io.StringIO()) as bar:  # leaves tqdm's monitor thread behind
        bar.update()
    assert any(type(t).__name__ == "TMonitor" for t in threading.enumerate())
    assert start_method(1) == "fork"  # the monitor is stopped, not a reason to spawn
    assert threading.active_count() == 1
    assert start_method(1, gpus=["0"]) == "spawn"
    assert start_method(1, requested="spawn") == "spawn"
    monkeypatch.setattr(_parallel, "START_METHOD", "spawn")
    assert start_method(1) == "spawn"
    monkeypatch.setattr(_parallel, "START_METHOD", "auto")
    with pytest.raises(ValueError, match="start method must be 'auto', 'fork' or 'spawn', "
                                         "got 'forkserver'"):
        start_method(1, requested="forkserver")

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:  # a thread that might hold a lock at the fork
        assert start_method(1) == "spawn"
    finally:
        stop.set()
        other.join()

    # several torch threads per worker: fork only while no native thread pool runs here
    monkeypatch.setattr(os, "listdir", lambda path: ["1", "2", "3"] if "task" in str(path)
                        else [])
    assert start_method(2) == "spawn"
    assert start_method(1) == "fork"
    monkeypatch.setattr(os, "listdir", lambda path: ["1"])
    assert start_method(2) == "fork"


@pytest.mark.postgres
def test_forked_workers_share_a_postgres_study_and_leave_the_launcher_connection_working(
        tmp_path, capfd, no_interpreters):
    """A forked worker inherits the launcher's open connections: it must use its own and
    leave the launcher's working; a killed one's member is retried."""
    from pg_cluster import create_database, postgres_cluster

    with postgres_cluster() as server:
        url = create_database(server, "launcher_fork")
        job = _job(tmp_path / "par")
        # a connection of this process, open (pooled) before the fork, used after it
        study = _parallel.open_study(f"synthetic-{job.store.fingerprint}", job.store.folder,
                                     url, workers=1)
        assert study.get_trials() == []
        run_workers({"kind": "synthetic"}, job, workers=2, threads=1, storage=url,
                    progress=False)
        assert trained_per_member(study) == {i: 1 for i in range(N_MEMBERS)}
        assert len({job.finished(i)["pid"] for i in range(N_MEMBERS)}) == 2
        assert not study.get_trials(states=(TrialState.RUNNING,))
        run_workers({"kind": "synthetic"}, _job(tmp_path / "par"), workers=2, threads=1,
                    storage=url, progress=False)  # a rerun: nothing left to train
        assert trained_per_member(study) == {i: 1 for i in range(N_MEMBERS)}

        marker = tmp_path / "killed"
        job = _job(tmp_path / "kill", _dies_once_in_a_worker(marker, os.getpid()))
        run_workers({"kind": "synthetic"}, job, workers=2, threads=1, storage=url,
                    progress=False)
        killed = int(marker.read_text())
        assert "ended with code -9" in capfd.readouterr().out
        assert job.finished(killed)["pid"] == os.getpid()
        study = _parallel.open_study(f"synthetic-{job.store.fingerprint}", job.store.folder,
                                     url, workers=1)
        assert trained_per_member(study) == {i: 1 for i in range(N_MEMBERS)}
        (failed,) = study.get_trials(states=(TrialState.FAIL,))
        assert _member_of(failed) == killed
        assert failed.user_attrs["worker"] != study.get_trials()[-1].user_attrs["worker"]
