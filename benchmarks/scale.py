"""Scaling out on this machine: members in worker processes, and one model under DDP.

Three ratios from one run, each the wall time of the whole command (process start, data
loading and the final report included, as a user would see it):

- ``--kfold 4`` one fold after another (one torch thread) vs ``--kfold 4 --workers 2`` (one
  thread per worker). Target: >= 1.7x faster with 2 workers on an idle 2-core machine.
- ``--seeds 4`` one seed after another vs ``--seeds 4 --workers 2``, the same way (skip with
  ``--no-seeds``).
- one model in one process (2 threads, batch B) vs ``torchrun --nproc_per_node 2`` (one thread
  each, batch B/2 per process: the same global batch). DDP on CPU pays for the gradient
  all-reduce after every backward and for the second process; the ratio says how much.

Each member must train long enough that starting a worker process (seconds: Python, torch and
fastai imports) does not dominate: unless ``--epochs`` is given, one epoch of the recipe is
timed here with one thread first and the epochs are chosen so that a member takes about
``--member-seconds`` (default 15). The seconds each member really trained are read back from
the runs and saved beside the wall times, with the load average before and after every
command (``os.getloadavg``): numbers taken on a busy machine say so themselves.

    flock /tmp/bench.lock python benchmarks/scale.py      # -> benchmarks/results/scale.json
    python benchmarks/scale.py --epochs 1 --out /tmp/scale_smoke.json   # a quick check

Set ``FASTTRICKS_BENCH_NOTE`` to describe other load on the machine; it is saved with the
results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_info  # noqa: E402
from fasttricks._io import write_json  # noqa: E402
from fasttricks.recipes import load_recipe, save_recipe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BS = 64
MEMBERS = 4


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _timed(cmd: list[str], label: str, loads: dict) -> float:
    """Wall seconds of ``cmd``; its load averages (1, 5, 15 min) before and after go to
    ``loads[label]``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    before = _load()
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    loads[label] = {"before": before, "after": _load()}
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    print(f"  {label}: {seconds:.1f}s (load average {before[0]} -> {loads[label]['after'][0]})",
          flush=True)
    return seconds


def _epoch_seconds(recipe) -> float:
    """Seconds one epoch of ``recipe`` takes here with one torch thread (two epochs timed)."""
    import torch

    from fasttricks._io import quiet_fit
    from fasttricks.recipes import build_learner, fit_learner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        learn = build_learner(load_recipe(recipe, {"schedule.epochs": 2}))
        with quiet_fit(learn):
            started = time.perf_counter()
            fit_learner(learn)
        return (time.perf_counter() - started) / 2
    finally:
        torch.set_num_threads(threads)


def _member_seconds(folder: Path, pattern: str) -> list[float]:
    """The seconds each member trained: the k-fold ``result.json`` or the seeds' summaries."""
    if pattern == "kfold":
        data = json.loads((folder / "kfold" / "result.json").read_text())
        return [round(f["seconds"], 2) for f in data["folds"]]
    return [round(json.loads((d / "summary.json").read_text())["train_seconds"], 2)
            for d in sorted(folder.glob("seed_*"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per member (default: enough for --member-seconds)")
    p.add_argument("--member-seconds", type=float, default=15.0,
                   help="target training time of one member with one thread (default 15)")
    p.add_argument("--no-seeds", action="store_true", help="skip the --seeds comparison")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json",
                   help="results file (default benchmarks/results/scale.json)")
    args = p.parse_args()
    base = load_recipe("digits", {"data.bs": BS})
    epoch_s = None
    epochs = args.epochs
    if epochs is None:
        epoch_s = _epoch_seconds(base)
        epochs = max(2, math.ceil(args.member_seconds / epoch_s))
        print(f"one epoch takes {epoch_s:.2f}s with one thread: {epochs} epochs per member",
              flush=True)
    recipe = load_recipe(base, {"schedule.epochs": epochs})
    train = [sys.executable, "-m", "fasttricks.train"]
    loads: dict = {}
    members: dict = {}
    times: dict = {}
    started = _load()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.yaml"
        save_recipe(recipe, path)
        common = [str(path), "--no-progress", "--threads", "1"]
        runs = [("kfold4_sequential", ["--kfold", str(MEMBERS)], "kfold"),
                ("kfold4_workers2", ["--kfold", str(MEMBERS), "--workers", "2"], "kfold")]
        if not args.no_seeds:
            runs += [("seeds4_sequential", ["--seeds", str(MEMBERS)], "seeds"),
                     ("seeds4_workers2", ["--seeds", str(MEMBERS), "--workers", "2"], "seeds")]
        for label, extra, kind in runs:
            out = Path(tmp) / label
            times[label] = _timed([*train, *common, *extra, "--out", str(out)], label, loads)
            members[label] = _member_seconds(out / "digits", kind)
        times["single_process"] = _timed([*train, str(path), "--no-progress", "--threads", "2",
                                          "--out", f"{tmp}/single"], "single_process", loads)
        times["ddp2"] = _timed([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                "--nproc_per_node=2", "-m", "fasttricks.train", *common,
                                "--set", f"data.bs={BS // 2}", "--out", f"{tmp}/ddp"],
                               "ddp2", loads)
    result = {
        "recipe": "digits (cnn2d)", "epochs": epochs, "epoch_seconds_1_thread": epoch_s,
        **{f"{k}_s": round(v, 2) for k, v in times.items()},
        "member_train_seconds": members,
        "workers2_speedup": round(times["kfold4_sequential"] / times["kfold4_workers2"], 3),
        "workers2_target": 1.7,
        "ddp2_vs_single": round(times["ddp2"] / times["single_process"], 3),
        "ddp_note": f"single: 1 process, 2 threads, bs {BS}; ddp: 2 processes x 1 thread, "
                    f"bs {BS // 2} each (global {BS}); ratio > 1 means DDP is slower",
        "load_average": {"start": started, "end": _load(), "per_command": loads,
                         "note": "os.getloadavg() (1, 5, 15 min) before and after each "
                                 "command; near 0 on an idle machine"},
        "machine": machine_info(),
    }
    if not args.no_seeds:
        result["seeds_workers2_speedup"] = round(
            times["seeds4_sequential"] / times["seeds4_workers2"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"k-fold {MEMBERS}: sequential {times['kfold4_sequential']:.1f}s, 2 workers "
          f"{times['kfold4_workers2']:.1f}s -> {result['workers2_speedup']:.2f}x (target 1.7x); "
          f"members trained {members['kfold4_sequential']} s")
    if not args.no_seeds:
        print(f"seeds {MEMBERS}: sequential {times['seeds4_sequential']:.1f}s, 2 workers "
              f"{times['seeds4_workers2']:.1f}s -> {result['seeds_workers2_speedup']:.2f}x")
    print(f"one model: 1 process {times['single_process']:.1f}s, DDP 2 processes "
          f"{times['ddp2']:.1f}s -> DDP takes {result['ddp2_vs_single']:.2f}x the time")
    print(f"load average (1, 5, 15 min): {started} at the start, {result['load_average']['end']} "
          f"at the end -> {args.out}")


if __name__ == "__main__":
    main()
