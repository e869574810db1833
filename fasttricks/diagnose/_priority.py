"""Which unlabelled items to label first: uncertainty sampling and confusion-aware ordering."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._validate import check_choice
from fasttricks.diagnose._inputs import _as_probs, _check_k, _top, _with_items

UNCERTAINTY_METHODS = ("margin", "entropy", "least_confidence")


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




def labelling_order(
    probs: Any,
    confusion: Any = None,
    vocab: Sequence | None = None,
    classes: Sequence | None = None,
    items: Sequence | None = None,
    multilabel: bool = False,
) -> pd.DataFrame:
    """Order unlabelled items for annotation: small margins first, confused pairs first.

    Margin sampling (Scheffer et al. 2001) weighted by how often the model confuses the two
    classes the item sits between, measured on labelled data. For an item whose two most
    likely classes are ``a`` and ``b`` (``p_a >= p_b``)::

        margin = p_a - p_b
        pair_confusion = (C[a, b] + C[b, a]) / (n_a + n_b)      # C: confusion matrix counts
        score = (1 - margin) * (1 + pair_confusion)              # in [0, 2], higher first

    ``n_a``, ``n_b`` are the labelled items of each class (the rows of ``C``), so
    ``pair_confusion`` is the share of the two classes' items that went to the other one. A
    label there both resolves an uncertain item and teaches the boundary the model gets wrong
    most. Without ``confusion``, ``pair_confusion`` is 0 and the order is margin order.
    Multi-label: each label's margin is ``|2 p - 1|``, the item's margin is its smallest over
    the labels considered, ``a`` is that label and ``b`` is empty, ``pair_confusion`` is 0.

    Args:
        probs: (items x classes) probabilities of the unlabelled items.
        confusion: (classes x classes) confusion matrix on labelled data, rows actual
            (default None).
        vocab: class names in column order (default None: indices).
        classes: keep only items whose two candidate classes include one of these (names or
            indices); multi-label: consider only these labels (default None: all).
        items: per-row items, added as a column ``item``.
        multilabel: probabilities are independent per label (sigmoid), default False.

    Returns:
        Columns ``index``, [``item``,] ``first``, ``second``, ``margin``, ``pair_confusion``,
        ``score``; highest score first, ties keep item order.
    """
    arr = _as_probs(probs, multilabel, multilabel_how="multilabel=True")
    n, c = arr.shape
    names = list(range(c)) if vocab is None else list(vocab)
    if len(names) != c:
        raise ValueError(f"vocab has {len(names)} names but probs has {c} columns")
    wanted = _class_indices(classes, names)
    rows = np.arange(n)
    pair = np.zeros(n)
    if multilabel:
        cols = np.arange(c) if wanted is None else np.asarray(sorted(wanted))
        label_margin = np.abs(2 * arr[:, cols] - 1)
        first = cols[label_margin.argmin(axis=1)]
        margin = label_margin.min(axis=1)
        second_names: list = [""] * n
        keep = np.ones(n, dtype=bool)
    else:
        if c < 2:
            raise ValueError("labelling_order needs at least 2 classes, got probs with 1 column")
        order = np.argsort(-arr, axis=1, kind="mergesort")
        first, second = order[:, 0], order[:, 1]
        margin = arr[rows, first] - arr[rows, second]
        second_names = [names[int(j)] for j in second]
        if confusion is not None:
            cm = np.asarray(confusion, dtype=np.float64)
            if cm.shape != (c, c):
                raise ValueError(f"confusion must be a {c}x{c} matrix (one row and column per "
                                 f"class), got shape {cm.shape}")
            both = cm.sum(axis=1)[first] + cm.sum(axis=1)[second]
            pair = _ratio_or_zero(cm[first, second] + cm[second, first], both)
        keep = (np.ones(n, dtype=bool) if wanted is None
                else np.isin(first, list(wanted)) | np.isin(second, list(wanted)))
    score = (1 - margin) * (1 + pair)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-score[idx], kind="mergesort")]
    frame = pd.DataFrame({
        "index": idx.astype(np.int64),
        "first": [names[int(j)] for j in first[idx]],
        "second": [second_names[i] for i in idx],
        "margin": margin[idx],
        "pair_confusion": pair[idx],
        "score": score[idx],
    })
    return _with_items(frame, items, n)


def _ratio_or_zero(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _class_indices(classes: Sequence | None, names: list) -> set[int] | None:
    """Column indices of ``classes`` (names, or indices when the names are not given)."""
    if classes is None:
        return None
    out = set()
    as_text = [str(x) for x in names]
    for cls in classes:
        if cls in names:
            out.add(names.index(cls))
        elif str(cls) in as_text:
            out.add(as_text.index(str(cls)))
        else:
            raise ValueError(f"unknown class {cls!r} in classes; known: "
                             f"{', '.join(as_text[:30])}{' ...' if len(names) > 30 else ''}")
    return out
