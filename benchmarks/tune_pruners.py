"""Pruners compared on MNIST-1D: none, median, ASHA and Hyperband on the same candidates.

Every study samples with Optuna's RandomSampler and the same seed, so all four see the same
sequence of candidate configurations (random sampling does not depend on the history), and
every trial trains deterministically from the recipe's seed. ``none`` trains every candidate to
the end, so its best is the best the candidates can reach; a pruner can only lose by stopping
that candidate early, and wins by training fewer epochs. Reported per pruner: best validation
accuracy, test accuracy of the best trial's configuration (retrained from its recipe), total
epochs trained and wall time. Target: Hyperband within 0.5 percentage points of ``none``'s best
validation accuracy with at most a third of its epochs.

Run::

    python benchmarks/tune_pruners.py                 # about 10-15 minutes on a 2-core CPU
    python benchmarks/tune_pruners.py --trials 8 --epochs 9     # a quick look

Writes ``benchmarks/results/tune_pruners.json`` and ``tune_pruners.png`` (``--name`` changes
the basename).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._machine import machine_info  # noqa: E402

PRUNERS = ("none", "median", "asha", "hyperband")
SPACE = {
    "optimizer.name": {"type": "categorical", "choices": ["adamw", "ranger", "sgd_momentum"]},
    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "optimizer.wd": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
}


def machine() -> dict[str, Any]:
    return machine_info()


def bench_recipe(epochs: int) -> dict[str, Any]:
    """The MNIST-1D recipe made cheap enough to tune many times on a CPU."""
    from fasttricks.recipes import load_recipe

    return load_recipe("mnist1d", {
        "schedule.epochs": epochs, "model.channels": [16, 32, 32], "data.bs": 128,
    })


def test_accuracy(recipe: dict[str, Any], threads: int) -> float:
    """Train ``recipe`` as a trial does and return its accuracy on the test split."""
    import torch

    from fasttricks.recipes import build_learner, evaluate, fit_learner

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        learn = build_learner(recipe)
        with learn.no_bar(), learn.no_logging():
            fit_learner(learn, recipe)
        return float(evaluate(learn, ds_idx=2)["accuracy"])
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from optuna.trial import TrialState

    from fasttricks.tune import best_recipe, load_space, tune
    from fasttricks.tune import plan_pruner

    recipe = bench_recipe(args.epochs)
    space = load_space(SPACE)
    results: dict[str, Any] = {}
    test_cache: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pruners:
            print(f"\n=== {name} ===", flush=True)
            start = time.perf_counter()
            study = tune(
                recipe, space, pruner=name, sampler="random", seed=args.seed,
                n_trials=args.trials, study_name=f"bench-{name}", root=tmp,
                write_results=False, threads=args.threads,
            )
            seconds = time.perf_counter() - start
            trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
            epochs = [int(t.user_attrs["epochs"]) for t in trials]
            best = study.best_trial
            winner = best_recipe(study, recipe, space)
            key = json.dumps(best.params, sort_keys=True)
            if key not in test_cache:
                test_cache[key] = test_accuracy(winner, args.threads)
            curve = []  # best validation accuracy so far against epochs trained so far
            spent, best_so_far = 0, float("-inf")
            for trial in sorted(trials, key=lambda t: t.number):
                spent += int(trial.user_attrs["epochs"])
                if trial.state == TrialState.COMPLETE:
                    best_so_far = max(best_so_far, float(trial.value))
                curve.append([spent, best_so_far if best_so_far > float("-inf") else None])
            results[name] = {
                "plan": plan_pruner(name, recipe, n_trials=args.trials).describe(),
                "best_valid_accuracy": float(best.value),
                "best_trial": best.number,
                "best_params": best.params,
                "test_accuracy_of_best": test_cache[key],
                "total_epochs": sum(epochs),
                "pruned_trials": sum(t.state == TrialState.PRUNED for t in trials),
                "trials": len(trials),
                "seconds": round(seconds, 1),
                "curve": curve,
            }
            print(f"{name}: best valid acc {best.value:.4f} (trial {best.number}), "
                  f"test acc {test_cache[key]:.4f}, {sum(epochs)} epochs, {seconds:.0f}s",
                  flush=True)
    return results


def summarize(results: dict[str, Any], epochs: int, trials: int) -> dict[str, Any]:
    base = results.get("none")
    for row in results.values():
        if base is not None:
            row["valid_gap_pp"] = round(100 * (base["best_valid_accuracy"]
                                               - row["best_valid_accuracy"]), 3)
            row["epoch_ratio"] = round(row["total_epochs"] / base["total_epochs"], 3)
    target = None
    if base is not None and "hyperband" in results:
        hb = results["hyperband"]
        target = {
            "hyperband_within_0.5pp": hb["valid_gap_pp"] <= 0.5,
            "hyperband_at_most_a_third_of_epochs": hb["epoch_ratio"] <= 1 / 3,
        }
    return {"max_epochs": epochs, "trials": trials, "full_budget_epochs": epochs * trials,
            "target": target}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fasttricks._io import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    left.bar(names, [results[n]["total_epochs"] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        left.text(i, results[n]["total_epochs"], str(results[n]["total_epochs"]),
                  ha="center", va="bottom")
    left.set_ylabel("epochs trained (all trials)")
    left.set_title("cost")
    for n in names:
        pts = [(e, v) for e, v in results[n]["curve"] if v is not None]
        right.step([p[0] for p in pts], [100 * p[1] for p in pts], where="post", label=n)
    right.set_xlabel("epochs trained so far")
    right.set_ylabel("best validation accuracy so far (%)")
    right.set_title("anytime performance")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle("Pruners on MNIST-1D (same random candidates, seeded training)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="tune_pruners", help="basename of the JSON and PNG")
    args = parser.parse_args(argv)

    import optuna

    from fasttricks._io import atomic_write_text

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    results = run(args)
    summary = summarize(results, args.epochs, args.trials)
    out = Path(args.out)
    report = {
        "benchmark": "tune_pruners",
        "recipe": "mnist1d with model.channels=[16, 32, 32], data.bs=128, "
                  f"schedule.epochs={args.epochs}",
        "space": SPACE,
        "sampler": f"random, seed {args.seed}",
        "machine": machine(),
        "seconds_total": round(time.perf_counter() - started, 1),
        "summary": summary,
        "results": results,
    }
    atomic_write_text(out / f"{args.name}.json", json.dumps(report, indent=2) + "\n")
    plot(results, out / f"{args.name}.png")
    print("\n| pruner | best valid acc | test acc of best | epochs | vs none |")
    print("|---|---|---|---|---|")
    for name, row in results.items():
        ratio = f"{row.get('epoch_ratio', float('nan')):.2f}x"
        print(f"| {name} | {100 * row['best_valid_accuracy']:.2f}% | "
              f"{100 * row['test_accuracy_of_best']:.2f}% | {row['total_epochs']} | {ratio} |")
    print(f"target: {summary['target']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
