"""Small built-in datasets that need no download, plus loaders for user image folders and CSVs.

Every loader returns a :class:`DataSplits`: fixed train / valid / test splits drawn from a seed,
so a recipe always trains and is scored on the same items. Built-in data are NumPy arrays
(``x`` float32, ``y`` int64 class indices or a float32 multi-hot matrix); an image folder keeps
a list of paths and a CSV keeps a DataFrame of feature columns.

Built-in names (``load_dataset(name, **kwargs)``):

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), ``x`` of shape
  ``(n, 1, 8, 8)`` scaled to [0, 1].
- ``mnist1d``: MNIST-1D (Greydanus & Kobak, 2020, https://arxiv.org/abs/2011.14439), generated
  locally with ``mnist1d.data.make_dataset(get_dataset_args())`` (the standard 4,000 / 1,000
  train / test split) and cached under the user cache folder; ``x`` of shape ``(n, 1, 40)``.
- ``longtail``: a class-imbalanced training split of ``mnist1d`` or ``digits`` with an
  exponential profile (Cui et al., 2019, https://arxiv.org/abs/1901.05555), the largest class
  ``imbalance`` times the smallest; valid and test stay balanced.
- ``multilabel``: scikit-learn's ``make_multilabel_classification`` (multi-hot targets).
- ``synthetic``: scikit-learn's ``make_classification``; tiny, for tests and smoke runs.
"""

from __future__ import annotations

import inspect
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fasttricks._cache import cache_dir as _cache_dir
from fasttricks._io import atomic_path
from fasttricks._validate import check_choice, check_range
from fasttricks.registry import Registry

__all__ = [
    "DATASETS",
    "DataSplits",
    "Split",
    "dataset_parameters",
    "digits",
    "dataset_kind",
    "image_csv",
    "image_folder",
    "list_datasets",
    "load_dataset",
    "longtail",
    "mnist1d",
    "multilabel",
    "register_dataset",
    "synthetic",
    "tabular_csv",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _take(x: Any, idx: np.ndarray) -> Any:
    """Index arrays, DataFrames and lists alike with an integer index array."""
    if isinstance(x, pd.DataFrame):
        return x.iloc[idx].reset_index(drop=True)
    if isinstance(x, np.ndarray):
        return x[idx]
    return [x[int(i)] for i in idx]


def _concat(a: Any, b: Any) -> Any:
    if isinstance(a, pd.DataFrame):
        return pd.concat([a, b], ignore_index=True)
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    return list(a) + list(b)


@dataclass
class Split:
    """One split of a dataset: inputs ``x`` and targets ``y`` (same length).

    ``x`` is a NumPy array for built-in data, a list of paths for an image folder, or a
    DataFrame of feature columns for tabular data. ``y`` is an int64 array of class indices
    (into ``DataSplits.vocab``) or, for multi-label data, a float32 multi-hot matrix.
    """

    x: Any
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(
                f"x and y must have the same length, got {len(self.x)} and {len(self.y)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: Sequence[int] | np.ndarray) -> Split:
        """A new split with the items at positions ``idx`` (repeats allowed, for oversampling)."""
        idx = np.asarray(idx, dtype=np.int64)
        return Split(_take(self.x, idx), self.y[idx])


@dataclass
class DataSplits:
    """Fixed train / valid / test splits of one dataset.

    Attributes:
        train, valid, test: the three :class:`Split` s.
        vocab: class names, index ``i`` naming class ``i``.
        multilabel: whether ``y`` is a multi-hot matrix.
        kind: ``"array"`` (built-in NumPy data), ``"image"`` (paths) or ``"tabular"`` (DataFrame).
        info: loader-specific extras (e.g. ``cat_names``/``cont_names`` for tabular data,
            ``size`` for images).
        unlabelled: items without labels to predict (a competition's test folder or CSV), or
            None. Image data: a list of paths; ``dls.unlabelled`` is their loader.
    """

    train: Split
    valid: Split
    test: Split
    vocab: list
    multilabel: bool = False
    kind: str = "array"
    info: dict = field(default_factory=dict)
    unlabelled: Any = None

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(vocab)``)."""
        return len(self.vocab)

    def pool(self) -> Split:
        """Train followed by valid: the pool that k-fold cross-validation splits."""
        y = np.concatenate([self.train.y, self.valid.y])
        return Split(_concat(self.train.x, self.valid.x), y)

    def resplit(self, train_idx: Sequence[int], valid_idx: Sequence[int]) -> DataSplits:
        """A copy whose train / valid are drawn from :meth:`pool` by index; test is unchanged."""
        pool = self.pool()
        n = len(pool)
        for name, idx in (("train_idx", train_idx), ("valid_idx", valid_idx)):
            arr = np.asarray(idx)
            if arr.size and (arr.min() < 0 or arr.max() >= n):
                raise IndexError(f"{name} must index the pool of {n} items, got values in "
                                 f"[{arr.min()}, {arr.max()}]")
        return replace(self, train=pool.take(train_idx), valid=pool.take(valid_idx))

    def __repr__(self) -> str:
        return (f"DataSplits(kind={self.kind!r}, train={len(self.train)}, valid={len(self.valid)}, "
                f"test={len(self.test)}, classes={len(self.vocab)}, multilabel={self.multilabel})")


# --------------------------------------------------------------------------------------------
# splitting helpers


def _stratified_three_way(
    y: np.ndarray, valid_pct: float, test_pct: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle each class with ``seed`` and cut it into train / valid / test by percentage."""
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    strat = y if y.ndim == 1 else np.zeros(len(y), dtype=np.int64)
    for c in np.unique(strat):
        idx = rng.permutation(np.flatnonzero(strat == c))
        n_test = int(round(len(idx) * test_pct))
        n_valid = int(round(len(idx) * valid_pct))
        test.append(idx[:n_test])
        valid.append(idx[n_test:n_test + n_valid])
        train.append(idx[n_test + n_valid:])
    return tuple(np.sort(np.concatenate(parts)) for parts in (train, valid, test))


def _carve_valid(y: np.ndarray, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    train, valid, _ = _stratified_three_way(y, valid_pct, 0.0, seed)
    return train, valid


def _check_pcts(valid_pct: float, test_pct: float | None = None) -> None:
    check_range("valid_pct", valid_pct, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    if test_pct is not None:
        check_range("test_pct", test_pct, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        if valid_pct + test_pct >= 1.0:
            raise ValueError(f"valid_pct + test_pct must be below 1, got {valid_pct} + {test_pct}")


# --------------------------------------------------------------------------------------------
# built-in datasets


def digits(valid_pct: float = 0.1, test_pct: float = 0.2, seed: int = 0) -> DataSplits:
    """scikit-learn's 8x8 digits as ``(n, 1, 8, 8)`` float32 in [0, 1], stratified splits.

    Args:
        valid_pct: fraction of each class for validation (default 0.1).
        test_pct: fraction of each class for the test split (default 0.2).
        seed: seed of the split (the data itself is fixed).
    """
    from sklearn.datasets import load_digits

    _check_pcts(valid_pct, test_pct)
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    tr, va, te = _stratified_three_way(y, valid_pct, test_pct, seed)
    return DataSplits(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]),
                      vocab=[str(i) for i in range(10)], info={"name": "digits"})


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """The standard MNIST-1D arrays (4,000 train, 1,000 test), generated once and cached."""
    path = _cache_dir() / "mnist1d_standard_v1.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                return {k: data[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            logger.warning("ignoring unreadable MNIST-1D cache %s; regenerating it", path)
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global random and NumPy generators: keep the caller's streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    arrays = {
        "x": raw["x"].astype(np.float32), "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32), "y_test": raw["y_test"].astype(np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return arrays


def mnist1d(valid_pct: float = 0.1, seed: int = 0) -> DataSplits:
    """MNIST-1D on its standard 4,000 / 1,000 train / test split, ``x`` of shape ``(n, 1, 40)``.

    The validation split is carved (stratified) out of the 4,000 training items with ``seed``;
    the test split is always the standard 1,000. Source: Greydanus & Kobak, "Scaling down deep
    learning with MNIST-1D" (2020), https://arxiv.org/abs/2011.14439.

    Args:
        valid_pct: fraction of the training items held out for validation (default 0.1).
        seed: seed of the train / valid split.
    """
    _check_pcts(valid_pct)
    arr = _mnist1d_arrays()
    x, y = arr["x"][:, None], arr["y"]
    tr, va = _carve_valid(y, valid_pct, seed)
    return DataSplits(Split(x[tr], y[tr]), Split(x[va], y[va]),
                      Split(arr["x_test"][:, None], arr["y_test"]),
                      vocab=[str(i) for i in range(10)], info={"name": "mnist1d"})


def longtail(
    base: str = "mnist1d", imbalance: float = 50.0, valid_pct: float = 0.1, seed: int = 0
) -> DataSplits:
    """A long-tailed training split: class ``c`` keeps ``n_max * imbalance**(-c / (C - 1))`` items.

    The exponential profile of Cui et al., "Class-Balanced Loss Based on Effective Number of
    Samples" (CVPR 2019). Valid and test stay balanced, so plain accuracy on them is the
    class-balanced accuracy. At least one item per class is kept.

    Args:
        base: ``"mnist1d"`` (default) or ``"digits"``.
        imbalance: ratio of the largest to the smallest class (default 50, i.e. 50:1).
        valid_pct: validation fraction passed to the base dataset.
        seed: seed of the base split and of which items are dropped.
    """
    check_choice("base", base, ("mnist1d", "digits"))
    check_range("imbalance", imbalance, low=1.0)
    splits = mnist1d(valid_pct, seed) if base == "mnist1d" else digits(valid_pct, 0.2, seed)
    rng = np.random.default_rng(seed + 1)
    y = splits.train.y
    n_classes = len(splits.vocab)
    n_max = np.bincount(y, minlength=n_classes).max()
    keep = []
    for c in range(n_classes):
        n_c = max(1, int(n_max * imbalance ** (-c / max(n_classes - 1, 1))))
        idx = np.flatnonzero(y == c)
        keep.append(rng.permutation(idx)[: min(n_c, len(idx))])
    keep_idx = np.sort(np.concatenate(keep))
    info = {"name": "longtail", "base": base, "imbalance": float(imbalance)}
    return replace(splits, train=splits.train.take(keep_idx), info=info)


def multilabel(
    n_samples: int = 3000,
    n_features: int = 40,
    n_classes: int = 10,
    n_labels: int = 2,
    valid_pct: float = 0.15,
    test_pct: float = 0.2,
    seed: int = 0,
) -> DataSplits:
    """A multi-label set from scikit-learn's ``make_multilabel_classification``.

    Features are bag-of-words counts, stored as ``log1p`` and standardised with the training
    statistics; targets are a float32 multi-hot matrix. The generator and the split use ``seed``;
    the split is iterative stratification (`fasttricks.data.stratified_split`), so every label's
    positive rate is about the same in train, valid and test.

    Args:
        n_samples: items in total (default 3,000).
        n_features: input features (default 40).
        n_classes: labels (default 10).
        n_labels: average number of labels per item (default 2).
        valid_pct, test_pct: split fractions (default 0.15, 0.2).
        seed: seed of the generator and the split.
    """
    from sklearn.datasets import make_multilabel_classification

    _check_pcts(valid_pct, test_pct)
    x, y = make_multilabel_classification(
        n_samples=n_samples, n_features=n_features, n_classes=n_classes, n_labels=n_labels,
        allow_unlabeled=False, random_state=seed,
    )
    x = np.log1p(x).astype(np.float32)
    y = y.astype(np.float32)
    # iterative stratification keeps every label's rate close in train, valid and test
    from fasttricks.data.splits import stratified_split

    tr, va, te = stratified_split(y, valid_pct, test_pct, seed)
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mean) / std
    return DataSplits(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]),
                      vocab=[f"label_{i}" for i in range(n_classes)], multilabel=True,
                      info={"name": "multilabel"})


def synthetic(
    n_samples: int = 1000,
    n_features: int = 20,
    n_classes: int = 3,
    n_informative: int = 10,
    valid_pct: float = 0.2,
    test_pct: float = 0.2,
    seed: int = 0,
) -> DataSplits:
    """A tabular classification set from scikit-learn's ``make_classification``.

    Args:
        n_samples: items in total (default 1,000).
        n_features: input features (default 20), ``n_informative`` of them useful (default 10).
        n_classes: classes (default 3).
        valid_pct, test_pct: split fractions (default 0.2 each).
        seed: seed of the generator and the split.
    """
    from sklearn.datasets import make_classification

    _check_pcts(valid_pct, test_pct)
    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=n_informative,
        n_redundant=0, n_classes=n_classes, random_state=seed,
    )
    x, y = x.astype(np.float32), y.astype(np.int64)
    tr, va, te = _stratified_three_way(y, valid_pct, test_pct, seed)
    return DataSplits(Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]),
                      vocab=[str(i) for i in range(n_classes)], info={"name": "synthetic"})


# --------------------------------------------------------------------------------------------
# user data


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir()
                  if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def image_folder(
    path: str | Path,
    train: str = "train",
    valid: str | None = "valid",
    test: str | None = "test",
    valid_pct: float = 0.2,
    size: int = 64,
    seed: int = 0,
) -> DataSplits:
    """Images in fastai's folder convention: ``path/<split>/<class>/<image>``.

    ``path/train`` is required. When ``path/valid`` is missing, ``valid_pct`` of each training
    class is held out; when ``path/test`` has class folders it is the labelled test split, when
    it holds images directly (a competition's test set) they are ``unlabelled`` and the
    validation split doubles as test, as it does when ``path/test`` is missing. Class names come
    from the training folders, sorted; an empty class folder is refused by name.

    Args:
        path: the root folder.
        train, valid, test: sub-folder names (default ``train``, ``valid``, ``test``).
        valid_pct: held-out fraction when there is no valid folder (default 0.2).
        size: final image size in pixels, ``size x size`` (default 64).
        seed: seed of the held-out split.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder: folder {str(root)!r} does not exist")
    train_dir = root / train
    if not train_dir.is_dir():
        raise FileNotFoundError(f"image_folder expects a '{train}' folder in {root}, found none")
    vocab = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not vocab:
        raise ValueError(f"{train_dir} has no class sub-folders")
    class_idx = {c: i for i, c in enumerate(vocab)}

    def scan(folder: Path) -> Split:
        xs: list[Path] = []
        ys: list[int] = []
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            if cls.name not in class_idx:
                raise ValueError(f"class folder {cls} is not one of the training classes {vocab}")
            files = _image_files(cls)
            if not files:
                raise ValueError(f"class folder {str(cls)!r} (class {cls.name!r}) has no images "
                                 f"(extensions {', '.join(IMAGE_EXTENSIONS)}); add images or "
                                 "remove the folder")
            xs += files
            ys += [class_idx[cls.name]] * len(files)
        return Split(xs, np.asarray(ys, dtype=np.int64))

    train_split = scan(train_dir)
    if valid is not None and (root / valid).is_dir():
        valid_split = scan(root / valid)
        if len(valid_split) == 0:
            raise ValueError(f"image_folder: the validation folder {str(root / valid)!r} has no "
                             f"class folders with images; put images in class folders there "
                             f"(classes {vocab}) or remove it to hold out valid_pct of train")
    else:
        _check_pcts(valid_pct)
        n_images = len(train_split)
        tr, va = _carve_valid(train_split.y, valid_pct, seed)
        if len(tr) == 0 or len(va) == 0:
            raise ValueError(
                f"image_folder {str(root)!r}: holding out valid_pct={valid_pct} of each class "
                f"of the {n_images} image(s) in {len(vocab)} class(es) of {str(train_dir)!r} "
                f"leaves {len(tr)} training and {len(va)} validation image(s); both need at "
                f"least one: add images, change valid_pct, or add a {valid or 'valid'!r} folder")
        train_split, valid_split = train_split.take(tr), train_split.take(va)
    test_split, unlabelled = valid_split, None
    test_dir = root / test if test is not None else None
    if test_dir is not None and test_dir.is_dir():
        if any(p.is_dir() for p in test_dir.iterdir()):
            test_split = scan(test_dir)
        else:
            unlabelled = _image_files(test_dir)
    return DataSplits(train_split, valid_split, test_split, vocab=vocab, kind="image",
                      info={"name": "image_folder", "size": int(size)}, unlabelled=unlabelled)


_ID_COLUMNS = ("path", "id", "image_id", "image", "filename", "fname", "file")


def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read as CSV: {err}") from err


def _column(df: pd.DataFrame, csv: Path, name: str | None, what: str,
            candidates: Sequence[str] = ()) -> str:
    """The column ``name`` of ``df`` (or the first of ``candidates`` present when None)."""
    if name is None:
        for c in candidates:
            if c in df.columns:
                return c
        raise KeyError(f"{str(csv)!r} has no {what} column (looked for "
                       f"{', '.join(map(repr, candidates))}); columns: {list(df.columns)}. "
                       f"Name it with data.{what}_col")
    if name not in df.columns:
        raise KeyError(f"{str(csv)!r} has no {what} column {name!r}; columns: "
                       f"{list(df.columns)}{_did_you_mean(name, df.columns)}")
    return name


def _did_you_mean(name: str, options: Any) -> str:
    from fasttricks._validate import did_you_mean

    return did_you_mean(name, [str(o) for o in options])


def _image_paths(df: pd.DataFrame, col: str, csv: Path, folder: Path, suffix: str) -> list[Path]:
    if df[col].isna().any():
        rows = df.index[df[col].isna()].tolist()
        raise ValueError(f"{str(csv)!r}: column {col!r} is empty in {len(rows)} row(s) (first "
                         f"data rows {[r + 2 for r in rows[:5]]}, counting the header as 1)")
    paths = [folder / f"{v}{suffix}" for v in df[col].astype(str)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{str(csv)!r}: {len(missing)} of {len(paths)} image(s) named in column {col!r} do "
            f"not exist, e.g. {', '.join(str(p) for p in missing[:3])} (folder {str(folder)!r}, "
            f"suffix {suffix!r})")
    return paths


def image_csv(
    path: str | Path,
    folder: str | None = None,
    path_col: str | None = None,
    label_col: str = "label",
    suffix: str = "",
    label_delim: str | None = None,
    valid_col: str | None = None,
    fold_col: str | None = None,
    valid_fold: int = 0,
    valid_pct: float = 0.2,
    test_csv: str | None = None,
    test_folder: str | None = None,
    size: int = 64,
    seed: int = 0,
) -> DataSplits:
    """Images listed in a CSV: a path/id column and a label column (Kaggle's ``train.csv``).

    Each row's image is ``folder / (value + suffix)``. Multi-label rows hold every label in the
    one column, separated by ``label_delim`` (targets become a multi-hot matrix). The validation
    split is the rows where ``valid_col`` is true, or where ``fold_col == valid_fold``, else
    ``valid_pct`` of each class held out with ``seed``. ``test_csv`` (with the label column: a
    labelled test split; without: unlabelled items) or ``test_folder`` (every image in it,
    unlabelled) give the items to predict; without a labelled test split valid doubles as test.

    A missing file or column, an empty label (NaN) or a missing image raises one error naming
    the file and the column.

    Args:
        path: the CSV file.
        folder: image folder, relative to the CSV's folder or absolute (default: the CSV's).
        path_col: the path/id column (default: the first of ``path``, ``id``, ``image_id``,
            ``image``, ``filename``, ``fname``, ``file``).
        label_col: the label column (default ``label``).
        suffix: appended to each path/id, e.g. ``.jpg`` (default none).
        label_delim: separator of several labels in one cell (default None: single-label).
        valid_col: boolean column marking validation rows (default: ``is_valid`` if present).
        fold_col, valid_fold: a fold column and the fold used for validation (default 0).
        valid_pct: held-out fraction when neither column is given (default 0.2).
        test_csv: a CSV of test items, relative to the CSV's folder or absolute.
        test_folder: a folder of unlabelled test images (relative to the CSV's folder or
            absolute).
        size: final image size in pixels (default 64).
        seed: seed of the held-out split.
    """
    csv = Path(path)
    df = _read_csv(csv, "image_csv file")
    base = csv.parent
    img_dir = base if folder is None else (base / folder)
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image_csv: image folder {str(img_dir)!r} does not exist")
    pcol = _column(df, csv, path_col, "path", _ID_COLUMNS)
    lcol = _column(df, csv, label_col, "label")

    def labels_of(frame: pd.DataFrame, file: Path) -> list:
        if frame[lcol].isna().any():
            rows = frame.index[frame[lcol].isna()].tolist()
            raise ValueError(f"{str(file)!r}: label column {lcol!r} is empty (NaN) in "
                             f"{len(rows)} row(s) (first data rows {[r + 2 for r in rows[:5]]}, "
                             "counting the header as 1); every row needs a label")
        if label_delim is None:
            return frame[lcol].astype(str).tolist()
        return [[t for t in str(v).split(label_delim) if t] for v in frame[lcol]]

    labels = labels_of(df, csv)
    vocab = sorted({t for v in labels for t in v} if label_delim is not None else set(labels))
    index = {c: i for i, c in enumerate(vocab)}

    def encode(values: list, file: Path) -> np.ndarray:
        unknown = sorted({t for v in values for t in (v if label_delim is not None else [v])}
                         - set(index))
        if unknown:
            raise ValueError(f"{str(file)!r}: labels {unknown[:5]} in column {lcol!r} are not in "
                             f"the training labels {vocab}")
        if label_delim is None:
            return np.asarray([index[v] for v in values], dtype=np.int64)
        y = np.zeros((len(values), len(vocab)), dtype=np.float32)
        for r, v in enumerate(values):
            y[r, [index[t] for t in v]] = 1.0
        return y

    whole = Split(_image_paths(df, pcol, csv, img_dir, suffix), encode(labels, csv))
    if valid_col is None and fold_col is None and "is_valid" in df.columns:
        valid_col = "is_valid"
    if valid_col is not None:
        vcol = _column(df, csv, valid_col, "valid")
        values = df[vcol]
        if values.dtype == object:
            values = values.astype(str).str.strip().str.lower().map(
                {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False})
        if values.isna().any():
            raise ValueError(f"{str(csv)!r}: column {vcol!r} must be true/false in every row")
        is_valid = values.astype(bool).to_numpy()
        va, tr = np.flatnonzero(is_valid), np.flatnonzero(~is_valid)
    elif fold_col is not None:
        fcol = _column(df, csv, fold_col, "fold")
        folds = df[fcol].to_numpy()
        if not (folds == valid_fold).any():
            raise ValueError(f"{str(csv)!r}: no row of column {fcol!r} is fold {valid_fold!r}; "
                             f"folds present: {sorted(set(folds.tolist()))}")
        va, tr = np.flatnonzero(folds == valid_fold), np.flatnonzero(folds != valid_fold)
    else:
        _check_pcts(valid_pct)
        if label_delim is None:
            tr, va = _carve_valid(whole.y, valid_pct, seed)
        else:
            from fasttricks.data.splits import stratified_split

            tr, va = stratified_split(whole.y, valid_pct, None, seed)
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"{str(csv)!r}: the split leaves {len(tr)} training and {len(va)} "
                         "validation rows; both need at least one")
    train_split, valid_split = whole.take(tr), whole.take(va)
    test_split, unlabelled = valid_split, None
    if test_csv is not None:
        tcsv = base / test_csv
        tdf = _read_csv(tcsv, "image_csv test_csv")
        tp = _column(tdf, tcsv, path_col or (pcol if pcol in tdf.columns else None), "path",
                     _ID_COLUMNS)
        tpaths = _image_paths(tdf, tp, tcsv, img_dir, suffix)
        if lcol in tdf.columns:
            test_split = Split(tpaths, encode(labels_of(tdf, tcsv), tcsv))
        else:
            unlabelled = tpaths
    if test_folder is not None:
        tdir = base / test_folder
        if not tdir.is_dir():
            raise FileNotFoundError(f"image_csv: test_folder {str(tdir)!r} does not exist")
        found = _image_files(tdir)
        if not found:
            raise ValueError(f"image_csv: test_folder {str(tdir)!r} has no images")
        unlabelled = (unlabelled or []) + found
    return DataSplits(train_split, valid_split, test_split, vocab=vocab,
                      multilabel=label_delim is not None, kind="image",
                      info={"name": "image_csv", "size": int(size), "path_col": pcol,
                            "label_col": lcol}, unlabelled=unlabelled)


def tabular_csv(
    path: str | Path | pd.DataFrame,
    y_name: str,
    cat_names: Sequence[str] | None = None,
    cont_names: Sequence[str] | None = None,
    valid_pct: float = 0.2,
    test_pct: float = 0.2,
    seed: int = 0,
) -> DataSplits:
    """A CSV file (or DataFrame) for tabular classification with fastai's ``TabularPandas``.

    Columns not named are inferred: non-numeric ones are categorical, numeric ones continuous.

    Args:
        path: a CSV path or a DataFrame.
        y_name: the target column (classes, any dtype).
        cat_names, cont_names: categorical / continuous columns (default: inferred).
        valid_pct, test_pct: stratified split fractions (default 0.2 each).
        seed: seed of the split.
    """
    df = path.copy() if isinstance(path, pd.DataFrame) else pd.read_csv(path)
    if y_name not in df.columns:
        raise KeyError(f"y_name {y_name!r} is not a column; columns are {list(df.columns)}")
    features = [c for c in df.columns if c != y_name]
    for label, names in (("cat_names", cat_names), ("cont_names", cont_names)):
        for n in names or ():
            check_choice(label[:-1], n, features)
    if cat_names is None:
        named = set(cont_names or ())
        cat_names = [c for c in features
                     if c not in named and not pd.api.types.is_numeric_dtype(df[c])]
    if cont_names is None:
        cont_names = [c for c in features if c not in set(cat_names)]
    _check_pcts(valid_pct, test_pct)
    missing = np.flatnonzero(df[y_name].isna().to_numpy())
    if missing.size:
        where = "" if isinstance(path, pd.DataFrame) else f" of {str(path)!r}"
        raise ValueError(f"label column {y_name!r}{where} is empty (NaN) in {missing.size} "
                         f"row(s), first in data row {int(missing[0]) + 1} (file line "
                         f"{int(missing[0]) + 2}); labels are never imputed: fill or drop "
                         "those rows")
    labels = df[y_name].astype(str)
    vocab = sorted(labels.unique())
    y = labels.map({c: i for i, c in enumerate(vocab)}).to_numpy(dtype=np.int64)
    x = df[list(cat_names) + list(cont_names)].reset_index(drop=True)
    tr, va, te = _stratified_three_way(y, valid_pct, test_pct, seed)
    whole = Split(x, y)
    return DataSplits(whole.take(tr), whole.take(va), whole.take(te), vocab=vocab, kind="tabular",
                      info={"name": "tabular_csv", "y_name": y_name,
                            "cat_names": list(cat_names), "cont_names": list(cont_names)})


DATASETS: Registry[Callable[..., DataSplits]] = Registry("dataset")


def register_dataset(name: str, loader: Callable[..., DataSplits], *,
                     overwrite: bool = False) -> None:
    """Make ``loader(**kwargs) -> DataSplits`` loadable by name (and usable in recipes)."""
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {loader!r}")
    DATASETS.register(name, loader, overwrite=overwrite)


for _name, _loader in (("digits", digits), ("mnist1d", mnist1d), ("longtail", longtail),
                       ("multilabel", multilabel), ("synthetic", synthetic),
                       ("image_folder", image_folder), ("image_csv", image_csv),
                       ("tabular_csv", tabular_csv)):
    register_dataset(_name, _loader)

# loaders whose splits hold image paths: the recipe's image keys (augment, presize...) apply
image_folder.data_kind = "image"
image_csv.data_kind = "image"


def list_datasets(pattern: str | None = None) -> list[str]:
    """Names accepted by :func:`load_dataset`; ``pattern`` filters with a glob."""
    return DATASETS.names(pattern)


def dataset_kind(name: str) -> str | None:
    """``"image"`` for loaders of image paths (``image_folder``, ``image_csv``), else None
    (a loader marks itself with a ``data_kind`` attribute)."""
    return getattr(DATASETS.get(name), "data_kind", None)


def dataset_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments the loader ``name`` accepts (used to validate recipes)."""
    return dict(inspect.signature(DATASETS.get(name)).parameters)


def load_dataset(name: str, **kwargs: Any) -> DataSplits:
    """Load a dataset by name (see :func:`list_datasets`) with its keyword arguments.

    Example:
        >>> splits = load_dataset("digits", seed=0)
        >>> splits.train.x.shape[1:], len(splits.vocab)
        ((1, 8, 8), 10)
    """
    params = dataset_parameters(name)
    for key in kwargs:
        check_choice(f"{name} argument", key, list(params))
    return DATASETS.get(name)(**kwargs)
