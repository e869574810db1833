"""Ensembles: averaged predictions, k-fold training with out-of-fold predictions, seed and
snapshot ensembles.

The averaging maths are pure functions (:func:`average_predictions`); the training functions
(:func:`kfold_fit`, :func:`seed_ensemble`, :func:`snapshot_ensemble`) go through the recipe API
(:func:`fasttricks.recipes.build_learner` / :func:`fasttricks.recipes.fit_learner`), so a fold
is trained exactly like ``python -m fasttricks.train`` would train the same recipe.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fasttricks._validate import check_choice

__all__ = [
    "AVERAGING_METHODS",
    "EnsembleResult",
    "FoldResult",
    "KFoldResult",
    "MemberResult",
    "average_predictions",
    "kfold_fit",
    "load_ensemble_member",
    "predict_ensemble",
    "score_predictions",
    "seed_ensemble",
    "snapshot_ensemble",
]

logger = logging.getLogger(__name__)

AVERAGING_METHODS: tuple[str, ...] = ("mean", "geometric", "rank")
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """Lower-cased ``value`` if allowed, else :func:`check_choice`'s error with the closest name."""
    return check_choice(name, value.lower() if isinstance(value, str) else value, allowed)


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def _normalized_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = _to_numpy(weights).reshape(-1)
    if w.size != n:
        raise ValueError(f"weights must have one entry per prediction ({n}), got {w.size}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"weights must be finite, >= 0 and not all zero, got {w.tolist()}"
        )
    return w / w.sum()


def _rank01(p: np.ndarray) -> np.ndarray:
    """Average ranks along the item axis (axis 0), scaled to [0, 1]; ties share their rank."""
    from scipy.stats import rankdata

    n = p.shape[0]
    r = rankdata(p, axis=0, method="average")
    return (r - 1.0) / (n - 1) if n > 1 else np.full_like(p, 0.5)


def average_predictions(
    preds: Sequence[ArrayLike],
    method: str = "mean",
    weights: Sequence[float] | None = None,
    eps: float = 1e-7,
) -> ArrayLike:
    """Combine the predictions of several models on the same items into one.

    - ``"mean"``: weighted arithmetic mean ``sum_m w_m p_m`` (the usual ensemble of probabilities).
    - ``"geometric"``: weighted geometric mean ``exp(sum_m w_m log p_m)`` (log-linear pooling,
      Genest and Zidek, Statistical Science 1986; a model that is confidently wrong is punished
      harder). Predictions must be >= 0 and are
      clipped to ``eps`` before the log. If every input is a 2-D matrix whose rows sum to 1
      (softmax outputs), the result is renormalised so its rows sum to 1 as well.
    - ``"rank"``: every model's scores are replaced by their ranks along the item axis (axis 0,
      per column, ties averaged, scaled to [0, 1]) before the weighted mean; the Kaggle trick for
      rank metrics such as ROC AUC when models are calibrated differently.

    Args:
        preds: a sequence of predictions of the same shape, one per model (tensors or arrays;
            a tensor/array stacked along a leading model axis works too).
        method: ``"mean"`` (default), ``"geometric"`` or ``"rank"``.
        weights: optional non-negative weight per model (normalised to sum 1); default equal.
        eps: floor for probabilities before the log in ``"geometric"`` (default 1e-7).

    Returns:
        The combined predictions, same shape as one input: a float32 ``torch.Tensor`` if the
        first input is a tensor, else a float64 numpy array.

    Example:
        >>> average_predictions([torch.tensor([0.2, 0.8]), torch.tensor([0.4, 0.6])])
        tensor([0.3000, 0.7000])
    """
    method = _check_choice("method", method, AVERAGING_METHODS)
    items = list(preds)
    if not items:
        raise ValueError("preds is empty: pass at least one model's predictions")
    as_tensor = isinstance(items[0], torch.Tensor)
    arrays = [_to_numpy(p) for p in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f"all predictions must have the same shape, got {[a.shape for a in arrays]}"
        )
    w = _normalized_weights(weights, len(arrays))
    stack = np.stack(arrays)  # (models, items, ...)
    wb = w.reshape((-1,) + (1,) * (stack.ndim - 1))
    if method == "mean":
        out = (wb * stack).sum(axis=0)
    elif method == "geometric":
        if (stack < 0).any():
            raise ValueError(
                "geometric averaging needs non-negative predictions (probabilities), found "
                f"a minimum of {stack.min():.4g}; apply softmax/sigmoid first or use method='mean'"
            )
        out = np.exp((wb * np.log(np.clip(stack, eps, None))).sum(axis=0))
        if stack.ndim == 3 and np.allclose(stack.sum(axis=-1), 1.0, atol=1e-4):
            out = out / out.sum(axis=-1, keepdims=True)
    else:
        if stack.shape[1] == 0:
            raise ValueError("rank averaging needs at least one item")
        out = (wb * np.stack([_rank01(a) for a in arrays])).sum(axis=0)
    if as_tensor:
        return torch.from_numpy(out).float()
    return out


def _resolve_activation(activation: str | Callable | None) -> Callable[[torch.Tensor], Any]:
    if activation is None:
        return lambda t: t
    if callable(activation):
        return activation
    name = _check_choice("activation", activation, ACTIVATIONS)
    if name == "softmax":
        return lambda t: torch.softmax(t.float(), dim=1 if t.ndim > 1 else 0)
    if name == "sigmoid":
        return lambda t: torch.sigmoid(t.float())
    return lambda t: t


def load_ensemble_member(
    path: str | PathLike, model: nn.Module | None = None, device: Any = "cpu"
) -> nn.Module:
    """Load one saved model: a whole pickled ``nn.Module`` (as :func:`kfold_fit` writes), a
    state dict, or a fastai ``learn.save`` file (``{"model": state_dict, "opt": ...}``).

    A state dict needs ``model``, a module of the right architecture, which is copied (not
    modified). Files are unpickled with ``weights_only=False``: load only files you trust.
    """
    obj = torch.load(path, map_location=device, weights_only=False)
    if isinstance(obj, nn.Module):
        return obj.to(device)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if model is None:
            raise ValueError(
                f"{path} holds a state dict, not a model: pass model=<module of the same "
                "architecture> to load it"
            )
        member = copy.deepcopy(model)
        member.load_state_dict(obj)
        return member.to(device)
    raise TypeError(
        f"{path} holds a {type(obj).__name__}; expected an nn.Module, a state dict or a fastai "
        "learn.save file"
    )


def _inputs_of(batch: Any, n_inp: int) -> tuple:
    if isinstance(batch, (list, tuple)):
        return tuple(batch[:n_inp])
    return (batch,)


@torch.no_grad()
def predict_ensemble(
    model_paths: Sequence[str | PathLike],
    dls: Any,
    *,
    ds_idx: int = 1,
    model: nn.Module | None = None,
    activation: str | Callable | None = "softmax",
    method: str = "mean",
    weights: Sequence[float] | None = None,
    device: Any = None,
) -> torch.Tensor:
    """Predict with every saved model and average the predictions (inference for ensembles).

    Args:
        model_paths: files saved with ``torch.save(model)`` (e.g. ``KFoldResult.model_paths``),
            or state dicts / fastai ``learn.save`` files together with ``model``.
        dls: a fastai ``DataLoaders`` (``dls[ds_idx]`` is predicted, in order, no shuffling), a
            single fastai ``DataLoader`` (e.g. ``dls.test_dl(items)``) or a torch ``DataLoader``.
            Batches are ``(inputs..., targets...)``; fastai's ``n_inp`` tells them apart, a
            torch loader's batch is taken as ``(x, y)`` (or just ``x``).
        ds_idx: which loader of a ``DataLoaders`` to predict (default 1, validation, as fastai's
            ``get_preds``).
        model: an architecture template, only needed for state-dict files.
        activation: ``"softmax"`` (default, single-label), ``"sigmoid"`` (multi-label),
            ``"none"``/None (raw outputs) or a callable applied to each model's outputs.
        method, weights: how to combine, see :func:`average_predictions` (default equal mean).
        device: where to run the models (default: the loaders' device, else CPU).

    Returns:
        A float32 CPU tensor of the averaged predictions, one row per item.
    """
    paths = list(model_paths)
    if not paths:
        raise ValueError("model_paths is empty: pass at least one saved model")
    method = _check_choice("method", method, AVERAGING_METHODS)
    act = _resolve_activation(activation)
    loaders = getattr(dls, "loaders", None)
    dl = dls[ds_idx] if loaders is not None else dls
    if hasattr(dl, "new"):  # fastai DataLoader: fixed order, keep the last partial batch
        dl = dl.new(shuffle=False, drop_last=False)
    if device is None:
        device = getattr(dls, "device", None) or getattr(dl, "device", None) or "cpu"
    n_inp = getattr(dls, "n_inp", None) if loaders is not None else None
    if n_inp is None:
        n_inp = getattr(dl, "n_inp", 1) if hasattr(dl, "new") else 1
    preds = []
    for path in paths:
        member = load_ensemble_member(path, model=model, device=device)
        member.eval()
        outs = []
        for batch in dl:
            xs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x
                       for x in _inputs_of(batch, n_inp))
            outs.append(act(member(*xs)).float().cpu())
        preds.append(torch.cat(outs))
        logger.debug("predict_ensemble: %s -> %s", path, tuple(preds[-1].shape))
    return average_predictions(preds, method=method, weights=weights)


# --------------------------------------------------------------------------------------------
# Scoring stored predictions with a recipe's loss and metrics
# --------------------------------------------------------------------------------------------


def _inverse_activation(loss_func: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map probabilities back to logits for ``loss_func``'s activation (softmax -> log,
    sigmoid -> logit, none -> identity), so the loss and metrics see what a model would output.
    """
    act = getattr(loss_func, "activation", None)
    if act is None or not callable(act):
        return lambda p: p
    probe = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    out = act(probe)
    if torch.allclose(out, probe):
        return lambda p: p
    if torch.allclose(out, torch.softmax(probe, dim=-1), atol=1e-6):
        return lambda p: torch.log(p.float().clamp_min(1e-12))
    if torch.allclose(out, torch.sigmoid(probe), atol=1e-6):
        return lambda p: torch.logit(p.float().clamp(1e-7, 1 - 1e-7))
    raise ValueError(
        f"cannot score averaged predictions: the loss activation {act!r} is neither softmax, "
        "sigmoid nor the identity"
    )


class _Passthrough(nn.Module):
    """Returns its input; the unused parameter tells fastai which device batches go to."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def score_predictions(
    preds: torch.Tensor, targets: torch.Tensor, loss_func: Any, metrics: Sequence[Any] = ()
) -> dict[str, float]:
    """The loss and every fastai metric of stored predictions, as fastai's validation computes.

    ``preds`` are activated predictions (what ``learn.get_preds`` returns: probabilities for
    softmax/sigmoid losses); they are mapped back to logits and run through a fastai
    ``Learner`` with an identity model, so a metric means exactly what it means in training.

    Returns:
        ``{"loss": ..., <metric name>: ...}`` with fastai's metric names (e.g. ``accuracy``).
    """
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FastaiDataLoader
    from fastai.learner import Learner

    logits = _inverse_activation(loss_func)(torch.as_tensor(preds))
    items = list(zip(logits, torch.as_tensor(targets)))
    dl = FastaiDataLoader(items, bs=1024)
    metrics = [copy.deepcopy(m) for m in metrics]
    learn = Learner(DataLoaders(dl, dl), _Passthrough(), loss_func=loss_func, metrics=metrics)
    with learn.no_bar(), learn.no_logging():
        values = learn.validate(dl=dl)
    names = ["loss"] + [m.name for m in learn.metrics]
    return {n: float(v) for n, v in zip(names, values)}


# --------------------------------------------------------------------------------------------
# Finished members on disk: one record file per fold / seed / cycle, written atomically
# --------------------------------------------------------------------------------------------


def _fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able description (recipe and split settings)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _MemberStore:
    """Per-member record files ``<name>.pt`` and model files ``<name>.pth`` in one folder.

    A record is written after its model, so an existing record means the member is finished. A
    record from different settings (its fingerprint differs) counts as unfinished and is
    retrained.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def model_path(self, name: str) -> Path:
        return self.folder / f"{name}.pth"

    def load(self, name: str) -> dict | None:
        path = self.folder / f"{name}.pt"
        if not path.exists():
            return None
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - an unreadable record is simply redone
            logger.warning("ignoring unreadable %s (%s); it will be redone", path, err)
            return None
        if record.get("fingerprint") != self.fingerprint:
            logger.warning("%s was made with other settings; it will be redone", path)
            return None
        if not self.model_path(name).exists():
            logger.warning("%s has no model file %s; it will be redone", path,
                           self.model_path(name))
            return None
        return record

    def save(self, name: str, record: dict, model: nn.Module) -> None:
        """Write the model (a whole pickled module; its state dict if it cannot be pickled),
        then the record that marks the member finished."""
        from fasttricks._io import atomic_torch_save

        try:
            atomic_torch_save(model, self.model_path(name))
        except Exception as err:  # noqa: BLE001 - e.g. a hook holding a lambda
            logger.warning("cannot pickle the %s model (%s); saving its state dict instead, "
                           "load it with load_ensemble_member(path, model=...)", name, err)
            atomic_torch_save(model.state_dict(), self.model_path(name))
        atomic_torch_save({**record, "fingerprint": self.fingerprint}, self.folder / f"{name}.pt")


def _metrics_json(d: dict | None) -> dict | None:
    return None if d is None else {k: float(v) for k, v in d.items()}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def _save_score_plot(fig: Any, ax: Any, values: Sequence[float], path: Path) -> None:
    """Finish a score chart: the y axis spans ``values`` padded by 0.6 times their range (taken
    as at least 1e-3), then legend and tight layout; saved atomically as PNG and closed."""
    import matplotlib.pyplot as plt

    from fasttricks._io import atomic_path

    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(hi - lo, 1e-3) * 0.6
    ax.set_ylim(lo - pad, hi + pad)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _announce(message: str, progress: bool) -> None:
    """A progress line: printed (as fastai prints its progress) when ``progress``, else logged."""
    if progress:
        print(message, flush=True)
    else:
        logger.info(message)


def _metric_key(metric: str) -> str:
    """The recorder's name for a metric -> the key in :func:`score_predictions`' dict."""
    return "loss" if metric in ("valid_loss", "train_loss", "loss") else metric


def _quiet(learn: Any, progress: bool) -> contextlib.AbstractContextManager:
    if progress:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(learn.no_bar())
    stack.enter_context(learn.no_logging())
    return stack


def _preds(learn: Any, ds_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    with learn.no_bar():
        preds, targets = learn.get_preds(ds_idx=ds_idx)[:2]
    return preds.float().cpu(), targets.cpu()


def _member_record(learn: Any, has_test: bool, seconds: float) -> dict:
    """A trained member's valid (and test) predictions, targets and scores, and its seconds."""
    loss_func, metrics = learn.loss_func, list(learn.metrics)
    vp, vt = _preds(learn, 1)
    record = {"valid_preds": vp, "valid_targets": vt, "seconds": seconds,
              "valid": score_predictions(vp, vt, loss_func, metrics)}
    if has_test:
        tp, tt = _preds(learn, 2)
        record.update(test_preds=tp, test_targets=tt,
                      test=score_predictions(tp, tt, loss_func, metrics))
    return record


def _averaged_test(
    records: list[dict], loss_func: Any, metrics: Sequence[Any]
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, float] | None]:
    """The members' averaged test predictions, the test targets and their scores; three Nones
    when the records hold no test predictions."""
    if "test_preds" not in records[0]:
        return None, None, None
    preds = average_predictions([r["test_preds"] for r in records])
    targets = records[0]["test_targets"]
    return preds, targets, score_predictions(preds, targets, loss_func, metrics)


# --------------------------------------------------------------------------------------------
# K-fold
# --------------------------------------------------------------------------------------------


@dataclass
class FoldResult:
    """One fold of :func:`kfold_fit`: its indices into the pool, its model's scores on the
    held-out fold (``valid``) and the test split (``test``), the best epoch and monitored value
    that :class:`~fasttricks.callbacks.SaveBestCallback` kept, and the model file."""

    fold: int
    train_idx: np.ndarray
    valid_idx: np.ndarray
    valid: dict[str, float]
    test: dict[str, float] | None
    best_epoch: int | None
    best_value: float | None
    model_path: Path
    seconds: float
    resumed: bool = False


@dataclass
class KFoldResult:
    """What :func:`kfold_fit` returns.

    Attributes:
        name: the recipe name. metric, direction: the primary metric (``primary_metric``) as
            keyed in the metric dicts (``"loss"`` for the validation loss) and
            ``"maximize"``/``"minimize"``.
        folds: one :class:`FoldResult` per fold (held-out scores, model path, best epoch).
        oof_preds, oof_targets: out-of-fold predictions for every pool item (train followed by
            valid, :meth:`DataSplits.pool` order), each made by the model that did not see it.
        oof: loss and metrics of ``oof_preds`` over the whole pool.
        test_preds, test_targets, test: the fold-averaged test predictions and their scores
            (None when ``test=False``).
        out_dir: the ``runs/<name>/kfold`` folder.
    """

    name: str
    n_splits: int
    seed: int
    metric: str
    direction: str
    folds: list[FoldResult]
    oof_preds: torch.Tensor
    oof_targets: torch.Tensor
    oof: dict[str, float]
    test_preds: torch.Tensor | None
    test_targets: torch.Tensor | None
    test: dict[str, float] | None
    out_dir: Path
    seconds: float = 0.0
    plot_path: Path | None = None

    @property
    def model_paths(self) -> list[Path]:
        """The fold models (whole pickled modules, for :func:`predict_ensemble`)."""
        return [f.model_path for f in self.folds]

    @property
    def fold_scores(self) -> list[float]:
        """The primary metric of each fold model on its held-out fold."""
        return [f.valid[self.metric] for f in self.folds]

    @property
    def fold_test_scores(self) -> list[float] | None:
        """The primary metric of each fold model alone on the test split."""
        if self.test is None:
            return None
        return [f.test[self.metric] for f in self.folds]

    def to_frame(self) -> Any:
        """Per-fold scores as a pandas DataFrame (``valid_*`` held-out, ``test_*`` test)."""
        import pandas as pd

        rows = []
        for f in self.folds:
            row = {"fold": f.fold, "n_train": len(f.train_idx), "n_valid": len(f.valid_idx),
                   "best_epoch": f.best_epoch, "seconds": f.seconds}
            row.update({f"valid_{k}": v for k, v in f.valid.items()})
            row.update({f"test_{k}": v for k, v in (f.test or {}).items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line: out-of-fold score, fold mean ± std (ddof=1), and the test ensemble vs the
        single fold models."""
        scores = np.asarray(self.fold_scores, dtype=float)
        line = (
            f"{self.name} {self.n_splits}-fold: OOF {self.metric} {_fmt(self.oof[self.metric])} "
            f"(folds {_fmt(scores.mean())} ± {_fmt(scores.std(ddof=1))})"
        )
        if self.test is not None:
            single = np.asarray(self.fold_test_scores, dtype=float)
            line += (
                f"; test ensemble {_fmt(self.test[self.metric])} vs single fold "
                f"{_fmt(single.mean())} ± {_fmt(single.std(ddof=1))}"
            )
        return line + f" [{self.seconds:.1f}s]"

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path: str | PathLike | None = None) -> Path:
        """Bar chart of the per-fold scores (held-out and test) with the OOF and test-ensemble
        scores as lines; saved as PNG (default ``<out_dir>/kfold.png``), returns the path."""
        import matplotlib.pyplot as plt

        path = Path(path) if path is not None else self.out_dir / "kfold.png"
        x = np.arange(self.n_splits)
        fig, ax = plt.subplots(figsize=(1.2 * self.n_splits + 3, 3.6))
        width = 0.38 if self.test is not None else 0.6
        ax.bar(x - (width / 2 if self.test is not None else 0), self.fold_scores, width,
               label="held-out fold", color="#4c72b0")
        ax.axhline(self.oof[self.metric], color="#4c72b0", ls="--", label="out-of-fold (all)")
        if self.test is not None:
            ax.bar(x + width / 2, self.fold_test_scores, width, label="test, single fold model",
                   color="#dd8452")
            ax.axhline(self.test[self.metric], color="#c44e52", lw=2, label="test, ensemble")
        values = list(self.fold_scores) + [self.oof[self.metric]]
        if self.test is not None:
            values += list(self.fold_test_scores) + [self.test[self.metric]]
        ax.set_xticks(x, [f"fold {i}" for i in x])
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.name}: {self.n_splits}-fold ({self.direction} {self.metric})")
        _save_score_plot(fig, ax, values, path)
        self.plot_path = path
        return path


def _resolve(recipe: Any, overrides: Any) -> dict:
    from fasttricks.recipes import load_recipe

    return load_recipe(recipe, overrides or ())


def _load_splits(recipe: dict) -> Any:
    """The recipe's dataset as a :class:`fasttricks.datasets.DataSplits`, before any
    oversampling (``build_dataloaders`` oversamples each fold's training part itself)."""
    from fasttricks.datasets import dataset_parameters, load_dataset

    data = recipe["data"]
    params = dataset_parameters(data["name"])
    return load_dataset(data["name"], **{k: v for k, v in data.items() if k in params})


def _groups_digest(groups: Any) -> str | None:
    if groups is None:
        return None
    return hashlib.sha256(np.asarray(groups).astype(str).tobytes()).hexdigest()[:16]


def kfold_fit(
    recipe: Any,
    n_splits: int = 5,
    seed: int = 0,
    test: bool = True,
    *,
    overrides: Any = (),
    stratify: bool = True,
    groups: Sequence[Any] | np.ndarray | None = None,
    out_dir: str | PathLike = "runs",
    cbs: Sequence[Any] = (),
    progress: bool = True,
) -> KFoldResult:
    """Train one model per fold and collect out-of-fold and fold-averaged test predictions.

    The recipe's train and valid splits are pooled (:meth:`DataSplits.pool`), cut into
    ``n_splits`` folds with :func:`fasttricks.data.kfold_splits` (stratified / multi-label
    stratified), and for every fold the recipe is trained on the other folds with the held-out
    fold as validation set (``build_learner`` + ``fit_learner``), keeping the best epoch's
    weights on the held-out fold (:class:`~fasttricks.callbacks.SaveBestCallback` on the
    recipe's primary metric). Every pool item is predicted exactly once, by the one model that
    did not train on it; the test split is predicted by every fold model and averaged (the
    cross-validation ensemble of Kaggle practice). Cross-validation: M. Stone,
    "Cross-validatory choice and assessment of statistical predictions", JRSS B, 1974.

    Files under ``<out_dir>/<name>/kfold/``: ``fold_<i>.pth`` (the fold model, a whole pickled
    module), ``fold_<i>.pt`` (its predictions, indices and scores), ``oof.pt`` / ``oof.csv``
    (out-of-fold predictions with their fold, in pool order), ``test.pt`` / ``test.csv``
    (fold-averaged test predictions), ``result.json`` and ``kfold.png``, all written
    atomically. Running again skips the folds whose files exist and were made with the same
    recipe and split settings, so an interrupted run loses at most the fold in progress. The
    recipe's ``retrain_at_best`` does not apply: every fold keeps its best epoch's weights.

    Note that the out-of-fold score is slightly optimistic: each fold's best epoch is chosen on
    the same held-out fold it is then scored on. The test-ensemble score has no such bias.

    Args:
        recipe: a recipe path, mapping or resolved recipe (see ``fasttricks.recipes``).
        n_splits: number of folds (default 5).
        seed: seed of the fold assignment (default 0); the model seed is the recipe's ``seed``.
        test: predict the test split with every fold model and score their average (default
            True).
        overrides: ``"dotted.key=value"`` strings or a mapping applied to the recipe.
        stratify, groups: passed to :func:`~fasttricks.data.kfold_splits`; ``groups`` has one
            entry per pool item (train then valid).
        out_dir: the runs folder (default ``"runs"``).
        cbs: extra fastai callbacks for every fold's fit.
        progress: show fastai's progress and one line per fold (default True).

    Returns:
        A :class:`KFoldResult`; ``result.summary()`` is the one-line summary printed at the end.

    Example::

        result = kfold_fit("recipes/digits.yaml", n_splits=5)
        result.oof["accuracy"], result.test["accuracy"]   # out-of-fold and test-ensemble scores
        result.plot()                                      # runs/digits/kfold/kfold.png
        probs = predict_ensemble(result.model_paths, dls.test_dl(new_items))
    """
    from fasttricks.callbacks import SaveBestCallback
    from fasttricks.data import kfold_splits
    from fasttricks.recipes import build_learner, fit_learner, primary_metric

    started = time.perf_counter()
    recipe = _resolve(recipe, overrides)
    name = str(recipe["name"])
    splits = _load_splits(recipe)
    pool = splits.pool()
    folds = kfold_splits(pool.y, n_splits=n_splits, seed=seed, stratify=stratify, groups=groups)
    metric_name, direction = primary_metric(recipe)
    key = _metric_key(metric_name)
    has_test = bool(test) and splits.test is not None and len(splits.test) > 0
    kdir = Path(out_dir) / name / "kfold"
    store = _MemberStore(kdir, _fingerprint({
        "recipe": recipe, "n_splits": n_splits, "seed": seed, "stratify": stratify,
        "groups": _groups_digest(groups), "test": has_test,
    }))
    _announce(
        f"k-fold {name}: {n_splits} folds of {len(pool)} items, monitoring {metric_name} "
        f"({direction}); results in {kdir}",
        progress,
    )

    results: list[FoldResult] = []
    records: list[dict] = []
    loss_func = metrics = None
    for i, (train_idx, valid_idx) in enumerate(folds):
        fold_name = f"fold_{i}"
        record = store.load(fold_name)
        if record is not None and not np.array_equal(record["valid_idx"].numpy(), valid_idx):
            record = None
        if record is None:
            t0 = time.perf_counter()
            _announce(f"fold {i + 1}/{n_splits}: training on {len(train_idx)} items, "
                      f"validating on {len(valid_idx)}", progress)
            learn = build_learner(recipe, splits=splits.resplit(train_idx, valid_idx))
            learn.path, learn.model_dir = kdir, "."
            comp = np.greater if direction == "maximize" else np.less
            best = SaveBestCallback(monitor=metric_name, comp=comp, fname=f".{fold_name}_best")
            with _quiet(learn, progress):
                fit_learner(learn, recipe, cbs=[best, *cbs])
            if best.ckpt_path is not None and best.ckpt_path.exists():
                best.ckpt_path.unlink()
            loss_func, metrics = learn.loss_func, list(learn.metrics)
            record = {
                "fold": i,
                "train_idx": torch.from_numpy(train_idx),
                "valid_idx": torch.from_numpy(valid_idx),
                "best_epoch": best.best_epoch,
                "best_value": best.best_value,
                **_member_record(learn, has_test, time.perf_counter() - t0),
            }
            store.save(fold_name, record, learn.model)
            resumed = False
            del learn
        else:
            resumed = True
        records.append(record)
        results.append(FoldResult(
            fold=i, train_idx=train_idx, valid_idx=valid_idx, valid=record["valid"],
            test=record.get("test"), best_epoch=record["best_epoch"],
            best_value=record["best_value"],
            model_path=store.model_path(fold_name), seconds=float(record["seconds"]),
            resumed=resumed,
        ))
        line = (f"fold {i + 1}/{n_splits}{' (already done)' if resumed else ''}: "
                f"{key} {_fmt(record['valid'][key])}")
        if has_test:
            line += f", test {_fmt(record['test'][key])}"
        if record["best_epoch"] is not None:
            line += f", best epoch {record['best_epoch']}"
        _announce(line + f" [{float(record['seconds']):.1f}s]", progress)

    if loss_func is None:  # every fold came from disk: a fresh learner gives the loss and metrics
        learn = build_learner(recipe, splits=splits)
        loss_func, metrics = learn.loss_func, list(learn.metrics)
        del learn

    first = records[0]["valid_preds"]
    oof_preds = torch.zeros((len(pool), *first.shape[1:]), dtype=first.dtype)
    first_t = records[0]["valid_targets"]
    oof_targets = torch.zeros((len(pool), *first_t.shape[1:]), dtype=first_t.dtype)
    oof_fold = torch.full((len(pool),), -1, dtype=torch.long)
    for rec in records:
        idx = rec["valid_idx"]
        oof_preds[idx] = rec["valid_preds"]
        oof_targets[idx] = rec["valid_targets"]
        oof_fold[idx] = rec["fold"]
    oof = score_predictions(oof_preds, oof_targets, loss_func, metrics)
    test_preds, test_targets, test_scores = _averaged_test(records, loss_func, metrics)

    result = KFoldResult(
        name=name, n_splits=n_splits, seed=seed, metric=key, direction=direction, folds=results,
        oof_preds=oof_preds, oof_targets=oof_targets, oof=oof, test_preds=test_preds,
        test_targets=test_targets, test=test_scores, out_dir=kdir,
        seconds=time.perf_counter() - started,
    )
    _write_kfold_outputs(result, oof_fold, list(splits.vocab))
    _announce(result.summary(), progress)
    return result


def _predictions_frame(preds: torch.Tensor, targets: torch.Tensor, vocab: list) -> Any:
    """One row per item: ``target`` (or ``target_<label>`` columns for multi-label) and one
    ``p_<class>`` probability column per class, for stacking or error analysis."""
    import pandas as pd

    p = preds.numpy().reshape(len(preds), -1)
    names = [str(v) for v in vocab] if len(vocab) == p.shape[1] else list(range(p.shape[1]))
    frame = pd.DataFrame({"item": np.arange(len(p))})
    t = targets.numpy()
    if t.ndim == 1:
        frame["target"] = t
    else:
        for j, n in enumerate(names):
            frame[f"target_{n}"] = t[:, j]
    for j, n in enumerate(names):
        frame[f"p_{n}"] = p[:, j]
    return frame


def _write_kfold_outputs(result: KFoldResult, oof_fold: torch.Tensor, vocab: list) -> None:
    from fasttricks._io import atomic_torch_save, atomic_write_csv, atomic_write_text

    kdir = result.out_dir
    atomic_torch_save(
        {"preds": result.oof_preds, "targets": result.oof_targets, "fold": oof_fold},
        kdir / "oof.pt",
    )
    oof = _predictions_frame(result.oof_preds, result.oof_targets, vocab)
    oof.insert(1, "fold", oof_fold.numpy())
    atomic_write_csv(oof, kdir / "oof.csv")
    if result.test_preds is not None:
        atomic_torch_save({"preds": result.test_preds, "targets": result.test_targets},
                          kdir / "test.pt")
        test = _predictions_frame(result.test_preds, result.test_targets, vocab)
        atomic_write_csv(test, kdir / "test.csv")
    result.plot()
    summary = {
        "name": result.name,
        "n_splits": result.n_splits,
        "seed": result.seed,
        "metric": result.metric,
        "direction": result.direction,
        "oof": _metrics_json(result.oof),
        "test": _metrics_json(result.test),
        "folds": [
            {"fold": f.fold, "n_train": len(f.train_idx), "n_valid": len(f.valid_idx),
             "valid": _metrics_json(f.valid), "test": _metrics_json(f.test),
             "best_epoch": f.best_epoch, "best_value": f.best_value, "seconds": f.seconds,
             "model": f.model_path.name}
            for f in result.folds
        ],
        "summary": result.summary(),
    }
    atomic_write_text(kdir / "result.json", json.dumps(summary, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Seed and snapshot ensembles
# --------------------------------------------------------------------------------------------


@dataclass
class MemberResult:
    """One member of a seed or snapshot ensemble: its scores alone and its model file."""

    name: str
    valid: dict[str, float]
    test: dict[str, float] | None
    model_path: Path
    seconds: float
    resumed: bool = False


@dataclass
class EnsembleResult:
    """What :func:`seed_ensemble` and :func:`snapshot_ensemble` return.

    Attributes:
        kind: ``"seed"`` or ``"snapshot"``. metric, direction: the primary metric key and
            ``"maximize"``/``"minimize"``.
        members: one :class:`MemberResult` per seed / cycle, in order.
        valid_preds, test_preds: the members' averaged predictions on the valid and test split
            (``test_preds`` None without a test split); ``valid`` and ``test`` their scores.
        out_dir: ``runs/<name>/seeds`` or ``runs/<name>/snapshots``.
    """

    name: str
    kind: str
    metric: str
    direction: str
    members: list[MemberResult]
    valid_preds: torch.Tensor
    valid_targets: torch.Tensor
    valid: dict[str, float]
    test_preds: torch.Tensor | None
    test_targets: torch.Tensor | None
    test: dict[str, float] | None
    out_dir: Path
    seconds: float = 0.0
    plot_path: Path | None = None

    @property
    def model_paths(self) -> list[Path]:
        """The members' model files (whole pickled modules, for :func:`predict_ensemble`)."""
        return [m.model_path for m in self.members]

    def _split(self) -> str:
        return "test" if self.test is not None else "valid"

    def member_scores(self, split: str | None = None) -> np.ndarray:
        """The primary metric of every member alone on ``split`` (default test, else valid)."""
        split = split or self._split()
        return np.asarray([getattr(m, split)[self.metric] for m in self.members], dtype=float)

    @property
    def mean(self) -> float:
        """Mean of the members' primary metric (test split if there is one, else valid)."""
        return float(self.member_scores().mean())

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1) of the members' primary metric; 0 for one member."""
        scores = self.member_scores()
        return float(scores.std(ddof=1)) if len(scores) > 1 else 0.0

    @property
    def sem(self) -> float:
        """Standard error of the mean, ``std / sqrt(n_members)``."""
        return self.std / float(np.sqrt(len(self.members)))

    @property
    def ensemble_score(self) -> float:
        """The averaged predictions' primary metric (test split if there is one, else valid)."""
        return float(getattr(self, self._split())[self.metric])

    def summary(self) -> str:
        """One line: members' mean ± std (sem) and the ensemble's score."""
        return (
            f"{self.name} {self.kind} ensemble of {len(self.members)}: {self._split()} "
            f"{self.metric} members {_fmt(self.mean)} ± {_fmt(self.std)} (sem {_fmt(self.sem)}), "
            f"ensemble {_fmt(self.ensemble_score)} [{self.seconds:.1f}s]"
        )

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path: str | PathLike | None = None) -> Path:
        """Bar chart of every member's score with the ensemble's as a line; saved as PNG
        (default ``<out_dir>/<kind>.png``), returns the path."""
        import matplotlib.pyplot as plt

        path = Path(path) if path is not None else self.out_dir / f"{self.kind}.png"
        scores = self.member_scores()
        x = np.arange(len(scores))
        fig, ax = plt.subplots(figsize=(1.0 * len(scores) + 3, 3.6))
        ax.bar(x, scores, 0.6, color="#4c72b0", label="single member")
        ax.axhline(self.mean, color="#4c72b0", ls="--", label="members' mean")
        ax.axhline(self.ensemble_score, color="#c44e52", lw=2, label="ensemble")
        ax.set_xticks(x, [m.name for m in self.members], rotation=30, fontsize=8)
        ax.set_ylabel(f"{self._split()} {self.metric}")
        ax.set_title(f"{self.name}: {self.kind} ensemble")
        _save_score_plot(fig, ax, [*scores, self.ensemble_score], path)
        self.plot_path = path
        return path


def _member_line(prefix: str, record: dict, key: str, resumed: bool) -> str:
    line = f"{prefix}{' (already done)' if resumed else ''}: valid {key} "
    line += _fmt(record["valid"][key])
    if record.get("test") is not None:
        line += f", test {_fmt(record['test'][key])}"
    return line + f" [{float(record['seconds']):.1f}s]"


def _finish_ensemble(
    name: str, kind: str, key: str, direction: str, names: list[str], records: list[dict],
    store: _MemberStore, learn: Any, started: float, progress: bool,
) -> EnsembleResult:
    from fasttricks._io import atomic_write_text

    loss_func, metrics = learn.loss_func, list(learn.metrics)
    members = [
        MemberResult(name=n, valid=r["valid"], test=r.get("test"), model_path=store.model_path(n),
                     seconds=float(r["seconds"]), resumed=bool(r.get("_resumed", False)))
        for n, r in zip(names, records)
    ]
    valid_preds = average_predictions([r["valid_preds"] for r in records])
    valid_targets = records[0]["valid_targets"]
    test_preds, test_targets, test_scores = _averaged_test(records, loss_func, metrics)
    result = EnsembleResult(
        name=name, kind=kind, metric=key, direction=direction, members=members,
        valid_preds=valid_preds, valid_targets=valid_targets,
        valid=score_predictions(valid_preds, valid_targets, loss_func, metrics),
        test_preds=test_preds, test_targets=test_targets, test=test_scores,
        out_dir=store.folder, seconds=time.perf_counter() - started,
    )
    result.plot()
    summary = {
        "name": name, "kind": kind, "metric": key, "direction": direction,
        "members": [{"name": m.name, "valid": _metrics_json(m.valid), "test": _metrics_json(m.test),
                     "seconds": m.seconds, "model": m.model_path.name} for m in members],
        "valid": _metrics_json(result.valid), "test": _metrics_json(result.test),
        "mean": result.mean, "std": result.std, "sem": result.sem, "summary": result.summary(),
    }
    atomic_write_text(store.folder / "result.json", json.dumps(summary, indent=2) + "\n")
    _announce(result.summary(), progress)
    return result


def seed_ensemble(
    recipe: Any,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    overrides: Any = (),
    test: bool = True,
    out_dir: str | PathLike = "runs",
    cbs: Sequence[Any] = (),
    progress: bool = True,
) -> EnsembleResult:
    """Train the same recipe once per seed and average the models' predictions.

    Reports each member's score, their mean, standard deviation and standard error (how much
    of a difference between two runs is seed noise), and the score of the averaged
    predictions: the cheapest ensemble, as in Lakshminarayanan et al., "Simple and Scalable
    Predictive Uncertainty Estimation using Deep Ensembles" (NeurIPS 2017).

    Members are written to ``<out_dir>/<name>/seeds/seed_<s>.pth`` (model) and ``.pt`` (record);
    re-running skips seeds already trained with the same recipe, so adding seeds reuses the old
    ones.

    Args:
        recipe: a recipe path, mapping or resolved recipe.
        seeds: the model seeds (default 0-4); each run is the recipe with ``seed`` replaced.
        overrides: ``"dotted.key=value"`` strings or a mapping applied to the recipe.
        test: also predict and score the test split (default True).
        out_dir: the runs folder (default ``"runs"``).
        cbs: extra fastai callbacks for every fit.
        progress: show fastai's progress and one line per seed (default True).

    Example::

        result = seed_ensemble("recipes/mnist1d.yaml", seeds=range(5))
        result.mean, result.std, result.sem, result.ensemble_score
    """
    from fasttricks.recipes import build_learner, fit_learner, primary_metric, set_in_recipe

    started = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    recipe = _resolve(recipe, overrides)
    name = str(recipe["name"])
    metric_name, direction = primary_metric(recipe)
    key = _metric_key(metric_name)
    splits = _load_splits(recipe)
    has_test = bool(test) and splits.test is not None and len(splits.test) > 0
    base = {k: v for k, v in recipe.items() if k != "seed"}
    store = _MemberStore(Path(out_dir) / name / "seeds",
                         _fingerprint({"recipe": base, "test": has_test}))
    names, records, learn = [], [], None
    for i, s in enumerate(seeds):
        member = f"seed_{s}"
        record = store.load(member)
        resumed = record is not None
        if record is None:
            t0 = time.perf_counter()
            seeded = set_in_recipe(recipe, "seed", s)
            learn = build_learner(seeded, splits=splits)
            with _quiet(learn, progress):
                fit_learner(learn, seeded, cbs=list(cbs))
            record = _member_record(learn, has_test, time.perf_counter() - t0)
            store.save(member, record, learn.model)
        record["_resumed"] = resumed
        names.append(member)
        records.append(record)
        _announce(_member_line(f"seed {s} ({i + 1}/{len(seeds)})", record, key, resumed),
                  progress)
    if learn is None:
        learn = build_learner(recipe, splits=splits)
    return _finish_ensemble(name, "seed", key, direction, names, records, store, learn, started,
                            progress)


def snapshot_ensemble(
    recipe: Any,
    cycles: int = 3,
    *,
    epochs: int | None = None,
    overrides: Any = (),
    test: bool = True,
    out_dir: str | PathLike = "runs",
    cbs: Sequence[Any] = (),
    progress: bool = True,
) -> EnsembleResult:
    """Train through ``cycles`` learning-rate cycles, snapshot after each, average the snapshots.

    A cycle is one call of the recipe's schedule (``fit_flat_cos`` or ``fit_one_cycle``, via
    ``fit_learner``) for ``epochs`` epochs (default: the recipe's), each continuing from the
    previous cycle's weights and optimizer state; the model at the end of every cycle, where
    the learning rate has annealed to a minimum, is one ensemble member. "Snapshot Ensembles:
    Train 1, get M for free", Huang et al., ICLR 2017.

    Snapshots go to ``<out_dir>/<name>/snapshots/cycle_<c>.pth`` (model) and ``.pt`` (record),
    plus ``resume.pth`` (weights and optimizer state of the last finished cycle). Re-running
    continues after the last finished cycle, so asking for more cycles extends an earlier run.

    Args:
        recipe: a recipe path, mapping or resolved recipe.
        cycles: number of cycles = ensemble members (default 3, at least 1).
        epochs: epochs per cycle (default: the recipe's ``schedule.epochs``).
        overrides: ``"dotted.key=value"`` strings or a mapping applied to the recipe.
        test: also predict and score the test split (default True).
        out_dir: the runs folder (default ``"runs"``).
        cbs: extra fastai callbacks for every cycle.
        progress: show fastai's progress and one line per cycle (default True).

    Example::

        result = snapshot_ensemble("recipes/digits.yaml", cycles=3, epochs=4)
        print(result.summary())   # each snapshot's test score and the averaged one
    """
    from fasttricks._io import atomic_torch_save
    from fasttricks._validate import check_range
    from fasttricks.recipes import build_learner, fit_learner, primary_metric

    started = time.perf_counter()
    if isinstance(cycles, bool) or not isinstance(cycles, (int, np.integer)):
        raise TypeError(f"cycles must be an int >= 1, got {cycles!r}")
    check_range("cycles", int(cycles), low=1)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)):
            raise TypeError(f"epochs must be an int >= 1 or None, got {epochs!r}")
        check_range("epochs", int(epochs), low=1)
    recipe = _resolve(recipe, overrides)
    name = str(recipe["name"])
    metric_name, direction = primary_metric(recipe)
    key = _metric_key(metric_name)
    splits = _load_splits(recipe)
    has_test = bool(test) and splits.test is not None and len(splits.test) > 0
    store = _MemberStore(Path(out_dir) / name / "snapshots",
                         _fingerprint({"recipe": recipe, "epochs": epochs, "test": has_test}))
    resume_path = store.folder / "resume.pth"

    learn = build_learner(recipe, splits=splits)
    names, records = [], []
    done = 0
    while done < cycles and (record := store.load(f"cycle_{done}")) is not None:
        record["_resumed"] = True
        names.append(f"cycle_{done}")
        records.append(record)
        done += 1
    if done:
        state = None
        if resume_path.exists():
            state = torch.load(resume_path, map_location=learn.dls.device, weights_only=False)
        if state is not None and state.get("cycle") == done - 1:
            learn.model.load_state_dict(state["model"])
            learn.create_opt()
            learn.opt.load_state_dict(state["opt"])
        else:
            logger.warning("no optimizer state for cycle %d; continuing with fresh moments", done)
            member = load_ensemble_member(store.model_path(f"cycle_{done - 1}"))
            learn.model.load_state_dict(member.state_dict())
        for c, record in enumerate(records):
            _announce(_member_line(f"cycle {c + 1}/{cycles}", record, key, True), progress)
    for c in range(done, cycles):
        t0 = time.perf_counter()
        with _quiet(learn, progress):
            fit_learner(learn, recipe, cbs=list(cbs), epochs=epochs)
        record = _member_record(learn, has_test, time.perf_counter() - t0)
        member = f"cycle_{c}"
        store.save(member, {**record, "cycle": c}, learn.model)
        # weights + optimizer state of the latest cycle, so a resumed run continues exactly
        atomic_torch_save({"cycle": c, "model": learn.model.state_dict(),
                           "opt": learn.opt.state_dict()}, resume_path)
        record["_resumed"] = False
        names.append(member)
        records.append(record)
        _announce(_member_line(f"cycle {c + 1}/{cycles}", record, key, False), progress)
    return _finish_ensemble(name, "snapshot", key, direction, names, records, store, learn,
                            started, progress)
