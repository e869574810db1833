"""Diagnostics for data curation: which classes fail, which labels to check, what to label next.

The cheatsheet's data-side checks, as pure functions on predicted probabilities and targets
(numpy arrays, torch tensors or lists), plus thin conveniences for a fastai ``Learner``:

- :func:`per_class_report`: support, precision, recall, F1 and mean loss per class, worst first
  (multi-label: per-label average precision and F1 at a threshold).
- :func:`confusion_pairs`: the most-confused (actual, predicted) pairs, like fastai's
  ``ClassificationInterpretation.most_confused`` but from arrays.
- :func:`top_losses`: the items the model finds least plausible -- candidates for label errors.
- :func:`labelling_priority`: uncertainty sampling (Settles 2009) to order unlabelled items.
- :func:`seed_variance`: how much a metric moves with the training seed alone.
- :func:`diagnose_learner` -> :class:`Diagnosis` with ``summary()`` and ``plot(path)``.

Probabilities are what ``learn.get_preds()`` returns: the loss's activation already applied
(softmax rows that sum to 1 for single-label targets, sigmoid values in [0, 1] for multi-hot
targets). Losses here are always the cross-entropy of those probabilities (binary cross-entropy
per label for multi-label), whatever loss trained the model, so classes and items compare on
one scale.

Example::

    probs, targets = learn.get_preds(ds_idx=1)
    per_class_report(probs, targets, vocab=learn.dls.vocab).head()
    top_losses(probs, targets, k=20)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fasttricks._io import save_figure
from fasttricks._labels import as_array, encode_labels
from fasttricks._stats import summarize
from fasttricks._validate import check_choice, check_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "UNCERTAINTY_METHODS",
    "Diagnosis",
    "SeedVariance",
    "confusion_pairs",
    "diagnose_learner",
    "labelling_priority",
    "per_class_report",
    "seed_summary",
    "seed_variance",
    "top_losses",
]

logger = logging.getLogger(__name__)

UNCERTAINTY_METHODS = ("margin", "entropy", "least_confidence")
_EPS = 1e-12  # probabilities are clipped to [_EPS, 1 - _EPS] before taking logs
_SUM_TOL = 5e-3  # rows of half-precision softmax outputs sum to 1 within about 1e-3


# ---------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Preds:
    """Validated predictions: float64 probabilities, integer targets, class names."""

    probs: np.ndarray  # (n, c)
    targets: np.ndarray  # (n,) class indices, or (n, c) multi-hot 0/1
    classes: list
    multilabel: bool

    @property
    def n_classes(self) -> int:
        return self.probs.shape[1]

    def predicted(self, threshold: float = 0.5) -> np.ndarray:
        """Argmax class per item (single-label) or the multi-hot prediction at ``threshold``."""
        if self.multilabel:
            return (self.probs >= threshold).astype(np.int64)
        return self.probs.argmax(axis=1)

    def names(self, indices: np.ndarray) -> list:
        return [self.classes[int(i)] for i in indices]

    def label_sets(self, multi_hot: np.ndarray) -> list[tuple]:
        return [tuple(self.names(np.flatnonzero(row))) for row in multi_hot]


def _as_probs(probs: Any, multilabel: bool, multilabel_how: str = "2-D multi-hot targets"
              ) -> np.ndarray:
    """``probs`` as a finite float64 (items x classes) array of probabilities, or a clear error.

    ``multilabel_how`` says, in the error, how the caller is told the data is multi-label.
    """
    arr = as_array(probs)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"probs must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty 2-D array (items x classes), "
                         f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"probs must be finite, got {arr[tuple(bad)]} at row {bad[0]}")
    low, high = arr.min(), arr.max()
    if multilabel:
        if low < 0 or high > 1:
            raise ValueError(
                f"probs must be probabilities in [0, 1] for multi-label data, got values in "
                f"[{low:.4g}, {high:.4g}]; these look like logits: apply the activation first "
                "(torch.sigmoid(logits)), or use learn.get_preds(), which applies the loss's "
                "activation")
        return arr
    sums = arr.sum(axis=1)
    worst = int(np.abs(sums - 1).argmax())
    if low < 0 or high > 1 or abs(sums[worst] - 1) > _SUM_TOL:
        if arr.shape[1] == 1:
            hint = ("a single column is one binary label: pass multi-hot targets of shape "
                    f"({arr.shape[0]}, 1), or two columns (1 - p, p)")
        else:
            hint = ("these look like logits or scores: apply the activation first "
                    "(torch.softmax(logits, dim=1)), or use learn.get_preds(), which applies "
                    f"the loss's activation; multi-label probabilities need {multilabel_how}")
        raise ValueError(
            f"probs must be probabilities whose rows sum to 1 for single-label data, but row "
            f"{worst} sums to {sums[worst]:.4g} (values in [{low:.4g}, {high:.4g}]); {hint}")
    return arr


def _as_preds(probs: Any, targets: Any, vocab: Sequence | None) -> _Preds:
    raw_probs = as_array(probs)
    raw_targets = as_array(targets)
    multilabel = raw_targets.ndim == 2
    if raw_targets.ndim not in (1, 2):
        raise ValueError("targets must be 1-D class labels or 2-D multi-hot rows, got shape "
                         f"{raw_targets.shape}")
    same_rows = raw_probs.ndim >= 1 and len(raw_probs) == len(raw_targets)
    if not same_rows or (multilabel and raw_probs.shape != raw_targets.shape):
        need = "the same shape" if multilabel else "the same number of items (rows)"
        raise ValueError(f"probs has shape {tuple(raw_probs.shape)} but targets has shape "
                         f"{tuple(raw_targets.shape)}; they need {need}")
    arr = _as_probs(raw_probs, multilabel)
    n_classes = arr.shape[1]
    if vocab is not None:
        vocab = list(vocab)
        if len(vocab) != n_classes:
            raise ValueError(f"vocab has {len(vocab)} names but probs has {n_classes} columns "
                             "(one per class); pass the vocab the model was trained with")
    enc = encode_labels(raw_targets, vocab=vocab, n_classes=None if vocab else n_classes)
    return _Preds(arr, enc.codes, list(enc.classes), multilabel)


def _check_k(k: int | None) -> None:
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int >= 1 or None, got {k!r} ({type(k).__name__})")
    if k < 1:
        raise ValueError(f"k must be >= 1 (or None for all items), got {k}")


def _clip(probs: np.ndarray) -> np.ndarray:
    return np.clip(probs, _EPS, 1 - _EPS)


def _bce(preds: _Preds) -> np.ndarray:
    """Binary cross-entropy per item and label, (n, c)."""
    p = _clip(preds.probs)
    return -(preds.targets * np.log(p) + (1 - preds.targets) * np.log1p(-p))


def _item_losses(preds: _Preds) -> np.ndarray:
    """Cross-entropy per item: -log p(actual); multi-label: mean binary cross-entropy."""
    if preds.multilabel:
        return _bce(preds).mean(axis=1)
    p_actual = preds.probs[np.arange(len(preds.targets)), preds.targets]
    return -np.log(np.maximum(p_actual, _EPS))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    num = num.astype(np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _confusion(preds: _Preds) -> np.ndarray:
    """Confusion matrix, rows actual and columns predicted (c x c counts)."""
    c = preds.n_classes
    flat = preds.targets * c + preds.predicted()
    return np.bincount(flat, minlength=c * c).reshape(c, c)


# ---------------------------------------------------------------------------------- reports


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


def _top(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties keep item order."""
    order = np.argsort(-scores, kind="mergesort")
    return order if k is None else order[:k]


def _with_items(frame: pd.DataFrame, items: Sequence | None, n: int) -> pd.DataFrame:
    """Insert a column ``item`` with ``items[index]`` (a pandas object is indexed by position)."""
    if items is None:
        return frame
    if len(items) != n:
        raise ValueError(f"items has {len(items)} entries but probs has {n} rows; pass one "
                         "item per prediction, in the same order")
    rows = frame["index"].to_numpy()
    picked = list(items.iloc[rows]) if hasattr(items, "iloc") else [items[i] for i in rows]
    frame.insert(1, "item", picked)
    return frame


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
        and, single-label, ``prob_actual`` and ``prob_predicted``; multi-label ``actual`` and
        ``predicted`` are tuples of label names (predicted at 0.5). Highest loss first; ties
        keep item order.
    """
    _check_k(k)
    preds = _as_preds(probs, targets, vocab)
    return _with_items(_top_losses(preds, k), items, len(preds.targets))


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
                "prob_predicted": preds.probs[idx, pred]}
    return pd.DataFrame({"index": idx.astype(np.int64), "loss": losses[idx], **cols})


def _uncertainty(probs: np.ndarray, method: str, multilabel: bool) -> np.ndarray:
    """Per-item uncertainty, higher = label first."""
    if multilabel:  # each label a binary problem (p, 1 - p); the item's score is the label mean
        stacked = np.stack([probs, 1 - probs], axis=-1)
        return _uncertainty(stacked.reshape(-1, 2), method, False).reshape(probs.shape).mean(1)
    if method == "least_confidence":  # 1 - max_y p(y|x)
        return 1 - probs.max(axis=1)
    if method == "margin":  # 1 - (p(y1|x) - p(y2|x)), y1 and y2 the two most likely classes
        if probs.shape[1] < 2:
            raise ValueError("margin needs at least 2 classes, got probs with 1 column")
        top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
        return 1 - (top2[:, 1] - top2[:, 0])
    # entropy: -sum_y p(y|x) log p(y|x), natural log, 0 log 0 = 0
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return -(probs * logs).sum(axis=1)


def labelling_priority(
    probs: Any, method: str = "margin", k: int | None = None,
    items: Sequence | None = None, multilabel: bool = False,
) -> pd.DataFrame:
    """Order unlabelled items for annotation by model uncertainty (uncertainty sampling).

    Label first what the model is least sure about (Settles, "Active Learning Literature
    Survey", 2009, section 3.1). Scores, higher = label first:

    - ``"margin"`` (default): ``1 - (p1 - p2)``, with ``p1``, ``p2`` the two largest class
      probabilities (margin sampling, Scheffer et al. 2001);
    - ``"entropy"``: ``-sum_y p(y) log p(y)`` (natural log);
    - ``"least_confidence"``: ``1 - max_y p(y)``.

    With ``multilabel=True`` each label is a binary problem ``(p, 1 - p)`` and an item's score
    is the mean of its labels' scores.

    Args:
        probs: (items x classes) probabilities of unlabelled items, e.g.
            ``learn.get_preds(dl=learn.dls.test_dl(items))[0]``.
        method: ``"margin"``, ``"entropy"`` or ``"least_confidence"`` (default ``"margin"``).
        k: how many items (default None: all).
        items: optional per-row items, added as a column ``item``.
        multilabel: probabilities are independent per label (sigmoid), default False.

    Returns:
        Columns ``index`` (row in ``probs``), [``item``,] ``score``; highest score first, ties
        keep item order.
    """
    check_choice("uncertainty method", method, UNCERTAINTY_METHODS)
    _check_k(k)
    arr = _as_probs(probs, multilabel, multilabel_how="multilabel=True")
    scores = _uncertainty(arr, method, multilabel)
    idx = _top(scores, k)
    frame = pd.DataFrame({"index": idx.astype(np.int64), "score": scores[idx]})
    return _with_items(frame, items, len(scores))


# ---------------------------------------------------------------------------------- seeds


def seed_summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample standard deviation (ddof=1), standard error, min, max of ``values``.

    With one value, std and stderr are 0 (see :func:`fasttricks._stats.summarize`).
    """
    return summarize(values)


@dataclass
class SeedVariance:
    """What :func:`seed_variance` returns: a metric per seed and its spread.

    Attributes:
        metric: the metric's name (``"loss"`` for the loss), split: ``"valid"`` or ``"test"``.
        table: one row per seed (``seed``, ``value``, and the split's loss ``loss``).
        mean, std, stderr: the mean, sample standard deviation (ddof=1) and standard error.
    """

    metric: str
    split: str
    table: pd.DataFrame
    mean: float
    std: float
    stderr: float

    @property
    def values(self) -> np.ndarray:
        """The metric per seed, in seed order."""
        return self.table["value"].to_numpy()

    def summary(self) -> str:
        """One line: metric, split, number of seeds, mean, std, standard error, range."""
        v = self.values
        return (f"{self.split} {self.metric} over {len(v)} seeds: mean {self.mean:.4f}, "
                f"std {self.std:.4f}, stderr {self.stderr:.4f} "
                f"(min {v.min():.4f}, max {v.max():.4f})")


def seed_variance(
    recipe: Any,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    split: str = "valid",
    metric: str | None = None,
    progress: bool = True,
) -> SeedVariance:
    """Train a recipe once per seed and measure how much a metric moves with the seed alone.

    The cheatsheet's validation-set check: if two configurations differ by less than a few
    standard deviations of the seed-to-seed spread, the validation set cannot tell them apart
    (make it bigger, or average over seeds). Each run is
    ``run_recipe(set_in_recipe(recipe, "seed", s))``; the data split (``data.seed``) stays
    fixed, so only the training varies (:func:`fasttricks.recipes.seed_runs`, the one seed
    loop).

    Args:
        recipe: a recipe path or mapping (see :func:`fasttricks.recipes.load_recipe`).
        seeds: training seeds (default ``(0, 1, 2, 3, 4)``); at least one, no repeats.
        split: ``"valid"`` (default) or ``"test"``.
        metric: a recipe metric or ``"loss"`` (default None: the recipe's primary metric).
        progress: show a progress bar over the seeds (default True).
    """
    from fastprogress.fastprogress import progress_bar

    from fasttricks.recipes import load_recipe, primary_metric, seed_runs

    check_choice("split", split, ("valid", "test"))
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=(0, 1, 2)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"seeds must be ints, got {s!r} ({type(s).__name__})")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has repeats: {seeds}; each seed would give the same run")
    recipe = load_recipe(recipe)
    if metric is None:
        name, _ = primary_metric(recipe)
        metric = "loss" if name == "valid_loss" else name
    else:
        check_choice("metric", metric, ["loss", *recipe["metrics"]])
    rows = []
    bar = progress_bar(seeds, display=progress, leave=True)
    for seed, result in seed_runs(recipe, bar, progress=False):
        scores = result.valid if split == "valid" else result.test
        rows.append({"seed": int(seed), "value": scores[metric], "loss": scores["loss"]})
        bar.comment = f"seed {seed}: {split} {metric} {scores[metric]:.4f}"
        logger.info("seed %s: %s %s %.4f", seed, split, metric, scores[metric])
    table = pd.DataFrame(rows)
    stats = seed_summary(table["value"])
    return SeedVariance(metric=metric, split=split, table=table, mean=stats["mean"],
                        std=stats["std"], stderr=stats["stderr"])


# ---------------------------------------------------------------------------------- learner


@dataclass
class Diagnosis:
    """What :func:`diagnose_learner` returns: the report, confused pairs and top losses.

    Attributes:
        report: :func:`per_class_report`, worst class first.
        pairs: :func:`confusion_pairs` (empty for multi-label).
        top_losses: :func:`top_losses` (``k`` items).
        confusion: the confusion matrix (rows actual, columns predicted), None for multi-label.
        classes: class names in column order.
        multilabel: whether the targets were multi-hot.
        n_items: number of items diagnosed.
        split: which split was diagnosed (``"valid"``, ``"test"``, ...).
    """

    report: pd.DataFrame
    pairs: pd.DataFrame
    top_losses: pd.DataFrame
    confusion: np.ndarray | None
    classes: list
    multilabel: bool = False
    n_items: int = 0
    split: str = "valid"

    def summary(self, n: int = 3) -> str:
        """A few lines: overall scores, the ``n`` worst classes, most confused pairs, top loss."""
        rep = self.report
        lines = []
        if self.confusion is not None:
            acc = np.trace(self.confusion) / max(self.confusion.sum(), 1)
            lines.append(f"{self.split}: {self.n_items} items, accuracy {acc:.4f}, "
                         f"macro F1 {rep['f1'].mean():.4f}")
        else:
            lines.append(f"{self.split}: {self.n_items} items, {len(self.classes)} labels, "
                         f"macro F1 {rep['f1'].mean():.4f}, mean AP {rep['ap'].mean():.4f}")
        worst = ", ".join(f"{r['class']} (F1 {r['f1']:.3f}, n={r['support']})"
                          for _, r in rep.head(n).iterrows())
        lines.append(f"worst {'labels' if self.multilabel else 'classes'}: {worst}")
        if len(self.pairs):
            pairs = ", ".join(f"{r['actual']} -> {r['predicted']} ({r['count']})"
                              for _, r in self.pairs.head(n).iterrows())
            lines.append(f"most confused: {pairs}")
        if len(self.top_losses):
            t = self.top_losses.iloc[0]
            lines.append(f"top loss: item {t['index']} (loss {t['loss']:.3f}, actual "
                         f"{t['actual']}, predicted {t['predicted']})")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None, max_classes: int = 40) -> Figure:
        """Per-class F1 bars (worst first) beside the confusion matrix as a heat map.

        Multi-label: per-label F1 and average precision bars. With ``path`` the PNG is written
        atomically (temporary file, then rename) and the figure closed. At most
        ``max_classes`` (default 40) bars are drawn, the worst ones. Returns the figure.
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        rep = self.report.head(max_classes)
        fig, (ax_bar, ax_right) = plt.subplots(1, 2, figsize=(12, max(4, 0.22 * len(rep) + 1.5)))
        shown = f" (worst {len(rep)} of {len(self.report)})" if len(rep) < len(self.report) else ""
        kind = "label" if self.multilabel else "class"
        _bars(ax_bar, rep["f1"], rep["class"], "F1", f"per-{kind} F1, {self.split}{shown}", "C0")
        if self.confusion is None:
            _bars(ax_right, rep["ap"].fillna(0), rep["class"], "average precision",
                  "per-label average precision", "C1")
        else:
            _heat_map(ax_right, self.confusion, self.classes, fig)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path, dpi=110)
        return fig


def _bars(ax: Any, values: Any, names: Any, xlabel: str, title: str, color: str) -> None:
    """Horizontal bars in [0, 1], first row on top."""
    pos = np.arange(len(values))
    ax.barh(pos, values, color=color)
    ax.set_yticks(pos, [str(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def _heat_map(ax: Any, cm: np.ndarray, classes: list, fig: Any) -> None:
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    c = len(classes)
    if c <= 30:
        ticks = np.arange(c)
        ax.set_xticks(ticks, [str(x) for x in classes], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [str(x) for x in classes], fontsize=7)
    if c <= 15:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix")


def diagnose_learner(learn: Any, ds_idx: int = 1, k: int = 10, progress: bool = False) -> Diagnosis:
    """Predict loader ``ds_idx`` of a fastai Learner and diagnose it.

    Runs ``learn.get_preds(ds_idx=ds_idx)`` (the loss's activation applied), then
    :func:`per_class_report`, :func:`confusion_pairs` and :func:`top_losses` with the class
    names from ``learn.dls.vocab``. A loss without fastai's ``activation`` (a plain
    ``torch.nn.CrossEntropyLoss``) gives raw outputs: they get a softmax (1-D targets) or a
    sigmoid (multi-hot targets).

    Args:
        learn: a trained fastai ``Learner`` (e.g. ``run_recipe(...).learn``).
        ds_idx: which loader (default 1: validation; 2 is the recipes' test split).
        k: how many top losses (default 10).
        progress: show fastai's progress bar while predicting (default False).
    """
    import contextlib

    _check_k(k)
    n_loaders = len(learn.dls.loaders)
    if not 0 <= ds_idx < n_loaders:
        raise ValueError(f"ds_idx must be in 0..{n_loaders - 1} (this learner has {n_loaders} "
                         f"loaders), got {ds_idx}")
    with contextlib.ExitStack() as stack:
        if not progress:
            stack.enter_context(learn.no_bar())
        probs, targets = learn.get_preds(ds_idx=ds_idx)
    if getattr(learn.loss_func, "activation", None) is None:
        logger.info("%s has no activation; applying %s to the outputs",
                    type(learn.loss_func).__name__,
                    "sigmoid" if targets.ndim == 2 else "softmax")
        probs = probs.float().sigmoid() if targets.ndim == 2 else probs.float().softmax(dim=1)
    vocab = getattr(learn.dls, "vocab", None)
    vocab = list(vocab) if vocab is not None and len(vocab) == probs.shape[1] else None
    preds = _as_preds(probs, targets, vocab)
    multi = preds.multilabel
    empty = pd.DataFrame(columns=["actual", "predicted", "count", "share"])
    return Diagnosis(
        report=_report(preds),
        pairs=empty if multi else _pairs(preds),
        top_losses=_top_losses(preds, k),
        confusion=None if multi else _confusion(preds),
        classes=preds.classes,
        multilabel=multi,
        n_items=len(preds.targets),
        split={0: "train", 1: "valid", 2: "test"}.get(ds_idx, f"loader {ds_idx}"),
    )
