"""Rebalancing the training data: random oversampling and weighted sampling dataloaders.

* `oversample` / `oversample_indices`: naive random oversampling of rare classes until the
  classes are balanced. Buda et al. 2018 ("A systematic study of the class imbalance problem
  in convolutional neural networks", https://arxiv.org/abs/1710.05381) found it the best simple
  remedy for CNNs. Apply it to the training items only; validation data stays as it is.
* `weighted_dataloaders`: a copy of a fastai `DataLoaders` whose training loader draws items
  with replacement with probability proportional to per-item weights (by default derived from
  the labels with `fasttricks.data.class_weights`). Works for `TfmdDL` (DataBlock /
  Datasets), plain fastai `DataLoader` and tabular `TabDataLoader`, where fastai's own
  `WeightedDL` (built for `Datasets` only) does not apply.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fasttricks._labels import (
    CLASS_WEIGHT_METHODS,
    EncodedLabels,
    as_array,
    class_weights,
    encode_labels,
)
from fasttricks._validate import check_choice, did_you_mean

__all__ = [
    "WeightedSampler",
    "item_weights",
    "oversample",
    "oversample_indices",
    "weighted_dataloaders",
]

logger = logging.getLogger(__name__)

Strategy = str | float | Mapping[Any, int]


# --------------------------------------------------------------------------------------------
# oversampling


def _single_label(labels: Any, what: str) -> EncodedLabels:
    encoded = encode_labels(labels)
    if encoded.multilabel:
        raise ValueError(
            f"{what} needs single-label labels (one class per item); multi-hot labels have no "
            "unique class to balance. Use weighted_dataloaders with per-item weights instead."
        )
    return encoded


def _target_counts(encoded: EncodedLabels, strategy: Strategy) -> np.ndarray:
    counts = encoded.counts()
    present = counts > 0
    if isinstance(strategy, str):
        if strategy != "max":
            raise ValueError(
                f"strategy must be 'max', a ratio in (0, 1] or a mapping {{class: count}}, "
                f"got {strategy!r}{did_you_mean(strategy, ['max'])}"
            )
        return np.where(present, counts.max(), 0)
    if isinstance(strategy, Mapping):
        targets = counts.copy()
        index = {c: i for i, c in enumerate(encoded.classes)}
        for cls, count in strategy.items():
            if cls not in index:
                raise ValueError(
                    f"strategy names class {cls!r}, which is not in the labels "
                    f"{encoded.classes[:20]}{did_you_mean(cls, encoded.classes)}"
                )
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
                raise ValueError(
                    f"strategy count for class {cls!r} must be an int >= 0, got {count!r}"
                )
            if counts[index[cls]] == 0 and count > 0:
                raise ValueError(f"class {cls!r} has no items to duplicate")
            targets[index[cls]] = max(int(count), counts[index[cls]])
        return targets
    if isinstance(strategy, bool) or not isinstance(strategy, (int, float)):
        raise TypeError(f"strategy must be 'max', a float ratio or a mapping, got {strategy!r}")
    ratio = float(strategy)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(
            f"strategy ratio must be in (0, 1] (rare classes grow to ratio * largest class), "
            f"got {strategy!r}"
        )
    wanted = math.ceil(ratio * counts.max() - 1e-9)
    return np.where(present, np.maximum(counts, wanted), 0)


def oversample_indices(labels: Any, strategy: Strategy = "max", seed: int | None = 0) -> np.ndarray:
    """Indices that oversample the rare classes: all original indices first, then duplicates.

    Each class ``c`` with ``n_c`` items is grown to its target count ``t_c`` by repeating its
    items: every item is copied ``(t_c - n_c) // n_c`` times and a random subset (without
    replacement) supplies the remainder, so duplicates are spread as evenly as possible.
    The added duplicates are shuffled with ``seed``.

    Args:
        labels: single-label training labels (class indices or names), one per item.
        strategy: ``"max"`` (default; every class grows to the largest class's count), a
            ratio ``r`` in (0, 1] (every class grows to at least ``ceil(r * n_max)``), or a
            mapping ``{class: target count}`` (classes not named are left alone).
        seed: seed of the random choice of duplicates (None: not reproducible).

    Returns:
        An int64 array: ``arange(len(labels))`` followed by the indices of the duplicates.

    Example::

        >>> oversample_indices(["a", "a", "a", "b"], seed=0)
        array([0, 1, 2, 3, 3, 3])
    """
    encoded = _single_label(labels, "oversampling")
    counts = encoded.counts()
    targets = _target_counts(encoded, strategy)
    rng = np.random.default_rng(seed)
    extra = []
    for cls in np.flatnonzero(targets > counts):
        members = np.flatnonzero(encoded.codes == cls)
        deficit = int(targets[cls] - counts[cls])
        full, rest = divmod(deficit, len(members))
        extra.append(np.tile(members, full))
        extra.append(rng.choice(members, size=rest, replace=False))
    added = np.concatenate(extra).astype(np.int64) if extra else np.empty(0, dtype=np.int64)
    added = added[rng.permutation(len(added))]
    return np.concatenate([np.arange(len(encoded.codes), dtype=np.int64), added])


def _take(items: Any, idx: np.ndarray) -> Any:
    """Select `idx` from a DataFrame/Series (fresh RangeIndex), array, tensor or sequence."""
    if hasattr(items, "iloc"):
        return items.iloc[idx].reset_index(drop=True)
    if isinstance(items, np.ndarray):
        return items[idx]
    if isinstance(items, torch.Tensor):
        return items[torch.as_tensor(idx, device=items.device)]
    if isinstance(items, tuple):
        return tuple(items[i] for i in idx)
    if isinstance(items, Sequence) or hasattr(items, "__getitem__"):
        return [items[int(i)] for i in idx]
    raise TypeError(
        f"items must be a DataFrame, Series, numpy array, tensor or sequence, got "
        f"{type(items).__name__}"
    )


def oversample(
    items: Any,
    labels: Any,
    strategy: Strategy = "max",
    seed: int | None = 0,
) -> tuple[Any, Any]:
    """Randomly oversample rare classes of the training items until balanced.

    Naive random oversampling (Buda et al. 2018): duplicates of rare-class items are appended
    after every original item (see `oversample_indices`). Use it on the training split only.

    Args:
        items: the training items: a DataFrame, Series, numpy array, tensor or sequence.
        labels: their labels (same length), or, when ``items`` is a DataFrame, the name of its
            label column.
        strategy: ``"max"``, a ratio in (0, 1] or ``{class: target count}``; see
            `oversample_indices`.
        seed: seed of the random choice of duplicates.

    Returns:
        ``(items, labels)`` oversampled, each of the type given (a DataFrame gets a fresh
        RangeIndex; row ``i < len(items)`` is the original row ``i``).

    Example::

        train_df, _ = oversample(train_df, "label")
        x, y = oversample(x_train, y_train, strategy=0.5, seed=42)
    """
    if isinstance(labels, str) and hasattr(items, "columns"):
        if labels not in items.columns:
            raise KeyError(
                f"label column {labels!r} is not in the DataFrame"
                f"{did_you_mean(labels, list(items.columns))}; columns: {list(items.columns)}"
            )
        labels = items[labels]
    if len(items) != len(labels):
        raise ValueError(f"items has {len(items)} entries but labels has {len(labels)}")
    idx = oversample_indices(labels, strategy=strategy, seed=seed)
    return _take(items, idx), _take(labels, idx)


# --------------------------------------------------------------------------------------------
# weighted sampling


def item_weights(
    labels: Any,
    method: str = "sqrt_inv",
    vocab: Sequence | None = None,
    beta: float = 0.999,
) -> np.ndarray:
    """Per-item sampling weights from per-class `class_weights` of the items' labels.

    A single-label item gets its class's weight, so class ``c`` is drawn with probability
    proportional to ``n_c * w_c`` (``"sqrt_inv"``: proportional to ``sqrt(n_c)``; ``"inv"``:
    every class equally often). A multi-label item (multi-hot row) gets the largest weight of
    its positive labels (an item without labels gets the smallest class weight). Weights are
    computed over the classes present in ``labels``.

    Returns:
        A float64 array with one weight per item.
    """
    encoded = encode_labels(labels, vocab=vocab)
    present = encoded.counts() > 0
    if encoded.multilabel:
        weights = np.zeros(encoded.n_classes)
        weights[present] = class_weights(
            encoded.codes[:, present], method, beta=beta
        ).double().numpy()
        per_item = (encoded.codes * weights[None, :]).max(axis=1)
        empty = encoded.codes.sum(axis=1) == 0
        per_item[empty] = weights[present].min()
        return per_item
    remap = np.cumsum(present) - 1
    weights = class_weights(remap[encoded.codes], method, beta=beta).double().numpy()
    return weights[remap[encoded.codes]]


def _check_weights(weights: Any, n: int) -> np.ndarray:
    values = as_array(weights).astype(np.float64)
    if values.ndim != 1:
        raise ValueError(f"weights must be 1-D, one per training item, got shape {values.shape}")
    if len(values) != n:
        raise ValueError(
            f"weights has {len(values)} entries but the training set has {n} items"
        )
    if not np.isfinite(values).all():
        raise ValueError("weights must be finite, got NaN or inf")
    if (values < 0).any():
        bad = np.flatnonzero(values < 0)
        raise ValueError(
            f"weights must be >= 0, got {values[bad[0]]!r} at item {int(bad[0])} "
            f"({len(bad)} negative)"
        )
    if values.sum() <= 0:
        raise ValueError("weights are all zero; at least one item needs a positive weight")
    return values


class WeightedSampler:
    """A fastai ``shuffle_fn`` that draws an epoch's indices with replacement by weight.

    Called by fastai's ``DataLoader.get_idxs`` with the epoch's index list; returns as many
    indices, item ``i`` drawn with probability ``weights[i] / sum(weights)``. Its own numpy
    generator, seeded once, makes the sequence of epochs reproducible.

    Args:
        weights: one non-negative weight per item.
        seed: seed of the generator; None draws one from Python's `random` (so fastai's
            ``set_seed`` before building the loaders makes runs reproducible).
    """

    def __init__(self, weights: Any, seed: int | None = None) -> None:
        values = as_array(weights).astype(np.float64)
        values = _check_weights(values, len(values))
        self.probabilities = values / values.sum()
        self.seed = random.getrandbits(63) if seed is None else int(seed)
        self.rng = np.random.default_rng(self.seed)

    def __len__(self) -> int:
        return len(self.probabilities)

    def __call__(self, idxs: Sequence) -> list:
        if len(idxs) != len(self.probabilities):
            raise ValueError(
                f"the loader has {len(idxs)} items but {len(self.probabilities)} weights"
            )
        draws = self.rng.choice(len(idxs), size=len(idxs), p=self.probabilities)
        return [idxs[i] for i in draws]

    def __repr__(self) -> str:
        return f"WeightedSampler(n={len(self)}, seed={self.seed})"


def _infer_labels(dl: Any) -> Any:
    """Training labels of a fastai loader, without loading inputs where fastai allows."""
    dataset = dl.dataset
    ys = getattr(dataset, "ys", None)
    if ys is not None and hasattr(ys, "to_numpy"):  # TabularPandas: processed target columns
        values = ys.to_numpy()
        return values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
    tls = getattr(dataset, "tls", None)
    if tls is not None and len(tls) > getattr(dataset, "n_inp", 1):  # fastai Datasets
        target = tls[getattr(dataset, "n_inp", 1)]
        return _stack_targets([target[i] for i in range(len(target))])
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:  # torch TensorDataset
        return tensors[-1]
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        logger.info("reading labels item by item from the training set (%d items)", len(dataset))
        return _stack_targets([dataset[i][-1] for i in range(len(dataset))])
    raise ValueError(
        "could not find the training labels of this DataLoader; pass labels=... or weights=..."
    )


def _stack_targets(targets: list) -> np.ndarray:
    values = [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
              for t in targets]
    try:
        return np.stack(values)
    except ValueError as err:
        raise ValueError(
            "the training targets have different shapes (multi-label class lists?); pass "
            "labels=... as a 1-D array of classes or a 2-D multi-hot array"
        ) from err


def weighted_dataloaders(
    dls: Any,
    weights: Any = None,
    *,
    labels: Any = None,
    method: str = "sqrt_inv",
    seed: int | None = None,
) -> Any:
    """A copy of fastai ``dls`` whose training loader samples items by weight.

    Each training epoch draws ``len(train)`` items with replacement, item ``i`` with
    probability proportional to ``weights[i]``; the validation (and any further) loaders are
    the same objects as in ``dls``. Without ``weights``, per-item weights come from the labels
    (``labels``, or read from the training set: tabular target columns, a fastai
    ``Datasets``' target pipeline, a ``TensorDataset``'s last tensor) via `item_weights`
    with `class_weights` ``method``.

    Works for ``TfmdDL`` (DataBlock / Datasets), plain fastai ``DataLoader`` and tabular
    ``TabDataLoader``: the draw is plugged in as the loader's ``shuffle_fn``, which every
    fastai loader calls, so the loader keeps its own batching and transforms.

    Args:
        dls: a fastai ``DataLoaders`` (training loader first).
        weights: one non-negative weight per training item, or None.
        labels: training labels to derive weights from (instead of ``weights``).
        method: `class_weights` method for label-derived weights (default ``"sqrt_inv"``:
            class ``c`` is drawn with probability proportional to ``sqrt(n_c)``; ``"inv"``
            draws every class equally often).
        seed: seed of the draws (None: drawn from Python's `random`, which fastai's
            ``set_seed`` controls). The sequence of epochs is reproducible from it.

    Returns:
        A shallow copy of ``dls`` with a new training loader.

    Example::

        dls = TabularPandas(df, procs, cat_names, cont_names, y_names="label",
                            splits=splits).dataloaders(bs=64)
        dls = weighted_dataloaders(dls, method="inv", seed=42)   # balanced batches
    """
    loaders = getattr(dls, "loaders", None)
    if not loaders:
        raise TypeError(
            f"dls must be a fastai DataLoaders with at least a training loader, got "
            f"{type(dls).__name__}"
        )
    check_choice("class weight method", method, CLASS_WEIGHT_METHODS)
    train = loaders[0]
    n = train.n if getattr(train, "n", None) is not None else len(train.dataset)
    if n == 0:
        raise ValueError("the training loader is empty")
    if weights is not None and labels is not None:
        raise ValueError("pass either weights or labels, not both")
    if weights is None:
        if labels is None:
            labels = _infer_labels(train)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries but the training set has {n} items")
        weights = item_weights(labels, method)
    weights = _check_weights(weights, n)
    sampler = WeightedSampler(weights, seed=seed)
    new_train = train.new(cls=_sampling_class(train), shuffle=True, shuffle_fn=sampler)
    # a shallow copy that keeps every attribute of `dls` (copy.copy trips over fastai's
    # attribute forwarding on some DataLoaders subclasses)
    new_dls = object.__new__(type(dls))
    new_dls.__dict__.update(vars(dls))
    new_dls.loaders = [new_train, *loaders[1:]]
    return new_dls


def _sampling_class(train: Any) -> type:
    """The class of the weighted loader: ``type(train)``, or the nearest base class that draws
    its indices through ``shuffle_fn``.

    fastai's base ``DataLoader.get_idxs`` calls ``shuffle_fn``; its weighted loaders
    (``WeightedDL``, ``TabWeightedDL``, which ``TabularPandas`` uses by default) override
    ``get_idxs`` to draw from the global numpy generator with their own weights, so they are
    replaced by their parent (``TfmdDL``, ``TabDataLoader``). Any other class that overrides
    ``get_idxs`` cannot take weighted sampling and is refused.
    """
    from fastai.data.load import DataLoader

    cls = type(train)
    if not isinstance(train, DataLoader):
        raise TypeError(
            f"the training loader must be a fastai DataLoader (TfmdDL, TabDataLoader, ...), "
            f"got {cls.__name__}"
        )
    skippable = {"WeightedDL", "TabWeightedDL"}
    while cls.get_idxs is not DataLoader.get_idxs:
        if cls.__name__ not in skippable:
            raise TypeError(
                f"{type(train).__name__} overrides get_idxs ({cls.__name__}), so weighted "
                "sampling cannot be plugged into it; build the loaders with a TfmdDL, "
                "TabDataLoader or DataLoader"
            )
        cls = cls.__mro__[1]
    return cls
