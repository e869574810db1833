"""Accuracy of the shipped recipes on the CPU, beside published and in-run baselines.

Targets (2-core CPU): the ``digits`` recipe >= 98.5% test accuracy in under a minute;
``mnist1d`` >= 95% (aiming for 96%) in under five minutes, on the standard
4,000 / 1,000 split of ``mnist1d.data.make_dataset(get_dataset_args())``. Each recipe runs with
several seeds (default 3); we report the mean, standard deviation, min and max of the test
accuracy and the wall-clock time per run.

Peers: the MNIST-1D paper's numbers (Greydanus & Kobak 2020, https://arxiv.org/abs/2011.14439:
logistic regression 32%, MLP 68%, CNN 94%, GRU 91%, human expert 96%) and, measured in the same
process on the same split, scikit-learn's logistic regression and the mnist1d recipe with its
model swapped for an MLP.

Usage::

    PYTHONPATH=. python benchmarks/accuracy.py              # 3 seeds, 1 torch thread
    PYTHONPATH=. python benchmarks/accuracy.py --seeds 1 --quick

Results go to ``benchmarks/results/accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import cpu_model, machine_info  # noqa: E402
from fasttricks._io import atomic_write_text  # noqa: E402
from fasttricks.datasets import load_dataset  # noqa: E402
from fasttricks.recipes import load_recipe, run_recipe  # noqa: E402

PAPER_MNIST1D = {"logistic regression": 0.32, "MLP": 0.68, "CNN": 0.94, "GRU": 0.91,
                 "human expert": 0.96}
TARGETS = {"digits": {"accuracy": 0.985, "seconds": 60.0},
           "mnist1d": {"accuracy": 0.95, "aim": 0.96, "seconds": 300.0}}


def machine() -> dict:
    """Where the numbers came from."""
    return machine_info()


def run_seeds(path: str, seeds: list[int], overrides: list[str]) -> dict:
    accs, secs, epochs = [], [], None
    for seed in seeds:
        recipe = load_recipe(path, [f"seed={seed}", *overrides])
        start = time.perf_counter()
        result = run_recipe(recipe, progress=False)
        secs.append(time.perf_counter() - start)
        accs.append(result.test["accuracy"])
        epochs = recipe["schedule"]["epochs"]
        print(f"  {recipe['name']:<10} seed {seed}: test accuracy {accs[-1]:.4f} "
              f"in {secs[-1]:.1f}s", flush=True)
    return {
        "recipe": path, "overrides": overrides, "epochs": epochs,
        "seeds": seeds, "test_accuracy": accs,
        "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "min": min(accs), "max": max(accs), "seconds": secs,
        "mean_seconds": statistics.fmean(secs), "max_seconds": max(secs),
    }


def logistic_regression_mnist1d() -> dict:
    from sklearn.linear_model import LogisticRegression

    splits = load_dataset("mnist1d")
    pool = splits.pool()
    start = time.perf_counter()
    clf = LogisticRegression(max_iter=2000).fit(pool.x.reshape(len(pool), -1), pool.y)
    acc = float(clf.score(splits.test.x.reshape(len(splits.test), -1), splits.test.y))
    return {"test_accuracy": acc, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the machine is shared)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    p.add_argument("--skip-peers", action="store_true", help="only the shipped recipes")
    p.add_argument("--render", action="store_true",
                   help="re-print the table (and derived ratios) of a saved result, no training")
    args = p.parse_args()
    if args.render:
        saved = json.loads(Path(args.out).read_text())
        saved["machine"].setdefault("cpu_model", cpu_model())  # results from before the field
        save(saved, args.out)
        return
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    results: dict = {"machine": machine(), "targets": TARGETS,
                     "paper_mnist1d": PAPER_MNIST1D, "recipes": {}, "peers": {}}
    for name in ("digits", "mnist1d"):
        print(f"{name}: {args.seeds} seeds", flush=True)
        results["recipes"][name] = run_seeds(name, seeds, [])
        r, t = results["recipes"][name], TARGETS[name]
        r["meets_target"] = bool(r["mean"] >= t["accuracy"] and r["max_seconds"] < t["seconds"])
    if not args.skip_peers:
        print("peers on MNIST-1D", flush=True)
        results["peers"]["logistic_regression_sklearn"] = logistic_regression_mnist1d()
        results["peers"]["mlp_recipe"] = run_seeds(
            "mnist1d", seeds,
            ["model={name: mlp, hidden: [256, 256], dropout: 0.1}"])
    save(results, args.out)


def add_ratios(results: dict) -> dict:
    """Ratios of test accuracy to the paper's CNN (94%) and human expert (96%) on MNIST-1D."""
    paper = results["paper_mnist1d"]
    rows = [results["recipes"].get("mnist1d"), results.get("peers", {}).get("mlp_recipe")]
    for row in rows:
        if row is not None:
            row["ratio_to_paper_cnn"] = row["mean"] / paper["CNN"]
            row["ratio_to_paper_human"] = row["mean"] / paper["human expert"]
    return results


def save(results: dict, out: str) -> None:
    atomic_write_text(out, json.dumps(add_ratios(results), indent=2) + "\n")
    print(table(results))
    print(f"saved {out}")


def table(results: dict) -> str:
    """The README table (markdown)."""
    rows = ["| dataset | model | test accuracy (mean ± std, n seeds) | min–max | s / run | "
            "target / paper |", "|---|---|---|---|---|---|"]
    for name, r in results["recipes"].items():
        t = TARGETS[name]
        rows.append(f"| {name} | recipe {name} | {100 * r['mean']:.2f}% ± "
                    f"{100 * r['std']:.2f} ({len(r['seeds'])}) | {100 * r['min']:.1f}–"
                    f"{100 * r['max']:.1f}% | {r['mean_seconds']:.0f} | "
                    f">= {100 * t['accuracy']:.1f}% in < {t['seconds']:.0f} s: "
                    f"{'met' if r['meets_target'] else 'NOT met'}"
                    + (f"; {r['ratio_to_paper_cnn']:.3f}x the paper's CNN (94%)"
                       if "ratio_to_paper_cnn" in r else "") + " |")
    peers = results.get("peers", {})
    if "logistic_regression_sklearn" in peers:
        lr = peers["logistic_regression_sklearn"]
        rows.append(f"| mnist1d | logistic regression (scikit-learn, this run) | "
                    f"{100 * lr['test_accuracy']:.1f}% | | {lr['seconds']:.0f} | paper: 32% |")
    if "mlp_recipe" in peers:
        m = peers["mlp_recipe"]
        rows.append(f"| mnist1d | MLP 256-256 (recipe, this run) | {100 * m['mean']:.2f}% ± "
                    f"{100 * m['std']:.2f} ({len(m['seeds'])}) | {100 * m['min']:.1f}–"
                    f"{100 * m['max']:.1f}% | {m['mean_seconds']:.0f} | paper: 68% |")
    paper = ", ".join(f"{k} {100 * v:.0f}%" for k, v in results["paper_mnist1d"].items())
    rows.append(f"\nMNIST-1D paper (Greydanus & Kobak 2020): {paper}.")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
