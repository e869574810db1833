"""Training throughput in fp16: fastai's defaults vs the fasttricks recipe path vs plain PyTorch.

Three ways to train the same timm model (random weights, nothing downloaded) on the same
synthetic batch that already sits on the device, each timed over ``--steps`` optimizer steps
after ``--warmup`` steps, in one process:

- ``fastai``: ``Learner(...).to_fp16()`` with fastai's own ``ranger`` (fastai's defaults);
- ``fasttricks``: the recipe path, i.e. :func:`fasttricks.recipes.build_learner` on a recipe
  naming the model and ``optimizer: ranger`` with ``fp16``/``channels_last`` left at ``auto``
  (so whatever the library turns on for GPU learners is on), then trained with fastai's loop;
- ``torch``: a plain loop with ``torch.autocast`` fp16, ``GradScaler``, fused ``AdamW`` and
  channels-last model and inputs.

Images per second and the ratios (fasttricks / torch, fasttricks / fastai) go to
``benchmarks/results/gpu_fp16_<device>.json`` with the machine's GPU, torch and CUDA versions.
Targets on a GPU: fasttricks >= 95% of torch and >= 2x fastai.

Usage::

    PYTHONPATH=. python benchmarks/gpu_fp16.py                     # resnet50, bs 256, 224 px
    PYTHONPATH=. python benchmarks/gpu_fp16.py --device cpu        # small CPU mode (CI-sized)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._machine import machine_info  # noqa: E402
from fasttricks._io import quiet_fit, write_json  # noqa: E402

log = logging.getLogger("gpu_fp16")

#: model, batch size, image size, timed steps, warm-up steps
GPU_DEFAULTS = ("resnet50", 256, 224, 50, 10)
CPU_DEFAULTS = ("resnet18", 8, 64, 4, 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceBatches:
    """A fastai-compatible loader that yields one fixed device batch ``n`` times.

    Keeps the data path out of the measurement: every way trains on the same tensors that are
    already on the device.
    """

    def __init__(self, xb: torch.Tensor, yb: torch.Tensor, n: int) -> None:
        self.xb, self.yb, self.n_batches = xb, yb, n
        self.bs = len(xb)
        self.n = n * self.bs
        self.device = xb.device
        self.drop_last = True

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.n_batches):
            yield self.xb, self.yb

    def __len__(self) -> int:
        return self.n_batches

    def to(self, device: Any) -> DeviceBatches:
        return self

    def new(self, *args: Any, **kwargs: Any) -> DeviceBatches:
        return self


def _fastai_dls(xb: torch.Tensor, yb: torch.Tensor, n: int) -> Any:
    from fastai.data.core import DataLoaders

    return DataLoaders(DeviceBatches(xb, yb, n), DeviceBatches(xb[:2], yb[:2], 1),
                       device=xb.device)


def _timm(arch: str, n_classes: int) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=n_classes)


class _StepClock:
    """A fastai callback that times the training batches after the warm-up ones."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        from fastai.callback.core import Callback

        clock = self

        class _Cb(Callback):
            order = 99

            def after_batch(self) -> None:
                if self.training and self.iter == warmup - 1:
                    _sync(device)
                    clock.start = time.perf_counter()

            def after_train(self) -> None:
                _sync(device)
                clock.stop = time.perf_counter()

        self.callback = _Cb()
        self.start = self.stop = 0.0


def _fit_timed(learn: Any, steps: int, warmup: int, device: torch.device) -> float:
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)

    clock = _StepClock(warmup, device)
    with quiet_fit(learn):
        learn.fit(1, 1e-3, cbs=[clock.callback])
    return clock.stop - clock.start


def run_fastai(arch: str, xb: torch.Tensor, yb: torch.Tensor, steps: int, warmup: int,
               n_classes: int) -> float:
    """fastai's defaults: ``to_fp16()`` (on CUDA) and fastai's ``ranger``; seconds for ``steps``."""
    import fastai.callback.fp16  # noqa: F401  (Learner.to_fp16)
    from fastai.learner import Learner
    from fastai.optimizer import ranger

    model = _timm(arch, n_classes).to(xb.device)
    learn = Learner(_fastai_dls(xb, yb, steps + warmup), model, loss_func=nn.CrossEntropyLoss(),
                    opt_func=ranger)
    if xb.device.type == "cuda":
        learn = learn.to_fp16()
    return _fit_timed(learn, steps, warmup, xb.device)


def run_fasttricks(arch: str, xb: torch.Tensor, yb: torch.Tensor, steps: int, warmup: int,
                   n_classes: int) -> float:
    """The recipe path: ``build_learner`` with ``optimizer: ranger`` and GPU defaults on."""
    from fasttricks.datasets import DataSplits, Split
    from fasttricks.recipes import build_learner, load_recipe

    # a tiny stand-in split only fixes shapes and classes; training uses the device batch
    x = np.zeros((n_classes, *xb.shape[1:]), dtype=np.float32)
    y = np.arange(n_classes, dtype=np.int64)
    splits = DataSplits(Split(x, y), Split(x, y), Split(x, y),
                        vocab=[str(i) for i in range(n_classes)], info={"name": "bench"})
    recipe = load_recipe({"name": "gpu-fp16", "data": {"name": "digits", "bs": len(xb)},
                          "model": {"name": f"timm:{arch}"}, "optimizer": {"name": "ranger"},
                          "metrics": []})
    learn = build_learner(recipe, splits=splits)
    learn.dls = _fastai_dls(xb, yb, steps + warmup)
    learn.model.to(xb.device)
    return _fit_timed(learn, steps, warmup, xb.device)


def run_torch(arch: str, xb: torch.Tensor, yb: torch.Tensor, steps: int, warmup: int,
              n_classes: int) -> float:
    """Plain PyTorch: autocast fp16, GradScaler, fused AdamW, channels-last model and inputs."""
    device = xb.device
    cuda = device.type == "cuda"
    model = _timm(arch, n_classes).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        xb = xb.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)
    loss_func = nn.CrossEntropyLoss()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            loss = loss_func(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    model.train()
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


WAYS: dict[str, Callable[..., float]] = {
    "fastai": run_fastai,
    "fasttricks": run_fasttricks,
    "torch": run_torch,
}


def measure(device: torch.device, arch: str, bs: int, size: int, steps: int, warmup: int,
            n_classes: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Images per second of each way on one synthetic batch; returns the result record."""
    gen = torch.Generator().manual_seed(seed)
    xb = torch.randn(bs, 3, size, size, generator=gen).to(device)
    yb = torch.randint(0, n_classes, (bs,), generator=gen).to(device)
    rows = {}
    for name, way in WAYS.items():
        seconds = way(arch, xb, yb, steps, warmup, n_classes)
        rows[name] = {"seconds": seconds, "images_per_s": steps * bs / seconds}
        log.info("%-10s %8.1f img/s", name, rows[name]["images_per_s"])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ips = {k: v["images_per_s"] for k, v in rows.items()}
    return {
        "config": {"model": arch, "bs": bs, "size": size, "steps": steps, "warmup": warmup,
                   "device": str(device)},
        "ways": rows,
        "ratios": {"fasttricks/torch": ips["fasttricks"] / ips["torch"],
                   "fasttricks/fastai": ips["fasttricks"] / ips["fastai"]},
        "targets": {"fasttricks/torch": 0.95, "fasttricks/fastai": 2.0},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--model", help="timm model (default resnet50 on CUDA, resnet18 on CPU)")
    parser.add_argument("--bs", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; none is available")
    device = torch.device("cuda" if cuda else "cpu")
    arch, bs, size, steps, warmup = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    result = measure(device, args.model or arch, args.bs or bs, args.size or size,
                     args.steps or steps, args.warmup or warmup)
    result["machine"] = machine_info(cuda=torch.version.cuda,
                                     cudnn=torch.backends.cudnn.version() if cuda else None)
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_fp16_{device.type}.json"
    write_json(out, result)
    log.info("ratios: %s -> %s", {k: round(v, 3) for k, v in result["ratios"].items()}, out)
    return result


if __name__ == "__main__":
    main()
