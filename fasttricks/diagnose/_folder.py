"""A run folder's diagnosis written to disk: ``RUN/diagnosis/`` with report.md, CSVs and plots.

``report.md`` opens with the overall scores, then the worst classes, the most confused pairs and
the top losses (item ids, labels, predictions, margins); multi-label runs get per-label average
precision and F1 at the threshold instead of confusions. Every table is also a CSV, every plot a
PNG the report links. On the training split it adds the suspected label errors; with unlabelled
data it ranks the items for labelling (``labelling_priority.csv``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._io import atomic_write_csv, atomic_write_text, write_json
from fasttricks._validate import check_range
from fasttricks.diagnose import _plots
from fasttricks.diagnose._inputs import _as_preds, _check_k, _confusion
from fasttricks.diagnose._priority import labelling_order
from fasttricks.diagnose._report import (
    _overall,
    _pairs,
    _report,
    _top_losses,
    suspected_label_noise,
)
from fasttricks.diagnose._run import load_run, read_unlabelled

__all__ = ["FolderDiagnosis", "diagnose_run"]


@dataclass
class FolderDiagnosis:
    """What :func:`diagnose_run` wrote: the folder and every file in it, by role."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        """The ``report.md`` file."""
        return self.files["report"]


def _md_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a Markdown table (no extra dependency)."""
    if frame.empty:
        return "_(none)_\n"

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if np.isnan(v) else f"{v:.{digits}f}"
        if isinstance(v, tuple):
            return ", ".join(map(str, v)) or "-"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *body]) + "\n"


def _with_ids(frame: pd.DataFrame, items: list) -> pd.DataFrame:
    frame = frame.copy()
    frame.insert(1, "item", [items[int(i)] for i in frame["index"]])
    return frame


def diagnose_run(
    run_dir: str | Path,
    split: str = "valid",
    *,
    unlabelled: str | Path | None = None,
    classes: Sequence[str] | None = None,
    top_k: int = 20,
    worst: int = 5,
    threshold: float = 0.5,
    recipe: Any = None,
    out_dir: str | Path | None = None,
) -> FolderDiagnosis:
    """Diagnose a finished run folder on one split and write ``<run_dir>/diagnosis/``.

    The learner is rebuilt from the run's recipe (:func:`fasttricks.recipes.build_learner`)
    and its saved weights loaded (:func:`load_run`); nothing is retrained.

    Files: ``report.md``; ``overall.json``; ``per_class.csv`` (precision, recall, F1, support,
    mean loss, and AP for multi-label), ``top_losses.csv``, ``per_class_f1.png``; single-label
    also ``confused_pairs.csv``, ``confusion_matrix.png``; image data ``top_losses.png``; on the
    train split ``label_noise.csv`` (:func:`suspected_label_noise`); with ``unlabelled``,
    ``labelling_priority.csv`` (:func:`labelling_order`, confusions measured on ``split``).

    Args:
        run_dir: the run folder (plain run, k-fold run, seed or snapshot ensemble).
        split: ``"valid"`` (default), ``"test"`` or ``"train"``.
        unlabelled: unlabelled inputs to rank for labelling (:func:`read_unlabelled`).
        classes: restrict the labelling ranking to items between these classes.
        top_k: how many top losses (default 20). worst: how many worst classes (default 5).
        threshold: the multi-label decision threshold (default 0.5).
        recipe: the recipe, for an ensemble folder that holds none.
        out_dir: where to write (default ``<run_dir>/diagnosis``).
    """
    _check_k(top_k)
    _check_k(worst)
    check_range("threshold", threshold, 0.0, 1.0)
    run = load_run(run_dir, recipe=recipe)
    new_x = None if unlabelled is None else read_unlabelled(unlabelled, _dataset(run))
    pred = run.predict(split)
    out = Path(out_dir) if out_dir is not None else run.path / "diagnosis"
    out.mkdir(parents=True, exist_ok=True)
    preds = _as_preds(pred.probs, pred.targets, pred.vocab)
    result = FolderDiagnosis(out_dir=out, overall=_overall(preds, threshold))
    files = result.files
    kind = "label" if preds.multilabel else "class"

    report = _report(preds, threshold)
    files["per_class"] = atomic_write_csv(report, out / "per_class.csv", index=False)
    files["overall"] = write_json(out / "overall.json", {"split": pred.split, "source":
                                                          pred.source, **result.overall})
    title = f"per-{kind} F1, {pred.split}"
    files["f1_plot"] = _plots.f1_bars(report, title, out / "per_class_f1.png",
                                      with_ap=preds.multilabel)
    tops = _with_ids(_top_losses(preds, top_k), pred.items)
    files["top_losses"] = atomic_write_csv(tops, out / "top_losses.csv", index=False)
    pairs = cm = None
    if not preds.multilabel:
        cm = _confusion(preds)
        pairs = _pairs(preds)
        files["confused_pairs"] = atomic_write_csv(pairs, out / "confused_pairs.csv", index=False)
        files["confusion_plot"] = _plots.confusion_plot(cm, preds.classes,
                                                        out / "confusion_matrix.png")
    if _plots.can_show_images(pred.x, pred.kind):
        path = _plots.top_loss_examples(tops, pred.x, out / "top_losses.png")
        if path is not None:
            files["top_loss_plot"] = path
    noise = None
    if pred.split == "train" and not preds.multilabel:
        noise = suspected_label_noise(pred.probs, pred.targets, pred.vocab, items=pred.items)
        files["label_noise"] = atomic_write_csv(noise, out / "label_noise.csv", index=False)
    priority = None
    if new_x is not None:
        new = run.predict(unlabelled=new_x)
        priority = labelling_order(new.probs, confusion=cm, vocab=pred.vocab, classes=classes,
                                   items=new.items, multilabel=preds.multilabel)
        files["labelling_priority"] = atomic_write_csv(priority, out / "labelling_priority.csv",
                                                       index=False)
    text = _markdown(run, pred, result.overall, report, pairs, tops, noise, priority, files,
                     worst=worst, threshold=threshold, kind=kind)
    files["report"] = atomic_write_text(out / "report.md", text)
    return result


def _dataset(run: Any) -> Any:
    from fasttricks.diagnose._run import dataset_of

    return dataset_of(run.recipe)


def _markdown(run: Any, pred: Any, overall: dict, report: pd.DataFrame, pairs: Any,
              tops: pd.DataFrame, noise: Any, priority: Any, files: dict, *, worst: int,
              threshold: float, kind: str) -> str:
    name = run.recipe["name"]
    how = "" if pred.source == "model" else f" ({pred.source} predictions)"
    lines = [f"# Diagnosis of {name}: {pred.split} split", "",
             f"{run.description.capitalize()} in `{run.path}`; {overall['items']} items{how}.",
             "", "## Overall", ""]
    lines.append(_md_table(pd.DataFrame([{k: v for k, v in overall.items() if k != "items"}])))
    if pred.multilabel:
        lines.append(f"Precision, recall and F1 use the threshold {threshold}; AP is the "
                     "threshold-free average precision of each label.\n")
    kinds = "classes" if kind == "class" else "labels"
    lines += [f"## Worst {kinds}", ""]
    lines.append(_md_table(report.head(worst)))
    lines.append(f"![per-{kind} F1]({files['f1_plot'].name})\n")
    lines.append(f"All {len(report)} {kinds}: [{files['per_class'].name}]"
                 f"({files['per_class'].name}).\n")
    if pairs is not None:
        lines += ["## Most confused pairs", ""]
        lines.append(_md_table(pairs.head(10)))
        lines.append("A pair confused both ways often means two classes overlap, or the "
                     "labelling guide does not separate them.\n")
        lines.append(f"![confusion matrix]({files['confusion_plot'].name})\n")
    lines += [f"## Top {len(tops)} losses", ""]
    cols = [c for c in ("item", "actual", "predicted", "loss", "prob_actual", "margin")
            if c in tops]
    lines.append(_md_table(tops[cols]))
    lines.append("Look at these first: confident mistakes are often label errors.\n")
    if "top_loss_plot" in files:
        lines.append(f"![top losses]({files['top_loss_plot'].name})\n")
    if noise is not None:
        lines += ["## Suspected label noise", ""]
        lines.append(f"{len(noise)} of {overall['items']} training items have a label the model "
                     "contradicts with more confidence than it usually has in the class it "
                     "suggests (confident learning).")
        if pred.source == "model":
            lines.append(" The model trained on these items, so it finds only the labels it "
                         "refused to memorise; out-of-fold predictions of a k-fold run find "
                         "more.")
        lines.append(f" All of them: [{files['label_noise'].name}]({files['label_noise'].name})."
                     "\n")
        lines.append(_md_table(noise.head(20)))
    if priority is not None:
        lines += ["## What to label next", ""]
        lines.append(f"{len(priority)} unlabelled items ranked: small margins first, between "
                     "classes the model often confuses first; "
                     f"[{files['labelling_priority'].name}]({files['labelling_priority'].name})."
                     "\n")
        lines.append(_md_table(priority.head(10)))
    return "\n".join(lines)
