"""Time one optimizer step over a resnet18-sized parameter list (CPU) and resnet50 (CUDA).

Peers run in the same process, interleaved in a shuffled order every repetition, and the
median over repetitions is reported together with the median per-repetition ratio to torch's
fused AdamW (``torch.optim.AdamW(fused=True)``, one pass over parameters, gradients and moments:
the floor an elementwise optimizer can reach). Each timed block is ``k=6`` steps, so every block
contains exactly one Lookahead sync. Nothing is compiled (``compile_s`` is 0 for every peer).
Results go to ``benchmarks/results/optim_step_<dev>.json``; the CUDA section runs where a GPU is
present and is skipped otherwise.

On CPU two clocks are reported: wall-clock time with ``--threads`` threads (default 2), and
process CPU time with one thread. On a machine shared with other jobs the wall clock mostly
measures waiting; single-thread CPU time is the stable measure of the work an optimizer does.

Usage::

    PYTHONPATH=. python benchmarks/optim_step.py            # CPU, 2 threads (+ CUDA if present)
    PYTHONPATH=. python benchmarks/optim_step.py --reps 31 --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import cpu_model, machine_info
from fasttricks._io import atomic_write_text
from fasttricks.optim import create_optimizer

log = logging.getLogger("optim_step")
STEPS_PER_BLOCK = 6  # one Lookahead period
BASELINE = "torch AdamW (fused)"


def param_shapes(arch: str) -> list[tuple[int, ...]]:
    """Parameter shapes of a torchvision model built without weights (nothing is downloaded)."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    return [tuple(p.shape) for p in model.parameters()]


def make_params(shapes: list[tuple[int, ...]], device: str, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).mul_(0.05).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device)
        params.append(p)
    return params


def peers(device: str) -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    """name -> factory(params) returning an object with ``.step()``."""
    import fastai.optimizer as fo

    lr = 1e-3
    out: dict[str, Callable[[list[torch.Tensor]], Any]] = {
        f"fasttricks {name}": (lambda ps, name=name: create_optimizer(ps, name, lr))
        for name in ["ranger", "ranger_nogc", "rangeradabelief", "rangeradabelief_nogc",
                     "adamw", "sgd_nesterov"]
    }
    out[BASELINE] = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01, fused=True)
    out["torch AdamW (foreach)"] = lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=0.01,
                                                                 foreach=True)
    out["fastai ranger"] = lambda ps: fo.ranger(ps, lr=lr)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from ranger_adabelief import RangerAdaBelief
    except ImportError:
        log.warning("ranger-adabelief not installed: peer skipped")
    else:

        def _package(ps: list[torch.Tensor]) -> Any:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner
                return RangerAdaBelief(ps, lr=lr, eps=1e-8, betas=(0.95, 0.999))

        out["ranger-adabelief 0.1.0"] = _package
    try:
        from fastxtend.optimizer.fused import ranger as fx_ranger
    except Exception as err:  # noqa: BLE001  (not installed, or broken with this fastai)
        log.warning("fastxtend not importable (%s): peer skipped", err)
    else:
        out["fastxtend ranger (foreach)"] = lambda ps: fx_ranger(foreach=True)(ps, lr=lr)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_block(opt: Any, device: str, clock: Callable[[], float]) -> float:
    """Milliseconds per step over one block of STEPS_PER_BLOCK steps."""
    _sync(device)
    start = clock()
    for _ in range(STEPS_PER_BLOCK):
        opt.step()
    _sync(device)
    return (clock() - start) * 1000 / STEPS_PER_BLOCK


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def run(
    device: str, arch: str, reps: int, clock: str = "wall", threads: int = 2, seed: int = 0
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    shapes = param_shapes(arch)
    factories = peers(device)
    opts = {}
    for name, factory in factories.items():
        opts[name] = factory(make_params(shapes, device, seed))
        for _ in range(2 * STEPS_PER_BLOCK):  # warm up: allocate state, pass RAdam's warm-up
            opts[name].step()
    times: dict[str, list[float]] = {name: [] for name in opts}
    order = list(opts)
    rng = random.Random(seed)
    for rep in range(reps):
        rng.shuffle(order)
        for name in order:
            times[name].append(time_block(opts[name], device, CLOCKS[clock]))
        log.info("rep %d/%d done", rep + 1, reps)
    base = times[BASELINE]
    rows = {}
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        rows[name] = {
            "ms_per_step_median": statistics.median(ts),
            "ms_per_step_min": min(ts),
            "ratio_to_fused_adamw_median": statistics.median(ratios),
            "compile_s": 0.0,
            "samples_ms": ts,
        }
    n_params = sum(torch.Size(s).numel() for s in shapes)
    return {"arch": arch, "n_tensors": len(shapes), "n_params": n_params, "reps": reps,
            "clock": clock, "threads": threads, "steps_per_block": STEPS_PER_BLOCK,
            "results": rows}


def machine(device: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    return machine_info(device=device, device_name=name or cpu_model() or platform.machine())


def table(result: dict[str, Any]) -> str:
    lines = ["| optimizer | ms/step (median) | x fused AdamW |", "|---|---:|---:|"]
    rows = sorted(result["results"].items(), key=lambda kv: kv[1]["ms_per_step_median"])
    for name, row in rows:
        lines.append(f"| {name} | {row['ms_per_step_median']:.2f} | "
                     f"{row['ratio_to_fused_adamw_median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--reps", type=int, default=21, help="repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    devices = {"auto": ["cpu", "cuda"], "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        log.info("no CUDA device: the CUDA section is skipped")
        devices.remove("cuda")
    for device in devices:
        if device == "cpu":
            sections = {"wall": run("cpu", "resnet18", args.reps, "wall", args.threads),
                        "cpu_time_1_thread": run("cpu", "resnet18", args.reps, "cpu", 1)}
        else:
            sections = {"wall": run(device, "resnet50", args.reps, "wall", args.threads)}
        result = {"machine": machine(device), **sections}
        path = args.out / f"optim_step_{device}.json"
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        for section in sections.values():
            print(f"\n{section['arch']} on {result['machine']['device_name']} ({device}), "
                  f"{section['clock']} clock, {section['threads']} thread(s)")
            print(table(section))
        print(f"\nsaved to {path}")


if __name__ == "__main__":
    main()
