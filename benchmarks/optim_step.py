"""Time one optimizer step over a resnet18-sized parameter list (CPU) and resnet50 (CUDA).

Peers run in the same process, interleaved in a shuffled order every repetition, and the
median over repetitions is reported together with the median per-repetition ratio to torch's
fused AdamW (``torch.optim.AdamW(fused=True)``, one pass over parameters, gradients and moments:
the floor an elementwise optimizer can reach). On CPU the Ranger rows are the default step, the
C kernel of ``fasttricks.optim._native``; its one-off build is timed in a fresh process with an
empty cache (``native_build_s``). Each timed block is ``k=6`` steps, so every block
contains exactly one Lookahead sync. The rows marked ``compile=True`` run the Ranger family's
compiled step; their compile cost is measured apart, in fresh processes: ``compile_s`` is the
first step with an empty inductor cache, ``compile_warm_s`` the first step of a second fresh
process on the now-filled cache (the benchmark's own compiled rows then start warm). With
``--compile-cost inline`` (what the GPU check uses, to stay within its time budget) the compile
cost is the first step of each compiled row in this process instead, cold cache, no warm figure.
Results go to ``benchmarks/results/optim_step_<dev>.json``; the CUDA section runs where a GPU is
present and is skipped otherwise.

On CPU two clocks are reported: wall-clock time with ``--threads`` threads (default 2), and
process CPU time with one thread. On a machine shared with other jobs the wall clock mostly
measures waiting; single-thread CPU time is the stable measure of the work an optimizer does.

Usage::

    PYTHONPATH=. python benchmarks/optim_step.py            # CPU, 2 threads (+ CUDA if present)
    PYTHONPATH=. python benchmarks/optim_step.py --reps 31 --device cpu
    PYTHONPATH=. python benchmarks/optim_step.py --no-compile     # skip the compiled rows
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import random
import os
import statistics
import subprocess
import sys
import tempfile
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
RANGERS = ["ranger", "ranger_nogc", "rangeradabelief", "rangeradabelief_nogc"]


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


def compiled_row(name: str) -> str:
    return f"fasttricks {name} (compile=True)"


def peers(device: str, compiled: bool = True) -> dict[str, Callable[[list[torch.Tensor]], Any]]:
    """name -> factory(params) returning an object with ``.step()``."""
    import fastai.optimizer as fo

    lr = 1e-3
    out: dict[str, Callable[[list[torch.Tensor]], Any]] = {
        f"fasttricks {name}": (lambda ps, name=name: create_optimizer(ps, name, lr))
        for name in [*RANGERS, "adamw", "sgd_nesterov"]
    }
    if compiled:
        for name in RANGERS:
            out[compiled_row(name)] = (
                lambda ps, name=name: create_optimizer(ps, name, lr, compile=True))
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


def compile_probe(name: str, device: str, arch: str) -> float:
    """Seconds of the first step of ``name`` with ``compile=True`` (this process)."""
    params = make_params(param_shapes(arch), device)
    opt = create_optimizer(params, name, 1e-3, compile=True)
    _sync(device)
    start = time.perf_counter()
    opt.step()
    _sync(device)
    if not opt.compile:
        raise RuntimeError(f"{name}: the compiled step fell back to eager")
    return time.perf_counter() - start


def native_build_seconds() -> float:
    """Seconds of the Ranger family's C kernel build in a fresh process with an empty cache
    folder (compiler run and library load: what the first fit on a machine pays once)."""
    code = ("import time; from fasttricks.optim._native import native_status; "
            "t = time.perf_counter(); s = native_status(); "
            "print(s['available'], time.perf_counter() - t)")
    with tempfile.TemporaryDirectory(prefix="optim_step_native_") as cache:
        env = {**os.environ, "FASTTRICKS_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env)
    available, seconds = done.stdout.split()[-2:]
    if available != "True":
        raise RuntimeError("the C kernel did not build: the Ranger rows would be torch's paths")
    return float(seconds)


def compile_times(device: str, arch: str, threads: int) -> dict[str, dict[str, float]]:
    """Cold and warm-cache first-step seconds per compiled row, each in a fresh process that
    shares this process's ``TORCHINDUCTOR_CACHE_DIR`` (empty before the first probe)."""
    out = {}
    for name in RANGERS:
        row = {}
        for kind in ("compile_s", "compile_warm_s"):
            cmd = [sys.executable, __file__, "--probe", name, "--device", device,
                   "--threads", str(threads), "--arch", arch]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                  env=os.environ.copy())
            row[kind] = float(done.stdout.strip().splitlines()[-1])
            log.info("%s %s: %.1f s", name, kind, row[kind])
        out[compiled_row(name)] = row
    return out


def run(
    device: str, arch: str, reps: int, clock: str = "wall", threads: int = 2, seed: int = 0,
    compiled: bool = True, compile_s: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Time every peer; without ``compile_s`` a compiled row's cost is its first step here."""
    torch.set_num_threads(threads)
    shapes = param_shapes(arch)
    factories = peers(device, compiled)
    opts = {}
    inline: dict[str, dict[str, float | None]] = {}
    for name, factory in factories.items():
        opts[name] = factory(make_params(shapes, device, seed))
        _sync(device)
        start = time.perf_counter()
        opts[name].step()
        _sync(device)
        if name.endswith("(compile=True)"):
            if not opts[name].compile:
                raise RuntimeError(f"{name}: the compiled step fell back to eager on {device}")
            inline[name] = {"compile_s": time.perf_counter() - start, "compile_warm_s": None}
        for _ in range(2 * STEPS_PER_BLOCK - 1):  # warm up: allocate state, RAdam's warm-up
            opts[name].step()
    compile_s = compile_s if compile_s is not None else inline
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
            "compiled": name.endswith("(compile=True)"),
            **(compile_s or {}).get(name, {"compile_s": 0.0}),
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
    lines = ["| optimizer | ms/step (median) | x fused AdamW | compile s (cold / warm) |",
             "|---|---:|---:|---:|"]
    rows = sorted(result["results"].items(), key=lambda kv: kv[1]["ms_per_step_median"])
    for name, row in rows:
        warm = row.get("compile_warm_s")
        cost = (f"{row['compile_s']:.0f} / {'-' if warm is None else f'{warm:.0f}'}"
                if row.get("compiled") else "-")
        lines.append(f"| {name} | {row['ms_per_step_median']:.2f} | "
                     f"{row['ratio_to_fused_adamw_median']:.2f} | {cost} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--reps", type=int, default=21, help="repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--compile-cost", choices=["probes", "inline"], default="probes",
                        help="compile cost from fresh processes (cold and warm cache) or from "
                             "the first step in this process (cold only, faster)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: time one first compile
    parser.add_argument("--arch", default="resnet18", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        torch.set_num_threads(args.threads)
        print(compile_probe(args.probe, args.device, args.arch))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    compiled = not args.no_compile
    if compiled:
        # a cache of our own, empty at the start, so the first probe measures a cold compile
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="optim_step_inductor_")
    devices = {"auto": ["cpu", "cuda"], "cpu": ["cpu"], "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        log.info("no CUDA device: the CUDA section is skipped")
        devices.remove("cuda")
    for device in devices:
        arch = "resnet18" if device == "cpu" else "resnet50"
        probes = compiled and args.compile_cost == "probes"
        costs = compile_times(device, arch, args.threads) if probes else None
        if device == "cpu":
            sections = {"wall": run("cpu", arch, args.reps, "wall", args.threads, 0, compiled,
                                    costs),
                        "cpu_time_1_thread": run("cpu", arch, args.reps, "cpu", 1, 0, compiled,
                                                 costs)}
        else:
            sections = {"wall": run(device, arch, args.reps, "wall", args.threads, 0, compiled,
                                    costs)}
        result = {"machine": machine(device), **sections}
        if device == "cpu":
            result["native_build_s"] = native_build_seconds()
            print(f"\nC kernel build (fresh process, empty cache): "
                  f"{result['native_build_s']:.2f} s")
        path = args.out / f"optim_step_{device}.json"
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
        for section in sections.values():
            print(f"\n{section['arch']} on {result['machine']['device_name']} ({device}), "
                  f"{section['clock']} clock, {section['threads']} thread(s)")
            print(table(section))
        print(f"\nsaved to {path}")


if __name__ == "__main__":
    main()
