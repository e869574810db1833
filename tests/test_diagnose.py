"""Diagnostics: per-class report, confusion pairs, top losses, labelling priority, seed variance,
the Learner conveniences, and the messages for bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from fasttricks.diagnose import (
    Diagnosis,
    confusion_pairs,
    diagnose_learner,
    labelling_priority,
    per_class_report,
    seed_summary,
    seed_variance,
    top_losses,
)
from fasttricks.recipes import load_recipe, run_recipe, set_in_recipe

N_CLASSES = 6


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def single():
    """300 items, 6 classes, predictions that lean towards the truth; class 5 never predicted."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, N_CLASSES, 300)
    logits = rng.normal(size=(300, N_CLASSES)) * 1.5
    logits[np.arange(300), y] += 1.2
    logits[:, 5] -= 20.0
    return softmax(logits), y


@pytest.fixture
def multi():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 5)) < [0.1, 0.3, 0.5, 0.2, 0.4]).astype(np.int64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(200, 5)) + 1.5 * (2 * y - 1))))
    return probs, y


@pytest.fixture(scope="module")
def digits_recipe():
    return load_recipe({
        "name": "digits_tiny",
        "data": {"name": "digits", "bs": 64},
        "model": {"name": "mlp", "hidden": [32]},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"epochs": 1},
        "metrics": ["accuracy"],
        "seed": 0,
    })


@pytest.fixture(scope="module")
def digits_run(digits_recipe):
    return run_recipe(digits_recipe, progress=False)


def by_class(report: pd.DataFrame) -> pd.DataFrame:
    return report.set_index("class").sort_index()


# ---------------------------------------------------------------------------------- report


def test_per_class_precision_recall_f1_match_scikit_learn(single):
    probs, y = single
    report = by_class(per_class_report(probs, y))
    p, r, f, s = precision_recall_fscore_support(
        y, probs.argmax(1), labels=range(N_CLASSES), zero_division=0)
    np.testing.assert_allclose(report["precision"], p)
    np.testing.assert_allclose(report["recall"], r)
    np.testing.assert_allclose(report["f1"], f)
    np.testing.assert_array_equal(report["support"], s)
    np.testing.assert_array_equal(report["predicted"],
                                  np.bincount(probs.argmax(1), minlength=N_CLASSES))
    assert report.loc[5, "precision"] == 0 and report.loc[5, "predicted"] == 0


def test_per_class_report_is_worst_first_with_the_mean_cross_entropy_of_each_class(single):
    probs, y = single
    report = per_class_report(probs, y, vocab=list("abcdef"))
    assert list(report["f1"]) == sorted(report["f1"])
    assert report["class"].iloc[0] == "f"  # never predicted: F1 0
    for _, row in report.iterrows():
        k = "abcdef".index(row["class"])
        losses = [-math.log(probs[i, k]) for i in range(len(y)) if y[i] == k]
        assert row["mean_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-9)


def test_per_class_report_reads_class_names_and_torch_tensors(single):
    probs, y = single
    names = np.array(list("abcdef"))[y]
    from_names = per_class_report(torch.tensor(probs), list(names), vocab=list("abcdef"))
    from_ints = per_class_report(probs, torch.tensor(y), vocab=list("abcdef"))
    pd.testing.assert_frame_equal(from_names, from_ints)


def test_multilabel_report_matches_scikit_learn_ap_f1_and_binary_cross_entropy(multi):
    probs, y = multi
    report = by_class(per_class_report(probs, y, threshold=0.4))
    for j in range(y.shape[1]):
        p, r, f, _ = precision_recall_fscore_support(
            y[:, j], probs[:, j] >= 0.4, average="binary", zero_division=0)
        row = report.loc[j]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f))
        assert row["ap"] == pytest.approx(average_precision_score(y[:, j], probs[:, j]))
        bce = [-(t * math.log(q) + (1 - t) * math.log(1 - q)) for t, q in zip(y[:, j], probs[:, j])]
        assert row["mean_loss"] == pytest.approx(sum(bce) / len(bce))
        assert row["support"] == y[:, j].sum()


def test_average_precision_handles_tied_scores_like_scikit_learn():
    rng = np.random.default_rng(3)
    y = (rng.random((120, 3)) < 0.3).astype(int)
    probs = np.round(rng.random((120, 3)), 1)  # many ties
    report = by_class(per_class_report(probs, y))
    for j in range(3):
        assert report.loc[j, "ap"] == pytest.approx(average_precision_score(y[:, j], probs[:, j]))


# ---------------------------------------------------------------------------------- pairs


def test_confusion_pairs_are_the_off_diagonal_cells_of_sklearn_confusion_matrix(single):
    probs, y = single
    cm = confusion_matrix(y, probs.argmax(1), labels=range(N_CLASSES))
    expected = sorted(
        ((a, p, int(cm[a, p]), cm[a, p] / cm[a].sum())
         for a in range(N_CLASSES) for p in range(N_CLASSES) if a != p and cm[a, p] >= 3),
        key=lambda t: (-t[2], t[0], t[1]))
    pairs = confusion_pairs(probs, y, min_count=3)
    got = list(pairs.itertuples(index=False, name=None))
    assert [g[:3] for g in got] == [e[:3] for e in expected]
    np.testing.assert_allclose([g[3] for g in got], [e[3] for e in expected])
    assert pairs["count"].min() >= 3 and len(confusion_pairs(probs, y)) > len(pairs)


def test_confusion_pairs_use_vocab_names(single):
    probs, y = single
    pairs = confusion_pairs(probs, y, vocab=list("abcdef"))
    cm = confusion_matrix(y, probs.argmax(1))
    first = pairs.iloc[0]
    a, p = "abcdef".index(first["actual"]), "abcdef".index(first["predicted"])
    assert first["count"] == cm[a, p] == np.max(cm - np.diag(np.diag(cm)))


# ---------------------------------------------------------------------------------- top losses


def test_top_losses_are_the_highest_brute_force_cross_entropies(single):
    probs, y = single
    items = [f"img_{i}.png" for i in range(len(y))]
    brute = [(-math.log(probs[i, y[i]]), i) for i in range(len(y))]
    expected = sorted(brute, key=lambda t: (-t[0], t[1]))[:7]
    top = top_losses(probs, y, k=7, items=items)
    assert list(top["index"]) == [i for _, i in expected]
    np.testing.assert_allclose(top["loss"], [loss for loss, _ in expected], rtol=1e-12)
    assert list(top["item"]) == [items[i] for _, i in expected]
    assert list(top["actual"]) == [y[i] for _, i in expected]
    assert list(top["predicted"]) == [probs[i].argmax() for _, i in expected]
    np.testing.assert_allclose(top["prob_actual"], [probs[i, y[i]] for _, i in expected])


def test_top_losses_multilabel_rank_by_mean_binary_cross_entropy(multi):
    probs, y = multi
    brute = [np.mean([-(t * math.log(q) + (1 - t) * math.log(1 - q))
                      for t, q in zip(y[i], probs[i])]) for i in range(len(y))]
    top = top_losses(probs, y, k=5, vocab=list("vwxyz"))
    assert list(top["index"]) == list(np.argsort(brute)[::-1][:5])
    i = top["index"].iloc[0]
    assert top["actual"].iloc[0] == tuple("vwxyz"[j] for j in np.flatnonzero(y[i]))
    assert top["predicted"].iloc[0] == tuple("vwxyz"[j] for j in np.flatnonzero(probs[i] >= .5))


def test_top_losses_k_none_returns_every_item_and_k_above_n_is_capped(single):
    probs, y = single
    assert len(top_losses(probs, y, k=None)) == len(y) == len(top_losses(probs, y, k=10_000))


# ---------------------------------------------------------------------------------- priority


def test_uncertainty_scores_match_the_formulas(single):
    probs, _ = single
    entropy = [-sum(p * math.log(p) for p in row if p > 0) for row in probs]
    margin = [1 - (sorted(row)[-1] - sorted(row)[-2]) for row in probs]
    least = [1 - max(row) for row in probs]
    for method, ref in (("entropy", entropy), ("margin", margin), ("least_confidence", least)):
        ranked = labelling_priority(probs, method=method)
        order = sorted(range(len(ref)), key=lambda i: (-ref[i], i))
        assert list(ranked["index"]) == order, method
        np.testing.assert_allclose(ranked["score"], [ref[i] for i in order], rtol=1e-10)


def test_labelling_priority_takes_k_most_uncertain_with_items():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.55, 0.45]])
    ranked = labelling_priority(probs, "margin", k=2, items=pd.Series(["a", "b", "c", "d"]))
    assert list(ranked["index"]) == [1, 3] and list(ranked["item"]) == ["b", "d"]
    np.testing.assert_allclose(ranked["score"], [1.0, 0.9])


def test_multilabel_priority_averages_binary_entropies():
    probs = np.array([[0.5, 0.99], [0.9, 0.8], [0.2, 0.5]])
    h = [np.mean([-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in row])
         for row in probs]
    ranked = labelling_priority(probs, "entropy", multilabel=True)
    assert list(ranked["index"]) == list(np.argsort(h)[::-1])
    np.testing.assert_allclose(ranked["score"], sorted(h, reverse=True))


def test_tied_scores_and_losses_keep_item_order():
    rows = np.array([[0.6, 0.4], [0.8, 0.2], [0.5, 0.5]])
    probs = rows[np.arange(300) % 3]
    ranked = labelling_priority(probs, "least_confidence")
    expected = [*range(2, 300, 3), *range(0, 300, 3), *range(1, 300, 3)]
    assert list(ranked["index"]) == expected
    top = top_losses(probs, np.zeros(300, dtype=int), k=None)
    assert list(top["index"]) == expected


# ---------------------------------------------------------------------------------- seeds


def test_seed_variance_statistics_match_numpy_over_real_runs(digits_recipe):
    sv = seed_variance(digits_recipe, seeds=(0, 1, 2), split="valid", progress=False)
    values = sv.values
    assert list(sv.table["seed"]) == [0, 1, 2] and sv.metric == "accuracy"
    assert sv.mean == pytest.approx(np.mean(values))
    assert sv.std == pytest.approx(np.std(values, ddof=1))
    assert sv.stderr == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))
    assert len(set(values)) > 1  # the seed changes the run
    again = run_recipe(set_in_recipe(digits_recipe, "seed", 1), progress=False)
    assert values[1] == again.valid["accuracy"]
    assert "valid accuracy over 3 seeds: mean" in sv.summary()
    test_loss = seed_variance(digits_recipe, seeds=(2,), split="test", metric="loss",
                              progress=False)
    assert test_loss.values[0] == pytest.approx(run_recipe(
        set_in_recipe(digits_recipe, "seed", 2), progress=False).test["loss"])
    assert test_loss.std == 0.0


def test_seed_summary_is_the_one_summary_the_seed_runs_use(monkeypatch):
    import fasttricks._stats
    from fasttricks.recipes import run_seeds

    assert seed_summary([0.9, 0.92]) == fasttricks._stats.summarize([0.9, 0.92])
    calls = []
    monkeypatch.setattr(fasttricks._stats, "summarize",
                        lambda values: calls.append(list(values)) or {"n": len(calls)})
    table, summary = run_seeds({"data": "synthetic", "model": "mlp", "schedule": {"epochs": 1}},
                               2, out_dir=None, progress=False)
    assert calls == [list(table["test_accuracy"]), list(table["test_loss"])]
    s = seed_summary([0.9, 0.92, 0.95, 0.91])
    assert s["std"] == pytest.approx(np.std([0.9, 0.92, 0.95, 0.91], ddof=1))
    assert s["stderr"] == pytest.approx(s["std"] / 2)


# ---------------------------------------------------------------------------------- learner


def test_diagnose_learner_matches_the_array_functions_and_plots_a_png(digits_run, tmp_path):
    learn = digits_run.learn
    diag = diagnose_learner(learn, ds_idx=1, k=5)
    probs, targets = learn.get_preds(ds_idx=1)
    vocab = list(learn.dls.vocab)
    pd.testing.assert_frame_equal(diag.report, per_class_report(probs, targets, vocab))
    pd.testing.assert_frame_equal(diag.pairs, confusion_pairs(probs, targets, vocab))
    pd.testing.assert_frame_equal(diag.top_losses, top_losses(probs, targets, 5, vocab=vocab))
    np.testing.assert_array_equal(diag.confusion, confusion_matrix(targets, probs.argmax(1)))
    acc = (probs.argmax(1) == targets).float().mean().item()
    assert f"accuracy {acc:.4f}" in diag.summary()
    assert acc == pytest.approx(digits_run.valid["accuracy"], abs=1e-6)
    out = diag.plot(tmp_path / "plots" / "diagnosis.png")
    data = (tmp_path / "plots" / "diagnosis.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["diagnosis.png"]
    assert len(out.axes) >= 2


def test_diagnose_learner_applies_softmax_when_the_loss_has_no_activation(digits_run):
    learn = digits_run.learn
    expected = diagnose_learner(learn)
    fastai_loss = learn.loss_func
    learn.loss_func = torch.nn.CrossEntropyLoss()
    try:
        logits, _ = learn.get_preds(ds_idx=1)
        assert not torch.allclose(logits.sum(1), torch.ones(len(logits)))
        diag = diagnose_learner(learn)
    finally:
        learn.loss_func = fastai_loss
    pd.testing.assert_frame_equal(diag.report, expected.report, rtol=1e-5)
    pd.testing.assert_frame_equal(diag.top_losses, expected.top_losses, rtol=1e-5)


def test_multilabel_diagnosis_plots_f1_and_average_precision(multi, tmp_path):
    probs, y = multi
    diag = Diagnosis(report=per_class_report(probs, y), pairs=pd.DataFrame(),
                     top_losses=top_losses(probs, y), confusion=None, classes=list(range(5)),
                     multilabel=True, n_items=len(y))
    diag.plot(tmp_path / "ml.png")
    assert (tmp_path / "ml.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean AP" in diag.summary()


# ---------------------------------------------------------------------------------- bad input


def test_shape_mismatch_names_both_shapes(single):
    probs, y = single
    with pytest.raises(ValueError, match=r"\(300, 6\).*\(299,\)"):
        per_class_report(probs, y[:-1])
    with pytest.raises(ValueError, match=r"\(200, 5\).*\(200, 4\)"):
        per_class_report(np.full((200, 5), 0.5), np.zeros((200, 4)))


def test_logits_instead_of_probabilities_are_explained(single):
    probs, y = single
    logits = np.log(probs) + 3.0
    with pytest.raises(ValueError, match=r"sum to 1.*softmax"):
        top_losses(logits, y)
    with pytest.raises(ValueError, match=r"\[0, 1\].*sigmoid"):
        per_class_report(np.full((4, 2), 2.0), np.ones((4, 2)))
    with pytest.raises(ValueError, match="sum to 1.*multilabel=True"):
        labelling_priority(probs * 2)


def test_bad_k_method_vocab_and_split_are_rejected_clearly(single, digits_recipe, digits_run):
    probs, y = single
    with pytest.raises(ValueError, match="k must be >= 1.*got 0"):
        top_losses(probs, y, k=0)
    with pytest.raises(ValueError, match="k must be >= 1.*got -3"):
        labelling_priority(probs, k=-3)
    with pytest.raises(KeyError, match="Did you mean 'entropy'"):
        labelling_priority(probs, method="entropi")
    with pytest.raises(ValueError, match="vocab has 3 names but probs has 6 columns"):
        per_class_report(probs, y, vocab=["a", "b", "c"])
    with pytest.raises(ValueError, match="labels \\[6\\] are not valid class indices"):
        per_class_report(probs, np.r_[y[:-1], 6])
    with pytest.raises(ValueError, match="single-label"):
        confusion_pairs(np.full((3, 2), 0.5), np.ones((3, 2)))
    with pytest.raises(ValueError, match="min_count must be >= 1, got 0"):
        confusion_pairs(probs, y, min_count=0)
    with pytest.raises(ValueError, match="items has 2 entries but probs has 300 rows"):
        top_losses(probs, y, items=["a", "b"])
    with pytest.raises(KeyError, match="Did you mean 'valid'"):
        seed_variance(digits_recipe, split="vaild")
    with pytest.raises(KeyError, match="Did you mean 'accuracy'"):
        seed_variance(digits_recipe, metric="acuracy")
    with pytest.raises(ValueError, match="seeds has repeats"):
        seed_variance(digits_recipe, seeds=(1, 1))
    with pytest.raises(ValueError, match="ds_idx must be in 0..2"):
        diagnose_learner(digits_run.learn, ds_idx=3)
