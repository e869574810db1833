"""Predictions and submission files from a trained run, a k-fold run or an ensemble.

``python -m fasttricks.predict RUN_OR_ENSEMBLE DATA [--tta] [--out submission.csv]``::

    python -m fasttricks.predict runs/digits test                 # the recipe's test split
    python -m fasttricks.predict runs/digits/kfold test --tta     # fold-averaged, with TTA
    python -m fasttricks.predict runs/pets path/to/test_images --out submission.csv
    python -m fasttricks.predict runs/digits features.csv --probs  # id + class probabilities

What can predict (``RUN_OR_ENSEMBLE``):

- a run folder (``runs/<name>/``: ``recipe.yaml`` + ``model.pth``, :mod:`fasttricks.runs`);
- a ``--seeds`` run (``runs/<name>/`` holding ``seed_<s>/`` run folders): seed-averaged;
- a k-fold, seed or snapshot ensemble folder (``runs/<name>/kfold``, ``.../seeds``,
  ``.../snapshots``, :mod:`fasttricks.ensemble`): the members' probabilities averaged;
- a file written by fastai's ``learn.export()`` (``*.pkl``, read with ``load_learner``).

What is predicted (``DATA``): ``test`` / ``valid`` (the recipe's own split; ids are positions),
a folder of images (every image file below it, sorted; id = file name without suffix), a CSV
(array recipes: one feature column per input value plus an optional ``id`` column; tabular
recipes: the feature columns; image recipes: a column of image files, relative to the CSV)
or a ``.npy`` array of features (ids are row numbers).

Every member's class probabilities (the loss function's activation, as ``get_preds`` gives
them) are averaged with equal weights, as :func:`fasttricks.ensemble.average_predictions`
does. ``tta=True`` uses fastai's ``Learner.tta`` (test-time augmentation: the mean over
``n=4`` passes with the training transforms, blended with the plain prediction as
``aug**0.25 * plain**0.75``; Howard & Gugger, "fastai: A Layered API for Deep Learning", 2020).
Without augmentation, TTA returns the plain prediction.

The CSV holds ``id,label`` (the most probable class; for multi-label data the classes whose
probability is above ``threshold``, joined by spaces), or ``id`` and one probability column
per class with ``--probs``; it is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._errors import print_error

__all__ = ["Predictions", "load_unlabelled", "main", "predict", "predict_probs",
           "write_predictions"]

logger = logging.getLogger(__name__)

_MEMBER_PATTERNS = (("kfold", "fold_*.pth"), ("seeds", "seed_*.pth"),
                    ("snapshots", "cycle_*.pth"))
_PATH_COLUMNS = ("path", "file", "filename", "fname", "image", "image_id", "id")
_SPLITS = {"train": 0, "valid": 1, "test": 2}


@dataclass
class Predictions:
    """Averaged class probabilities for a set of items.

    Attributes:
        ids: one id per item, in prediction order.
        probs: float32 array ``(n_items, n_classes)`` (softmax or sigmoid probabilities).
        vocab: class names, column ``i`` of ``probs`` naming class ``i``.
        multilabel: whether each item may have several classes (sigmoid outputs).
        kind: ``"run"``, ``"seeds"``, ``"kfold"``, ``"snapshots"`` or ``"export"``.
        n_models: how many models were averaged.
        tta: whether test-time augmentation was used.
    """

    ids: list
    probs: np.ndarray
    vocab: list
    multilabel: bool
    kind: str
    n_models: int
    tta: bool = False

    def labels(self, threshold: float = 0.5) -> list[str]:
        """The predicted class per item: the argmax, or for multi-label data every class whose
        probability is above ``threshold``, joined by spaces (empty when none is)."""
        names = [str(v) for v in self.vocab]
        if not self.multilabel:
            return [names[i] for i in self.probs.argmax(axis=1)]
        return [" ".join(n for n, on in zip(names, row) if on) for row in self.probs > threshold]

    def to_frame(self, probs: bool = False, threshold: float = 0.5) -> pd.DataFrame:
        """``id,label`` (see :meth:`labels`), or ``id`` plus one probability column per class."""
        if probs:
            frame = pd.DataFrame(self.probs, columns=[str(v) for v in self.vocab])
            frame.insert(0, "id", self.ids)
            return frame
        return pd.DataFrame({"id": self.ids, "label": self.labels(threshold)})


# --------------------------------------------------------------------------------------------
# what predicts: members that share one learner's data pipeline


@dataclass
class _Source:
    kind: str
    learn: Any  # the learner whose model is replaced by each member in turn
    weights: list  # one entry per member: a state-dict file, a module file, or None (as is)
    recipe: Any


def _load_state(learn: Any, entry: Any) -> None:
    """Put one member's weights into ``learn.model`` (a state dict, or a whole module file);
    ``load_state_dict`` copies them onto the model's device."""
    if entry is None:
        return
    from fasttricks.ensemble import load_ensemble_member

    member = load_ensemble_member(entry, model=learn.model, device="cpu")
    learn.model.load_state_dict(member.state_dict())


def _learner_for(recipe_path: Path) -> tuple[Any, Any]:
    from fasttricks.recipes import build_learner, load_recipe

    recipe = load_recipe(recipe_path)
    return build_learner(recipe), recipe


def _ensemble_members(folder: Path) -> tuple[str, list[Path]] | None:
    for kind, pattern in _MEMBER_PATTERNS:
        files = sorted(folder.glob(pattern), key=_natural)
        if files:
            return kind, files
    return None


def _natural(path: Path) -> tuple:
    """``fold_2`` before ``fold_10``."""
    stem = path.stem if path.is_file() or path.suffix else path.name
    head, _, tail = stem.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (stem, 0)


def _source(path: str | PathLike) -> _Source:
    """The learner and member weights a run folder, ensemble folder or export file holds."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".pkl":
            raise ValueError(f"{str(path)!r} is a file but not a learn.export() file (*.pkl); "
                             "give a run folder, an ensemble folder or an export file")
        from fastai.learner import load_learner

        learn = load_learner(path, cpu=False)
        return _Source("export", learn, [None], getattr(learn, "recipe", None))
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} does not exist; give a run folder "
                                "(runs/<name>), an ensemble folder (runs/<name>/kfold, seeds, "
                                "snapshots) or a learn.export() file")
    if (path / "model.pth").is_file() and (path / "recipe.yaml").is_file():
        learn, recipe = _learner_for(path / "recipe.yaml")
        return _Source("run", learn, [path / "model.pth"], recipe)
    members = _ensemble_members(path)
    if members is not None:
        kind, files = members
        if not (path / "recipe.yaml").is_file():
            raise FileNotFoundError(f"ensemble folder {str(path)!r} has no recipe.yaml; train "
                                    "it again with this version to predict from it")
        learn, recipe = _learner_for(path / "recipe.yaml")
        return _Source(kind, learn, list(files), recipe)
    runs = sorted((d for d in path.glob("seed_*") if (d / "model.pth").is_file()
                   and (d / "recipe.yaml").is_file()), key=_natural)
    if runs:
        learn, recipe = _learner_for(runs[0] / "recipe.yaml")
        return _Source("seeds", learn, [d / "model.pth" for d in runs], recipe)
    for sub in ("kfold", "seeds", "snapshots"):
        if (path / sub).is_dir() and _ensemble_members(path / sub) is not None:
            return _source(path / sub)
    raise FileNotFoundError(f"{str(path)!r} holds no trained model: expected recipe.yaml + "
                            "model.pth (a run), seed_<s>/ runs, or fold_<i>.pth / seed_<s>.pth / "
                            "cycle_<c>.pth with a recipe.yaml (an ensemble)")


# --------------------------------------------------------------------------------------------
# what is predicted


def _splits(dls: Any) -> Any:
    """The :class:`DataSplits` a recipe's loaders carry (None for an exported learner; fastai
    delegates ``dls.splits`` to its datasets' index lists then)."""
    from fasttricks.datasets import DataSplits

    splits = getattr(dls, "splits", None)
    return splits if isinstance(splits, DataSplits) else None


def _data_kind(learn: Any) -> str:
    from fasttricks.loaders import ArrayDataset

    splits = _splits(learn.dls)
    if splits is not None:
        return splits.kind
    dataset = learn.dls.valid.dataset
    if isinstance(dataset, ArrayDataset):
        return "array"
    if hasattr(dataset, "cont_names") or hasattr(learn.dls, "procs"):
        return "tabular"
    return "image"


def _image_files(folder: Path) -> list[Path]:
    from fasttricks.datasets import IMAGE_EXTENSIONS

    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no image files in {str(folder)!r} (looked for "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
    return files


def _unique_ids(ids: list, where: str) -> list:
    seen: dict = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    dup = [i for i, n in seen.items() if n > 1]
    if dup:
        raise ValueError(f"{where}: ids must be unique, {len(dup)} repeat (e.g. {dup[0]!r})")
    return ids


def _array_items(learn: Any, x: np.ndarray, where: str) -> Any:
    """A loader over feature rows, reshaped to the training items' shape."""
    import torch

    from fasttricks.loaders import ArrayDataset

    template = learn.dls.valid.dataset
    shape = tuple(template.x.shape[1:])
    n_values = int(np.prod(shape)) if shape else 1
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        if int(np.prod(x.shape[1:])) != n_values:
            raise ValueError(f"{where}: the model takes items of shape {shape} ({n_values} "
                             f"values each), got {x.shape[1:] and tuple(x.shape[1:])} per item")
        x = x.reshape(len(x), *shape)
    x = torch.as_tensor(np.ascontiguousarray(x)).to(template.x.dtype)
    y = torch.zeros((len(x), *template.y.shape[1:]), dtype=template.y.dtype)
    dataset = ArrayDataset(x, y, template.vocab, template.multilabel)
    return learn.dls.valid.new(dataset, shuffle=False, drop_last=False)


def _csv_images(df: pd.DataFrame, folder: Path, where: str) -> tuple[list, list[Path]]:
    from fasttricks.datasets import IMAGE_EXTENSIONS

    column = next((c for c in _PATH_COLUMNS if c in df.columns), df.columns[0])
    ids, files = [], []
    for value in df[column].astype(str):
        candidates = [Path(value), folder / value,
                      *(folder / f"{value}{ext}" for ext in IMAGE_EXTENSIONS)]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{where}: image {value!r} (column {column!r}) not found "
                                    f"in {str(folder)!r}")
        ids.append(value)
        files.append(found)
    return ids, files


def load_unlabelled(learn: Any, data: str | PathLike | np.ndarray | pd.DataFrame,
                    recipe: Any = None) -> tuple[list, Any]:
    """``(ids, loader)`` for unlabelled items the learner's pipeline can predict.

    Args:
        learn: the learner whose data pipeline (and, for arrays, item shape) is used.
        data: ``"test"`` / ``"valid"`` / ``"train"`` (the recipe's split; ids are positions),
            a folder of images, a CSV, a ``.npy`` file, a NumPy array or a DataFrame (see the
            module docstring for what each kind of recipe accepts).
        recipe: the recipe, to load its split when ``learn`` (an exported one) has no data.

    Raises:
        FileNotFoundError: no such file, folder, split, or image named in a CSV.
        ValueError: items that do not fit the model (feature count, data kind).
    """
    kind = _data_kind(learn)
    if isinstance(data, np.ndarray):
        if kind != "array":
            raise ValueError(f"a NumPy array of features needs an array recipe; this one "
                             f"predicts {kind} data")
        return list(range(len(data))), _array_items(learn, data, "array")
    if isinstance(data, pd.DataFrame):
        return _frame_items(learn, kind, data, Path("."), "DataFrame")
    text = str(data)
    path = Path(data)
    if not path.exists() and text in _SPLITS:
        return _split_items(learn, text, recipe)
    if path.is_dir():
        if kind != "image":
            raise ValueError(f"{text!r} is a folder; a {kind} recipe predicts a CSV or .npy "
                             "file of features (or 'test')")
        files = _image_files(path)
        ids = _unique_ids([p.stem for p in files], text)
        return ids, learn.dls.test_dl(files)
    if not path.is_file():
        raise FileNotFoundError(f"data {text!r} does not exist; give 'test', 'valid', a folder "
                                "of images, a .csv or a .npy file")
    if path.suffix.lower() == ".npy":
        if kind != "array":
            raise ValueError(f"{text!r}: a .npy array needs an array recipe; this one predicts "
                             f"{kind} data")
        x = np.load(path, allow_pickle=False)
        return list(range(len(x))), _array_items(learn, x, text)
    if path.suffix.lower() == ".csv":
        return _frame_items(learn, kind, pd.read_csv(path), path.parent, text)
    raise ValueError(f"data {text!r}: unknown kind of file; give a folder of images, a .csv or "
                     "a .npy file (or 'test')")


def _frame_items(learn: Any, kind: str, df: pd.DataFrame, folder: Path,
                 where: str) -> tuple[list, Any]:
    if kind == "image":
        ids, files = _csv_images(df, folder, where)
        return _unique_ids(ids, where), learn.dls.test_dl(files)
    ids = df["id"].tolist() if "id" in df.columns else list(range(len(df)))
    features = df.drop(columns=["id"]) if "id" in df.columns else df
    _unique_ids(ids, where)
    if kind == "tabular":
        return ids, learn.dls.test_dl(features)
    bad = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if bad:
        raise ValueError(f"{where}: feature columns must be numeric, {bad[0]!r} is not "
                         f"(non-numeric columns: {', '.join(map(str, bad))})")
    return ids, _array_items(learn, features.to_numpy(dtype=np.float32), where)


def _split_items(learn: Any, split: str, recipe: Any) -> tuple[list, Any]:
    dls = learn.dls
    if _splits(dls) is None:  # an exported learner keeps no data
        if recipe is None:
            raise ValueError(f"data {split!r} needs the recipe's dataset, and this learner has "
                             "no recipe; give a folder, CSV or .npy file")
        from fasttricks.recipes import build_dataloaders

        dls = build_dataloaders(recipe)
    dl = dls[_SPLITS[split]].new(shuffle=False, drop_last=False)
    return list(range(len(dl.dataset))), dl


# --------------------------------------------------------------------------------------------
# public


def _member_probs(learn: Any, dl: Any, tta: bool) -> np.ndarray:
    with learn.no_bar():
        if tta:
            preds = learn.tta(dl=dl)[0]
        else:
            preds = learn.get_preds(dl=dl)[0]
    return preds.float().cpu().numpy()


def _multilabel(learn: Any, recipe: Any) -> bool:
    splits = _splits(learn.dls)
    if splits is not None:
        return bool(splits.multilabel)
    dataset = learn.dls.valid.dataset
    if hasattr(dataset, "multilabel"):
        return bool(dataset.multilabel)
    import torch

    # an exported image or tabular learner: softmax outputs of two logits sum to one, sigmoid
    # outputs (multi-label) do not
    act = getattr(learn.loss_func, "activation", None)
    if act is None:
        return False
    out = act(torch.tensor([[0.0, 1.0]]))
    return not bool(torch.isclose(out.sum(), torch.tensor(1.0)))


def predict_probs(
    source: str | PathLike,
    data: str | PathLike | np.ndarray | pd.DataFrame = "test",
    *,
    tta: bool = False,
    progress: bool = False,
) -> Predictions:
    """Every model of ``source`` predicts ``data``; their probabilities are averaged.

    Args:
        source: a run folder, a ``--seeds`` run, a k-fold / seed / snapshot ensemble folder,
            or a ``learn.export()`` file (see the module docstring).
        data: what to predict (default ``"test"``, the recipe's test split); see
            :func:`load_unlabelled`.
        tta: fastai's test-time augmentation (``Learner.tta``) for every model (default
            False).
        progress: one log line per model (default False).

    Returns:
        :class:`Predictions` (ids, averaged probabilities, vocab).
    """
    if isinstance(data, (str, PathLike)) and not Path(data).exists() and str(data) not in _SPLITS:
        raise FileNotFoundError(f"data {str(data)!r} does not exist; give 'test', 'valid', a "
                                "folder of images, a .csv or a .npy file")
    src = _source(source)
    ids, dl = load_unlabelled(src.learn, data, src.recipe)
    total = None
    for i, entry in enumerate(src.weights):
        _load_state(src.learn, entry)
        probs = _member_probs(src.learn, dl, tta)
        total = probs if total is None else total + probs
        if progress:
            print(f"model {i + 1}/{len(src.weights)}: {len(ids)} items predicted",
                  file=sys.stderr, flush=True)
    probs = (total / len(src.weights)).astype(np.float32)
    return Predictions(ids=list(ids), probs=probs, vocab=list(src.learn.dls.vocab),
                       multilabel=_multilabel(src.learn, src.recipe), kind=src.kind,
                       n_models=len(src.weights), tta=tta)


def predict(
    source: str | PathLike,
    data: str | PathLike | np.ndarray | pd.DataFrame = "test",
    *,
    tta: bool = False,
    probs: bool = False,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Predict ``data`` with a run or ensemble: an ``id,label`` DataFrame (a submission).

    ``probs=True`` gives ``id`` and one probability column per class instead; multi-label
    labels are the classes above ``threshold`` (default 0.5), joined by spaces. See
    :func:`predict_probs` for ``source``, ``data`` and ``tta``.

    Example::

        frame = predict("runs/digits", "test")            # id, label
        frame = predict("runs/digits/kfold", "x.npy", tta=True, probs=True)
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return predict_probs(source, data, tta=tta).to_frame(probs=probs, threshold=threshold)


def write_predictions(frame: pd.DataFrame, path: str | PathLike) -> Path:
    """Write a predictions DataFrame as CSV (no index), atomically; returns the path."""
    from fasttricks._io import atomic_write_csv

    return atomic_write_csv(frame, path, index=False)


# --------------------------------------------------------------------------------------------
# command line

_USER_ERRORS = (KeyError, TypeError, ValueError, FileNotFoundError, NotADirectoryError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fasttricks.predict",
        description="Predict unlabelled items with a trained run or ensemble and write a "
                    "submission CSV (id,label).")
    p.add_argument("source", metavar="RUN_OR_ENSEMBLE",
                   help="a run folder (runs/<name>), an ensemble folder (runs/<name>/kfold, "
                        "seeds, snapshots) or a learn.export() .pkl file")
    p.add_argument("data", metavar="DATA",
                   help="'test' (the recipe's test split), a folder of images, a .csv or a "
                        ".npy file")
    p.add_argument("--tta", action="store_true", help="fastai test-time augmentation")
    p.add_argument("--out", default="submission.csv",
                   help="the CSV to write (default submission.csv)")
    p.add_argument("--probs", action="store_true",
                   help="write one probability column per class instead of the label")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="multi-label: classes above this probability (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="no line per model")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error instead of one line")
    return p


def _run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {args.threshold!r}")
    preds = predict_probs(args.source, args.data, tta=args.tta, progress=not args.no_progress)
    out = write_predictions(preds.to_frame(probs=args.probs, threshold=args.threshold),
                            args.out)
    models = "1 model" if preds.n_models == 1 else f"{preds.n_models} models averaged"
    print(f"{len(preds.ids)} predictions ({preds.kind}, {models}"
          f"{', TTA' if preds.tta else ''}) -> {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fasttricks.predict``; returns the exit status.

    Bad input (no such run or data, items that do not fit the model) prints one line
    ``error: ...`` and returns 2; ``--debug`` shows the traceback instead.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except _USER_ERRORS as err:
        if args.debug:
            raise
        return print_error(err)


if __name__ == "__main__":
    sys.exit(main())
