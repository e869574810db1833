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

The machine's own ceiling for two processes comes first: a pure one-thread torch training
loop (the recipe's small CNN written out in torch, random batches of the recipe's shape, no
fastai, no files) runs alone, then twice at the same time in two processes, twice over; the
ceiling is ``2 * alone / together`` (medians): the most two processes can speed up a CPU-bound
job here. The results then say what share of it the two workers achieved, and what speed-up
the ceiling would allow for the whole command given its one-off costs (the sequential run's
wall time minus the members' training time). Start-up is read from the workers' journal: when
each worker claimed its first member, in seconds after the command started.

Each member must train long enough that the command's one-off costs (seconds: Python, torch and
fastai imports, data, the final report) do not dominate: unless ``--epochs`` is given, one epoch of the recipe is
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


def _ceiling_worker(steps: int) -> None:
    """One process of the ceiling measurement: ``steps`` one-thread training steps of the
    recipe's CNN in plain torch (after 20 warm-up steps); prints the seconds they took."""
    import torch
    from torch import nn

    from fasttricks.models import cnn2d

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = cnn2d(1, 10)  # the digits recipe's model: channels (32, 64, 128), dropout 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x, y = torch.randn(BS, 1, 8, 8), torch.randint(0, 10, (BS,))

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(20):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    print(f"{time.perf_counter() - started:.4f}", flush=True)


def _ceiling_run(steps: int, copies: int) -> list[float]:
    """Seconds of each of ``copies`` ceiling processes started together."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ceiling-worker", str(steps)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a ceiling process failed: {outs}")
    return [round(float(o.strip().splitlines()[-1]), 3) for o in outs]


def _ceiling(seconds: float, rounds: int = 2) -> dict:
    """This machine's ceiling for two one-thread processes: alone vs two at once, ``rounds``
    times each, interleaved; the steps are chosen so one run alone takes about ``seconds``."""
    import statistics

    probe = 200
    (t,) = _ceiling_run(probe, 1)
    steps = max(probe, round(probe * seconds / t))
    alone, together = [], []
    for _ in range(rounds):
        alone += _ceiling_run(steps, 1)
        together.append(_ceiling_run(steps, 2))
    a = statistics.median(alone)
    both = statistics.median([max(pair) for pair in together])
    return {
        "steps": steps, "alone_s": alone, "together_s": together,
        "slowdown": round(both / a, 3), "ceiling": round(2 * a / both, 3),
        "note": "pure one-thread torch training loop of the recipe's CNN; ceiling = 2 x alone "
                "/ together (medians; together = the slower of the two processes)",
    }


def _journal_times(kdir: Path, started: float, launcher_pid: int) -> tuple[dict, float]:
    """From the job's journal: the seconds after the command started at which each worker
    claimed its first member (the launching process is ``launcher``), and at which the last
    member finished."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(kdir / "members.log")))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    first: dict[int, float] = {}
    last = 0.0
    for t in study.get_trials(deepcopy=False):
        pid = int(str(t.user_attrs.get("worker", ":0")).rpartition(":")[2])
        at = t.datetime_start.timestamp() - started
        first[pid] = min(first.get(pid, at), at)
        if t.datetime_complete is not None:
            last = max(last, t.datetime_complete.timestamp() - started)
    return ({("launcher" if pid == launcher_pid else f"pid {pid}"): round(at, 2)
             for pid, at in sorted(first.items(), key=lambda kv: kv[1])}, round(last, 2))


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _timed(cmd: list[str], label: str, loads: dict, starts: dict | None = None) -> float:
    """Wall seconds of ``cmd``; its load averages (1, 5, 15 min) before and after go to
    ``loads[label]``, its start (epoch seconds) and pid to ``starts[label]``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    before = _load()
    wall_start = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    loads[label] = {"before": before, "after": _load()}
    if starts is not None:
        starts[label] = (wall_start, proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stdout[-2000:]}{stderr[-2000:]}")
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
        warm = build_learner(load_recipe(recipe, {"schedule.epochs": 1}))
        with quiet_fit(warm):  # first-use imports (torch._dynamo, ...) outside the timing
            fit_learner(warm)
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
    p.add_argument("--ceiling-seconds", type=float, default=10.0,
                   help="length of one ceiling run alone (default 10; 0 skips the ceiling)")
    p.add_argument("--ceiling-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ceiling_worker is not None:
        return _ceiling_worker(args.ceiling_worker)
    ceiling = None
    if args.ceiling_seconds > 0:
        ceiling = _ceiling(args.ceiling_seconds)
        print(f"two-process ceiling of this machine: {ceiling['ceiling']:.2f}x (one process "
              f"{ceiling['slowdown']:.2f}x slower with two running)", flush=True)
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
    starts: dict = {}
    claims: dict = {}
    serial: dict = {}
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
            times[label] = _timed([*train, *common, *extra, "--out", str(out)], label, loads,
                                  starts)
            members[label] = _member_seconds(out / "digits", kind)
            if "workers" in label:
                journal = out / "digits" / ("kfold" if kind == "kfold" else "")
                claims[label], done = _journal_times(journal, *starts[label])
                # what cannot run in parallel: start-up before the first claim, and the
                # final report after the last member
                serial[label] = round(min(claims[label].values()) + times[label] - done, 2)
                print(f"    first member claimed at (s after the command started): "
                      f"{claims[label]}; serial part {serial[label]}s", flush=True)
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
    result["first_member_claimed_s"] = {
        **claims, "note": "seconds after the command started at which each worker claimed its "
                          "first member (from the journal); the launcher is worker 0"}
    result["serial_s"] = {
        **serial, "note": "seconds of the 2-worker command that cannot run in parallel: before "
                          "the first member was claimed, and after the last one finished"}
    if not args.no_seeds:
        result["seeds_workers2_speedup"] = round(
            times["seeds4_sequential"] / times["seeds4_workers2"], 3)
    if ceiling is not None:
        result["ceiling_2_processes"] = ceiling
        for job in ("kfold4", "seeds4") if not args.no_seeds else ("kfold4",):
            seq, par = times[f"{job}_sequential"], times[f"{job}_workers2"]
            one_off = serial[f"{job}_workers2"]
            bound = seq / (one_off + (seq - one_off) / ceiling["ceiling"])
            result[f"{job}_vs_ceiling"] = {
                "speedup": round(seq / par, 3), "ceiling": ceiling["ceiling"],
                "share_of_ceiling": round((seq / par) / ceiling["ceiling"], 3),
                "serial_s": one_off,
                "members_slowdown": round(
                    (sum(members[f"{job}_workers2"]) / len(members[f"{job}_workers2"]))
                    / (sum(members[f"{job}_sequential"]) / len(members[f"{job}_sequential"])),
                    3),
                "bound_with_serial_part": round(bound, 3),
                "note": f"achieved {seq / par:.2f}x of this machine's 2-process ceiling "
                        f"{ceiling['ceiling']:.2f}x; with the {one_off:.1f}s that cannot run in "
                        f"parallel (start-up before the first member, the report after the "
                        f"last) the ceiling allows {bound:.2f}x",
            }
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
    if ceiling is not None:
        for job in ("kfold4", "seeds4"):
            if f"{job}_vs_ceiling" in result:
                print(f"{job}: {result[f'{job}_vs_ceiling']['note']}")
    print(f"load average (1, 5, 15 min): {started} at the start, {result['load_average']['end']} "
          f"at the end -> {args.out}")


if __name__ == "__main__":
    main()
