"""k-fold cross-validation: one model per fold, out-of-fold predictions, a test ensemble."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttricks._io import atomic_torch_save, atomic_write_csv, write_json
from fasttricks._stats import summarize
from fasttricks.ensemble._members import (
    Member,
    MemberJob,
    MemberOptions,
    Plan,
    averaged,
    load_or_train,
    member_record,
    quiet,
    scorers,
)
from fasttricks.ensemble._parallel import JOB_KINDS, Workers
from fasttricks.ensemble._report import (
    announce,
    fmt,
    metrics_json,
    predictions_frame,
)
from fasttricks.ensemble._results import EnsembleScores, MemberScores
from fasttricks.ensemble._score import score_predictions
from fasttricks.ensemble._store import MemberStore, fingerprint
from fasttricks.metrics import lower_is_better

__all__ = ["FoldResult", "KFoldResult", "kfold_fit", "kfold_job"]


@dataclass
class FoldResult(MemberScores):
    """One fold of :func:`kfold_fit`: its indices into the pool, its model's scores on the
    held-out fold (``valid``) and the test split (``test``), the best epoch and monitored value
    that :class:`~fasttricks.callbacks.SaveBestCallback` kept, and the model file (the shared
    fields of :class:`~fasttricks.ensemble._results.MemberScores`, keyword-only)."""

    fold: int
    train_idx: np.ndarray
    valid_idx: np.ndarray
    best_epoch: int | None
    best_value: float | None


@dataclass
class KFoldResult(EnsembleScores):
    """What :func:`kfold_fit` returns.

    Attributes:
        name: the recipe name. metric, direction: the primary metric (``primary_metric``) as
            keyed in the metric dicts (``"loss"`` for the validation loss) and
            ``"maximize"``/``"minimize"`` (:func:`fasttricks.metrics.metric_direction`).
        folds: one :class:`FoldResult` per fold (held-out scores, model path, best epoch).
        oof_preds, oof_targets: out-of-fold predictions for every pool item (train followed by
            valid, :meth:`DataSplits.pool` order), each made by the model that did not see it.
        oof: loss and metrics of ``oof_preds`` over the whole pool.
        test_preds, test_targets, test: the fold-averaged test predictions and their scores
            (None when ``test=False``).
        out_dir: the ``runs/<name>/kfold`` folder.
    """

    n_splits: int
    seed: int
    folds: list[FoldResult]
    oof_preds: torch.Tensor
    oof_targets: torch.Tensor
    oof: dict[str, float]
    bar_inches: ClassVar[float] = 1.2

    def member_results(self) -> list[FoldResult]:
        return self.folds

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
        folds = summarize(self.fold_scores)
        line = (
            f"{self.name} {self.n_splits}-fold: OOF {self.metric} {fmt(self.oof[self.metric])} "
            f"(folds {fmt(folds['mean'])} ± {fmt(folds['std'])})"
        )
        if self.test is not None:
            single = summarize(self.fold_test_scores)
            line += (
                f"; test ensemble {fmt(self.test[self.metric])} vs single fold "
                f"{fmt(single['mean'])} ± {fmt(single['std'])}"
            )
        return line + f" [{self.seconds:.1f}s]"

    def _chart_name(self) -> str:
        return "kfold.png"

    def _draw(self, ax: Any, x: np.ndarray) -> list[float]:
        """The per-fold scores (held-out and test) as bars, the OOF and test-ensemble scores
        as lines."""
        width = 0.38 if self.test is not None else 0.6
        ax.bar(x - (width / 2 if self.test is not None else 0), self.fold_scores, width,
               label="held-out fold", color="#4c72b0")
        ax.axhline(self.oof[self.metric], color="#4c72b0", ls="--", label="out-of-fold (all)")
        values = list(self.fold_scores) + [self.oof[self.metric]]
        if self.test is not None:
            ax.bar(x + width / 2, self.fold_test_scores, width, label="test, single fold model",
                   color="#dd8452")
            ax.axhline(self.test[self.metric], color="#c44e52", lw=2, label="test, ensemble")
            values += list(self.fold_test_scores) + [self.test[self.metric]]
        ax.set_xticks(x, [f"fold {i}" for i in x])
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.name}: {self.n_splits}-fold ({self.direction} {self.metric})")
        return values


# --------------------------------------------------------------------------------------------
# the steps of kfold_fit


def _groups_digest(groups: Any) -> str | None:
    if groups is None:
        return None
    return hashlib.sha256(np.asarray(groups).astype(str).tobytes()).hexdigest()[:16]


def _kfold_store(plan: Plan, kdir: Path, n_splits: int, seed: int, stratify: bool,
                 groups: Any) -> MemberStore:
    """The fold store; its fingerprint covers everything that changes a fold's model."""
    return MemberStore(kdir, fingerprint({
        "recipe": plan.recipe_dict(), "n_splits": n_splits, "seed": seed, "stratify": stratify,
        "groups": _groups_digest(groups), "test": plan.has_test,
    }))


class _FoldTrainer:
    """Trains fold ``i`` on the other folds, keeping the best epoch on the held-out fold."""

    def __init__(self, plan: Plan, folds: list, kdir: Path, n_splits: int,
                 cbs: Sequence[Any], progress: bool) -> None:
        self.plan, self.folds, self.kdir = plan, folds, kdir
        self.n_splits, self.cbs, self.progress = n_splits, list(cbs), progress

    def accept(self, i: int, record: dict) -> bool:
        """A finished fold counts only if it held out the same items."""
        return np.array_equal(record["valid_idx"].numpy(), self.folds[i][1])

    def __call__(self, i: int, name: str) -> tuple[dict, Any]:
        from fasttricks.callbacks import SaveBestCallback
        from fasttricks.recipes import build_learner, fit_learner

        plan = self.plan
        train_idx, valid_idx = self.folds[i]
        announce(f"fold {i + 1}/{self.n_splits}: training on {len(train_idx)} items, "
                 f"validating on {len(valid_idx)}", self.progress)
        learn = build_learner(plan.recipe, splits=plan.splits.resplit(train_idx, valid_idx))
        learn.path, learn.model_dir = self.kdir, "."
        comp = np.less if lower_is_better(plan.metric_name) else np.greater
        best = SaveBestCallback(monitor=plan.metric_name, comp=comp, fname=f".{name}_best")
        with quiet(learn, self.progress):
            fit_learner(learn, plan.recipe, cbs=[best, *self.cbs])
        if best.ckpt_path is not None and best.ckpt_path.exists():
            best.ckpt_path.unlink()
        record = {
            "fold": i,
            "train_idx": torch.from_numpy(train_idx),
            "valid_idx": torch.from_numpy(valid_idx),
            "best_epoch": best.best_epoch,
            "best_value": best.best_value,
            **member_record(learn, plan.has_test),
        }
        return record, learn


def _fold_result(member: Member, folds: list, store: MemberStore) -> FoldResult:
    train_idx, valid_idx = folds[member.index]
    return FoldResult(
        fold=member.index, train_idx=train_idx, valid_idx=valid_idx,
        best_epoch=member.record["best_epoch"], best_value=member.record["best_value"],
        **MemberScores.fields(member, store),
    )


def _fold_line(member: Member, n_splits: int, key: str) -> str:
    record = member.record
    line = (f"fold {member.index + 1}/{n_splits}{' (already done)' if member.resumed else ''}: "
            f"{key} {fmt(record['valid'][key])}")
    if record.get("test") is not None:
        line += f", test {fmt(record['test'][key])}"
    if record["best_epoch"] is not None:
        line += f", best epoch {record['best_epoch']}"
    return line + f" [{float(record['seconds']):.1f}s]"


def _out_of_fold(records: list[dict], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pool item's prediction and target from the fold that held it out, and that fold."""
    first, first_t = records[0]["valid_preds"], records[0]["valid_targets"]
    preds = torch.zeros((n, *first.shape[1:]), dtype=first.dtype)
    targets = torch.zeros((n, *first_t.shape[1:]), dtype=first_t.dtype)
    fold = torch.full((n,), -1, dtype=torch.long)
    for rec in records:
        idx = rec["valid_idx"]
        preds[idx] = rec["valid_preds"]
        targets[idx] = rec["valid_targets"]
        fold[idx] = rec["fold"]
    return preds, targets, fold


def _kfold_json(result: KFoldResult) -> dict:
    return {
        "name": result.name,
        "n_splits": result.n_splits,
        "seed": result.seed,
        "metric": result.metric,
        "direction": result.direction,
        "oof": metrics_json(result.oof),
        "test": metrics_json(result.test),
        "folds": [
            {"fold": f.fold, "n_train": len(f.train_idx), "n_valid": len(f.valid_idx),
             "best_epoch": f.best_epoch, "best_value": f.best_value, **f.to_json()}
            for f in result.folds
        ],
        "summary": result.summary(),
    }


def _write_kfold_outputs(result: KFoldResult, oof_fold: torch.Tensor, vocab: list) -> None:
    """``oof.pt``/``oof.csv``, ``test.pt``/``test.csv``, ``kfold.png`` and ``result.json``."""
    kdir = result.out_dir
    atomic_torch_save(
        {"preds": result.oof_preds, "targets": result.oof_targets, "fold": oof_fold},
        kdir / "oof.pt",
    )
    oof = predictions_frame(result.oof_preds, result.oof_targets, vocab)
    oof.insert(1, "fold", oof_fold.numpy())
    atomic_write_csv(oof, kdir / "oof.csv")
    if result.test_preds is not None:
        atomic_torch_save({"preds": result.test_preds, "targets": result.test_targets},
                          kdir / "test.pt")
        test = predictions_frame(result.test_preds, result.test_targets, vocab)
        atomic_write_csv(test, kdir / "test.csv")
    result.plot()
    write_json(kdir / "result.json", _kfold_json(result))


def kfold_job(
    recipe: Any,
    n_splits: int = 5,
    seed: int = 0,
    *,
    stratify: bool = True,
    groups: Sequence[Any] | np.ndarray | None = None,
    options: MemberOptions = MemberOptions(),
) -> tuple[Plan, list, MemberJob]:
    """The plan, the folds and the member job of :func:`kfold_fit` (same arguments, the shared
    ones in ``options``), without training anything; a worker process trains single folds of
    it."""
    from fasttricks.data import kfold_splits

    plan = options.plan(recipe)
    pool = plan.splits.pool()
    folds = kfold_splits(pool.y, n_splits=n_splits, seed=seed, stratify=stratify, groups=groups)
    kdir = Path(options.out_dir) / plan.name / "kfold"
    store = _kfold_store(plan, kdir, n_splits, seed, stratify, groups)
    trainer = _FoldTrainer(plan, folds, kdir, n_splits, options.cbs, options.progress)
    job = MemberJob(store=store, names=[f"fold_{i}" for i in range(len(folds))], train=trainer,
                    accept=trainer.accept)
    return plan, folds, job


def _job_from_spec(spec: dict) -> MemberJob:
    """The k-fold job of a worker's description
    (:func:`fasttricks.ensemble._parallel.build_job`)."""
    return kfold_job(spec["recipe"], options=MemberOptions.from_spec(spec), **spec["kwargs"])[2]


JOB_KINDS["kfold"] = _job_from_spec


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
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    storage: str | None = None,
    threads: int | None = None,
) -> KFoldResult:
    """Train one model per fold and collect out-of-fold and fold-averaged test predictions.

    The recipe's train and valid splits are pooled (:meth:`DataSplits.pool`), cut into
    ``n_splits`` folds with :func:`fasttricks.data.kfold_splits` (stratified / multi-label
    stratified), and for every fold the recipe is trained on the other folds with the held-out
    fold as validation set (``build_learner`` + ``fit_learner``), keeping the best epoch's
    weights on the held-out fold (:class:`~fasttricks.callbacks.SaveBestCallback` on the
    recipe's primary metric, lower is better for losses and errors as
    :func:`fasttricks.metrics.lower_is_better` says). Every pool item is predicted exactly once,
    by the one model that did not train on it; the test split is predicted by every fold model
    and averaged (the cross-validation ensemble of Kaggle practice). Cross-validation: M. Stone,
    "Cross-validatory choice and assessment of statistical predictions", JRSS B, 1974.

    Files under ``<out_dir>/<name>/kfold/``: ``fold_<i>.pth`` (the fold model, a whole pickled
    module), ``fold_<i>.pt`` (its predictions, indices and scores), ``oof.pt`` / ``oof.csv``
    (out-of-fold predictions with their fold, in pool order), ``test.pt`` / ``test.csv``
    (fold-averaged test predictions), ``result.json`` (strict JSON: NaN is ``null``) and
    ``kfold.png``, all written atomically. Running again skips the folds whose files exist and
    were made with the same recipe and split settings, so an interrupted run loses at most the
    fold in progress; fold records are read back with ``torch.load(weights_only=True)``. The
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
        workers: train the folds in this many worker processes (default 1: one after another
            in this process). With ``workers > 1`` or a ``storage``, folds are claimed from a
            shared study (:mod:`fasttricks.ensemble._parallel`): each fold is trained once, a
            killed worker's fold is retried, and the results are those of the sequential run
            with the same thread count. ``cbs`` must then be empty.
        gpus: GPU ids dealt out to the workers in turn (``CUDA_VISIBLE_DEVICES``).
        storage: where the workers coordinate: a journal file (default
            ``<out_dir>/<name>/kfold/members.log``) or ``postgresql://...`` to share the folds
            with the same command on other machines (with ``out_dir`` on a shared folder).
        threads: torch threads per worker (default: the CPU cores shared out evenly).

    Returns:
        A :class:`KFoldResult`; ``result.summary()`` is the one-line summary printed at the end.

    Example::

        result = kfold_fit("digits", n_splits=5)
        result.oof["accuracy"], result.test["accuracy"]   # out-of-fold and test-ensemble scores
        result.plot()                                      # runs/digits/kfold/kfold.png
        probs = predict_ensemble(result.model_paths, dls.test_dl(new_items))
    """
    started = time.perf_counter()
    where = Workers(workers, gpus, storage, threads)
    options = MemberOptions(overrides, test, out_dir, cbs, progress)
    plan, folds, job = kfold_job(recipe, n_splits, seed, stratify=stratify, groups=groups,
                                 options=options)
    pool = plan.splits.pool()
    kdir = job.store.folder
    plan.save_recipe(kdir)
    announce(f"k-fold {plan.name}: {n_splits} folds of {len(pool)} items, monitoring "
             f"{plan.metric_name} ({plan.direction}); results in {kdir}", progress)
    spec = options.spec("kfold", plan, n_splits=n_splits, seed=seed, stratify=stratify,
                        groups=None if groups is None else np.asarray(groups).tolist())
    where.run(spec, job, cbs=cbs, progress=progress)

    run = load_or_train(job.store, job.names, job.train, accept=job.accept,
                        on_member=lambda m: announce(_fold_line(m, n_splits, plan.key), progress))
    loss_func, metrics = scorers(plan, run.learn)
    run.learn = None  # free the last fold's learner before scoring

    oof_preds, oof_targets, oof_fold = _out_of_fold(run.records, len(pool))
    test_preds, test_targets, test_scores = averaged(run.records, "test", loss_func, metrics)
    result = KFoldResult(
        name=plan.name, n_splits=n_splits, seed=seed, metric=plan.key, direction=plan.direction,
        folds=[_fold_result(m, folds, job.store) for m in run.members],
        oof_preds=oof_preds, oof_targets=oof_targets,
        oof=score_predictions(oof_preds, oof_targets, loss_func, metrics),
        test_preds=test_preds, test_targets=test_targets, test=test_scores, out_dir=kdir,
        seconds=time.perf_counter() - started,
    )
    _write_kfold_outputs(result, oof_fold, list(plan.splits.vocab))
    announce(result.summary(), progress)
    return result
