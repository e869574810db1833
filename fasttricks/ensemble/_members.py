"""The one loop every ensemble runs: load each finished member, or train it and save it.

k-fold, seed and snapshot ensembles differ only in how one member is trained (which data, which
seed, continuing from which weights) and in which finished members they may keep; the rest (the
recipe and data they share, the member records, timing, saving) lives here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

import torch

from fasttricks._io import quiet_fit
from fasttricks.ensemble._average import average_predictions
from fasttricks.ensemble._score import score_predictions
from fasttricks.ensemble._store import MemberStore
from fasttricks.metrics import metric_direction

__all__ = ["Member", "MemberJob", "MemberOptions", "MemberRun", "Plan", "averaged",
           "load_or_train", "make_plan", "member_record", "quiet", "scorers", "train_member"]

# train(index, name) -> (record without "seconds", the trained learner)
TrainMember = Callable[[int, str], tuple[dict, Any]]


@dataclass(frozen=True)
class Plan:
    """What every member of one ensemble shares.

    Attributes:
        recipe: the validated recipe. name: its name (the run folder under ``out_dir``).
        metric_name: the primary metric as fastai's recorder logs it (``valid_loss``, ...).
        key: the same metric as keyed in :func:`score_predictions`' dict (``loss``, ...).
        direction: ``"minimize"`` or ``"maximize"``, from :mod:`fasttricks.metrics`.
        splits: the recipe's :class:`~fasttricks.datasets.DataSplits`.
        has_test: whether members predict and score the test split.
    """

    recipe: Any
    name: str
    metric_name: str
    key: str
    direction: str
    splits: Any
    has_test: bool

    def recipe_dict(self) -> dict:
        """A plain copy of the recipe (for fingerprints; the recipe itself is never changed)."""
        from fasttricks.recipes import recipe_to_dict

        return recipe_to_dict(self.recipe)

    def save_recipe(self, folder: Any) -> None:
        """Write the recipe as ``<folder>/recipe.yaml``, so the members' folder alone says how
        to rebuild their learner (``python -m fasttricks.predict <folder> ...``)."""
        from pathlib import Path

        from fasttricks.recipes import save_recipe

        save_recipe(self.recipe, Path(folder) / "recipe.yaml")


def _metric_key(metric: str) -> str:
    """The recorder's name for a metric -> the key in :func:`score_predictions`' dict."""
    return "loss" if metric in ("valid_loss", "train_loss", "loss") else metric


def _load_splits(recipe: Any) -> Any:
    """The recipe's dataset as a :class:`fasttricks.datasets.DataSplits`, before any
    oversampling (``build_dataloaders`` oversamples each fold's training part itself)."""
    from fasttricks.datasets import dataset_parameters, load_dataset

    data = recipe["data"]
    params = dataset_parameters(data["name"])
    return load_dataset(data["name"], **{k: v for k, v in data.items() if k in params})


def make_plan(recipe: Any, overrides: Any, test: bool) -> Plan:
    """Validate ``recipe`` with ``overrides`` once and load its data."""
    from fasttricks.recipes import load_recipe, primary_metric

    recipe = load_recipe(recipe, overrides or ())
    metric_name = primary_metric(recipe)[0]
    splits = _load_splits(recipe)
    return Plan(
        recipe=recipe, name=str(recipe["name"]), metric_name=metric_name,
        key=_metric_key(metric_name), direction=metric_direction(metric_name), splits=splits,
        has_test=bool(test) and splits.test is not None and len(splits.test) > 0,
    )


@dataclass(frozen=True)
class MemberOptions:
    """The settings every ensemble's members share: the keyword arguments of the same names of
    :func:`~fasttricks.ensemble.kfold_fit`, :func:`~fasttricks.ensemble.seed_ensemble` and
    :func:`~fasttricks.ensemble.snapshot_ensemble`.

    Attributes:
        overrides: ``"dotted.key=value"`` strings or a mapping applied to the recipe.
        test: also predict and score the test split (default True).
        out_dir: the runs folder (default ``"runs"``).
        cbs: extra fastai callbacks for every member's fit.
        progress: show fastai's progress and one line per member (default True).
    """

    overrides: Any = ()
    test: bool = True
    out_dir: str | PathLike = "runs"
    cbs: Sequence[Any] = ()
    progress: bool = True

    def plan(self, recipe: Any) -> Plan:
        """The validated recipe (with ``overrides``) and its data, loaded once."""
        return make_plan(recipe, self.overrides, self.test)

    def spec(self, kind: str, plan: Plan, **kwargs: Any) -> dict:
        """The JSON-able description from which a worker process rebuilds the same job: the
        job kind, the recipe with its overrides applied, these settings and the kind's own
        ``kwargs``."""
        return {"kind": kind, "recipe": plan.recipe_dict(), "test": bool(self.test),
                "out_dir": str(self.out_dir), "kwargs": kwargs}

    @classmethod
    def from_spec(cls, spec: dict) -> MemberOptions:
        """The options a worker process runs a :meth:`spec` with: no overrides (they are in
        the recipe already), no callbacks, no progress bars."""
        return cls(test=bool(spec.get("test", True)), out_dir=spec["out_dir"], progress=False)


def quiet(learn: Any, progress: bool) -> contextlib.AbstractContextManager:
    """fastai's bar and epoch table when ``progress``, nothing otherwise."""
    return contextlib.nullcontext() if progress else quiet_fit(learn)


def _preds(learn: Any, ds_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    with learn.no_bar():
        preds, targets = learn.get_preds(ds_idx=ds_idx)[:2]
    return preds.float().cpu(), targets.cpu()


def member_record(learn: Any, has_test: bool) -> dict:
    """A trained member's valid (and test) predictions, targets and scores."""
    loss_func, metrics = learn.loss_func, list(learn.metrics)
    vp, vt = _preds(learn, 1)
    record = {"valid_preds": vp, "valid_targets": vt,
              "valid": score_predictions(vp, vt, loss_func, metrics)}
    if has_test:
        tp, tt = _preds(learn, 2)
        record.update(test_preds=tp, test_targets=tt,
                      test=score_predictions(tp, tt, loss_func, metrics))
    return record


def averaged(
    records: Sequence[dict], split: str, loss_func: Any, metrics: Sequence[Any]
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, float] | None]:
    """The members' averaged ``split`` (``"valid"`` or ``"test"``) predictions, the targets and
    their scores; three Nones when the records hold no predictions for ``split``."""
    if f"{split}_preds" not in records[0]:
        return None, None, None
    preds = average_predictions([r[f"{split}_preds"] for r in records])
    targets = records[0][f"{split}_targets"]
    return preds, targets, score_predictions(preds, targets, loss_func, metrics)


@dataclass(frozen=True)
class Member:
    """One member as the loop left it: its position, name, stored record, and whether it was
    read back from an earlier run instead of trained now."""

    index: int
    name: str
    record: dict
    resumed: bool


@dataclass
class MemberRun:
    """What :func:`load_or_train` returns: the members in order and the last learner trained
    (None when every member came from disk)."""

    members: list[Member]
    learn: Any = None

    @property
    def records(self) -> list[dict]:
        return [m.record for m in self.members]


@dataclass
class MemberJob:
    """Everything needed to train any one member of an ensemble on its own: the store, the
    members' names, the trainer and the finished-member check. A worker process builds the same
    job as the sequential run and trains the members it claims with :func:`train_member`."""

    store: MemberStore
    names: list[str]
    train: TrainMember
    accept: Callable[[int, dict], bool] | None = None

    def finished(self, i: int) -> dict | None:
        """Member ``i``'s stored record if it is finished and acceptable, else None."""
        record = self.store.load(self.names[i])
        if record is not None and self.accept is not None and not self.accept(i, record):
            return None
        return record


def train_member(store: MemberStore, i: int, name: str, train: TrainMember) -> tuple[dict, Any]:
    """Train member ``i`` and save it (model, then record with the seconds it took); returns the
    stored record and the learner."""
    started = time.perf_counter()
    fresh, learn = train(i, name)
    fresh["seconds"] = time.perf_counter() - started
    return store.save(name, fresh, learn.model), learn


def load_or_train(
    store: MemberStore,
    names: Sequence[str],
    train: TrainMember,
    *,
    accept: Callable[[int, dict], bool] | None = None,
    on_saved: Callable[[int, Any], None] | None = None,
    on_member: Callable[[Member], None] | None = None,
) -> MemberRun:
    """For each name in order: keep the finished member from ``store``, or train and save it.

    Args:
        store: where records and models live.
        names: the members' names (``fold_0``, ``seed_3``, ``cycle_1``).
        train: ``train(index, name) -> (record, learner)``; the loop adds the seconds it took
            and saves the learner's model, then the record.
        accept: ``accept(index, record)``; False discards a finished member (e.g. another fold
            assignment) so it is trained again. Default: keep every finished member.
        on_saved: called as ``on_saved(index, learner)`` after a trained member is saved.
        on_member: called with each :class:`Member` once it is finished (progress lines).
    """
    run = MemberRun(members=[])
    for i, name in enumerate(names):
        record = store.load(name)
        if record is not None and accept is not None and not accept(i, record):
            record = None
        resumed = record is not None
        if record is None:
            record, run.learn = train_member(store, i, name, train)
            if on_saved is not None:
                on_saved(i, run.learn)
        member = Member(index=i, name=name, record=record, resumed=resumed)
        run.members.append(member)
        if on_member is not None:
            on_member(member)
    return run


def scorers(plan: Plan, learn: Any = None) -> tuple[Any, list]:
    """The loss function and metrics that score averaged predictions: ``learn``'s, or those of a
    fresh learner when every member came from disk."""
    if learn is None:
        from fasttricks.recipes import build_learner

        learn = build_learner(plan.recipe, splits=plan.splits)
    return learn.loss_func, list(learn.metrics)
