"""Benchmark: remedies for class imbalance and losses for multi-label data, on built-in data.

Long tail (the ``longtail`` recipe: MNIST-1D with a 50:1 exponentially decaying training
split, balanced valid/test): plain cross-entropy vs class-weighted cross-entropy (sqrt_inv),
focal loss (gamma=2), random oversampling and a weighted dataloader (sqrt_inv class weights),
scored by macro-F1 and worst-class recall on the test split.

Multi-label (the ``multilabel`` recipe): binary cross-entropy vs multi-label focal loss vs
asymmetric loss (ASL), scored by mean average precision (macro mAP) on the test split.

Every configuration is the recipe with one section changed, trained for the same number of
epochs with the same seeds; each number is the mean +- standard error over the seeds, and each
ratio is relative to the plain baseline of the same run. The data split is the same for every
seed (the dataset's own default seed); a seed changes initialisation, batch order and the
oversampling / weighted-sampling draws. Results go to
``benchmarks/results/imbalance.json`` and ``benchmarks/results/imbalance.png``.

    python benchmarks/imbalance.py                 # 5 seeds (a few minutes on 2 CPU cores)
    python benchmarks/imbalance.py --seeds 2 --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_info  # noqa: E402
from fasttricks._io import atomic_path, atomic_write_text  # noqa: E402
from fasttricks.recipes import builtin_recipe_path  # noqa: E402

logger = logging.getLogger("benchmarks.imbalance")

#: configuration name -> changes to the longtail recipe
LONGTAIL_CONFIGS: dict[str, dict[str, Any]] = {
    "plain CE": {"loss": {"name": "cross_entropy"}},
    "weighted CE (sqrt_inv)": {"loss": {"name": "weighted_cross_entropy", "weights": "sqrt_inv"}},
    "focal (gamma=2)": {"loss": {"name": "focal", "gamma": 2.0}},
    "oversampling": {"loss": {"name": "cross_entropy"}, "data": {"oversample": "max"}},
    "weighted dataloader": {
        "loss": {"name": "cross_entropy"},
        "data": {"sampler": "weighted", "weights": "sqrt_inv"},
    },
}

#: configuration name -> changes to the multilabel recipe
MULTILABEL_CONFIGS: dict[str, dict[str, Any]] = {
    "BCE": {"loss": {"name": "bce"}},
    "multi-label focal (gamma=2, alpha=0.25)": {
        "loss": {"name": "multilabel_focal", "gamma": 2.0, "alpha": 0.25}
    },
    "ASL (gamma-=4, gamma+=0, clip=0.05)": {
        "loss": {"name": "asl", "gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}
    },
}


def _machine() -> dict[str, Any]:
    return machine_info()


def _recipe(name: str, changes: Mapping[str, Any], seed: int, epochs: int) -> dict:
    """The named recipe file with whole sections or keys replaced, resolved by load_recipe."""
    from fasttricks.recipes import load_recipe

    raw = yaml.safe_load(builtin_recipe_path(name).read_text())
    raw = copy.deepcopy(raw)
    for section, value in changes.items():
        if section == "loss":
            raw["loss"] = dict(value)  # a loss replaces the whole section
        else:
            raw.setdefault(section, {}).update(value)
    raw["seed"] = seed
    raw.setdefault("schedule", {})["epochs"] = epochs
    raw["fp16"] = False
    raw.pop("retrain_at_best", None)
    return load_recipe(raw)


def _test_predictions(recipe: dict) -> tuple[np.ndarray, np.ndarray, float]:
    from fasttricks.recipes import build_learner, fit_learner

    start = time.perf_counter()
    learn = build_learner(recipe)
    with learn.no_bar(), learn.no_logging():
        fit_learner(learn)
        probs, targets = learn.get_preds(ds_idx=2)
    return probs.float().numpy(), targets.numpy(), time.perf_counter() - start


def _longtail_scores(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score, recall_score

    pred = probs.argmax(1)
    labels = np.arange(probs.shape[1])
    recalls = recall_score(targets, pred, labels=labels, average=None, zero_division=0)
    return {
        "macro_f1": float(f1_score(targets, pred, labels=labels, average="macro",
                                   zero_division=0)),
        "worst_class_recall": float(recalls.min()),
        "accuracy": float((pred == targets).mean()),
    }


def _multilabel_scores(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, f1_score

    has_pos = targets.sum(0) > 0
    return {
        "mAP": float(average_precision_score(targets[:, has_pos], probs[:, has_pos],
                                             average="macro")),
        "micro_f1@0.5": float(f1_score(targets, probs > 0.5, average="micro", zero_division=0)),
    }


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "se": se, "values": [float(v) for v in arr]}


def run_task(
    recipe_name: str,
    configs: Mapping[str, Mapping[str, Any]],
    score: Any,
    seeds: list[int],
    epochs: int,
) -> dict[str, Any]:
    """Train every configuration on every seed; per-config mean +- SE of every score."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for seed in seeds:
        for name, changes in configs.items():
            recipe = _recipe(recipe_name, changes, seed, epochs)
            probs, targets, seconds = _test_predictions(recipe)
            scores = dict(score(probs, targets), seconds=seconds)
            runs[name].append(scores)
            print(f"  {recipe_name:10s} seed {seed}  {name:40s} "
                  + "  ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)
    results: dict[str, Any] = {}
    for name, seed_runs in runs.items():
        results[name] = {k: _summary([r[k] for r in seed_runs]) for k in seed_runs[0]}
    baseline = next(iter(configs))
    for name in results:
        for metric, stats in results[name].items():
            base = results[baseline][metric]["mean"]
            stats["ratio_to_baseline"] = stats["mean"] / base if base else None
    return {"recipe": recipe_name, "baseline": baseline, "epochs": epochs, "seeds": seeds,
            "configs": {k: dict(v) for k, v in configs.items()}, "results": results}


def markdown_table(task: dict[str, Any], metrics: list[str]) -> str:
    """A markdown table: one row per configuration, mean +- SE (ratio to baseline)."""
    head = "| " + task["recipe"] + " | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for name, stats in task["results"].items():
        cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['se']:.3f} ({_ratio(stats[m])})"
                 for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(stats: Mapping[str, float]) -> str:
    ratio = stats["ratio_to_baseline"]
    return f"{ratio:.2f}x" if ratio is not None else "baseline 0"


def plot(tasks: list[tuple[dict[str, Any], str]], path: Path) -> None:
    """One bar panel per (task, metric): mean with standard-error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.6))
    for ax, (task, metric) in zip(np.atleast_1d(axes), tasks):
        names = list(task["results"])
        means = [task["results"][n][metric]["mean"] for n in names]
        ses = [task["results"][n][metric]["se"] for n in names]
        colors = ["#888888"] + ["#3b75af"] * (len(names) - 1)
        ax.bar(range(len(names)), means, yerr=ses, capsize=4, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.split(" (")[0] for n in names], rotation=30, ha="right")
        ax.set_title(f"{task['recipe']}: {metric}")
        ax.set_ylim(0, max(1e-9, max(m + s for m, s in zip(means, ses))) * 1.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"mean ± SE over {len(tasks[0][0]['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    parser.add_argument("--ml-epochs", type=int, default=10,
                        help="epochs per multi-label run (default 10)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", choices=["longtail", "multilabel"], default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # one intra-op thread: on a shared 2-core machine, two OpenMP threads made these small
    # models about 10x slower (spin-waiting on a busy core)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "imbalance", "machine": _machine()}
    panels = []
    if args.only in (None, "longtail"):
        out["longtail"] = run_task("longtail", LONGTAIL_CONFIGS, _longtail_scores, seeds,
                                   args.epochs)
        panels += [(out["longtail"], "macro_f1"), (out["longtail"], "worst_class_recall")]
    if args.only in (None, "multilabel"):
        out["multilabel"] = run_task("multilabel", MULTILABEL_CONFIGS, _multilabel_scores,
                                     seeds, args.ml_epochs)
        panels.append((out["multilabel"], "mAP"))
    out["total_seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "imbalance.json", json.dumps(out, indent=2) + "\n")
    plot(panels, args.out / "imbalance.png")
    if "longtail" in out:
        print(markdown_table(out["longtail"], ["macro_f1", "worst_class_recall"]))
    if "multilabel" in out:
        print(markdown_table(out["multilabel"], ["mAP"]))
    print(f"total {out['total_seconds']:.0f}s; wrote {args.out / 'imbalance.json'} and "
          f"{args.out / 'imbalance.png'}")
    return out


if __name__ == "__main__":
    main()
