"""Benchmark: time per training step with and without each fasttricks callback, in one run.

Trains the digits recipe's setup (8x8 digits, small 2-D CNN with batch norm, AdamW, bs 64,
flat-cosine schedule) once per variant and repetition, interleaving the variants so machine load
hits them alike. Reports the CPU time per training step (process time with one torch thread:
robust on a shared machine) and its ratio to the plain run of the same repetition (median over
repetitions), for the whole fit (training + validation + per-epoch work such as checkpoints) and
for the training phase alone (what SAM doubles), plus the CPU time spent inside each callback's
own event methods. Wall-clock ratios are saved too.

Targets: batch loss filter, save-best and EMA each add at most 3%; SAM at most 2.1x a plain step.

Usage::

    PYTHONPATH=. python benchmarks/callbacks.py [--reps 21] [--epochs 1] [--threads 1]

Writes ``benchmarks/results/callbacks.json`` and ``benchmarks/results/callbacks.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_flat_cos)
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.metrics import accuracy
from torch import nn

from benchmarks._machine import machine_info
from fasttricks._io import atomic_path, atomic_write_text
from fasttricks.callbacks import get_callback

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"loss_filter": 1.03, "save_best": 1.03, "ema": 1.03, "sam": 2.1}
VARIANTS = {
    "plain": None,
    "loss_filter": ("loss_filter", {"loss_perc": 0.9}),
    "save_best": ("save_best", {"monitor": "accuracy"}),
    "ema": ("ema", {"decay": 0.999}),
    "nan_guard": ("nan_guard", {}),
    "sam": ("sam", {"rho": 0.05}),
}


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Train/valid digits arrays: the recipes' loader if present, else scikit-learn's."""
    try:
        from fasttricks.datasets import load_dataset

        splits = load_dataset("digits")
        return (splits.train.x, splits.train.y, splits.valid.x, splits.valid.y,
                "fasttricks.datasets.load_dataset('digits')")
    except ImportError:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None]
        y = bunch.target.astype(np.int64)
        idx = np.random.default_rng(0).permutation(len(y))
        tr, va = idx[:1437], idx[1437:]
        return x[tr], y[tr], x[va], y[va], "sklearn.datasets.load_digits (80/20 split)"


def _model() -> tuple[nn.Module, str]:
    try:
        from fasttricks.models import create_model

        return create_model("cnn2d", 1, 10, channels=[16, 32, 64], dropout=0.1), "cnn2d"
    except ImportError:

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU()]

        layers = block(1, 16) + block(16, 32) + [nn.MaxPool2d(2)] + block(32, 64)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(64, 10)]
        return nn.Sequential(*layers), "local 3-layer CNN with batch norm"


def _opt_func():
    try:
        from fasttricks.optim import get_optimizer

        return get_optimizer("adamw", wd=1e-2), "fasttricks adamw"
    except ImportError:
        from functools import partial

        from fastai.optimizer import Adam

        return partial(Adam, wd=1e-2), "fastai Adam (decoupled wd)"


class _PhaseTimer(Callback):
    """CPU and wall time of the training phases (before_train .. after_train) and the steps."""

    order = -100

    def before_fit(self) -> None:
        self.train_s, self.train_wall_s, self.steps = 0.0, 0.0, 0

    def before_train(self) -> None:
        self._t0, self._w0 = time.process_time(), time.perf_counter()

    def after_batch(self) -> None:
        if self.training:
            self.steps += 1

    def after_train(self) -> None:
        self.train_s += time.process_time() - self._t0
        self.train_wall_s += time.perf_counter() - self._w0


def _time_events(cb: Callback) -> list[float]:
    """Wrap ``cb``'s event methods so their CPU time adds up in the returned one-item list."""
    from fastai.callback.core import _events

    spent = [0.0]
    for event in _events:
        method = getattr(type(cb), event, None)
        if method is None:
            continue

        def timed(method=method):
            t0 = time.process_time()
            try:
                return method(cb)
            finally:
                spent[0] += time.process_time() - t0

        object.__setattr__(cb, event, timed)
    return spent


def _run(variant: str, data, epochs: int, workdir: Path) -> dict[str, float]:
    x, y, vx, vy = data
    torch.manual_seed(0)
    random.seed(0)
    dls = DataLoaders(
        DataLoader(list(zip(torch.from_numpy(x), torch.from_numpy(y))), bs=64, shuffle=True,
                   drop_last=True),
        DataLoader(list(zip(torch.from_numpy(vx), torch.from_numpy(vy))), bs=128),
    )
    model, _ = _model()
    spec = VARIANTS[variant]
    cbs = [] if spec is None else [get_callback(spec[0], **spec[1])]
    spent = _time_events(cbs[0]) if cbs else [0.0]
    timer = _PhaseTimer()
    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=_opt_func()[0],
                    metrics=[accuracy], cbs=cbs + [timer], path=workdir)
    with learn.no_bar(), learn.no_logging():
        t0, w0 = time.process_time(), time.perf_counter()
        learn.fit_flat_cos(epochs, 3e-3)
        fit_s, fit_wall_s = time.process_time() - t0, time.perf_counter() - w0
    return {
        "fit_ms_per_step": 1e3 * fit_s / timer.steps,
        "train_ms_per_step": 1e3 * timer.train_s / timer.steps,
        "callback_ms_per_step": 1e3 * spent[0] / timer.steps,
        "fit_wall_ms_per_step": 1e3 * fit_wall_s / timer.steps,
        "train_wall_ms_per_step": 1e3 * timer.train_wall_s / timer.steps,
        "accuracy": float(learn.recorder.values[-1][2]),
    }


def _machine() -> dict[str, object]:
    return machine_info()


def _plot(summary: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary if n != "plain"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [summary[n]["fit_ratio"] for n in names], 0.4, label="whole fit")
    ax.bar(pos + 0.2, [summary[n]["train_ratio"] for n in names], 0.4, label="training phase")
    for i, n in enumerate(names):
        if n in TARGETS:
            ax.hlines(TARGETS[n], i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(pos, names)
    ax.set_ylabel("time per step / plain")
    ax.set_title("fasttricks callbacks: overhead per training step (dashed: target)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and write the JSON and PNG results; returns the JSON payload."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=21, help="repetitions per variant (default 21)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    x, y, vx, vy, source = _digits()
    data = (x, y, vx, vy)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    order = list(VARIANTS)
    with tempfile.TemporaryDirectory() as tmp:
        _run("plain", data, 1, Path(tmp))  # warm-up
        for rep in range(args.reps):
            random.Random(rep).shuffle(order)
            for variant in order:
                runs[variant].append(_run(variant, data, args.epochs, Path(tmp)))
            print(f"rep {rep + 1}/{args.reps} done")

    def med(v: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[v])

    def best(v: str, key: str) -> float:
        return min(r[key] for r in runs[v])

    def paired(v: str, key: str) -> float:  # median over repetitions of variant / plain
        return statistics.median(r[key] / p[key] for r, p in zip(runs[v], runs["plain"]))

    summary: dict[str, dict[str, float]] = {}
    for v in VARIANTS:
        summary[v] = {
            "fit_ms_per_step": med(v, "fit_ms_per_step"),
            "train_ms_per_step": med(v, "train_ms_per_step"),
            "fit_ratio": paired(v, "fit_ms_per_step"),
            "train_ratio": paired(v, "train_ms_per_step"),
            "callback_ms_per_step": med(v, "callback_ms_per_step"),
            "callback_share_of_plain_step": (
                med(v, "callback_ms_per_step") / med("plain", "fit_ms_per_step")
            ),
            "fit_ratio_of_min": best(v, "fit_ms_per_step") / best("plain", "fit_ms_per_step"),
            "train_ratio_of_min": (
                best(v, "train_ms_per_step") / best("plain", "train_ms_per_step")
            ),
            "fit_wall_ratio": paired(v, "fit_wall_ms_per_step"),
            "train_wall_ratio": paired(v, "train_wall_ms_per_step"),
            "accuracy": med(v, "accuracy"),
        }
        if v in TARGETS:
            summary[v]["target_ratio"] = TARGETS[v]
            summary[v]["meets_target"] = bool(
                max(summary[v]["fit_ratio"], summary[v]["train_ratio"]) <= TARGETS[v]
            )

    payload = {
        "benchmark": "callbacks",
        "what": (
            "median process CPU ms per training step over interleaved repetitions (1 torch "
            "thread, so CPU time is the work done and not time spent waiting for a shared core); "
            "ratio = median over repetitions of variant/plain from the same repetition; "
            "*_ratio_of_min compares the fastest repetitions; *_wall_ratio the same from "
            "wall-clock time; callback_ms_per_step = CPU time inside the callback's own event "
            "methods (SAM: includes its second forward/backward), callback_share_of_plain_step "
            "= that over a plain step"
        ),
        "data": source,
        "model": _model()[1],
        "optimizer": _opt_func()[1],
        "bs": 64,
        "epochs": args.epochs,
        "reps": args.reps,
        "machine": _machine(),
        "summary": summary,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "callbacks.json", json.dumps(payload, indent=2))
    _plot(summary, args.out / "callbacks.png")

    print(f"\n{'callback':<12} {'fit ms/step':>12} {'ratio':>7} {'train ms/step':>14} {'ratio':>7}"
          f" {'min-ratio':>10} {'in-callback':>12}")
    for v, s in summary.items():
        print(f"{v:<12} {s['fit_ms_per_step']:>12.2f} {s['fit_ratio']:>7.3f} "
              f"{s['train_ms_per_step']:>14.2f} {s['train_ratio']:>7.3f} "
              f"{s['train_ratio_of_min']:>10.3f} {s['callback_share_of_plain_step']:>11.1%}")
    return payload


if __name__ == "__main__":
    main()
