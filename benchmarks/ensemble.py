"""Single model vs 5-fold ensemble vs 5-seed ensemble on the test split (digits and MNIST-1D).

Every repeat trains, from the same recipe:

- a 5-seed ensemble (5 models on the recipe's train split, seeds ``5r .. 5r+4``); each member
  alone is a "single model" run, so the single-model score is the mean over those members;
- a 5-fold ensemble (``kfold_fit``: 5 models, each on 4/5 of train+valid, best epoch on its
  held-out fold), its fold-averaged test predictions scored.

Scores are means over ``--repeats`` repeats (default 3) of the test accuracy and loss; times are
wall-clock training seconds. Results go to ``benchmarks/results/ensemble.json`` and ``.png``.

    MPLBACKEND=Agg PYTHONPATH=$PWD python benchmarks/ensemble.py            # ~15 min on 2 cores
    MPLBACKEND=Agg PYTHONPATH=$PWD python benchmarks/ensemble.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_info  # noqa: E402
from fasttricks.recipes import load_recipe  # noqa: E402

from fasttricks._io import atomic_path, atomic_write_text  # noqa: E402
from fasttricks.ensemble import kfold_fit, seed_ensemble  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# recipe and the epochs the benchmark trains it for (None: the recipe's own). MNIST-1D's recipe
# trains 30 epochs; 5 keep the whole benchmark near 15 minutes on a shared 2-core CPU.
DATASETS = {"digits": ("digits", None), "mnist1d": ("mnist1d", 5)}


def machine() -> dict:
    return machine_info()


def run_dataset(name: str, path: str, repeats: int, n_models: int, epochs: int | None) -> dict:
    overrides = {} if epochs is None else {"schedule.epochs": epochs}
    recipe = load_recipe(path, overrides)
    metric = "accuracy"
    rows = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            seeds = list(range(n_models * r, n_models * (r + 1)))
            t0 = time.perf_counter()
            se = seed_ensemble(recipe, seeds, out_dir=tmp, progress=False)
            seed_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            kf = kfold_fit(recipe, n_splits=n_models, seed=r, out_dir=tmp, progress=False)
            kfold_seconds = time.perf_counter() - t0
        single = se.member_scores("test")
        single_loss = np.asarray([m.test["loss"] for m in se.members])
        rows.append({
            "repeat": r,
            "single_accuracy": float(single.mean()),
            "single_accuracy_std": float(single.std(ddof=1)),
            "single_loss": float(single_loss.mean()),
            "single_seconds": float(np.mean([m.seconds for m in se.members])),
            "seed_ensemble_accuracy": se.test[metric],
            "seed_ensemble_loss": se.test["loss"],
            "seed_ensemble_seconds": seed_seconds,
            "kfold_ensemble_accuracy": kf.test[metric],
            "kfold_ensemble_loss": kf.test["loss"],
            "kfold_oof_accuracy": kf.oof[metric],
            "kfold_single_fold_accuracy": float(np.mean(kf.fold_test_scores)),
            "kfold_ensemble_seconds": kfold_seconds,
        })
        print(f"{name} repeat {r}: single {rows[-1]['single_accuracy']:.4f}, "
              f"{n_models}-seed {se.test[metric]:.4f}, {n_models}-fold {kf.test[metric]:.4f} "
              f"({seed_seconds:.0f}s / {kfold_seconds:.0f}s)", flush=True)
    keys = [k for k in rows[0] if k != "repeat"]
    mean = {k: float(np.mean([row[k] for row in rows])) for k in keys}
    std = {k: float(np.std([row[k] for row in rows], ddof=1)) if repeats > 1 else 0.0
           for k in keys}
    return {
        "recipe": path,
        "epochs": recipe["schedule"]["epochs"],
        "model": recipe["model"],
        "n_models": n_models,
        "repeats": rows,
        "mean": mean,
        "std_over_repeats": std,
        "gain_seed_ensemble": mean["seed_ensemble_accuracy"] - mean["single_accuracy"],
        "gain_kfold_ensemble": mean["kfold_ensemble_accuracy"] - mean["single_accuracy"],
        "time_ratio_seed_vs_single": mean["seed_ensemble_seconds"] / mean["single_seconds"],
        "time_ratio_kfold_vs_single": mean["kfold_ensemble_seconds"] / mean["single_seconds"],
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    k = results["settings"]["models"]
    methods = [("single", "single model"), ("seed_ensemble", f"{k}-seed ensemble"),
               ("kfold_ensemble", f"{k}-fold ensemble")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(names))
    w = 0.26
    for j, (key, label) in enumerate(methods):
        acc = [results["datasets"][n]["mean"][f"{key}_accuracy"] for n in names]
        err = [results["datasets"][n]["std_over_repeats"][f"{key}_accuracy"] for n in names]
        secs = [results["datasets"][n]["mean"][f"{key}_seconds"] for n in names]
        axes[0].bar(x + (j - 1) * w, acc, w, yerr=err, capsize=3, label=label)
        axes[1].bar(x + (j - 1) * w, secs, w, label=label)
    means = [results["datasets"][n]["mean"] for n in names]
    lo = min(m[f"{key}_accuracy"] for m in means for key, _ in methods)
    axes[0].set_ylim(max(0.0, lo - 0.03), 1.0)
    axes[0].set_ylabel("test accuracy (mean over repeats)")
    axes[1].set_ylabel("training seconds")
    for ax in axes:
        ax.set_xticks(x, names)
        ax.legend(fontsize=8)
    fig.suptitle(f"fasttricks ensembles: single model vs {k}-seed vs {k}-fold "
                 f"(test split, mean of {results['settings']['repeats']} repeats)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", type=int, default=5, help="folds = seeds per ensemble")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for every dataset (default: digits 10, mnist1d 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a busy 2-core machine two threads "
                             "fight other jobs and run many times slower)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 models, 1 epoch")
    parser.add_argument("--out", default=str(RESULTS / "ensemble.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.models, args.epochs = 1, 2, 1
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = {
        "benchmark": "ensemble",
        "machine": machine(),
        "settings": {"repeats": args.repeats, "models": args.models, "epochs": args.epochs,
                     "threads": args.threads},
        "datasets": {},
    }
    for name in args.datasets:
        path, epochs = DATASETS[name]
        epochs = args.epochs if args.epochs is not None else epochs
        results["datasets"][name] = run_dataset(name, path, args.repeats, args.models, epochs)
    results["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} in {results['total_seconds']:.0f}s")
    for name, res in results["datasets"].items():
        m = res["mean"]
        print(f"{name}: single {m['single_accuracy']:.4f} ({m['single_seconds']:.1f}s), "
              f"seed ens {m['seed_ensemble_accuracy']:.4f} ({m['seed_ensemble_seconds']:.1f}s), "
              f"kfold ens {m['kfold_ensemble_accuracy']:.4f} ({m['kfold_ensemble_seconds']:.1f}s)")
    return results


if __name__ == "__main__":
    main()
