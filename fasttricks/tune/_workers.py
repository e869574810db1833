"""Worker processes: N copies of ``python -m fasttricks.tune`` on the same study storage.

Each worker is a separate process (no threads, no distributed training) pinned to one GPU
through ``CUDA_VISIBLE_DEVICES``; GPUs are dealt out in turn. All of them start trials from the
same storage, so a worker on another machine joins by pointing at the same PostgreSQL URL.

Ctrl-C reaches every worker (same process group): each records its running trial as FAIL and
exits. The launcher then marks FAIL any trial a worker left RUNNING (killed without a chance to
clean up), so nothing stays "running" forever and a resumed study starts clean.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fasttricks._io import atomic_write_text
from fasttricks._validate import check_range
from fasttricks.tune._space import Param, space_spec
from fasttricks.tune._storage import default_journal_path, storage_kind

__all__ = ["launch_workers", "worker_env", "STOP_GRACE_SECONDS"]

_log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0


def worker_env(index: int, gpus: Sequence[str] | None) -> dict[str, str]:
    """The environment of worker ``index``: this one, plus its GPU and the package on the path."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_parent not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[index % len(gpus)])
    return env


def _space_yaml(space: Mapping[str, Param]) -> str:
    return yaml.safe_dump(space_spec(space), sort_keys=False)


def _command(index: int, study: Any, recipe_path: Path, space_path: Path, storage: str,
             args: Mapping[str, Any]) -> list[str]:
    cmd = [
        sys.executable, "-m", "fasttricks.tune",
        "--recipe", str(recipe_path), "--space", str(space_path),
        "--study-name", study.study_name, "--storage", storage,
        "--pruner", args["pruner"], "--sampler", args["sampler"],
        "--n-trials", str(args["n_trials"]),
        "--metric", args["metric"], "--direction", args["direction"],
        "--worker", str(index),
    ]
    if args.get("seed") is not None:
        cmd += ["--seed", str(args["seed"] + index)]
    for flag, key in (("--timeout", "timeout"), ("--heartbeat", "heartbeat"),
                      ("--max-retry", "max_retry"), ("--mlflow", "mlflow"),
                      ("--threads", "threads")):
        if args.get(key) is not None:
            cmd += [flag, str(args[key])]
    return cmd


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


def launch_workers(
    study: Any,
    recipe: Mapping[str, Any],
    space: Mapping[str, Param],
    out_dir: str | os.PathLike[str],
    *,
    n_workers: int,
    gpus: Sequence[str] | None = None,
    args: Mapping[str, Any],
    root: str | os.PathLike[str] = "runs",
) -> list[int]:
    """Run ``n_workers`` worker processes on ``study`` until they finish; returns exit codes.

    The resolved recipe and the space are written to ``out_dir`` (``recipe.yaml``,
    ``space.yaml``) so every worker, here or on another machine, tunes exactly the same thing.

    Args:
        study: the created study (its name and storage are shared).
        recipe: the resolved recipe.
        space: the parsed search space.
        out_dir: the study's results folder.
        n_workers: how many processes, >= 1.
        gpus: GPU ids dealt to workers in turn (default None: leave CUDA_VISIBLE_DEVICES).
        args: the tune options passed on (pruner, sampler, n_trials, timeout, metric,
            direction, storage, seed, heartbeat, max_retry, mlflow).
        root: the folder of default journal files.
    """
    from fasttricks.tune._study import fail_orphaned_trials

    check_range("n_workers", n_workers, low=1)
    out = Path(out_dir)
    recipe_path = atomic_write_text(out / "recipe.yaml", yaml.safe_dump(dict(recipe),
                                                                        sort_keys=False))
    space_path = atomic_write_text(out / "space.yaml", _space_yaml(space))
    storage = args.get("storage")
    if storage_kind(storage) == "journal" and storage is None:
        storage = str(default_journal_path(study.study_name, root))
    procs: list[subprocess.Popen] = []
    if gpus:
        plan = ", ".join(f"worker {i} -> GPU {gpus[i % len(gpus)]}" for i in range(n_workers))
        print(f"{n_workers} workers: {plan}", flush=True)
    else:
        print(f"{n_workers} workers on this machine", flush=True)
    try:
        for index in range(n_workers):
            cmd = _command(index, study, recipe_path, space_path, storage, args)
            procs.append(subprocess.Popen(cmd, env=worker_env(index, gpus)))
        while any(proc.poll() is None for proc in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        _stop(procs, STOP_GRACE_SECONDS)
        fail_orphaned_trials(study, [p.pid for p in procs])
        raise
    codes = [proc.returncode for proc in procs]
    for index, code in enumerate(codes):
        if code != 0:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            print(f"worker {index} (pid {procs[index].pid}) ended with {how}", flush=True)
    fail_orphaned_trials(study, [p.pid for p in procs])
    return codes
