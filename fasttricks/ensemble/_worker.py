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
from collections.abc import Sequence
from pathlib import Path

# importing the job modules registers their kinds in JOB_KINDS
import fasttricks.ensemble._ensembles  # noqa: F401
import fasttricks.ensemble._kfold  # noqa: F401
import fasttricks.ensemble._seed_runs  # noqa: F401
from fasttricks.ensemble._parallel import JOB_KINDS, build_job, open_study, read_spec, work

__all__ = ["JOB_KINDS", "build_job", "main"]


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
