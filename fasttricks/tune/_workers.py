"""Worker processes: N copies of ``python -m fasttricks.tune`` on the same study storage.

Each worker is a separate process (no threads, no distributed training) pinned to one GPU
through ``CUDA_VISIBLE_DEVICES``; GPUs are dealt out in turn. All of them start trials from the
same storage, so a worker on another machine joins by pointing at the same PostgreSQL URL.

A worker's command line holds only its index and the path of the options file the launcher
wrote once into the study folder; a database URL travels in the environment
(:data:`~fasttricks.tune._options.STORAGE_ENV`), never on a command line that ``ps`` shows.

This module also keeps the books of worker processes: which process runs a trial
(:func:`worker_id`), whether it is still alive, and failing the trials of those that died.
The launcher reaps a worker the moment it ends, so a worker killed with SIGKILL never lingers
as a zombie that looks alive: its running trial is marked FAIL at once and another worker
runs a replacement. Ctrl-C reaches every worker (same process group): each records its
running trial as FAIL and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fasttricks.tune._logs import quiet_experimental
from fasttricks.tune._options import STORAGE_ENV, TuneOptions

__all__ = [
    "LastWorker",
    "STOP_GRACE_SECONDS",
    "WORKER_ATTR",
    "fail_orphaned_trials",
    "heartbeat_enabled",
    "launch_workers",
    "live_local_trials",
    "pid_alive",
    "worker_command",
    "worker_env",
    "worker_id",
]

_log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0
WORKER_ATTR = "worker"
WORKERS_LOCK = ".workers.lock"


def worker_id() -> str:
    """``host:pid`` of this process, stored on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_pid(trial: Any) -> int | None:
    """The pid of the process on this host that runs ``trial``, or None (another host)."""
    owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != socket.gethostname() or not pid_text.isdigit():
        return None
    return int(pid_text)


def heartbeat_enabled(study: Any) -> bool:
    """Whether the study's storage records heartbeats of running trials."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def _stale_callback(study: Any) -> Any:
    getter = getattr(study._storage, "get_heartbeat_stale_trial_callback", None)
    return getter() if getter is not None and heartbeat_enabled(study) else None


def live_local_trials(study: Any) -> list[int]:
    """Numbers of RUNNING trials owned by another live process of this host.

    Such a trial may still fail (its process may be killed), so a worker that has nothing
    left to start waits for them instead of leaving the study one trial short.
    """
    from optuna.trial import TrialState

    numbers = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = _local_pid(trial)
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            numbers.append(trial.number)
    return numbers


def fail_orphaned_trials(study: Any, pids: Sequence[int] | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone.

    A worker killed without a chance to clean up (SIGKILL, power loss) leaves its trial
    RUNNING; without heartbeats nothing else would ever finish it. ``pids`` restricts the check
    to these processes (default: any dead process of this host). When the storage has a
    heartbeat-stale callback (``max_retry``), it runs for these trials too, so they are
    re-queued. Returns the trial numbers.
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = _local_pid(trial)
        if pid is None or pid == os.getpid() or (pids is not None and pid not in pids):
            continue
        if pid_alive(pid):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        retry = _stale_callback(study)
        if retry is not None:
            with quiet_experimental():
                retry(study, study._storage.get_trial(trial._trial_id))
    if failed:
        _log.warning("marked trials %s FAIL: their worker process ended mid-trial", failed)
    return failed


class LastWorker:
    """Tells the last of a study's worker processes on this host to finish apart from the rest.

    Each worker holds a shared ``flock`` on ``<study folder>/.workers.lock`` from its start.
    When it is done it drops it and tries an exclusive lock without waiting: only a process
    that finds no other worker still holding the file gets it, and the kernel drops the locks
    of a process that died. So when the launcher is gone, one worker, the last out, writes the
    study's results, after every other worker has stopped adding trials (a worker that counted
    the trials, then was slow to start one the study did not need, holds its lock until it has
    recorded that trial). Where ``fcntl`` is missing every worker counts as the last.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:
            return
        self._fd = os.open(Path(folder) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def done(self) -> bool:
        """Drop this worker's share; True when no other worker holds one (ask once)."""
        if self._fd is None:
            return True
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another worker is still running
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def worker_env(index: int, gpus: Sequence[str] | None,
               storage: str | None = None) -> dict[str, str]:
    """The environment of worker ``index``: this one, plus its GPU, the package on the path and
    the storage URL (in :data:`STORAGE_ENV`, kept off the command line)."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_parent not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])
    if storage is not None:
        env[STORAGE_ENV] = storage
    else:
        env.pop(STORAGE_ENV, None)
    return env


def worker_command(index: int, options_path: str | os.PathLike[str]) -> list[str]:
    """The command line of worker ``index``: its index and the options file, nothing else."""
    return [sys.executable, "-m", "fasttricks.tune", "--worker", str(index),
            "--worker-options", os.fspath(options_path)]


def _wait_all(procs: Sequence[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """Stop the workers: a terminal's Ctrl-C has reached them already, so first give them a
    moment to record their trials; then SIGINT the rest, and SIGKILL what outlives ``grace``."""
    _wait_all(procs, 5.0)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.warning("worker pid %d did not stop within %.0fs: killing it", proc.pid, grace)
            proc.kill()
            proc.wait()


def _announce(options: TuneOptions) -> None:
    gpus = options.gpus
    if gpus:
        plan = ", ".join(f"worker {i} -> GPU {gpus[i % len(gpus)]}"
                         for i in range(options.workers))
        print(f"{options.workers} workers: {plan}", flush=True)
    else:
        print(f"{options.workers} workers on this machine", flush=True)


def _describe_exit(index: int, proc: subprocess.Popen) -> str:
    code = proc.returncode
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    return f"worker {index} (pid {proc.pid}) ended with {how}"


def _supervise(study: Any, procs: Sequence[subprocess.Popen], poll: float = 0.2) -> None:
    """Wait for every worker; reap each the moment it ends and fail its running trial."""
    done: set[int] = set()
    while len(done) < len(procs):
        for index, proc in enumerate(procs):
            if index in done or proc.poll() is None:  # poll() reaps an ended child
                continue
            done.add(index)
            if proc.returncode != 0:
                print(_describe_exit(index, proc), flush=True)
                fail_orphaned_trials(study, [proc.pid])
        time.sleep(poll)


def launch_workers(study: Any, options: TuneOptions,
                   options_path: str | os.PathLike[str]) -> list[int]:
    """Run ``options.workers`` worker processes on ``study`` until they end; returns exit codes.

    Args:
        study: the created study (its name and storage are shared).
        options: the run's options (``workers``, ``gpus``, ``storage``).
        options_path: the options file every worker reads (written once by the caller, next
            to the study's ``recipe.yaml`` and ``space.yaml``).
    """
    from fasttricks.tune._storage import default_journal_path, storage_kind

    storage = options.storage
    if storage_kind(storage) == "journal" and storage is None:
        storage = str(default_journal_path(study.study_name, options.root))
    _announce(options)
    procs: list[subprocess.Popen] = []
    try:
        for index in range(options.workers):
            procs.append(subprocess.Popen(worker_command(index, options_path),
                                          env=worker_env(index, options.gpus, storage)))
        _supervise(study, procs)
    except KeyboardInterrupt:
        _stop(procs, STOP_GRACE_SECONDS)
        fail_orphaned_trials(study, [p.pid for p in procs])
        raise
    fail_orphaned_trials(study, [p.pid for p in procs])
    return [proc.returncode for proc in procs]
