"""Diagnostics for data curation: which classes fail, which labels to check, what to label next.

The cheatsheet's data-side checks, as pure functions on predicted probabilities and targets
(numpy arrays, torch tensors or lists), thin conveniences for a fastai ``Learner``, and the
loop a practitioner runs from the shell after training (``python -m fasttricks.diagnose``):

- :func:`per_class_report`: support, precision, recall, F1 and mean loss per class, worst first
  (multi-label: per-label average precision and F1 at a threshold).
- :func:`confusion_pairs`: the most-confused (actual, predicted) pairs, like fastai's
  ``ClassificationInterpretation.most_confused`` but from arrays.
- :func:`top_losses`: the items the model finds least plausible -- candidates for label errors;
  :func:`suspected_label_noise`: confident-learning style suspects on the training split.
- :func:`labelling_priority`: uncertainty sampling (Settles 2009) to order unlabelled items;
  :func:`labelling_order`: small margins first, between classes the model often confuses.
- :func:`seed_variance`: how much a metric moves with the training seed alone.
- :func:`diagnose_learner` -> :class:`Diagnosis` with ``summary()`` and ``plot(path)``.
- :func:`diagnose_run`: a finished run folder (plain, k-fold, seed or snapshot ensemble) ->
  ``RUN/diagnosis/`` with ``report.md``, CSV tables and plots; no retraining.
- :func:`val_test_correlation`, :func:`study_correlation`: do validation scores rank the
  trials of a study the way the test split does?
- :func:`class_ablation`: retrain with part of one class removed, and see every class's F1.

Modules: ``_inputs`` (validated arrays), ``_report``, ``_priority``, ``_seeds`` (the maths),
``_learner`` (a Learner), ``_plots``, ``_run`` (run folders and their predictions),
``_folder`` (the written diagnosis), ``_correlation``, ``_ablation``, ``_cli`` (the command).

Example::

    probs, targets = learn.get_preds(ds_idx=1)
    per_class_report(probs, targets, vocab=learn.dls.vocab).head()
    top_losses(probs, targets, k=20)
"""

from __future__ import annotations

from fasttricks._lazy import lazy_names
from fasttricks.diagnose._priority import (
    UNCERTAINTY_METHODS,
    labelling_order,
    labelling_priority,
)
from fasttricks.diagnose._report import (
    confusion_pairs,
    overall_scores,
    per_class_report,
    suspected_label_noise,
    top_losses,
)
from fasttricks.diagnose._seeds import SeedVariance, seed_summary, seed_variance

# fastai-dependent parts load on first use, so the array functions import light.
_LAZY = {
    "Diagnosis": "_learner",
    "diagnose_learner": "_learner",
    "RunPredictions": "_run",
    "load_run": "_run",
    "diagnose_run": "_folder",
    "CorrelationResult": "_correlation",
    "correlation_verdict": "_correlation",
    "study_correlation": "_correlation",
    "val_test_correlation": "_correlation",
    "AblationResult": "_ablation",
    "class_ablation": "_ablation",
}

__all__ = [
    "UNCERTAINTY_METHODS",
    "SeedVariance",
    "confusion_pairs",
    "labelling_order",
    "labelling_priority",
    "overall_scores",
    "per_class_report",
    "seed_summary",
    "seed_variance",
    "suspected_label_noise",
    "top_losses",
    *sorted(_LAZY),
]


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)
