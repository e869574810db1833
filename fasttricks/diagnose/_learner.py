"""A trained fastai Learner diagnosed in one call: :class:`Diagnosis` and its summary and plot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fasttricks._io import save_figure
from fasttricks.diagnose._inputs import _as_preds, _check_k, _confusion
from fasttricks.diagnose._plots import bars, heat_map, pyplot
from fasttricks.diagnose._report import _pairs, _report, _top_losses

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


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
        plt = pyplot()
        rep = self.report.head(max_classes)
        fig, (ax_bar, ax_right) = plt.subplots(1, 2, figsize=(12, max(4, 0.22 * len(rep) + 1.5)))
        shown = f" (worst {len(rep)} of {len(self.report)})" if len(rep) < len(self.report) else ""
        kind = "label" if self.multilabel else "class"
        bars(ax_bar, rep["f1"], rep["class"], "F1", f"per-{kind} F1, {self.split}{shown}", "C0")
        if self.confusion is None:
            bars(ax_right, rep["ap"].fillna(0), rep["class"], "average precision",
                  "per-label average precision", "C1")
        else:
            heat_map(ax_right, self.confusion, self.classes, fig)
        fig.tight_layout()
        if path is not None:
            save_figure(fig, path, dpi=110)
        return fig


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
