"""Scaling out on this machine: k-fold members in worker processes, and one model under DDP.

Two ratios from one run, each measured as the wall time of the whole command (process start,
data loading and the final report included, as a user would see it):

- ``--kfold 4`` one fold after another (one torch thread) vs ``--kfold 4 --workers 2`` (one
  thread per worker). Target: >= 1.7x faster with 2 workers on an idle 2-core machine.
- one model in one process (2 threads, batch B) vs ``torchrun --nproc_per_node 2`` (one thread
  each, batch B/2 per process: the same global batch). DDP on CPU pays for the gradient
  all-reduce after every backward and for the second process; the ratio says how much.

    python benchmarks/scale.py [--epochs 8]     # -> benchmarks/results/scale.json

Set ``FASTTRICKS_BENCH_NOTE`` to describe other load on the machine; it is saved with the
results.
"""

from __future__ import annotations

import argparse
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


def _timed(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8, help="epochs per model (default 8)")
    args = p.parse_args()
    recipe = load_recipe("digits",
                         {"schedule.epochs": args.epochs, "data.bs": BS})
    train = [sys.executable, "-m", "fasttricks.train"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "digits.yaml"
        save_recipe(recipe, path)
        common = [str(path), "--no-progress", "--threads", "1"]
        seq = _timed([*train, *common, "--kfold", "4", "--out", f"{tmp}/seq"])
        par = _timed([*train, *common, "--kfold", "4", "--workers", "2", "--out", f"{tmp}/par"])
        single = _timed([*train, str(path), "--no-progress", "--threads", "2",
                         "--out", f"{tmp}/single"])
        ddp = _timed([sys.executable, "-m", "torch.distributed.run", "--standalone",
                      "--nproc_per_node=2", "-m", "fasttricks.train", *common,
                      "--set", f"data.bs={BS // 2}", "--out", f"{tmp}/ddp"])
    result = {
        "recipe": "digits (cnn2d)", "epochs": args.epochs,
        "kfold4_sequential_s": round(seq, 2), "kfold4_workers2_s": round(par, 2),
        "workers2_speedup": round(seq / par, 3), "workers2_target": 1.7,
        "single_process_s": round(single, 2), "ddp2_s": round(ddp, 2),
        "ddp2_vs_single": round(ddp / single, 3),
        "ddp_note": f"single: 1 process, 2 threads, bs {BS}; ddp: 2 processes x 1 thread, "
                    f"bs {BS // 2} each (global {BS}); ratio > 1 means DDP is slower",
        "machine": machine_info(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "scale.json", result)
    print(f"k-fold 4: sequential {seq:.1f}s, 2 workers {par:.1f}s -> {seq / par:.2f}x "
          f"(target 1.7x)")
    print(f"one model: 1 process {single:.1f}s, DDP 2 processes {ddp:.1f}s -> "
          f"DDP takes {ddp / single:.2f}x the time")


if __name__ == "__main__":
    main()
