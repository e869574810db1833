"""fastai ``DataLoaders`` (train, valid, test) from :class:`~fasttricks.datasets.DataSplits`.

Array data goes through :class:`TensorDataLoader`, a fastai ``DataLoader`` that slices whole
batches out of tensors held in memory instead of collating items one by one; an epoch of the
8x8 digits takes milliseconds instead of the per-item Python overhead of fastai's ``Datasets``.
It still is a fastai ``DataLoader`` (``new``, ``one_batch``, shuffling, ``test_dl``,
``learn.get_preds`` / ``learn.predict`` and ``dls.vocab`` all work).

Image data use fastai's ``DataBlock`` with presizing and batch augmentation
(:mod:`fasttricks.data.images`) and tabular data ``TabularPandas``; in every case ``dls[2]``
is the unshuffled test loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastcore.basics import chunked

from fasttricks.datasets import DataSplits, Split

__all__ = ["ArrayDataset", "TensorDataLoader", "array_dataloaders", "splits_dataloaders"]


class ArrayDataset:
    """Inputs and targets as two tensors, with the class names (``vocab``) for decoding.

    Indexing one item returns ``(x[i], y[i])``; :meth:`batch` slices a whole batch at once.
    """

    n_inp = 1

    def __init__(self, x: Any, y: Any, vocab: Sequence[Any], multilabel: bool = False) -> None:
        self.x = torch.as_tensor(np.asarray(x))
        self.y = torch.as_tensor(np.asarray(y))
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y must have the same length, got {len(self.x)} and "
                             f"{len(self.y)}")
        self.vocab = list(vocab)
        self.multilabel = multilabel

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    @property
    def loss_func(self) -> Any:
        """The loss fastai would infer for these labels, so ``Learner(dls, model)`` needs no
        ``loss_func=``: ``CrossEntropyLossFlat`` for one class per item (as fastai's
        ``Categorize``), ``BCEWithLogitsLossFlat`` for multi-hot labels (``MultiCategorize``)."""
        from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat

        return BCEWithLogitsLossFlat() if self.multilabel else CrossEntropyLossFlat()

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The items at ``idx`` as one ``(x, y)`` batch."""
        return self.x[idx], self.y[idx]

    def new_empty(self) -> ArrayDataset:
        """A dataset with no items but the same item shape, dtypes, vocab and multi-label flag.

        fastai's ``learn.export()`` keeps ``dls.new_empty()`` in the pickle; an exported
        learner rebuilds loaders for new items from it (see :func:`fasttricks.predict`).
        """
        return ArrayDataset(self.x[:0], self.y[:0], self.vocab, self.multilabel)

    @contextmanager
    def set_split_idx(self, i: int) -> Iterator[None]:
        """fastai's hook to switch training / validation transforms (``learn.tta``); arrays
        have no item transforms, so this changes nothing."""
        yield

    def decode_target(self, y: Any) -> Any:
        """A class name (single-label) or the list of present class names (multi-label)."""
        y = torch.as_tensor(y)
        if self.multilabel:
            return [self.vocab[i] for i in torch.nonzero(y > 0.5).flatten().tolist()]
        return self.vocab[int(y)]


class TensorDataLoader(DataLoader):
    """A fastai ``DataLoader`` over an :class:`ArrayDataset` that builds batches by slicing.

    Any other dataset (e.g. the list of raw items ``learn.predict`` passes through
    ``dls.test_dl``) falls back to fastai's item-by-item collation, with a bare input wrapped
    into a one-element tuple so the learner sees ``(x,)``.
    """

    def create_batches(self, samps: Any):
        if not isinstance(self.dataset, ArrayDataset):
            yield from super().create_batches(samps)
            return
        order = list(samps)
        step = len(order) if self.bs is None else self.bs
        for chunk in chunked(order, step, self.drop_last):
            yield self.dataset.batch(torch.as_tensor(chunk, dtype=torch.long))

    def create_batch(self, b: Any) -> Any:
        res = super().create_batch(b)
        return res if isinstance(res, tuple) else (res,)

    @property
    def vocab(self) -> list:
        """Class names, from the array dataset (or the loader this one was made from)."""
        return getattr(self.dataset, "vocab", None) or self._vocab

    @vocab.setter
    def vocab(self, value: list) -> None:
        self._vocab = list(value)

    def decode(self, b: Any) -> Any:
        return b

    def decode_batch(self, b: Any, max_n: int = 9, full: bool = True) -> list[tuple]:
        """Split a batch into items, mapping targets / predictions (after the inputs) to names."""
        decoder = self.dataset if isinstance(self.dataset, ArrayDataset) else None
        b = b if isinstance(b, tuple) else (b,)
        n = min(len(b[0]), max_n)
        out = []
        for i in range(n):
            item = [t[i] for t in b]
            if decoder is not None or getattr(self, "_decoder", None) is not None:
                dec = decoder or self._decoder
                item = item[:1] + [dec.decode_target(t) for t in item[1:]]
            out.append(tuple(item))
        return out

    def new(self, dataset: Any = None, cls: Any = None, **kwargs: Any) -> TensorDataLoader:
        res = super().new(dataset, cls, **kwargs)
        if isinstance(self.dataset, ArrayDataset) and not isinstance(res.dataset, ArrayDataset):
            res._decoder = self.dataset
            res._vocab = self.dataset.vocab
        elif hasattr(self, "_decoder"):
            res._decoder = self._decoder
            res._vocab = self._vocab
        return res


def array_dataloaders(
    splits: DataSplits, bs: int = 64, valid_bs: int | None = None, device: Any = None,
    num_workers: int = 0,
) -> DataLoaders:
    """(train, valid, test) :class:`TensorDataLoader` s for array splits.

    The training loader shuffles and drops the last incomplete batch (when there is more than
    one batch), so BatchNorm never sees a batch of one; valid and test keep their order.

    Args:
        splits: array splits (``kind == "array"``).
        bs: training batch size (default 64).
        valid_bs: validation / test batch size (default ``2 * bs``).
        device: where batches go (default: fastai's ``default_device()``).
        num_workers: worker processes (default 0: slicing in-memory tensors needs none).
    """
    from fastai.torch_core import default_device

    valid_bs = valid_bs or 2 * bs

    def ds(split: Split) -> ArrayDataset:
        return ArrayDataset(split.x, split.y, splits.vocab, splits.multilabel)

    train = TensorDataLoader(ds(splits.train), bs=bs, shuffle=True,
                             drop_last=len(splits.train) > bs, num_workers=num_workers)
    valid = TensorDataLoader(ds(splits.valid), bs=valid_bs, shuffle=False,
                             num_workers=num_workers)
    test = TensorDataLoader(ds(splits.test), bs=valid_bs, shuffle=False,
                            num_workers=num_workers)
    return DataLoaders(train, valid, test, device=device or default_device())


def _image_dataloaders(
    splits: DataSplits, bs: int, valid_bs: int | None, device: Any, **options: Any
) -> DataLoaders:
    from fasttricks.data.images import image_dataloaders

    return image_dataloaders(splits, bs, valid_bs, device, **options)


def _tabular_dataloaders(
    splits: DataSplits, bs: int, valid_bs: int | None, device: Any, num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoaders:
    from fastai.data.block import CategoryBlock
    from fastai.tabular.core import Categorify, FillMissing, TabularPandas
    from fastai.tabular.data import TabularDataLoaders  # noqa: F401 (to.dataloaders' type)
    from fastai.data.transforms import Normalize

    info = splits.info
    y_name = info.get("y_name", "target")
    pool = splits.pool()
    df = pool.x.copy()
    df[y_name] = [splits.vocab[int(i)] for i in pool.y]
    n_train = len(splits.train)
    to = TabularPandas(
        df, procs=[Categorify, FillMissing, Normalize], cat_names=list(info.get("cat_names", [])),
        cont_names=list(info.get("cont_names", [])), y_names=y_name,
        y_block=CategoryBlock(vocab=list(splits.vocab)),
        splits=(list(range(n_train)), list(range(n_train, len(pool)))),
    )
    dls = to.dataloaders(bs=bs, val_bs=valid_bs or 2 * bs, device=device,
                         num_workers=num_workers, pin_memory=pin_memory)
    test_df = splits.test.x.copy()
    test_df[y_name] = [splits.vocab[int(i)] for i in splits.test.y]
    test = dls.test_dl(test_df)  # keeps the target column, processed like the valid set
    res = type(dls)(dls.train, dls.valid, test, path=dls.path, device=dls.device)
    res.tabular = to
    return res


def splits_dataloaders(
    splits: DataSplits,
    bs: int = 64,
    valid_bs: int | None = None,
    device: Any = None,
    num_workers: int | str = "auto",
    pin_memory: bool | str = "auto",
    **image_options: Any,
) -> DataLoaders:
    """(train, valid, test) fastai ``DataLoaders`` for any :class:`DataSplits` kind.

    Args:
        splits: the data.
        bs: training batch size (default 64).
        valid_bs: valid / test batch size (default ``2 * bs``).
        device: where batches go (default: fastai's ``default_device()``).
        num_workers: loader worker processes; ``"auto"`` (default) is the usable cores for
            images (:func:`fasttricks.data.images.resolve_num_workers`) and 0 for in-memory
            arrays and tables, whose batches are slices that workers would only slow down.
        pin_memory: page-locked batches for faster copies to the GPU; ``"auto"`` (default) is on
            when ``device`` is CUDA.
        **image_options: for image splits, ``presize``, ``augment`` and ``stats`` of
            :func:`fasttricks.data.images.image_dataloaders`.
    """
    from fastai.torch_core import default_device

    from fasttricks.data._num_workers import resolve_num_workers

    device = device or default_device()
    if pin_memory == "auto":
        pin_memory = torch.device(device).type == "cuda"
    if image_options and splits.kind != "image":
        raise ValueError(f"{sorted(image_options)} apply to image data only, not "
                         f"{splits.kind!r} splits")
    if splits.kind == "image":
        dls = _image_dataloaders(splits, bs, valid_bs, device, num_workers=num_workers,
                                 pin_memory=pin_memory, **image_options)
    else:
        workers = 0 if num_workers == "auto" else resolve_num_workers(num_workers)
        if splits.kind == "array":
            dls = array_dataloaders(splits, bs, valid_bs, device, workers)
        elif splits.kind == "tabular":
            dls = _tabular_dataloaders(splits, bs, valid_bs, device, workers, bool(pin_memory))
        else:
            raise ValueError(f"unknown DataSplits kind {splits.kind!r}; known: 'array', "
                             "'image', 'tabular'")
    dls.splits = splits
    return dls
