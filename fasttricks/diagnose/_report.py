"""Per-class reports, confused pairs, top losses and suspected label noise, from arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._validate import check_range
from fasttricks.diagnose._inputs import (
    _as_preds,
    _bce,
    _check_k,
    _confusion,
    _item_losses,
    _Preds,
    _ratio,
    _top,
    _with_items,
)

def _average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds; NaN without positives.

    The step-wise (not interpolated) area under the precision-recall curve, as in
    Zhu (2004) and scikit-learn's ``average_precision_score``.
    """
    n_pos = positives.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_report(
    probs: Any, targets: Any, vocab: Sequence | None = None, threshold: float = 0.5
) -> pd.DataFrame:
    """Per-class support, precision, recall, F1 and mean loss, sorted worst-first by F1.

    The cheatsheet's first look at a trained model: the classes with the lowest F1 are where
    more (or cleaner) data pays off most; a class with a high mean loss but fair F1 is one the
    model gets right without confidence.

    Single-label (``targets`` 1-D): the prediction is the argmax; ``precision = tp / (tp + fp)``,
    ``recall = tp / (tp + fn)``, ``f1 = 2 tp / (2 tp + fp + fn)`` (0 where a denominator is 0,
    like scikit-learn's ``zero_division=0``); ``mean_loss`` is the mean of ``-log p(actual)``
    over the class's items (NaN for a class without items).

    Multi-label (``targets`` 2-D multi-hot, same shape as ``probs``): each label is a binary
    problem; precision/recall/F1 use ``probs >= threshold``, ``ap`` is the label's average
    precision (step-wise area under the precision-recall curve; NaN without positives) and
    ``mean_loss`` its mean binary cross-entropy over all items.

    Args:
        probs: (items x classes) probabilities, e.g. from ``learn.get_preds()``.
        targets: class indices or names (1-D), or multi-hot rows (2-D).
        vocab: class names in column order (default None: indices, or the sorted names).
        threshold: decision threshold for multi-label F1 (default 0.5).

    Returns:
        One row per class with columns ``class, support, predicted, precision, recall, f1,
        [ap,] mean_loss``; ``support`` counts the class's items (positives for multi-label),
        ``predicted`` how often the model predicted it. Ties in F1 keep class order.
    """
    check_range("threshold", threshold, 0.0, 1.0)
    return _report(_as_preds(probs, targets, vocab), threshold)


def _report(preds: _Preds, threshold: float = 0.5) -> pd.DataFrame:
    if preds.multilabel:
        actual, predicted = preds.targets, preds.predicted(threshold)
        tp = (actual * predicted).sum(axis=0)
        support, n_predicted = actual.sum(axis=0), predicted.sum(axis=0)
        extra = {"ap": [_average_precision(preds.probs[:, j], actual[:, j])
                        for j in range(preds.n_classes)]}
        mean_loss = _bce(preds).mean(axis=0)
    else:
        cm = _confusion(preds)
        tp, support, n_predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
        extra = {}
        loss_sum = np.bincount(preds.targets, weights=_item_losses(preds),
                               minlength=preds.n_classes)
        mean_loss = np.divide(loss_sum, support, out=np.full(preds.n_classes, np.nan),
                              where=support > 0)
    fp, fn = n_predicted - tp, support - tp
    report = pd.DataFrame({
        "class": preds.classes,
        "support": support.astype(np.int64),
        "predicted": n_predicted.astype(np.int64),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        **extra,
        "mean_loss": mean_loss,
    })
    return report.sort_values("f1", kind="mergesort").reset_index(drop=True)


def confusion_pairs(
    probs: Any, targets: Any, vocab: Sequence | None = None, min_count: int = 1
) -> pd.DataFrame:
    """The most-confused (actual, predicted) class pairs, most frequent first.

    Like fastai's ``ClassificationInterpretation.most_confused``, from arrays: the off-diagonal
    cells of the confusion matrix (prediction = argmax) with at least ``min_count`` items.
    ``share`` is ``count / support(actual)``: the fraction of the actual class that goes to the
    predicted one. A pair that is confused both ways often means two classes overlap, or the
    labelling guide does not separate them. Single-label only.

    Args:
        probs: (items x classes) probabilities.
        targets: 1-D class indices or names.
        vocab: class names in column order (default None).
        min_count: smallest count listed (default 1).

    Returns:
        Columns ``actual, predicted, count, share``; sorted by count (descending), then by the
        actual and predicted class order.
    """
    check_range("min_count", min_count, low=1)
    preds = _as_preds(probs, targets, vocab)
    if preds.multilabel:
        raise ValueError("confusion_pairs needs single-label (1-D) targets; for multi-hot "
                         "targets use per_class_report, which reports each label")
    return _pairs(preds, min_count)


def _pairs(preds: _Preds, min_count: int = 1) -> pd.DataFrame:
    cm = _confusion(preds)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    actual, predicted = np.nonzero(off >= min_count)  # row-major: actual, then predicted order
    counts = off[actual, predicted]
    order = np.argsort(-counts, kind="mergesort")
    actual, predicted, counts = actual[order], predicted[order], counts[order]
    return pd.DataFrame({
        "actual": preds.names(actual),
        "predicted": preds.names(predicted),
        "count": counts.astype(np.int64),
        "share": counts / cm.sum(axis=1)[actual],
    })


def top_losses(
    probs: Any, targets: Any, k: int | None = 10, items: Sequence | None = None,
    vocab: Sequence | None = None,
) -> pd.DataFrame:
    """The ``k`` items with the highest loss: the first candidates for label errors.

    An item the model confidently assigns to another class is either hard or mislabelled;
    checking the top losses is the cheatsheet's (and fastai's ``plot_top_losses``) quickest way
    to find noisy labels. Loss is ``-log p(actual)`` per item; for multi-hot targets the mean
    binary cross-entropy over labels.

    Args:
        probs: (items x classes) probabilities.
        targets: class indices or names (1-D), or multi-hot rows (2-D).
        k: how many items (default 10; None: all, sorted).
        items: optional per-row items (paths, ids, a DataFrame's rows as a Series), added as a
            column ``item``.
        vocab: class names in column order (default None).

    Returns:
        Columns ``index`` (row in ``probs``), [``item``,] ``loss``, ``actual``, ``predicted``
        and, single-label, ``prob_actual``, ``prob_predicted`` and ``margin`` (``p(actual)``
        minus the largest other probability, negative when wrong); multi-label ``actual`` and
        ``predicted`` are tuples of label names (predicted at 0.5). Highest loss first; ties
        keep item order.
    """
    _check_k(k)
    preds = _as_preds(probs, targets, vocab)
    return _with_items(_top_losses(preds, k), items, len(preds.targets))


def _label_margin(preds: _Preds) -> np.ndarray:
    """``p(actual) - max over other classes p(j)``: negative when the prediction is wrong."""
    rows = np.arange(len(preds.targets))
    others = preds.probs.copy()
    others[rows, preds.targets] = -np.inf
    return preds.probs[rows, preds.targets] - others.max(axis=1)


def _top_losses(preds: _Preds, k: int | None) -> pd.DataFrame:
    losses = _item_losses(preds)
    idx = _top(losses, k)
    if preds.multilabel:
        cols = {"actual": preds.label_sets(preds.targets[idx]),
                "predicted": preds.label_sets(preds.predicted()[idx])}
    else:
        pred = preds.predicted()[idx]
        cols = {"actual": preds.names(preds.targets[idx]), "predicted": preds.names(pred),
                "prob_actual": preds.probs[idx, preds.targets[idx]],
                "prob_predicted": preds.probs[idx, pred],
                "margin": _label_margin(preds)[idx]}
    return pd.DataFrame({"index": idx.astype(np.int64), "loss": losses[idx], **cols})




def overall_scores(
    probs: Any, targets: Any, vocab: Sequence | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """Whole-split scores: items, accuracy, macro and weighted precision / recall / F1.

    Macro averages weigh every class alike; weighted averages weigh each class by its support
    (scikit-learn's ``average="macro"`` / ``"weighted"`` with ``zero_division=0``).
    Single-label ``accuracy`` is the share of argmax predictions that are right; multi-label it
    is the share of (item, label) decisions at ``threshold`` that are right, and ``mean_ap``
    is the mean per-label average precision over labels with positives.
    """
    check_range("threshold", threshold, 0.0, 1.0)
    return _overall(_as_preds(probs, targets, vocab), threshold)


def _overall(preds: _Preds, threshold: float = 0.5) -> dict[str, float]:
    rep = _report(preds, threshold)
    weights = rep["support"].to_numpy(dtype=np.float64)
    total = weights.sum()
    if preds.multilabel:
        accuracy = float((preds.predicted(threshold) == preds.targets).mean())
    else:
        accuracy = float((preds.predicted() == preds.targets).mean())
    out = {"items": int(len(preds.targets)), "accuracy": accuracy}
    for col in ("precision", "recall", "f1"):
        values = rep[col].to_numpy()
        out[f"macro_{col}"] = float(values.mean())
        out[f"weighted_{col}"] = float((values * weights).sum() / total) if total else 0.0
    if preds.multilabel:
        out["mean_ap"] = float(np.nanmean(rep["ap"])) if rep["ap"].notna().any() else np.nan
    return out


def suspected_label_noise(
    probs: Any, targets: Any, vocab: Sequence | None = None, items: Sequence | None = None
) -> pd.DataFrame:
    """Items whose given label the model contradicts with confidence: suspected label errors.

    Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
    Uncertainty in Dataset Labels", JAIR 2021): the threshold of class ``j`` is the model's mean
    ``p(j)`` over the items labelled ``j`` (its self-confidence); an item labelled ``i`` is
    suspect when its most likely class ``j != i`` has ``p(j) >= t_j``. Such items are the
    off-diagonal of the confident joint. Most reliable on predictions from models that did not
    train on the items (k-fold out-of-fold predictions); on a model's own training split it
    finds only the labels the model refused to memorise. Single-label only.

    Returns:
        Columns ``index``, [``item``,] ``given``, ``suggested``, ``prob_given``,
        ``prob_suggested``, ``threshold``; the least plausible given label first.
    """
    preds = _as_preds(probs, targets, vocab)
    if preds.multilabel:
        raise ValueError("suspected_label_noise needs single-label (1-D) targets")
    n = len(preds.targets)
    rows = np.arange(n)
    support = np.bincount(preds.targets, minlength=preds.n_classes)
    p_self = np.bincount(preds.targets, weights=preds.probs[rows, preds.targets],
                         minlength=preds.n_classes)
    thresholds = np.divide(p_self, support, out=np.full(preds.n_classes, np.inf),
                           where=support > 0)
    best = preds.predicted()
    p_best = preds.probs[rows, best]
    suspect = (best != preds.targets) & (p_best >= thresholds[best])
    idx = np.flatnonzero(suspect)
    p_given = preds.probs[idx, preds.targets[idx]]
    idx = idx[np.argsort(p_given, kind="mergesort")]
    frame = pd.DataFrame({
        "index": idx.astype(np.int64),
        "given": preds.names(preds.targets[idx]),
        "suggested": preds.names(best[idx]),
        "prob_given": preds.probs[idx, preds.targets[idx]],
        "prob_suggested": p_best[idx],
        "threshold": thresholds[best[idx]],
    })
    return _with_items(frame, items, n)
