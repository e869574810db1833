"""Diagnosis maths on fixed predictions: overall scores against scikit-learn, top-loss margins,
confusion-aware labelling order and suspected label noise on hand-made cases, and the
validation/test correlation against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
)

from fasttricks.diagnose import (
    correlation_verdict,
    labelling_order,
    overall_scores,
    per_class_report,
    suspected_label_noise,
    top_losses,
    val_test_correlation,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def single():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 400)
    logits = rng.normal(size=(400, 5)) * 1.4
    logits[np.arange(400), y] += 1.0
    logits[:, 4] -= 3.0  # a class rarely predicted: precision and recall differ a lot
    return softmax(logits), y


def test_overall_scores_match_scikit_learn_macro_and_weighted(single):
    probs, y = single
    pred = probs.argmax(1)
    got = overall_scores(probs, y)
    assert got["items"] == 400
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert got[f"{average}_precision"] == pytest.approx(p)
        assert got[f"{average}_recall"] == pytest.approx(r)
        assert got[f"{average}_f1"] == pytest.approx(f)


def test_multilabel_overall_and_per_label_ap_at_a_threshold_match_scikit_learn():
    rng = np.random.default_rng(4)
    y = (rng.random((300, 4)) < [0.1, 0.3, 0.5, 0.25]).astype(np.int64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(300, 4)) + 1.2 * (2 * y - 1))))
    got = overall_scores(probs, y, threshold=0.3)
    pred = (probs >= 0.3).astype(int)
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert got["weighted_f1"] == pytest.approx(
        f1_score(y, pred, average="weighted", zero_division=0))
    assert got["accuracy"] == pytest.approx((pred == y).mean())
    ap = [average_precision_score(y[:, j], probs[:, j]) for j in range(4)]
    assert got["mean_ap"] == pytest.approx(np.mean(ap))
    rep = per_class_report(probs, y, threshold=0.3).set_index("class").sort_index()
    np.testing.assert_allclose(rep["ap"], ap)
    np.testing.assert_allclose(rep["f1"], f1_score(y, pred, average=None, zero_division=0))


def test_top_losses_margin_is_p_actual_minus_the_best_other_class(single):
    probs, y = single
    top = top_losses(probs, y, k=15)
    for i, margin in zip(top["index"], top["margin"]):
        row = probs[i].copy()
        p_actual = row[y[i]]
        row[y[i]] = -1
        assert margin == pytest.approx(p_actual - row.max())
    assert (top["margin"] < 0).sum() == (top["actual"] != top["predicted"]).sum()


def test_labelling_order_puts_small_margins_and_confused_pairs_first():
    # classes a, b, c; on labelled data the model confuses a and b often, never a and c
    confusion = np.array([[8, 2, 0],
                          [2, 8, 0],
                          [0, 0, 10]])
    probs = np.array([
        [0.50, 0.40, 0.10],  # 0: a/b, margin 0.10, pair share (2 + 2) / 20 = 0.2
        [0.50, 0.10, 0.40],  # 1: a/c, margin 0.10, pair share 0
        [0.80, 0.15, 0.05],  # 2: a/b, margin 0.65
        [0.34, 0.33, 0.33],  # 3: a/b (b wins the tie with c by column order), margin 0.01
    ])
    out = labelling_order(probs, confusion=confusion, vocab=["a", "b", "c"])
    expected = {0: 0.9 * 1.2, 1: 0.9, 2: 0.35 * 1.2, 3: 0.99 * 1.2}
    assert list(out["index"]) == [3, 0, 1, 2]
    for i, score in zip(out["index"], out["score"]):
        assert score == pytest.approx(expected[i])
    assert list(out["first"]) == ["a", "a", "a", "a"]
    assert list(out["second"]) == ["b", "b", "c", "b"]
    assert out.set_index("index").loc[0, "pair_confusion"] == pytest.approx(0.2)
    # without confusions it is margin order; --classes keeps items between the named classes
    assert list(labelling_order(probs)["index"]) == [3, 0, 1, 2]
    only_c = labelling_order(probs, confusion=confusion, vocab=["a", "b", "c"], classes=["c"])
    assert list(only_c["index"]) == [1]
    with pytest.raises(ValueError, match="unknown class 'd'"):
        labelling_order(probs, vocab=["a", "b", "c"], classes=["d"])


def test_labelling_order_multilabel_uses_the_least_certain_label():
    probs = np.array([[0.9, 0.55], [0.2, 0.1], [0.48, 0.97]])
    out = labelling_order(probs, multilabel=True, vocab=["x", "y"])
    assert list(out["index"]) == [2, 0, 1]
    np.testing.assert_allclose(out["margin"], [0.04, 0.1, 0.6])
    assert list(out["first"]) == ["x", "y", "x"]


def test_suspected_label_noise_is_the_confident_joint_off_diagonal():
    # class thresholds: mean p(own class) over the items labelled with it
    probs = np.array([
        [0.9, 0.1],   # labelled 0
        [0.7, 0.3],   # labelled 0
        [0.95, 0.05],  # labelled 1, model says 0 with 0.95 >= t_0
        [0.2, 0.8],   # labelled 1
        [0.6, 0.4],   # labelled 1, model says 0 with 0.6 < t_0: not suspect
    ])
    y = np.array([0, 0, 1, 1, 1])
    t0 = (0.9 + 0.7) / 2  # items labelled 0: rows 0 and 1
    out = suspected_label_noise(probs, y, vocab=["cat", "dog"], items=list("abcde"))
    assert list(out["index"]) == [2]
    r = out.iloc[0]
    assert (r["item"], r["given"], r["suggested"]) == ("c", "dog", "cat")
    assert r["threshold"] == pytest.approx(t0)
    assert r["prob_given"] == pytest.approx(0.05)


def test_val_test_correlation_matches_scipy_and_the_verdict_reads_both_ways():
    rng = np.random.default_rng(0)
    valid = rng.random(12)
    test = valid + rng.normal(scale=0.05, size=12)
    res = val_test_correlation(valid, test, metric="accuracy")
    rho, p = stats.spearmanr(valid, test)
    tau, p_tau = stats.kendalltau(valid, test)
    assert res.spearman == pytest.approx(rho) and res.spearman_p == pytest.approx(p)
    assert res.kendall == pytest.approx(tau) and res.kendall_p == pytest.approx(p_tau)
    assert res.spearman > 0.7 and "tracks test" in res.verdict
    assert res.direction == "maximize"
    shuffled = rng.permutation(test)
    bad = val_test_correlation(valid, -test, metric="error_rate")
    assert bad.direction == "minimize"
    assert bad.spearman == pytest.approx(stats.spearmanr(valid, -test)[0])
    assert "not correlated" in bad.verdict and "rebuild the validation set" in bad.verdict
    mid = val_test_correlation(valid, shuffled)
    assert mid.spearman == pytest.approx(stats.spearmanr(valid, shuffled)[0])
    assert "cannot judge" in correlation_verdict(float("nan"), 2)
    assert "weakly" in correlation_verdict(0.5, 10)
    assert np.isnan(val_test_correlation([0.1, 0.2], [0.3, 0.4]).spearman)
    with pytest.raises(ValueError, match="one score per trial"):
        val_test_correlation([0.1, 0.2], [0.3])
    assert isinstance(res.table, pd.DataFrame) and list(res.table.columns) == [
        "trial", "valid", "test"]
