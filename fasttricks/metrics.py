"""Metrics by name, each with its direction: the one place "is lower better?" is decided.

Every part that compares scores (save-best, the tuner, k-fold and ensembles, the train command,
diagnostics) asks :func:`lower_is_better` or :func:`metric_direction`. Registered metrics know
their direction; any other name (``valid_loss``, ``train_loss``, a custom metric) falls back to
fastai's tracker rule extended to errors: a name containing ``"loss"`` or ``"error"`` is lower
is better, anything else higher is better.

Example:
    >>> metric_direction("error_rate"), metric_direction("accuracy")
    ('minimize', 'maximize')
    >>> lower_is_better("valid_loss")
    True

:func:`threshold_sweep` scores multi-label probabilities at several cut-offs, to choose the
threshold on the validation split and apply it unchanged to the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fasttricks.registry import Registry

__all__ = [
    "METRICS",
    "MetricSpec",
    "get_metric",
    "list_metrics",
    "lower_is_better",
    "metric_direction",
    "register_metric",
    "threshold_sweep",
]


@dataclass(frozen=True)
class MetricSpec:
    """A metric by name.

    Attributes:
        factory: ``factory()`` returns the fastai metric (a function or ``AccumMetric``).
        lower_is_better: True for losses and error rates.
        multilabel: True when the metric expects multi-hot targets, False for single-label,
            None when it takes either.
    """

    factory: Callable[[], Any]
    lower_is_better: bool = False
    multilabel: bool | None = False


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(name: str, spec: MetricSpec, *, overwrite: bool = False) -> None:
    """Add a metric that recipes can name (``metrics: [name]``)."""
    if not isinstance(spec, MetricSpec):
        raise TypeError(f"spec must be a MetricSpec, got {type(spec).__name__}")
    METRICS.register(name, spec, overwrite=overwrite)


def list_metrics(pattern: str | None = None) -> list[str]:
    """Metric names a recipe's ``metrics`` list accepts (as fastai's recorder names them)."""
    return METRICS.names(pattern)


def get_metric(name: str) -> Any:
    """Build the fastai metric registered as ``name``; unknown names list the known ones."""
    return METRICS.get(name).factory()


def lower_is_better(name: str) -> bool:
    """Whether a smaller value of metric ``name`` is better.

    Registered metrics answer from their spec; other names follow the rule "loss" or "error"
    in the (lower-cased) name means lower is better (``valid_loss``, ``mae_error``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"metric name must be a non-empty string, got {name!r}")
    if name in METRICS:
        return METRICS.get(name).lower_is_better
    lowered = name.lower()
    return "loss" in lowered or "error" in lowered


def metric_direction(name: str) -> str:
    """Optuna's direction for metric ``name``: ``"minimize"`` or ``"maximize"``."""
    return "minimize" if lower_is_better(name) else "maximize"


def threshold_sweep(probs: Any, targets: Any,
                    thresholds: Sequence[float] | None = None) -> pd.Series:
    """Macro-F1 of multi-label predictions ``probs > t`` for each threshold ``t``.

    Per label ``F1 = 2 TP / (2 TP + FP + FN)`` (0 for a label with no positive prediction and
    no positive target, as scikit-learn's ``zero_division=0``), averaged over labels so every
    label counts the same. 0.5 is rarely the best cut for sigmoid outputs, and focal loss or
    ASL move it further: choose it on validation predictions (``sweep.idxmax()``, the lowest
    of tied thresholds) and score the test split at that one threshold. ``thresholds``
    default to 0.05, 0.075, ..., 0.95.

    Args:
        probs: ``(n_items, n_labels)`` probabilities (a numpy array or tensor).
        targets: the multi-hot targets, same shape.
        thresholds: cut-offs in (0, 1).

    Returns:
        macro-F1 values indexed by threshold (index name ``threshold``).
    """
    p = np.asarray(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=float)
    y = np.asarray(targets.detach().cpu() if hasattr(targets, "detach") else targets) > 0.5
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"threshold_sweep needs probs and multi-hot targets of one 2-D shape "
                         f"(items x labels), got {p.shape} and {y.shape}")
    ts = (np.round(np.arange(0.05, 0.951, 0.025), 3) if thresholds is None
          else np.asarray(thresholds, dtype=float).ravel())
    if ts.size == 0 or not ((ts > 0) & (ts < 1)).all():
        raise ValueError(f"thresholds must be one or more values in (0, 1), got {ts.tolist()}")
    pred = p[None] > ts[:, None, None]                      # thresholds x items x labels
    tp = (pred & y).sum(1)
    wrong = (pred != y).sum(1)                              # FP + FN
    f1 = np.divide(2 * tp, 2 * tp + wrong, out=np.zeros(tp.shape), where=(2 * tp + wrong) > 0)
    return pd.Series(f1.mean(1), index=pd.Index(ts, name="threshold"), name="macro-F1")


# --------------------------------------------------------------------------------------------
# the built-in metrics


def _fastai_metric(name: str) -> Callable[[], Any]:
    def make() -> Any:
        import fastai.metrics

        return getattr(fastai.metrics, name)

    return make


def _balanced_accuracy() -> Any:
    from fastai.metrics import AccumMetric
    from sklearn.metrics import balanced_accuracy_score

    return AccumMetric(balanced_accuracy_score, dim_argmax=-1, to_np=True, invert_arg=True,
                       name="balanced_accuracy")


def _f1_macro() -> Any:
    from fastai.metrics import AccumMetric
    from sklearn.metrics import f1_score

    return AccumMetric(f1_score, dim_argmax=-1, to_np=True, invert_arg=True, name="f1_macro",
                       average="macro")


def _f1_multi() -> Any:
    from fastai.metrics import AccumMetric, ActivationType
    from sklearn.metrics import f1_score

    return AccumMetric(f1_score, activation=ActivationType.Sigmoid, thresh=0.5, to_np=True,
                       invert_arg=True, flatten=False, name="f1_multi", average="macro",
                       zero_division=0)


def _roc_auc_multi() -> Any:
    from fastai.metrics import AccumMetric, ActivationType
    from sklearn.metrics import roc_auc_score

    return AccumMetric(roc_auc_score, activation=ActivationType.Sigmoid, to_np=True,
                       invert_arg=True, flatten=False, name="roc_auc_multi", average="macro")


def _register_defaults() -> None:
    single = {
        "accuracy": MetricSpec(_fastai_metric("accuracy")),
        "error_rate": MetricSpec(_fastai_metric("error_rate"), lower_is_better=True),
        "top_k_accuracy": MetricSpec(_fastai_metric("top_k_accuracy")),
        "balanced_accuracy": MetricSpec(_balanced_accuracy),
        "f1_macro": MetricSpec(_f1_macro),
    }
    multi = {
        "accuracy_multi": MetricSpec(_fastai_metric("accuracy_multi"), multilabel=True),
        "f1_multi": MetricSpec(_f1_multi, multilabel=True),
        "roc_auc_multi": MetricSpec(_roc_auc_multi, multilabel=True),
    }
    for name, spec in {**single, **multi}.items():
        register_metric(name, spec)


_register_defaults()
