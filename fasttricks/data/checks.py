"""Refuse (or impute) non-finite features and labels before any training starts.

One NaN pixel or an ``inf`` in a table column turns every weight into NaN within a step, and
the run then "finishes" with a NaN model. :func:`check_finite` looks at every split first and
either refuses the data with a message that names the split and the first bad item (array
data) or column (tabular data), or, when asked (a recipe's ``data.impute: median`` or
``mean``), fills the bad values with the training split's per-feature median or mean: the
usual simple imputation (scikit-learn's ``SimpleImputer``; fastai's ``FillMissing`` uses the
median). Labels are never imputed: a NaN label is refused, naming the item.

Tabular data keep fastai's convention for *missing* values: a NaN in a continuous column that
has finite training values is filled by ``FillMissing`` (median, plus a ``<column>_na``
indicator). An ``inf`` anywhere, or a column with no finite training value at all, is refused.
Image folders hold 8-bit pixels, which cannot be NaN, and are not checked here.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
import numpy as np
import pandas as pd

from fasttricks.datasets import DataSplits, Split

__all__ = ["IMPUTE_METHODS", "NonFiniteDataError", "check_finite"]

IMPUTE_METHODS = ("median", "mean")
_SPLITS = ("train", "valid", "test")
_FIX = "clean the data, or set data.impute: median (or mean) to fill them from the training split"


class NonFiniteDataError(ValueError):
    """Features or labels hold NaN/inf values (the message names the item or column)."""


def _kind(values: np.ndarray) -> str:
    return "nan" if np.isnan(values).any() else "inf"


def _check_labels(splits: DataSplits) -> None:
    for name in _SPLITS:
        y = np.asarray(getattr(splits, name).y)
        if not np.issubdtype(y.dtype, np.floating):
            continue
        bad = ~np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NonFiniteDataError(
                f"the {name} split's label of item {i} is {_kind(y[i])} "
                f"({int(bad.sum())} of {len(y)} items have NaN/inf labels); labels are never "
                "imputed: fix or drop those items")


def _array_stat(x: np.ndarray, method: str) -> np.ndarray:
    """Per-position median or mean over the finite values (NaN where there is none)."""
    clean = np.where(np.isfinite(x), x, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN positions: checked after
        return np.nanmedian(clean, axis=0) if method == "median" else np.nanmean(clean, axis=0)


def _check_arrays(splits: DataSplits, impute: str | None) -> DataSplits:
    xs = {name: np.asarray(getattr(splits, name).x) for name in _SPLITS}
    if not all(np.issubdtype(x.dtype, np.floating) for x in xs.values()):
        return splits
    bad = {name: ~np.isfinite(x.reshape(len(x), -1)).all(axis=1) for name, x in xs.items()}
    if not any(b.any() for b in bad.values()):
        return splits
    if impute is None:
        name = next(n for n in _SPLITS if bad[n].any())
        i = int(np.flatnonzero(bad[name])[0])
        item = xs[name][i]
        where = tuple(int(v) for v in np.argwhere(~np.isfinite(item))[0])
        raise NonFiniteDataError(
            f"the {name} split's item {i} has a {_kind(item[where])} feature value (at "
            f"position {where}; {int(bad[name].sum())} of {len(xs[name])} "
            f"{name} items have NaN/inf values): {_FIX}")
    fill = _array_stat(xs["train"], impute)
    if not np.isfinite(fill).all():
        where = tuple(int(v) for v in np.argwhere(~np.isfinite(fill))[0])
        raise NonFiniteDataError(
            f"feature at position {where} has no finite value in the training split, so "
            f"data.impute: {impute} cannot fill it: drop that feature or fix the data")
    out = {}
    for name, x in xs.items():
        if bad[name].any():
            x = np.where(np.isfinite(x), x, fill[None]).astype(x.dtype)
        out[name] = Split(x, getattr(splits, name).y)
    return replace(splits, **out)


def _check_table(splits: DataSplits, impute: str | None) -> DataSplits:
    cont = [c for c in splits.info.get("cont_names", []) if c in splits.train.x.columns]
    frames = {name: getattr(splits, name).x for name in _SPLITS}
    fills: dict[str, float] = {}
    for col in cont:
        train = pd.to_numeric(frames["train"][col], errors="coerce").to_numpy(dtype=np.float64)
        finite = train[np.isfinite(train)]
        has_inf = {n: np.isinf(pd.to_numeric(f[col], errors="coerce").to_numpy(np.float64))
                   for n, f in frames.items()}
        if impute is None:
            name = next((n for n in _SPLITS if has_inf[n].any()), None)
            if name is not None:
                row = int(np.flatnonzero(has_inf[name])[0])
                raise NonFiniteDataError(
                    f"column {col!r} has infinite values ({int(has_inf[name].sum())} in the "
                    f"{name} split, first at its row {row}): {_FIX}")
            if finite.size == 0:
                raise NonFiniteDataError(
                    f"column {col!r} has no finite value in the training split (all NaN): "
                    "drop the column (cont_names) or fix the data")
            continue
        if finite.size == 0:
            raise NonFiniteDataError(
                f"column {col!r} has no finite value in the training split, so data.impute: "
                f"{impute} cannot fill it: drop the column (cont_names) or fix the data")
        fills[col] = float(np.median(finite) if impute == "median" else np.mean(finite))
    if not fills:
        return splits
    out = {}
    for name, frame in frames.items():
        frame = frame.copy()
        for col, value in fills.items():
            values = pd.to_numeric(frame[col], errors="coerce")
            frame[col] = values.where(np.isfinite(values.to_numpy(np.float64)), value)
        out[name] = Split(frame, getattr(splits, name).y)
    return replace(splits, **out)


def check_finite(splits: DataSplits, impute: str | None = None) -> DataSplits:
    """``splits`` checked for NaN/inf features and labels; returns them (imputed if asked).

    Args:
        splits: the data (array, tabular or image splits; images are returned as they are).
        impute: None (default) refuses non-finite features; ``"median"`` or ``"mean"`` fills
            them per feature (array position or table column) from the training split's finite
            values.

    Raises:
        NonFiniteDataError: a non-finite feature without ``impute`` (names the split and item,
            or the column), a feature with no finite training value, or a NaN/inf label.
    """
    if impute is not None and impute not in IMPUTE_METHODS:
        raise ValueError(f"impute must be None or one of {IMPUTE_METHODS}, got {impute!r}")
    _check_labels(splits)
    if splits.kind == "array":
        return _check_arrays(splits, impute)
    if splits.kind == "tabular":
        return _check_table(splits, impute)
    return splits
