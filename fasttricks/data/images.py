"""Image data the fastai way, fast: presizing, batch augmentation, checks and loader workers.

The pipeline follows fastai's presizing (Howard & Gugger, *Deep Learning for Coders*, ch. 5):
every item is decoded and resized once to a larger ``presize``, then the batch-level
``aug_transforms`` (flip, rotation, zoom, lighting, warp, random-resized crop) compose into one
interpolation to the final ``size``. Three choices make it fast:

- :class:`PresizeImage` decodes JPEGs with PIL's draft mode (DCT scaling: a 2,000-px photo
  presized to 224 px is decoded at 1/8 scale) and crops + resizes in one ``Image.resize(box=)``
  call, returning a uint8 tensor (no second copy through fastai's ``ToTensor``).
- :class:`ImageDataLoader` runs the batch transforms where the batch is: on the GPU when the
  loaders are on CUDA (fastai's behaviour), and inside the worker processes when they are on the
  CPU, so augmentation runs in parallel with decoding instead of serially in the main process.
- ``num_workers: auto`` uses the cores this process may run on (:func:`resolve_num_workers`).

:func:`check_images` decodes every image once (at 1/8 scale for JPEGs) before training, so a
corrupt file is reported by name instead of crashing a worker mid-epoch.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.data.core import TfmdDL
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandTransform
from fasttransform import Pipeline
from PIL import Image

__all__ = [
    "AUGMENT_DEFAULTS",
    "CHECK_IMAGES_LIMIT",
    "ImageDataLoader",
    "PresizeImage",
    "check_images",
    "check_image_splits",
    "image_dataloaders",
    "normalization_stats",
    "open_image",
    "resolve_num_workers",
]

logger = logging.getLogger(__name__)

#: ``data.augment`` options: fastai's ``aug_transforms`` keywords and their defaults.
#: ``min_scale`` below 1 adds a random-resized crop (smallest area fraction) as a second
#: interpolation; at 1 (default) the zoom, rotation and warp resample the presized batch to the
#: final size in one ``grid_sample``.
AUGMENT_DEFAULTS: dict[str, Any] = {
    "do_flip": True, "flip_vert": False, "max_rotate": 10.0, "min_zoom": 1.0, "max_zoom": 1.1,
    "max_lighting": 0.2, "max_warp": 0.2, "p_affine": 0.75, "p_lighting": 0.75,
    "min_scale": 1.0, "mode": "bilinear", "pad_mode": "reflection",
}

#: ``check_images: auto`` checks datasets of at most this many images.
CHECK_IMAGES_LIMIT = 20_000

#: ImageNet channel statistics (fastai's ``imagenet_stats``).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --------------------------------------------------------------------------------------------
# workers


def resolve_num_workers(value: int | str = "auto") -> int:
    """Loader worker processes for ``value``: an int as is, ``"auto"`` the usable cores.

    ``auto`` is the number of cores this process may run on (``os.sched_getaffinity``, so a
    container's or ``taskset``'s limit counts), at most 16, and 0 where worker processes cannot
    start: inside a daemonic process (which may not have children) or where fastai turns them
    off (macOS).
    """
    if isinstance(value, bool) or not (value == "auto" or isinstance(value, int)):
        raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {value!r}")
        return value
    if multiprocessing.current_process().daemon or sys.platform == "darwin":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(cores, 16))


# --------------------------------------------------------------------------------------------
# decoding


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def open_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Open an image as RGB; with ``size``, JPEGs are decoded at the smallest DCT scale (1/2,
    1/4, 1/8) whose shorter side is still at least ``size`` (PIL's draft mode).

    Grayscale, palette and RGBA images are converted to RGB (alpha is dropped). The image is
    fully loaded, so a truncated or corrupt file raises here.
    """
    with Image.open(path) as im:
        if size is not None and im.format == "JPEG":
            w, h = im.size
            scale = size / min(w, h)
            if scale < 1:
                im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        im.load()
        return _to_rgb(im)


class PresizeImage(RandTransform):
    """Item-level presizing: path (or PIL image) -> ``size x size`` uint8 ``TensorImage``.

    The largest centred square (valid, test) or a random square (train) is cropped and resized
    in one bilinear ``Image.resize(box=...)``, on a JPEG decoded in draft mode at the smallest
    scale that keeps the crop at least ``size`` pixels (fastai's ``Resize(size)`` with its
    default crop method, without decoding at full resolution).

    Args:
        size: side of the square output in pixels.
    """

    split_idx = None
    order = 1
    # what fastai's test_dl accepts as items: str paths (as training stores them), Path, PIL
    input_types = (str, Path, Image.Image)

    def __init__(self, size: int) -> None:
        super().__init__(p=1.0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self.train = False

    def before_call(self, b: Any, split_idx: int | None) -> None:
        self.do = True
        self.train = split_idx == 0

    def encodes(self, item: str | Path | Image.Image) -> TensorImage:
        im = item if isinstance(item, Image.Image) else None
        full = None
        if im is None:
            with Image.open(item) as src:
                full = src.size
                if src.format == "JPEG":
                    w, h = src.size
                    scale = self.size / min(w, h)
                    if scale < 1:
                        src.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
                src.load()
                im = _to_rgb(src)
        else:
            im = _to_rgb(im)
            full = im.size
        w, h = full
        side = min(w, h)
        if self.train:
            x0, y0 = random.randint(0, w - side), random.randint(0, h - side)
        else:
            x0, y0 = (w - side) // 2, (h - side) // 2
        f = im.size[0] / w  # the draft scale
        box = (x0 * f, y0 * f, (x0 + side) * f, (y0 + side) * f)
        im = im.resize((self.size, self.size), Image.BILINEAR, box=box)
        arr = np.asarray(im)
        return TensorImage(torch.from_numpy(arr.copy()).permute(2, 0, 1))


# --------------------------------------------------------------------------------------------
# checks


def _check_one(path: Any) -> str | None:
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (1, 1))
            im.load()
        return None
    except Exception as err:  # noqa: BLE001 (any decoder error means unreadable)
        return f"{type(err).__name__}: {err}"


def check_images(paths: Sequence[str | Path], threads: int | None = None) -> dict[str, str]:
    """Decode every image once; return ``{path: reason}`` for those that cannot be read.

    JPEGs are decoded at 1/8 scale (still reading every byte, so truncation is found); other
    formats in full. Runs on a thread pool (the decoders release the GIL).
    """
    threads = threads or max(1, resolve_num_workers("auto"))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(_check_one, paths, chunksize=32))
    return {str(p): r for p, r in zip(paths, reasons) if r is not None}


def check_image_splits(splits: Any, check: bool | str = "auto", bad_images: str = "error") -> Any:
    """Check the images of an image :class:`~fasttricks.datasets.DataSplits` before training.

    Args:
        splits: image splits (``kind == "image"``); other kinds are returned unchanged.
        check: ``True`` / ``False``, or ``"auto"`` (default): check when the dataset has at most
            :data:`CHECK_IMAGES_LIMIT` images. ``bad_images="skip"`` always checks.
        bad_images: ``"error"`` (default) raises ``ValueError`` naming every unreadable file;
            ``"skip"`` drops them, logs how many, and records them in
            ``splits.info["skipped_images"]``.
    """
    if check not in (True, False, "auto"):
        raise ValueError(f"check_images must be true, false or 'auto', got {check!r}")
    if bad_images not in ("error", "skip"):
        raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
    if getattr(splits, "kind", None) != "image":
        return splits
    parts = {"train": splits.train, "valid": splits.valid, "test": splits.test}
    unlabelled = list(splits.unlabelled or [])
    everything = list(dict.fromkeys(str(p) for s in parts.values() for p in s.x))
    everything += [str(p) for p in unlabelled]
    if check == "auto":
        check = len(everything) <= CHECK_IMAGES_LIMIT
    if not (check or bad_images == "skip"):
        return splits
    bad = check_images(everything)
    if not bad:
        return splits
    if bad_images == "error":
        shown = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{len(bad)} unreadable image(s): {shown}{more}. Fix or remove them, "
                         "or set data.bad_images: skip to train without them")
    logger.warning("skipping %d unreadable image(s): %s", len(bad), ", ".join(list(bad)[:5]))
    kept = {}
    for name, split in parts.items():
        keep = [i for i, p in enumerate(split.x) if str(p) not in bad]
        kept[name] = split.take(keep) if len(keep) < len(split) else split
        if len(keep) == 0:
            raise ValueError(f"every image of the {name} split is unreadable")
    info = {**splits.info, "skipped_images": sorted(bad)}
    return replace(splits, **kept, info=info,
                   unlabelled=[p for p in unlabelled if str(p) not in bad] if unlabelled
                   else splits.unlabelled)


# --------------------------------------------------------------------------------------------
# normalization


def normalization_stats(
    normalize: str | Mapping[str, Sequence[float]] = "auto", model: str | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` per channel for ``Normalize``, or None for no normalization.

    ``"auto"``: a ``timm:<name>`` model's own pretrained config (``timm.get_pretrained_cfg``:
    e.g. (0.5, 0.5, 0.5) for many ViTs), else ImageNet statistics. ``"imagenet"``, ``"none"``,
    or ``{mean: [...], std: [...]}``.
    """
    if isinstance(normalize, Mapping):
        return tuple(map(float, normalize["mean"])), tuple(map(float, normalize["std"]))
    if normalize == "none":
        return None
    if normalize == "imagenet":
        return IMAGENET_STATS
    if normalize != "auto":
        raise ValueError(f"normalize must be 'auto', 'imagenet', 'none' or {{mean, std}}, got "
                         f"{normalize!r}")
    if model and model.startswith("timm:"):
        import timm

        try:
            cfg = timm.get_pretrained_cfg(model[len("timm:"):], allow_unregistered=True)
        except Exception:  # noqa: BLE001 (an unknown name is reported when the model is built)
            cfg = None
        if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
            return tuple(map(float, cfg.mean)), tuple(map(float, cfg.std))
    return IMAGENET_STATS


# --------------------------------------------------------------------------------------------
# loaders


class ImageDataLoader(TfmdDL):
    """fastai's ``TfmdDL`` that runs batch transforms in the worker processes on the CPU.

    On CUDA (or without workers) it is exactly ``TfmdDL``: items are made in the workers and the
    batch transforms run on the device in the main process. On the CPU with workers, each worker
    also applies the batch transforms to the batches it collates, so augmentation is spread over
    the workers instead of running serially in the main process.
    """

    def _worker_side(self) -> bool:
        device = self.device
        on_cpu = device is None or device.type == "cpu"
        return on_cpu and self.fake_l.num_workers > 0

    def __iter__(self):
        if not self._worker_side():
            yield from super().__iter__()
            return
        self._worker_after_batch, self.after_batch = self.after_batch, Pipeline([])
        try:
            yield from super().__iter__()
        finally:
            self.after_batch, self._worker_after_batch = self._worker_after_batch, None

    def do_batch(self, b: Any) -> Any:
        res = super().do_batch(b)
        pipe = getattr(self, "_worker_after_batch", None)
        return pipe(res) if pipe is not None else res


def image_dataloaders(
    splits: Any,
    bs: int = 64,
    valid_bs: int | None = None,
    device: Any = None,
    presize: int | None = None,
    augment: Mapping[str, Any] | bool = False,
    stats: tuple[Sequence[float], Sequence[float]] | None = IMAGENET_STATS,
    num_workers: int | str = "auto",
    pin_memory: bool | str = "auto",
) -> Any:
    """(train, valid, test) fastai ``DataLoaders`` for image splits, presized and augmented.

    Items are decoded and resized to ``presize`` (:class:`PresizeImage`); with ``augment`` the
    batch transforms are fastai's ``aug_transforms(size=size, **augment)`` then ``Normalize``.
    ``size`` is ``splits.info["size"]``. ``dls.unlabelled`` is a loader over
    ``splits.unlabelled`` (a test folder or CSV without labels), else None.

    Args:
        splits: image :class:`~fasttricks.datasets.DataSplits`.
        bs, valid_bs: batch sizes (valid default ``2 * bs``).
        device: where batches go.
        presize: item-level size (default: ``size`` without augmentation, ``1.25 * size``
            with it); at least ``size``.
        augment: False, True (fastai's defaults, :data:`AUGMENT_DEFAULTS`) or a mapping of
            ``aug_transforms`` options.
        stats: ``(mean, std)`` for ``Normalize`` (:func:`normalization_stats`), None for none.
        num_workers: worker processes (:func:`resolve_num_workers`).
        pin_memory: page-locked batches; ``"auto"`` = on when ``device`` is CUDA.
    """
    import pandas as pd
    from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock, TransformBlock
    from fastai.data.transforms import ColReader, ColSplitter, IntToFloatTensor, Normalize
    from fastai.vision.augment import aug_transforms

    size = int(splits.info.get("size", 64))
    if augment is True:
        augment = dict(AUGMENT_DEFAULTS)
    elif augment:
        augment = {**AUGMENT_DEFAULTS, **augment}
    if presize is None:
        presize = int(round(size * 1.25)) if augment else size
    if presize < size:
        raise ValueError(f"presize ({presize}) must be at least size ({size})")
    workers = resolve_num_workers(num_workers)
    dev = torch.device(device) if device is not None else None
    if pin_memory == "auto":
        pin_memory = dev is not None and dev.type == "cuda"
    pool = splits.pool()
    if splits.multilabel:
        labels = [np.asarray(y, dtype=np.float32) for y in pool.y]
        y_block = MultiCategoryBlock(encoded=True, vocab=list(splits.vocab))
    else:
        labels = [splits.vocab[int(i)] for i in pool.y]
        y_block = CategoryBlock(vocab=list(splits.vocab))
    df = pd.DataFrame({
        "path": [str(p) for p in pool.x], "label": labels,
        "is_valid": [False] * len(splits.train) + [True] * len(splits.valid),
    })
    batch_tfms: list = [IntToFloatTensor()]
    if augment:
        batch_tfms += aug_transforms(size=size, **augment)
    if stats is not None:
        batch_tfms.append(Normalize.from_stats(*stats))
    x_block = TransformBlock(type_tfms=[PresizeImage(presize if augment else size)])
    block = DataBlock(blocks=(x_block, y_block), get_x=ColReader("path"),
                      get_y=ColReader("label"), splitter=ColSplitter("is_valid"),
                      batch_tfms=batch_tfms)
    dls = block.dataloaders(df, bs=bs, val_bs=valid_bs or 2 * bs, device=device,
                            num_workers=workers, pin_memory=bool(pin_memory),
                            dl_type=ImageDataLoader)
    if splits.multilabel:
        test_labels = [np.asarray(y, dtype=np.float32) for y in splits.test.y]
    else:
        test_labels = [splits.vocab[int(i)] for i in splits.test.y]
    test_df = pd.DataFrame({"path": [str(p) for p in splits.test.x], "label": test_labels})
    test = dls.test_dl(test_df, with_labels=True)
    res = type(dls)(dls.train, dls.valid, test, path=dls.path, device=dls.device)
    res.unlabelled = None
    if splits.unlabelled:
        res.unlabelled = dls.test_dl(pd.DataFrame({"path": [str(p) for p in splits.unlabelled]}))
    res.image_options = {"size": size, "presize": presize if augment else size,
                         "augment": dict(augment) if augment else False,
                         "stats": stats, "num_workers": workers, "pin_memory": bool(pin_memory)}
    return res
