"""Finished run folders read back for diagnosis, and their predictions on any split.

A folder is one of:

- a plain run (:mod:`fasttricks.runs`): ``recipe.yaml`` + ``model.pth`` (a state dict);
- a k-fold run (:func:`fasttricks.ensemble.kfold_fit`, ``runs/<name>/kfold``): ``result.json``
  with ``n_splits``, the fold models and ``oof.pt`` / ``test.pt``;
- a seed or snapshot ensemble (``runs/<name>/seeds``, ``runs/<name>/snapshots``):
  ``result.json`` with ``kind`` and the member models.

The model comes from the folder, the data spec from its recipe: ``recipe.yaml`` in the folder,
else in its parent (``runs/<name>/``), else the recipe given explicitly. The learner is rebuilt
with :func:`fasttricks.recipes.build_learner` and the saved weights loaded; nothing is
retrained. A k-fold run's train and valid splits are the out-of-fold predictions of its pool
(every item predicted by the fold model that did not train on it), its test split the
fold-averaged test predictions it stored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RunFolder", "RunPredictions", "load_run", "read_unlabelled"]

logger = logging.getLogger(__name__)

SPLITS = ("valid", "test", "train")
ENSEMBLE_KINDS = {"seed": "seed ensemble", "snapshot": "snapshot ensemble"}


@dataclass(frozen=True)
class RunFolder:
    """A finished run folder: its kind, the recipe that made it and its model files.

    Attributes:
        path: the folder. kind: ``"run"``, ``"kfold"``, ``"seed"`` or ``"snapshot"``.
        recipe: the validated recipe. model_paths: ``[model.pth]`` or the member models.
    """

    path: Path
    kind: str
    recipe: Any
    model_paths: tuple[Path, ...]

    @property
    def description(self) -> str:
        """``"run"``, ``"5-fold run"``, ``"seed ensemble of 3"``..."""
        if self.kind == "run":
            return "run"
        if self.kind == "kfold":
            return f"{len(self.model_paths)}-fold run"
        return f"{ENSEMBLE_KINDS[self.kind]} of {len(self.model_paths)}"

    def predict(self, split: str = "valid", unlabelled: Any = None) -> RunPredictions:
        """Predictions on ``split`` (``valid``, ``test``, ``train``), or on ``unlabelled``
        inputs (:func:`read_unlabelled`'s result) when given; see :func:`_predict`."""
        return _predict(self, split, unlabelled)


@dataclass
class RunPredictions:
    """Activated predictions of a run on one split, with what a report needs beside them.

    Attributes:
        probs: (items x classes) float probabilities. targets: class indices or multi-hot rows
            (None for unlabelled items). vocab: class names. multilabel: multi-hot targets.
        items: one id per row (an image path, or ``<split>/<row>``). x: the inputs (for
            example images). kind: the dataset kind (``array``, ``image``, ``tabular``).
        split: what was predicted (``valid``, ``test``, ``train``, ``unlabelled``).
        source: how (``"model"``, ``"out-of-fold"``, ``"fold-averaged"``...).
    """

    probs: np.ndarray
    targets: np.ndarray | None
    vocab: list
    multilabel: bool
    items: list
    x: Any
    kind: str
    split: str
    source: str = "model"
    extra: dict = field(default_factory=dict)


def _not_a_run(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{str(path)!r} is not a finished run folder: expected recipe.yaml and model.pth (a run "
        "of python -m fasttricks.train) or result.json with its member models (a k-fold, seed "
        "or snapshot ensemble)")


def _find_recipe(path: Path, recipe: Any) -> Any:
    from fasttricks.recipes import load_recipe

    if recipe is not None:
        return load_recipe(recipe)
    for candidate in (path / "recipe.yaml", path.parent / "recipe.yaml"):
        if candidate.is_file():
            return load_recipe(candidate)
    raise FileNotFoundError(
        f"{str(path)!r} holds an ensemble but no recipe.yaml (nor does its parent folder): give "
        "the recipe that trained it with --recipe")


def load_run(path: str | Path, recipe: Any = None) -> RunFolder:
    """Read a finished run folder (plain, k-fold, seed or snapshot ensemble).

    Args:
        path: the folder.
        recipe: the recipe that trained it, for an ensemble folder without ``recipe.yaml``
            (default None: read ``recipe.yaml`` from the folder or its parent).

    Raises:
        FileNotFoundError: not a run folder, a model file is missing, or no recipe is found.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
    if (path / "model.pth").is_file() and (path / "recipe.yaml").is_file():
        from fasttricks.recipes import load_recipe

        chosen = load_recipe(recipe if recipe is not None else path / "recipe.yaml")
        return RunFolder(path, "run", chosen, (path / "model.pth",))
    result_file = path / "result.json"
    if not result_file.is_file():
        raise _not_a_run(path)
    try:
        result = json.loads(result_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(result_file)!r} is not valid JSON ({err})") from None
    if "n_splits" in result:
        kind, members = "kfold", result.get("folds", [])
        if not (path / "oof.pt").is_file():
            raise FileNotFoundError(f"{str(path)!r} is an unfinished k-fold run (no oof.pt)")
    elif result.get("kind") in ENSEMBLE_KINDS:
        kind, members = result["kind"], result.get("members", [])
    else:
        raise _not_a_run(path)
    paths = tuple(path / m["model"] for m in members)
    missing = [p.name for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(f"{str(path)!r} lacks member models: {', '.join(missing) or '-'}")
    return RunFolder(path, kind, _find_recipe(path, recipe), paths)


# --------------------------------------------------------------------------------------------
# data


def dataset_of(recipe: Any) -> Any:
    """The recipe's :class:`~fasttricks.datasets.DataSplits` as loaded (no oversampling, no
    items dropped): the items a run is diagnosed on."""
    from fasttricks.datasets import dataset_parameters, load_dataset

    data = recipe["data"]
    params = dataset_parameters(data["name"])
    return load_dataset(data["name"], **{k: v for k, v in data.items() if k in params})


def item_ids(x: Any, split: str, kind: str, offset: int = 0) -> list:
    """One id per item: the file path for images, else ``<split>/<row>``."""
    if kind == "image":
        return [str(p) for p in x]
    return [f"{split}/{i + offset}" for i in range(len(x))]


def read_unlabelled(source: str | Path, splits: Any) -> Any:
    """Unlabelled inputs in the form of ``splits``' items.

    Array data: a ``.npy`` file of items shaped like the training items. Image data: a folder
    of images (searched recursively). Tabular data: a ``.csv`` file with the feature columns.
    """
    from fasttricks.datasets import IMAGE_EXTENSIONS

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"unlabelled data {str(source)!r} does not exist")
    if splits.kind == "image":
        if not source.is_dir():
            raise ValueError(f"unlabelled images must be a folder, got {str(source)!r}")
        found = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(source)!r}")
        return found
    if splits.kind == "tabular":
        import pandas as pd

        frame = pd.read_csv(source)
        columns = list(splits.train.x.columns)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"unlabelled CSV {str(source)!r} lacks the feature columns "
                             f"{', '.join(map(str, missing))}")
        return frame[columns].reset_index(drop=True)
    if source.suffix != ".npy":
        raise ValueError(f"unlabelled array data must be a .npy file, got {str(source)!r}")
    x = np.load(source, allow_pickle=False).astype(np.float32)
    shape = np.asarray(splits.train.x).shape[1:]
    if x.ndim == len(shape):  # one item
        x = x[None]
    if x.shape[1:] != shape:
        raise ValueError(f"unlabelled items have shape {tuple(x.shape[1:])}, the model takes "
                         f"{tuple(shape)}")
    return x


# --------------------------------------------------------------------------------------------
# predictions


def _activate(raw: torch.Tensor, multilabel: bool, loss_func: Any) -> torch.Tensor:
    if getattr(loss_func, "activation", None) is not None:
        return raw.float()
    return raw.float().sigmoid() if multilabel else raw.float().softmax(dim=1)


def _learner_on(run: RunFolder, splits: Any, target: Any) -> Any:
    """The run's learner with ``target`` as its validation split (loader 1)."""
    from fasttricks.recipes import build_learner

    return build_learner(run.recipe, splits=replace(splits, valid=target))


def _model_predictions(run: RunFolder, splits: Any, target: Any) -> np.ndarray:
    from fasttricks.ensemble import predict_ensemble

    learn = _learner_on(run, splits, target)
    if run.kind == "run":
        state = torch.load(run.model_paths[0], map_location="cpu", weights_only=True)
        learn.model.load_state_dict(state)
        with learn.no_bar():
            raw, _ = learn.get_preds(ds_idx=1)
        return _activate(raw, splits.multilabel, learn.loss_func).numpy()
    activation = "sigmoid" if splits.multilabel else "softmax"
    preds = predict_ensemble(list(run.model_paths), learn.dls, ds_idx=1, model=learn.model,
                             activation=activation, device="cpu")
    return preds.numpy()


def _dummy_targets(n: int, splits: Any) -> np.ndarray:
    if splits.multilabel:
        return np.zeros((n, splits.n_classes), dtype=np.float32)
    return np.zeros(n, dtype=np.int64)


def _predict(run: RunFolder, split: str, unlabelled: Any) -> RunPredictions:
    from fasttricks._validate import check_choice
    from fasttricks.datasets import Split

    splits = dataset_of(run.recipe)
    common = {"vocab": list(splits.vocab), "multilabel": splits.multilabel, "kind": splits.kind}
    if unlabelled is not None:
        target = Split(unlabelled, _dummy_targets(len(unlabelled), splits))
        probs = _model_predictions(run, splits, target)
        return RunPredictions(probs, None, items=item_ids(unlabelled, "unlabelled", splits.kind),
                              x=unlabelled, split="unlabelled", **common)
    check_choice("split", split, SPLITS)
    if run.kind == "kfold":
        return _kfold_predictions(run, splits, split, common)
    target = getattr(splits, split)
    if target is None or len(target) == 0:
        raise ValueError(f"the recipe's dataset has no {split} split to diagnose")
    probs = _model_predictions(run, splits, target)
    return RunPredictions(probs, np.asarray(target.y), items=item_ids(target.x, split, splits.kind),
                          x=target.x, split=split, **common)


def _kfold_predictions(run: RunFolder, splits: Any, split: str, common: dict) -> RunPredictions:
    from fasttricks.ensemble._store import safe_load

    if split == "test":
        stored = safe_load(run.path / "test.pt")
        if stored is None:
            raise FileNotFoundError(f"{str(run.path)!r} has no test predictions (test.pt); it "
                                    "was trained without the test split")
        x = splits.test.x
        items = item_ids(x, "test", splits.kind)
        source = "fold-averaged"
    else:
        stored = safe_load(run.path / "oof.pt")
        if stored is None:
            raise FileNotFoundError(f"{str(run.path)!r} has no readable oof.pt")
        x = splits.pool().x
        n_train = len(splits.train)
        items = (item_ids(splits.train.x, "train", splits.kind)
                 + item_ids(splits.valid.x, "valid", splits.kind))
        source = "out-of-fold"
        if len(items) != len(stored["preds"]):
            raise ValueError(f"oof.pt has {len(stored['preds'])} rows but the recipe's pool has "
                             f"{len(items)} items ({n_train} train + valid): is this the recipe "
                             "that trained the folds?")
    probs = stored["preds"].float().numpy()
    targets = stored["targets"].numpy()
    if not splits.multilabel:
        targets = targets.astype(np.int64)
    return RunPredictions(probs, targets, items=items, x=x, split=split, source=source, **common)
