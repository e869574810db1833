"""One member worker process: ``python -m fasttricks.ensemble._worker SPEC --index I``.

Started by :func:`fasttricks.ensemble._parallel.run_workers`. It rebuilds the ensemble job from
the description file (the same recipe and settings, so the same store fingerprint and the same
members), opens the job's study (the URL travels in the environment, never on the command
line) and claims and trains members until every member is finished.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fasttricks.ensemble._ensembles import seed_job
from fasttricks.ensemble._kfold import kfold_job
from fasttricks.ensemble._members import MemberJob, MemberOptions
from fasttricks.ensemble._parallel import open_study, read_spec, work
from fasttricks.ensemble._seed_runs import seed_runs_job

__all__ = ["JOB_KINDS", "build_job", "main"]


def _kfold(spec: dict) -> MemberJob:
    return kfold_job(spec["recipe"], options=MemberOptions.from_spec(spec), **spec["kwargs"])[2]


def _seeds(spec: dict) -> MemberJob:
    return seed_job(spec["recipe"], options=MemberOptions.from_spec(spec), **spec["kwargs"])[1]


def _seed_runs(spec: dict) -> MemberJob:
    return seed_runs_job(spec["recipe"], out_dir=spec["out_dir"], **spec["kwargs"])


# kind -> build(spec) -> MemberJob: a k-fold job, a seed ensemble, the run folders of --seeds
JOB_KINDS: dict[str, Callable[[dict], MemberJob]] = {
    "kfold": _kfold, "seeds": _seeds, "seed_runs": _seed_runs}


def build_job(spec: dict) -> MemberJob:
    """The member job a description file names; refuses one whose fingerprint has changed."""
    kind = spec.get("kind")
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown member job kind {kind!r}; known: {sorted(JOB_KINDS)}")
    job = JOB_KINDS[kind](spec)
    if spec.get("fingerprint") not in (None, job.store.fingerprint):
        raise ValueError(f"the job in {job.store.folder} was rebuilt with other settings "
                         f"(fingerprint {job.store.fingerprint}, expected "
                         f"{spec['fingerprint']}); rerun the launching command")
    return job


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process; returns its exit status."""
    from fasttricks.tune._options import STORAGE_ENV

    p = argparse.ArgumentParser(prog="python -m fasttricks.ensemble._worker")
    p.add_argument("spec", help="the job description (members.json)")
    p.add_argument("--index", type=int, default=0, help="this worker's number")
    args = p.parse_args(argv)
    spec = read_spec(args.spec)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    job = build_job(spec)
    storage = os.environ.get(STORAGE_ENV) or str(Path(args.spec).parent / "members.log")
    study = open_study(spec["study"], job.store.folder, storage, workers=2)
    work(study, job, label=f"worker {args.index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
