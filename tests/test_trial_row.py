"""trial_row: one recipe variant run and reported as a table row, its score recomputed from
the trained model's own test predictions."""

from __future__ import annotations

import math

import pandas as pd

from conftest import tiny_recipe
from fasttricks.results_table import trial_row, trial_summary


def test_row_scores_the_changed_recipe_on_its_test_split():
    row = trial_row("one epoch", tiny_recipe(), {"schedule.epochs": 1})
    assert row["status"] == "ok" and row["changes"] == {"schedule.epochs": 1}
    learn = row["result"].learn
    assert len(row["result"].history) == 1  # the change reached the run
    probs, targets = learn.get_preds(ds_idx=2)
    by_hand = float((probs.argmax(1) == targets).float().mean())
    assert math.isclose(row["test accuracy"], by_hand, abs_tol=1e-6)
    assert row["seconds"] > 0
    assert trial_summary(row).startswith("one epoch")
    assert f"test accuracy {by_hand:.4f}" in trial_summary(row)


def test_a_diverging_run_is_a_row_with_the_guards_reason():
    row = trial_row("lr far too high", tiny_recipe(),
                    {"optimizer.name": "sgd", "optimizer.lr": 1e4})
    assert math.isnan(row["test accuracy"]) and row["result"] is None
    assert row["status"].startswith("Training stopped at epoch 0")
    assert "\n" not in row["status"] and "Exception occured" not in row["status"]
    assert trial_summary(row).splitlines()[1].strip() == row["status"]
    table = pd.DataFrame([row]).set_index("label")
    assert list(table.columns) == ["changes", "seconds", "test accuracy", "status", "result"]


def test_without_metrics_the_row_holds_the_test_loss():
    row = trial_row("loss only", tiny_recipe(metrics=[]), {"schedule.epochs": 1})
    assert row["test loss"] == row["result"].test["loss"] > 0
