"""Image data the fastai way, fast: presizing, batch augmentation, checks and loader workers.

The pipeline follows fastai's presizing (Howard & Gugger, *Deep Learning for Coders*, ch. 5):
every item is decoded and resized once to a larger ``presize``, then the batch-level
``aug_transforms`` (flip, rotation, zoom, lighting, warp, random-resized crop) compose into one
interpolation to the final ``size``. What makes it fast (``benchmarks/image_loader.py``):

- :class:`PresizeImage` decodes with :func:`decode_image`: small JPEGs by torchvision's
  libjpeg-turbo decoder, large ones in PIL's draft mode (DCT scaling: a 2,000-px photo presized
  to 224 px is decoded at 1/8 scale), the rest by PIL; then crops and resizes on the uint8
  tensor with antialiasing (:func:`resize_crop`), with no PIL resize and no second copy through
  fastai's ``ToTensor``.
- :class:`LeanItems` makes each item without fastai's per-item dispatch (same values).
- :func:`batch_aug_transforms` is fastai's ``aug_transforms`` with the affine / warp and the
  lighting steps fused (:class:`FusedAffineCoordTfm`, :class:`FusedLightingTfm`): fastai's
  random draws and results, a third of the work.
- :class:`ImageDataLoader` runs the batch transforms where the batch is: on the GPU when the
  loaders are on CUDA (fastai's behaviour), and inside the worker processes when they are on the
  CPU, so augmentation runs in parallel with decoding instead of serially in the main process;
  those workers collate locally and reuse freed memory (:func:`keep_freed_memory`).
- ``num_workers: auto`` uses the cores this process may run on (:func:`resolve_num_workers`).

:func:`check_images` decodes every image once (at 1/8 scale for JPEGs) before training, so a
corrupt file is reported by name instead of crashing a worker mid-epoch.
"""

from __future__ import annotations

import ctypes
import io
import logging
import math
import os
import random
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.data.core import TfmdDL
from fastai.torch_core import TensorImage
from fastai.vision.augment import (
    AffineCoordTfm,
    LightingTfm,
    RandomResizedCropGPU,
    RandTransform,
    _BrightnessLogit,
    _ContrastLogit,
    _WarpCoord,
    find_coeffs,
)
from fasttransform import Pipeline, compose_tfms
from PIL import Image

from fasttricks.data._num_workers import resolve_num_workers

__all__ = [
    "AUGMENT_DEFAULTS",
    "CHECK_IMAGES_LIMIT",
    "FusedAffineCoordTfm",
    "FusedLightingTfm",
    "FusedRandomResizedCropGPU",
    "ImageDataLoader",
    "LeanItems",
    "PresizeImage",
    "batch_aug_transforms",
    "check_images",
    "check_image_splits",
    "decode_image",
    "jpeg_header",
    "image_dataloaders",
    "keep_freed_memory",
    "normalization_stats",
    "open_image",
    "projective_grid",
    "resize_crop",
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
# decoding


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _draft_request(w: int, h: int, size: int | None) -> tuple[int, int] | None:
    """The (w, h) to ask PIL's JPEG draft mode for so the shorter side stays >= ``size``, or
    None when no DCT scale (1/2, 1/4, 1/8) would shrink the image."""
    if size is None or 2 * size > min(w, h):
        return None
    scale = size / min(w, h)
    return max(1, math.ceil(w * scale - 1e-6)), max(1, math.ceil(h * scale - 1e-6))


def open_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Open an image as RGB; with ``size``, JPEGs are decoded at the smallest DCT scale (1/2,
    1/4, 1/8) whose shorter side is still at least ``size`` (PIL's draft mode).

    Grayscale, palette and RGBA images are converted to RGB (alpha is dropped). The image is
    fully loaded, so a truncated or corrupt file raises here.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            request = _draft_request(*im.size, size)
            if request is not None:
                im.draft("RGB", request)
        im.load()
        return _to_rgb(im)


def _pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 ``(3, h, w)`` tensor (a channels-last view of one copy)."""
    return torch.from_numpy(np.array(_to_rgb(im), dtype=np.uint8, copy=True)).permute(2, 0, 1)


#: JPEG frame types decoded by ``torchvision.io.decode_jpeg``: baseline, extended, progressive
_TV_FRAMES = (0xC0, 0xC1, 0xC2)


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` from the frame header of an 8-bit baseline, extended or
    progressive JPEG (ITU-T T.81, annex B: the SOF0-SOF2 segment), or None for anything else
    (not a JPEG, lossless or arithmetic-coded frames, a header past the first scan)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in _TV_FRAMES:
            if i + 10 > n:
                return None
            precision, comps = data[i + 4], data[i + 9]
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return (w, h, comps) if precision == 8 and w > 0 and h > 0 else None
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # another frame type: PIL decodes it
        if marker in (0xD9, 0xDA):  # end of image or a scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


_TV_DECODE: list = []  # [decode_jpeg or None], resolved on first use


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """``torchvision.io.decode_jpeg`` to RGB, or None where torchvision has no image decoder
    (its decoders are deprecated in favour of TorchCodec) or the data do not decode (then PIL
    decodes them, or raises its own error)."""
    if not _TV_DECODE:
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
            from torchvision.io.image import _has_image_ops

            _TV_DECODE.append(partial(decode_jpeg, mode=ImageReadMode.RGB)
                              if _has_image_ops() else None)
        except (ImportError, AttributeError):
            _TV_DECODE.append(None)
    decode = _TV_DECODE[0]
    if decode is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        except RuntimeError:
            return None


def decode_image(item: str | Path | Image.Image, size: int | None = None
                 ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode ``item`` to a uint8 RGB ``(3, h, w)`` tensor; also return its full (w, h).

    The file is read once. A JPEG (grey or colour, per :func:`jpeg_header`) whose shorter side
    is at least twice ``size`` is decoded by PIL in draft mode (DCT scaling, so ``h, w`` are then
    1/2, 1/4 or 1/8 of the full size); a smaller one by ``torchvision.io.decode_jpeg``
    (libjpeg-turbo, as in PIL, without PIL's image object or file sniffing: about a third less
    time on 256-px photos); anything else (PNG, CMYK JPEG, ...) by PIL, converted to RGB as
    :func:`open_image` does. A PIL image is converted as it is.
    """
    if isinstance(item, Image.Image):
        return _pil_to_tensor(item), item.size
    with open(item, "rb") as fh:
        data = fh.read()
    head = jpeg_header(data)
    if head is not None and head[2] in (1, 3) and _draft_request(head[0], head[1], size) is None:
        x = _decode_jpeg(data)
        if x is not None and tuple(x.shape) == (3, head[1], head[0]):
            return x, (head[0], head[1])
    with Image.open(io.BytesIO(data)) as im:
        full = im.size
        if im.format == "JPEG":
            request = _draft_request(*full, size)
            if request is not None:
                im.draft("RGB", request)
        im.load()
        return _pil_to_tensor(im), full


def resize_crop(x: torch.Tensor, box: tuple[float, float, float, float], size: int,
                full: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop ``box`` (left, top, right, bottom in full-image pixels) out of the uint8 image ``x``
    and resize it to ``size x size``: bilinear with antialiasing, as PIL's ``Image.resize``
    (the uint8 kernel of ``torch.nn.functional.interpolate``: PIL's values but for fixed-point
    rounding, a mean difference under 0.1 grey levels).

    ``full`` is the full image's (w, h) when ``x`` was decoded at a reduced (draft) scale; the
    box is then scaled to ``x`` and rounded to whole pixels.
    """
    h, w = x.shape[-2:]
    fw, fh = full if full is not None else (w, h)
    sx, sy = w / fw, h / fh
    left, top = int(round(box[0] * sx)), int(round(box[1] * sy))
    right = max(left + 1, min(w, int(round(box[2] * sx))))
    bottom = max(top + 1, min(h, int(round(box[3] * sy))))
    crop = x[:, top:bottom, left:right]
    if crop.shape[-2:] != (size, size):
        crop = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear",
                                               antialias=True, align_corners=False)[0]
    return crop.contiguous()


class PresizeImage(RandTransform):
    """Item-level presizing: path (or PIL image) -> ``size x size`` uint8 ``TensorImage``.

    The largest centred square (valid, test) or a random square (train) is cropped and resized
    with antialiased bilinear interpolation (fastai's ``Resize(size)`` with its default crop
    method). Decoding is :func:`decode_image` (JPEG draft mode when the photo is at least twice
    ``size``) and resizing :func:`resize_crop`, both on uint8 tensors: no PIL resize and no
    second copy through fastai's ``ToTensor``.

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
        return self.presize(item)

    def presize(self, item: str | Path | Image.Image) -> TensorImage:
        """:meth:`encodes` without fastai's type dispatch (``self.train`` picks the crop)."""
        x, (w, h) = decode_image(item, self.size)
        side = min(w, h)
        if self.train:
            x0, y0 = random.randint(0, w - side), random.randint(0, h - side)
        else:
            x0, y0 = (w - side) // 2, (h - side) // 2
        return TensorImage(resize_crop(x, (x0, y0, x0 + side, y0 + side), self.size, (w, h)))


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
# batch augmentation


def _plain(x: Any) -> Any:
    """A fastai tensor subclass as a plain tensor (no ``__torch_function__`` per operation)."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def _base_coords(n: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """The ``n`` normalized sample positions of ``F.affine_grid`` along one axis."""
    u = torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)
    return u if align_corners else u * ((n - 1) / n)


def projective_grid(h: torch.Tensor, size: tuple[int, int], align_corners: bool = True
                    ) -> torch.Tensor | None:
    """``F.affine_grid`` for a batch of 3 x 3 projective matrices ``h``: the sampling grid
    ``(n, H, W, 2)`` whose point for output pixel (u, v) is ``(h @ [u, v, 1])`` divided by its
    third coordinate; None when that coordinate is 0 somewhere (a point at infinity).

    An affine matrix (last row 0, 0, 1) gives exactly ``F.affine_grid``'s grid. Built from rank-1
    sums (``a*u + b*v + c`` per output row and column) rather than one ``(n, H*W, 3)`` matrix
    product, so it costs a few passes over the grid.
    """
    rows, cols = size
    u = _base_coords(cols, align_corners, h).view(1, 1, cols)
    v = _base_coords(rows, align_corners, h).view(1, rows, 1)
    m = h.view(-1, 9, 1, 1)
    den = m[:, 6] * u + m[:, 8] + m[:, 7] * v
    grid = torch.empty(h.shape[0], rows, cols, 2, dtype=h.dtype, device=h.device)
    torch.add(m[:, 0] * u + m[:, 2], m[:, 1] * v, out=grid[..., 0])
    torch.add(m[:, 3] * u + m[:, 5], m[:, 4] * v, out=grid[..., 1])
    if not bool((den == 1).all()):
        if bool((den == 0).any()):
            return None
        grid.div_(den.unsqueeze(-1))
    return grid


def _flips(h: torch.Tensor) -> torch.Tensor | None:
    """Which images the 3 x 3 matrices ``h`` mirror left-right, when each is exactly the
    identity or that mirror (else None): bilinear sampling at the pixel centres then returns
    the pixels themselves, which a copy or ``flip`` gives exactly."""
    eye = torch.eye(3, dtype=h.dtype, device=h.device)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=h.dtype, device=h.device))
    same, flipped = (h == eye).flatten(1).all(1), (h == mirror).flatten(1).all(1)
    return flipped if bool((same | flipped).all()) else None


class FusedAffineCoordTfm(AffineCoordTfm):
    """fastai's combined flip / rotate / zoom / warp with one projective sampling grid.

    The random draws, matrices and interpolation are fastai's own (``AffineCoordTfm`` merged by
    ``setup_aug_tfms``; Howard & Gugger, *Deep Learning for Coders*, ch. 5): the affine matrix
    ``A`` and the perspective warp ``P`` of ``Warp`` (fastai's ``find_coeffs`` on the same
    corner points) compose into one matrix ``P @ A``, whose grid :func:`projective_grid` builds
    directly, instead of ``F.affine_grid`` followed by a batched matrix product over every grid
    point, a division and a full min / max scan. The output equals fastai's to float rounding
    (about 1e-6); on the CPU the whole transform costs about half as much.
    """

    @classmethod
    def from_tfm(cls, tfm: AffineCoordTfm) -> FusedAffineCoordTfm:
        """The fused version of a (merged) fastai ``AffineCoordTfm``: same functions, size,
        interpolation and padding."""
        return cls(aff_fs=list(tfm.aff_fs), coord_fs=list(tfm.coord_fs), size=tfm.size,
                   mode=tfm.mode, pad_mode=tfm.pad_mode, mode_mask=tfm.mode_mask,
                   align_corners=tfm.align_corners)

    def before_call(self, b: Any, split_idx: int | None) -> None:
        while isinstance(b, tuple):
            b = b[0]
        super().before_call(_plain(b) if type(b) is TensorImage else b, split_idx)

    def _matrix(self, x: torch.Tensor) -> torch.Tensor | None:
        """``P @ A`` (n, 3, 3), or None where a coordinate function is not a fastai warp."""
        n = x.shape[0]
        mat = _plain(self.mat).to(x.dtype)
        bottom = torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype, device=x.device).expand(n, 1, 3)
        h = torch.cat([mat, bottom], dim=1)
        if self.split_idx or not len(self.coord_fs):
            return h
        for f in self.coord_fs:
            if not isinstance(f, _WarpCoord):
                return None
            coeffs = _plain(find_coeffs(f.orig_pts, f.targ_pts)).to(x.dtype).view(n, 8)
            p = torch.cat([coeffs, coeffs.new_ones(n, 1)], dim=1).view(n, 3, 3)
            h = p @ h
        return h

    def encodes(self, x: TensorImage) -> TensorImage:
        img = _plain(x)
        h = self._matrix(img) if img.is_floating_point() else None
        if h is None:
            return self._encode(x, self.mode)
        size = tuple(img.shape[-2:]) if self.size is None else (
            (self.size, self.size) if isinstance(self.size, int) else tuple(self.size))
        if size == tuple(img.shape[-2:]) and self.align_corners:
            flips = _flips(h)
            if flips is not None:  # identity or mirror at the same size: the exact pixels
                out = img.clone()
                out[flips] = img[flips].flip(-1)
                return TensorImage(out)
        grid = projective_grid(h, size, bool(self.align_corners))
        if grid is None:  # a point at infinity: fastai's path, which then leaves the warp out
            return self._encode(x, self.mode)
        if self.mode == "bilinear":
            # fastai's smoother down-sampling: area-interpolate first when resizing by over 2x
            d = min(img.shape[-2] / size[0], img.shape[-1] / size[1]) / 2
            if d > 1:
                zoom = 2 / float(grid.max() - grid.min())
                if d > zoom:
                    img = torch.nn.functional.interpolate(img, scale_factor=1 / d, mode="area",
                                                          recompute_scale_factor=True)
        out = torch.nn.functional.grid_sample(img, grid, mode=self.mode,
                                              padding_mode=self.pad_mode,
                                              align_corners=self.align_corners)
        return TensorImage(out)


class FusedLightingTfm(LightingTfm):
    """fastai's brightness and contrast (``LightingTfm``) in three passes over the batch.

    fastai's lighting works on logits: ``sigmoid(c * (logit(x) + logit(b)))`` for a brightness
    change ``b`` and a contrast factor ``c`` drawn per image (the same draws here). The chain of
    ``_BrightnessLogit`` / ``_ContrastLogit`` steps is an affine map of the logit per image,
    ``a * logit(x) + k``, applied with ``torch.logit`` (clamped at 1e-7 as fastai's ``logit``),
    one multiply-add and an in-place sigmoid: about a third of the passes, the same values to
    float rounding.
    """

    @classmethod
    def from_tfm(cls, tfm: LightingTfm) -> FusedLightingTfm:
        """The fused version of a (merged) fastai ``LightingTfm``."""
        return cls(list(tfm.fs), p=tfm.p)

    def before_call(self, b: Any, split_idx: int | None) -> None:
        while isinstance(b, tuple):
            b = b[0]
        super().before_call(_plain(b) if type(b) is TensorImage else b, split_idx)

    def encodes(self, x: TensorImage) -> TensorImage:
        if not all(isinstance(f, (_BrightnessLogit, _ContrastLogit)) for f in self.fs):
            return self.space_fn(x, partial(compose_tfms, tfms=self.fs))
        img = _plain(x)
        scale = img.new_ones(img.shape[0])
        shift = img.new_zeros(img.shape[0])
        for f in self.fs:
            change = _plain(f.change).to(img.dtype).view(-1)
            if isinstance(f, _BrightnessLogit):
                shift = shift + torch.logit(change, eps=1e-7)
            else:
                scale, shift = scale * change, shift * change
        y = torch.logit(img, eps=1e-7)
        y.mul_(scale.view(-1, 1, 1, 1)).add_(shift.view(-1, 1, 1, 1))
        return TensorImage(y.sigmoid_())


class FusedRandomResizedCropGPU(RandomResizedCropGPU):
    """fastai's ``RandomResizedCropGPU`` (``min_scale < 1``) resized with ``F.interpolate``.

    fastai resamples the crop with ``grid_sample`` on an identity ``affine_grid``
    (``align_corners=True``), which samples exactly where bilinear ``F.interpolate`` with
    ``align_corners=True`` does; the separable interpolation skips building and scanning the
    grid and the gathers (same crop draws, same values to float rounding, including fastai's
    area pre-shrink when the crop is over twice the output size).
    """

    @classmethod
    def from_tfm(cls, tfm: RandomResizedCropGPU) -> FusedRandomResizedCropGPU:
        """The fused version of a fastai ``RandomResizedCropGPU``."""
        return cls(tfm.size, min_scale=tfm.min_scale, ratio=tfm.ratio, mode=tfm.mode,
                   valid_scale=tfm.valid_scale, max_scale=tfm.max_scale,
                   mode_mask=tfm.mode_mask, p=tfm.p)

    def encodes(self, x: TensorImage) -> TensorImage:
        img = _plain(x)
        if self.mode != "bilinear" or not img.is_floating_point():
            return self._encode(x, self.mode)
        (top, left), (h, w) = self.tl, self.cp_size
        img = img[..., top:top + h, left:left + w]
        size = tuple(self.size)
        d = min(h / size[0], w / size[1]) / 2
        if d > 1:  # fastai's smoother down-sampling (an identity grid zooms by exactly 1)
            img = torch.nn.functional.interpolate(img, scale_factor=1 / d, mode="area",
                                                  recompute_scale_factor=True)
        out = torch.nn.functional.interpolate(img, size=size, mode="bilinear",
                                              align_corners=True)
        return TensorImage(out)


def batch_aug_transforms(size: int, **augment: Any) -> list:
    """fastai's ``aug_transforms(size=size, **augment)`` with the merged affine / warp and
    lighting transforms replaced by :class:`FusedAffineCoordTfm` and :class:`FusedLightingTfm`,
    and the random-resized crop of ``min_scale < 1`` by :class:`FusedRandomResizedCropGPU` (same
    draws and results, fewer passes)."""
    from fastai.vision.augment import aug_transforms

    res = []
    for tfm in aug_transforms(size=size, **augment):
        if type(tfm) is RandomResizedCropGPU:
            tfm = FusedRandomResizedCropGPU.from_tfm(tfm)
        elif isinstance(tfm, AffineCoordTfm):
            tfm = FusedAffineCoordTfm.from_tfm(tfm)
        elif isinstance(tfm, LightingTfm):
            tfm = FusedLightingTfm.from_tfm(tfm)
        res.append(tfm)
    return res


# --------------------------------------------------------------------------------------------
# loaders


class LeanItems:
    """``dataset[i]`` for the item pipelines :func:`image_dataloaders` builds, without fastai's
    per-item dispatch.

    Each of the dataset's ``TfmdLists`` must be ``ColReader(column)`` over a DataFrame (or a
    plain list of items, as ``test_dl`` makes) followed by one of :class:`PresizeImage`,
    ``Categorize`` or ``EncodedMultiCategorize``; :meth:`of` returns None for anything else.
    The values are those fastai's pipelines give (the same crop draws from ``random``, the same
    tensor types), at about 0.4 ms less per image on a CPU: most of the per-item cost of fastai's
    ``Datasets`` is the pandas row, ``ColReader`` and the type dispatch of each transform.
    """

    def __init__(self, dataset: Any, parts: list[tuple[Any, list, Any]]) -> None:
        self.dataset = dataset
        self.parts = parts  # (transform, raw items, the TfmdLists whose split_idx applies)

    @classmethod
    def of(cls, dataset: Any) -> LeanItems | None:
        """The lean reader of a fastai ``Datasets``, or None where its pipelines differ."""
        from fastai.data.transforms import Categorize, ColReader, EncodedMultiCategorize

        tls = getattr(dataset, "tls", None)
        if not tls:
            return None
        parts = []
        for tl in tls:
            fs, items = list(tl.tfms.fs), tl.items
            if fs and type(fs[0]) is ColReader:
                reader = fs.pop(0)
                if (len(reader.cols) != 1 or not isinstance(reader.cols[0], str) or reader.pref
                        or reader.suff or reader.label_delim is not None
                        or not isinstance(items, pd.DataFrame)):
                    return None
                raw = items[reader.cols[0]].tolist()
            elif isinstance(items, (list, tuple)) or type(items).__name__ == "L":
                raw = list(items)
            else:
                return None
            if len(fs) != 1 or type(fs[0]) not in (PresizeImage, Categorize,
                                                    EncodedMultiCategorize):
                return None
            parts.append((fs[0], raw, tl))
        return cls(dataset, parts)

    def __call__(self, i: int) -> tuple:
        from fastai.data.transforms import Categorize
        from fastai.torch_core import TensorCategory, TensorMultiCategory

        out = []
        for tfm, raw, tl in self.parts:
            o = raw[i]
            if type(tfm) is PresizeImage:
                tfm.train = tl.tfms.split_idx == 0
                out.append(tfm.presize(o))
            elif type(tfm) is Categorize:
                try:
                    out.append(TensorCategory(tfm.vocab.o2i[o]))
                except KeyError as err:
                    raise KeyError(f"Label '{o}' was not included in the training dataset"
                                   ) from err
            else:
                out.append(TensorMultiCategory(torch.tensor(o).float()))
        return tuple(out)


def keep_freed_memory() -> bool:
    """Make this process's ``malloc`` keep freed memory for reuse (glibc only); True if done.

    For loader worker processes, which live one epoch: each batch allocates tens of megabytes
    of image and float temporaries, and glibc serves blocks above its mmap threshold with fresh
    ``mmap`` calls and trims the heap top on free, so every batch the kernel maps and zeroes the
    same memory again (about 8,700 page faults per batch of 64 presized 160-px images, a fifth
    of the batch transforms' time). ``mallopt(M_MMAP_MAX, 0)`` serves every block from the heap
    and ``mallopt(M_TRIM_THRESHOLD, INT_MAX)`` keeps the heap's freed top, so the pages are
    reused (Linux ``mallopt(3)``). The memory goes back to the system when the worker exits.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


class ImageDataLoader(TfmdDL):
    """fastai's ``TfmdDL`` with lean items and batch transforms in the CPU worker processes.

    Items come from :class:`LeanItems` where the dataset's pipelines are the ones
    :func:`image_dataloaders` builds (else from fastai's ``Datasets`` as usual): the same
    values without fastai's per-item dispatch. On CUDA (or without workers) the batch transforms
    run on the device in the main process, as in fastai. On the CPU with workers, each worker
    also applies the batch transforms to the batches it collates, so augmentation is spread over
    the workers instead of running serially in the main process.
    """

    def _worker_side(self) -> bool:
        device = self.device
        on_cpu = device is None or device.type == "cpu"
        return on_cpu and self.fake_l.num_workers > 0

    def _lean_items(self) -> LeanItems | None:
        lean = self.__dict__.get("_lean")
        if lean is None or lean[0] is not self.dataset:
            from fastai.data.transforms import ToTensor

            plain = all(type(f) is ToTensor for f in self.after_item.fs)
            lean = (self.dataset, LeanItems.of(self.dataset) if plain and self.indexed
                    else None)
            self.__dict__["_lean"] = lean
        return lean[1]

    def wif(self) -> None:
        """fastai's worker-init hook: the worker keeps freed memory (:func:`keep_freed_memory`)."""
        keep_freed_memory()

    def do_item(self, s: Any) -> Any:
        lean = self._lean_items() if s is not None else None
        return super().do_item(s) if lean is None else lean(s)

    def __iter__(self):
        self._lean_items()  # once here, not in every worker
        if not self._worker_side():
            yield from super().__iter__()
            return
        self._worker_after_batch, self.after_batch = self.after_batch, Pipeline([])
        # TfmdDL.before_iter sets the split on the pipelines it sees: the one the workers run
        # must get it too, or validation batches would be augmented like training ones
        self._worker_after_batch.split_idx = getattr(self.dataset, "split_idx", None)
        try:
            yield from super().__iter__()
        finally:
            self.after_batch, self._worker_after_batch = self._worker_after_batch, None

    def create_batch(self, b: Any) -> Any:
        # In a worker, torch's collate writes the batch into shared memory for the main process;
        # when the worker's batch transforms consume it, a plain stack saves that (about 0.1 ms
        # per image: a new shared segment and its page faults for every batch).
        if (getattr(self, "_worker_after_batch", None) is not None and b
                and isinstance(b[0], tuple)
                and all(isinstance(o, torch.Tensor) for o in b[0])
                and all(len(it) == len(b[0]) for it in b)):
            return tuple(torch.stack([it[k] for it in b]) for k in range(len(b[0])))
        return super().create_batch(b)

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
    from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock, TransformBlock
    from fastai.data.transforms import ColReader, ColSplitter, IntToFloatTensor, Normalize
    size = int(splits.info.get("size", 64))
    empty = [name for name in ("train", "valid", "test") if len(getattr(splits, name)) == 0]
    if empty:
        counts = ", ".join(f"{n} {len(getattr(splits, n))}" for n in ("train", "valid", "test"))
        where = splits.info.get("name", "image data")
        raise ValueError(f"{where}: the {' and '.join(empty)} split(s) are empty ({counts} "
                         "images); every split needs at least one image")
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
        batch_tfms += batch_aug_transforms(size, **augment)
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
