"""Benchmark: images per second through one training epoch's data path, fasttricks vs peers.

Writes about 2,000 JPEGs (256 x 256, 10 classes, textured so decoding costs what a photo's does)
to a temporary folder, then times one training epoch of batches (decode, resize, augment,
collate, normalize; no model) on the CPU for:

- ``fasttricks``: the image recipe's dataloaders (``build_dataloaders``): ``image_folder``,
  presize 160, fastai's ``aug_transforms`` (flip, rotate, zoom, lighting, warp) to 128 px;
  its equivalent peer is ``torchvision``.
- ``fasttricks_timm_aug``: the same recipe with timm's augmentations (``TIMM_LIKE_AUGMENT``:
  random-resized crop of 75-100% of the area, flip, brightness / contrast; no rotation, zoom
  or warp); its equivalent peer is ``timm``.
- ``torchvision``: ``ImageFolder`` + ``DataLoader`` with the equivalent per-item transforms
  (random-resized crop to 128, flip, rotation, perspective warp, brightness/contrast jitter).
- ``fastai``: fastai's plain ``DataBlock`` path for the same recipe (``Resize(presize)`` item
  transform, the same ``aug_transforms`` on the batch in the main process), as a reference for
  what the fasttricks data path changes.
- ``timm``: ``timm.data.create_loader`` (random-resized crop to 128, flip, colour jitter;
  ``use_prefetcher=False`` on the CPU).

All use the same worker count and batch size, interleaved over repetitions so machine load hits
them alike. Reported per loader: median wall-clock images/s and images per CPU-second (main
process plus workers, ``getrusage``: robust when other work shares the machine), and each
fasttricks row's ratio to the best peer and to the peer doing the same work. Target:
fasttricks at least as fast as the best peer.

With ``--device cuda`` only the two fastai-style loaders run (fasttricks and fastai), with
batches moved to the GPU and the batch transforms (``aug_transforms``, normalization) run there
in the main process, as in GPU training; the clock stops after a CUDA synchronize.

Usage::

    FASTTRICKS_BENCH_NOTE="..." PYTHONPATH=. python benchmarks/image_loader.py [--reps 3]
    PYTHONPATH=. python benchmarks/image_loader.py --device cuda --per-class 100 --reps 2

Writes ``benchmarks/results/image_loader.json`` (``image_loader_cuda.json`` with ``--device
cuda``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._machine import machine_info
from fasttricks._io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_images(root: Path, n_classes: int = 10, per_class: int = 200, px: int = 256) -> Path:
    """``root/train/<class>/<i>.jpg``: smooth colour fields plus noise (photo-like entropy)."""
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        d = root / "train" / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(base).resize((px, px), Image.BICUBIC), np.int16)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root


#: ``data.augment`` for the timm comparison: timm's work (a random-resized crop of 75-100% of
#: the area, a flip, brightness / contrast jitter of 0.2), no rotation, zoom or warp
TIMM_LIKE_AUGMENT = {"max_rotate": 0.0, "max_warp": 0.0, "max_zoom": 1.0, "min_scale": 0.75}


def fasttricks_loader(root: Path, bs: int, workers: int, size: int, presize: int,
                      device: str = "cpu", augment: dict | bool = True):
    from fasttricks.recipes import build_dataloaders

    recipe = {"name": "bench", "data": {"name": "image_folder", "path": str(root), "size": size,
                                        "presize": presize, "augment": augment, "bs": bs,
                                        "num_workers": workers, "valid_pct": 0.01},
              "model": {"name": "timm:resnet18"}}
    import torch

    dls = build_dataloaders(recipe)
    dls.to(torch.device(device))
    return dls.train


def torchvision_loader(root: Path, bs: int, workers: int, size: int, presize: int):
    import torch
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    tfm = T.Compose([
        T.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(1.0, 1.0)),
        T.RandomHorizontalFlip(), T.RandomRotation(10),
        T.RandomPerspective(distortion_scale=0.2, p=0.75),
        T.ColorJitter(brightness=0.2, contrast=0.2), T.ToTensor(), T.Normalize(MEAN, STD),
    ])
    ds = ImageFolder(str(root / "train"), tfm)
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True,
                                       num_workers=workers)


def fastai_loader(root: Path, bs: int, workers: int, size: int, presize: int,
                  device: str = "cpu"):
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, Normalize,
                                   RandomSplitter, Resize, aug_transforms, get_image_files,
                                   parent_label)

    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files,
                      get_y=parent_label, splitter=RandomSplitter(0.01, seed=0),
                      item_tfms=Resize(presize),
                      batch_tfms=[*aug_transforms(size=size), Normalize.from_stats(MEAN, STD)])
    return block.dataloaders(root / "train", bs=bs, num_workers=workers, device=device).train


def timm_loader(root: Path, bs: int, workers: int, size: int, presize: int):
    from timm.data import create_dataset, create_loader

    ds = create_dataset("", root=str(root / "train"))
    return create_loader(ds, input_size=(3, size, size), batch_size=bs, is_training=True,
                         use_prefetcher=False, num_workers=workers, scale=(0.75, 1.0),
                         ratio=(1.0, 1.0), hflip=0.5, color_jitter=0.2, mean=MEAN, std=STD,
                         persistent_workers=False)


def fasttricks_timm_like_loader(root: Path, bs: int, workers: int, size: int, presize: int,
                                device: str = "cpu"):
    return fasttricks_loader(root, bs, workers, size, presize, device, TIMM_LIKE_AUGMENT)


LOADERS = {"fasttricks": fasttricks_loader, "fasttricks_timm_aug": fasttricks_timm_like_loader,
           "fastai": fastai_loader, "torchvision": torchvision_loader, "timm": timm_loader}
PEERS = ("torchvision", "timm")
#: fasttricks configurations and the peer doing the same work
MATCHED = {"fasttricks": "torchvision", "fasttricks_timm_aug": "timm"}
#: loaders whose batch transforms run on the batch's device (the GPU-side augmentation path)
DEVICE_LOADERS = ("fasttricks", "fasttricks_timm_aug", "fastai")


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_epoch(loader, device: str = "cpu") -> dict:
    """Images/s (wall) and images per CPU-second for one pass over ``loader``."""
    n = 0
    _sync(device)
    cpu, wall = _cpu_seconds(), time.perf_counter()
    for xb, _ in loader:
        n += len(xb)
    _sync(device)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return {"images": n, "wall_s": wall, "images_per_s": n / wall,
            "images_per_cpu_s": n / max(cpu, 1e-9), "batch_shape": list(xb.shape)}


def main() -> None:
    from fasttricks.data.images import resolve_num_workers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--presize", type=int, default=160)
    parser.add_argument("--per-class", type=int, default=200, help="images per class (10)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: batches and batch transforms on the GPU (fastai-style "
                             "loaders only)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda needs a CUDA GPU; none is available")
    names = DEVICE_LOADERS if args.device == "cuda" else tuple(LOADERS)
    args.out = args.out or RESULTS / ("image_loader_cuda.json" if args.device == "cuda"
                                      else "image_loader.json")
    workers = resolve_num_workers(args.workers if args.workers == "auto" else int(args.workers))
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_images(Path(tmp), per_class=args.per_class)
        loaders = {}
        for name in names:
            extra = {"device": args.device} if args.device == "cuda" else {}
            try:
                loaders[name] = LOADERS[name](root, args.bs, workers, args.size, args.presize,
                                              **extra)
            except Exception as err:  # noqa: BLE001 (a peer that cannot run offline is reported)
                errors[name] = f"{type(err).__name__}: {err}"
        for name, loader in loaders.items():  # warm-up: page cache, imports, worker start
            time_epoch(loader, args.device)
        for rep in range(args.reps):
            for name, loader in loaders.items():
                runs[name].append(time_epoch(loader, args.device))
                print(f"rep {rep} {name:19s} {runs[name][-1]['images_per_s']:8.1f} img/s "
                      f"{runs[name][-1]['images_per_cpu_s']:8.1f} img/cpu-s", flush=True)
    summary = {}
    for name, rs in runs.items():
        if rs:
            summary[name] = {"images_per_s": statistics.median(r["images_per_s"] for r in rs),
                             "images_per_cpu_s": statistics.median(r["images_per_cpu_s"]
                                                                   for r in rs),
                             "batch_shape": rs[0]["batch_shape"]}
    peers = [v for k, v in summary.items() if k in PEERS]
    for name, peer in MATCHED.items():
        if name not in summary or not peers:
            continue
        ft = summary[name]
        for key in ("images_per_s", "images_per_cpu_s"):
            ft[f"{key}_ratio_to_best_peer"] = ft[key] / max(p[key] for p in peers)
            if peer in summary:
                ft[f"{key}_ratio_to_{peer}"] = ft[key] / summary[peer][key]
    gpu = None
    if args.device == "cuda":
        import torch

        gpu = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    load = {"load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}
    settings = vars(args) | {"out": str(args.out), "workers": workers}
    result = {"machine": machine_info(workers=workers, **load, **(gpu or {})),
              "settings": settings, "summary": summary, "runs": runs, "errors": errors}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2, default=str) + "\n")
    if "fasttricks" in errors:
        raise SystemExit(f"the fasttricks loader failed: {errors['fasttricks']}")
    for name, s in summary.items():
        peer = MATCHED.get(name)
        extra = (f"  ({s['images_per_s_ratio_to_best_peer']:.2f}x best peer wall, "
                 f"{s['images_per_cpu_s_ratio_to_best_peer']:.2f}x per CPU-s; "
                 f"{s[f'images_per_s_ratio_to_{peer}']:.2f}x / "
                 f"{s[f'images_per_cpu_s_ratio_to_{peer}']:.2f}x {peer}, the same work)"
                 if f"images_per_s_ratio_to_{peer}" in s else "")
        print(f"{name:19s} {s['images_per_s']:8.1f} img/s {s['images_per_cpu_s']:8.1f} "
              f"img/cpu-s{extra}")


if __name__ == "__main__":
    main()
