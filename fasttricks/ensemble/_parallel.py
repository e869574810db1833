"""Ensemble members in parallel: worker processes that claim members from a shared study.

The members of a k-fold or seed ensemble are independent, so they can train at the same time,
one per GPU or CPU slot, on one machine or many. Coordination goes through the tuner's storage
layer (:func:`fasttricks.tune._storage.make_storage`): one Optuna study per ensemble job, named
after the job's fingerprint, with one enqueued trial per member (fixed params ``{member: i}``).

- claiming: a worker moves a WAITING trial to RUNNING; the storage lets exactly one process
  win that move (Optuna's own rule for enqueued trials), so a member is claimed once across
  processes and machines. The winner records itself (``host:pid``) on the trial.
- finishing: the member's files go to the run folder exactly as the sequential run writes them
  (:func:`~fasttricks.ensemble._members.train_member`), then the trial is told COMPLETE.
- a dead worker: its RUNNING trial is failed by the launcher the moment the process ends, or by
  any worker of the same host (:func:`fasttricks.tune._workers.fail_orphaned_trials`), or, on
  PostgreSQL, when its heartbeat goes stale; a member with neither a finished record nor a
  live trial is enqueued again, so it is retried by the next free worker.
- a rerun skips members whose record is finished (the store decides, as in the sequential run).
- processes: on CPU the launching process is worker 0 and trains members itself; the other
  workers are forked from it where that is safe (:func:`start_method`), so they start in
  milliseconds with torch, fastai and the data already loaded, instead of paying seconds of
  imports each as fresh interpreters (still used with GPUs, or where forking is unsafe).

When every member is finished the caller averages, scores and reports once, through the
sequential code path, which then finds every member on disk. Several machines share a job with
the same command and ``--storage postgresql://...``; their run folders (``--out``) must then be
one shared folder, since members are files.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttricks._io import write_json
from fasttricks.ensemble._members import MemberJob, train_member

__all__ = ["JOB_KINDS", "MEMBER_PARAM", "SPEC_NAME", "START_METHOD", "Workers", "build_job",
           "claim_member", "run_workers", "start_method", "work", "worker_threads"]

_log = logging.getLogger(__name__)

MEMBER_PARAM = "member"
SPEC_NAME = "members.json"
JOURNAL_NAME = "members.log"
HEARTBEAT_SECONDS = 30


# kind -> build(spec) -> MemberJob; each job module registers its kind ("kfold" in _kfold,
# "seeds" in _ensembles, "seed_runs" in _seed_runs), so this module imports none of them
JOB_KINDS: dict[str, Callable[[dict], MemberJob]] = {}


def build_job(spec: dict) -> MemberJob:
    """The member job a description file names, as a worker trains it (no progress, no
    callbacks); refuses one whose fingerprint has changed."""
    kind = spec.get("kind")
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown member job kind {kind!r}; known: {sorted(JOB_KINDS)}")
    job = JOB_KINDS[kind](spec)
    if spec.get("fingerprint") not in (None, job.store.fingerprint):
        raise ValueError(f"the job in {job.store.folder} was rebuilt with other settings "
                         f"(fingerprint {job.store.fingerprint}, expected "
                         f"{spec['fingerprint']}); rerun the launching command")
    return job


def worker_threads(workers: int, threads: int | None = None) -> int:
    """Torch CPU threads per worker: ``threads`` if given, else the cores shared out evenly."""
    if threads:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _storage_url(folder: Path, storage: str | None) -> str:
    """The storage of a job: ``storage`` (a URL or a journal path), by default the journal file
    ``members.log`` in the job's folder."""
    return storage if storage is not None else str(folder / JOURNAL_NAME)


def open_study(study_name: str, folder: Path, storage: str | None, workers: int) -> Any:
    """Create or load the job's study on its storage."""
    import optuna

    from fasttricks.tune._storage import make_storage, storage_kind

    url = _storage_url(folder, storage)
    kind = storage_kind(url)
    heartbeat = HEARTBEAT_SECONDS if kind in ("postgresql", "mysql") else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder.mkdir(parents=True, exist_ok=True)
    handle = make_storage(url, study_name, workers=max(1, workers), heartbeat=heartbeat)
    return optuna.create_study(study_name=study_name, storage=handle, load_if_exists=True,
                               direction="minimize")


def _member_of(trial: Any) -> int | None:
    fixed = trial.system_attrs.get("fixed_params") or {}
    if MEMBER_PARAM in trial.params:
        return int(trial.params[MEMBER_PARAM])
    return int(fixed[MEMBER_PARAM]) if MEMBER_PARAM in fixed else None


def _recover(study: Any) -> None:
    """Fail the RUNNING trials of dead workers: local ones by pid, remote ones by heartbeat."""
    import optuna

    from fasttricks.tune._logs import quiet_experimental
    from fasttricks.tune._workers import fail_orphaned_trials, heartbeat_enabled

    fail_orphaned_trials(study)
    if heartbeat_enabled(study):
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)


def enqueue_missing(study: Any, job: MemberJob) -> list[int]:
    """Enqueue every member that is neither finished nor WAITING/RUNNING; returns them."""
    from optuna.trial import TrialState

    busy = {_member_of(t) for t in study.get_trials(
        deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))}
    missing = [i for i in range(len(job.names)) if i not in busy and job.finished(i) is None]
    for i in missing:
        study.enqueue_trial({MEMBER_PARAM: i}, user_attrs={"name": job.names[i]})
    return missing


def claim_member(study: Any) -> tuple[int, int] | None:
    """Move one WAITING trial to RUNNING for this process; ``(trial_id, member)`` or None."""
    import optuna
    from optuna.trial import TrialState

    from fasttricks.tune._workers import WORKER_ATTR, worker_id

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        storage.set_trial_user_attr(trial._trial_id, WORKER_ATTR, worker_id())
        return trial._trial_id, _member_of(trial)
    return None


class _Heartbeat:
    """Refresh a running trial's heartbeat in a thread (RDB storages with heartbeats only)."""

    def __init__(self, study: Any, trial_id: int) -> None:
        from fasttricks.tune._workers import heartbeat_enabled

        self.storage, self.trial_id = study._storage, trial_id
        self.stop = threading.Event()
        self.thread = None
        if heartbeat_enabled(study):
            interval = self.storage.get_heartbeat_interval() or HEARTBEAT_SECONDS
            self.thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)

    def _beat(self, interval: float) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(interval):
                return

    def __enter__(self) -> _Heartbeat:
        if self.thread is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def _another_live_claim(study: Any, member: int, trial_id: int) -> bool:
    """Whether an older RUNNING trial holds the same member (a duplicate enqueue)."""
    from optuna.trial import TrialState

    return any(_member_of(t) == member and t._trial_id < trial_id
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def work(study: Any, job: MemberJob, *, poll: float = 0.5, label: str = "worker") -> int:
    """Claim and train members until every member of ``job`` is finished; returns how many
    this process trained."""
    from optuna.trial import TrialState

    storage = study._storage
    trained = 0
    while True:
        _recover(study)
        enqueue_missing(study, job)
        claimed = claim_member(study)
        if claimed is None:
            if all(job.finished(i) is not None for i in range(len(job.names))):
                return trained
            time.sleep(poll)  # members still running elsewhere: one may yet fail
            continue
        trial_id, i = claimed
        if i is None or not 0 <= i < len(job.names):
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            continue
        done = job.finished(i)
        if done is None and _another_live_claim(study, i, trial_id):
            storage.set_trial_user_attr(trial_id, "duplicate", True)
            storage.set_trial_state_values(trial_id, state=TrialState.PRUNED)
            continue
        if done is None:
            try:
                with _Heartbeat(study, trial_id):
                    done, learn = train_member(job.store, i, job.names[i], job.train)
            except BaseException:  # the member is free for another worker (or a rerun)
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
                raise
            del learn
            storage.set_trial_user_attr(trial_id, "trained", True)
            trained += 1
            print(f"{label}: {job.names[i]} trained in {float(done['seconds']):.1f}s",
                  flush=True)
        storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE,
                                       values=[float(done.get("seconds", 0.0))])


# --------------------------------------------------------------------------------------------
# the launcher

#: How :func:`run_workers` starts CPU workers besides itself: ``"auto"`` forks them from the
#: launcher where that is safe (:func:`start_method`), else starts fresh interpreters;
#: ``"fork"`` or ``"spawn"`` forces one way (``"fork"`` is still refused where it is unsafe).
START_METHOD = "auto"


def _worker_command(spec_path: Path, index: int) -> list[str]:
    return [sys.executable, "-m", "fasttricks.ensemble._worker", os.fspath(spec_path),
            "--index", str(index)]


def start_method(threads: int, gpus: Sequence[str] | None = None,
                 requested: str | None = None) -> str:
    """How to start a CPU worker process: ``"fork"`` or ``"spawn"``.

    A forked worker starts in milliseconds with torch, fastai and the job's data already
    loaded, where a fresh interpreter pays seconds of imports. Forking is used only where it is
    safe: on Linux, without GPUs or an initialised CUDA, with no other Python thread running
    (one could hold a lock the child inherits locked), and with one torch thread per worker or
    no native thread pool started in the launcher yet (GNU OpenMP, which torch uses on Linux,
    hangs a forked child that opens a parallel region after its parent ran one). tqdm's idle
    monitor threads are stopped first rather than counted (tqdm restarts one with its next bar).
    """
    requested = requested or START_METHOD
    if requested not in ("auto", "fork", "spawn"):
        raise ValueError(f"start method must be 'auto', 'fork' or 'spawn', got {requested!r}")
    if requested == "spawn" or gpus or not sys.platform.startswith("linux"):
        return "spawn"
    import torch

    if torch.cuda.is_initialized():
        return "spawn"
    _stop_tqdm_monitors()
    if threading.active_count() > 1:
        return "spawn"
    if int(threads) == 1:
        return "fork"
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        return "spawn"
    return "fork" if native == 1 else "spawn"


def _stop_tqdm_monitors() -> None:
    """Stop tqdm's monitor threads: any tqdm bar (torch's compiler shows some) leaves one
    sleeping in the background, which would otherwise rule forking out. tqdm starts a new one
    with its next bar."""
    for thread in threading.enumerate():
        if type(thread).__name__ == "TMonitor" and type(thread).__module__.startswith("tqdm"):
            thread.exit()
            cls = getattr(thread, "tqdm_cls", None)
            if cls is not None and getattr(cls, "monitor", None) is thread:
                cls.monitor = None


def _forked_worker(job: MemberJob, study_name: str, url: str, index: int,
                   threads: int) -> None:
    """The body of a forked worker: the launcher's job as it is, its own study connection."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    study = open_study(study_name, job.store.folder, url, workers=2)
    work(study, job, label=f"worker {index}")


def _warm_imports() -> None:
    """Import here, once, what training a member imports on first use, so that forked workers
    inherit it instead of each importing it again: ``torch._dynamo`` (2-3 s), which every
    ``torch.optim`` optimizer imports when it is built."""
    import torch._dynamo  # noqa: F401


class _Forked:
    """A forked worker (``multiprocessing`` fork context) with the part of the
    :class:`subprocess.Popen` interface the launcher uses."""

    def __init__(self, process: Any) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode  # reaps an ended child

    def wait(self) -> int:
        self.process.join()
        while self.process.exitcode is None:  # another thread's wait reaped it first
            time.sleep(0.01)
        return int(self.process.exitcode)

    def kill(self) -> None:
        self.process.kill()


def _start_worker(index: int, how: str, *, job: MemberJob, study_name: str, url: str,
                  threads: int, spec_path: Path, gpus: Sequence[str] | None) -> Any:
    """Start worker ``index`` by fork (``how == "fork"``) or as a fresh interpreter."""
    if how == "fork":
        import multiprocessing

        _warm_imports()
        sys.stdout.flush()
        sys.stderr.flush()
        process = multiprocessing.get_context("fork").Process(
            target=_forked_worker, args=(job, study_name, url, index, threads),
            name=f"fasttricks-worker-{index}", daemon=False)
        process.start()
        return _Forked(process)
    from fasttricks.tune._workers import worker_env

    env = worker_env(index, gpus, url)
    env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(_worker_command(spec_path, index), env=env)


def _report_exit(index: int, proc: Any) -> None:
    if proc.returncode != 0:
        print(f"worker {index} (pid {proc.pid}) ended with code {proc.returncode}", flush=True)


class _Reaper:
    """Threads that wait for each worker process and reap it the moment it ends, so a killed
    worker's pid is gone at once and any worker's next look at the study
    (:func:`fasttricks.tune._workers.fail_orphaned_trials`) frees its member. They only wait
    and print; the study is touched by the training threads alone."""

    def __init__(self, procs: dict[int, Any]) -> None:
        self.threads = [threading.Thread(target=self._wait, args=(index, proc), daemon=True,
                                         name=f"reap-worker-{index}")
                        for index, proc in procs.items()]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _wait(index: int, proc: Any) -> None:
        proc.wait()
        _report_exit(index, proc)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()


def _stop_all(study: Any, procs: dict[int, Any]) -> None:
    """Kill the workers still running, reap them and fail their running trials."""
    from fasttricks.tune._workers import fail_orphaned_trials

    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    fail_orphaned_trials(study, [p.pid for p in procs.values()])


def _supervise(study: Any, procs: dict[int, Any]) -> None:
    """Wait for every worker; reap each the moment it ends and fail its running trial."""
    from fasttricks.tune._workers import fail_orphaned_trials

    ended: set[int] = set()
    while len(ended) < len(procs):
        for index, proc in procs.items():
            if index not in ended and proc.poll() is not None:
                ended.add(index)
                if proc.returncode != 0:
                    _report_exit(index, proc)
                    fail_orphaned_trials(study, [proc.pid])
        time.sleep(0.2)


class _torch_threads:
    """Run the enclosed block with ``n`` torch threads, then restore the previous count."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def run_workers(
    spec: dict,
    job: MemberJob,
    *,
    workers: int,
    gpus: Sequence[str] | None = None,
    storage: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> None:
    """Train ``job``'s members in ``workers`` processes on this machine; return when every
    member is finished (by these workers or by others on the same storage).

    On CPU the calling process is worker 0: it claims and trains members itself (with the
    worker thread count, and the job rebuilt from ``spec`` as a started worker rebuilds it: no
    progress bars, no callbacks) while ``workers - 1`` more processes do the same, forked from
    it where that is safe (:func:`start_method`: they start at once, with everything imported
    and the data loaded) or else started as ``python -m fasttricks.ensemble._worker``. A thread
    per worker reaps it when it ends, so the member of a killed worker is claimed again. With
    ``gpus`` every worker is a fresh process pinned to its GPU and the caller only supervises.

    Args:
        spec: the JSON-able description from which a worker rebuilds the same job
            (``kind``, ``recipe``, ``kwargs``); written to ``<folder>/members.json``.
        job: the job as built here (its store fingerprint names the study).
        workers: processes to train in (>= 1), this one included on CPU.
        gpus: GPU ids dealt out in turn through ``CUDA_VISIBLE_DEVICES``.
        storage: a storage URL or journal path (default ``<folder>/members.log``).
        threads: torch threads per worker (default: the cores shared out evenly).

    Raises:
        RuntimeError: every worker ended and some members are still unfinished.
    """
    from fasttricks._validate import check_range

    check_range("workers", workers, low=1)
    folder = job.store.folder
    study_name = f"{spec['kind']}-{job.store.fingerprint}"
    study = open_study(study_name, folder, storage, workers)
    enqueue_missing(study, job)
    todo = [n for i, n in enumerate(job.names) if job.finished(i) is None]
    if not todo:
        return
    n_threads = worker_threads(workers, threads)
    spec = {**spec, "study": study_name, "threads": n_threads, "fingerprint":
            job.store.fingerprint}
    spec_path = folder / SPEC_NAME
    write_json(spec_path, spec)
    inline = not gpus
    if inline:  # the job as a started worker rebuilds it: quiet, no callbacks
        job = build_job(spec)
    how = start_method(n_threads, gpus)
    if progress:
        where = (", ".join(f"worker {i} -> GPU {gpus[i % len(gpus)]}" for i in range(workers))
                 if gpus else f"{n_threads} CPU thread(s) each, this process and "
                              f"{workers - 1} {'forked' if how == 'fork' else 'started'}")
        print(f"{len(todo)} of {len(job.names)} members to train in {workers} workers "
              f"({where})", flush=True)
    url = _storage_url(folder, storage)
    procs: dict[int, Any] = {}
    reaper = None
    try:
        for index in range(1 if inline else 0, workers):
            procs[index] = _start_worker(index, how, job=job, study_name=study_name, url=url,
                                         threads=n_threads, spec_path=spec_path, gpus=gpus)
        if inline:
            reaper = _Reaper(procs)
            with _torch_threads(n_threads):
                work(study, job, label="worker 0")
        else:
            _supervise(study, procs)
    except BaseException:
        _stop_all(study, procs)
        raise
    finally:
        if reaper is not None:
            reaper.join()
    left = [n for i, n in enumerate(job.names) if job.finished(i) is None]
    if left:
        raise RuntimeError(f"the workers ended with members unfinished: {left}; their output "
                           f"above says why (rerun the same command to continue)")


@dataclass(frozen=True)
class Workers:
    """Where an ensemble's members train: the ``workers``, ``gpus``, ``storage`` and ``threads``
    arguments of :func:`~fasttricks.ensemble.kfold_fit` and
    :func:`~fasttricks.ensemble.seed_ensemble` (``--workers``, ``--gpus``, ``--storage``,
    ``--threads`` of ``python -m fasttricks.train``).

    With one worker and no storage (the default) the members train one after another in the
    calling process; otherwise :meth:`run` trains them in worker processes first
    (:func:`run_workers`), and the caller's one-after-another loop then finds every member on
    disk.
    """

    workers: int = 1
    gpus: Sequence[str] | None = None
    storage: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        from fasttricks._validate import check_range

        check_range("workers", self.workers, low=1)

    @property
    def parallel(self) -> bool:
        """Whether the members train in worker processes."""
        return self.workers > 1 or self.storage is not None

    def run(self, spec: dict, job: MemberJob, *, cbs: Sequence[Any] = (),
            progress: bool = True) -> None:
        """Train ``job``'s unfinished members in worker processes (nothing when not
        :attr:`parallel`); ``spec`` is the job's description for the workers."""
        if not self.parallel:
            return
        if cbs:
            raise ValueError("cbs cannot be sent to worker processes: use workers=1 with "
                             f"extra callbacks, got cbs={list(cbs)!r}")
        run_workers(spec, job, workers=self.workers, gpus=self.gpus, storage=self.storage,
                    threads=self.threads, progress=progress)


def read_spec(path: str | os.PathLike[str]) -> dict:
    """A job description written by :func:`run_workers`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
