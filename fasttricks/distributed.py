"""One model on several processes: DistributedDataParallel through fastai's distributed loader.

``torchrun --nproc_per_node N -m fasttricks.train RECIPE`` (or ``distributed: ddp`` in the
recipe, which starts ``torchrun`` itself) trains one model in N processes: each process holds
a replica, reads its own shard of every epoch (:class:`DDPDataLoader`, after fastai's
``DistributedDL``: the epoch's order is drawn on rank 0, broadcast, padded to a multiple of N
and cut into N contiguous pieces), and :class:`torch.nn.parallel.DistributedDataParallel` averages
the gradients in every ``backward``. Li et al., "PyTorch Distributed: Experiences on
Accelerating Data Parallel Training", VLDB 2020.

Semantics:

- batch size: the recipe's ``data.bs`` is **per process**; the global batch is ``N * bs`` and
  the learning rate is not rescaled (scale it yourself, e.g. linearly, Goyal et al. 2017).
- metrics: the epoch table's losses and metrics are gathered over all processes (a
  per-batch mean is averaged over the ranks, predictions are gathered for the others); the
  final valid/test scores are computed after the fit on the whole split by every rank with
  the same weights, so they equal a single-process evaluation.
- files: only rank 0 writes the run folder and prints; the other ranks train and exit.
- SAM: both of its backward passes go through the DDP module, so both synchronise gradients
  (the perturbation uses the global gradient, as in a single process with the global batch).
- EMA: every rank updates identical shadow weights from identical weights; rank 0's are the
  ones written.
- save-best: only rank 0 writes the checkpoint; at the end of fit it reloads it and
  broadcasts the best weights, so every rank ends with them without a shared folder (each
  process of a ``retrain_at_best`` run has its own temporary one).
- NaN guard: a non-finite loss on any rank is made non-finite on every rank before the guard
  looks at it, so all ranks stop together instead of one waiting forever in an all-reduce.
- BatchNorm layers become :class:`torch.nn.SyncBatchNorm` on CUDA (statistics over the global
  batch); on CPU (gloo) they keep per-process statistics, so a BatchNorm model under CPU DDP
  differs from the single process with the global batch.

This module does not need ``accelerate``, which ``fastai.distributed`` (``distrib_ctx``) needs
even to import; it wraps the model itself, and broadcasts the epoch order on CPU for gloo
(fastai's broadcast moves it to CUDA).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.data.core import TfmdDL
from fastai.data.load import _FakeLoader
from fastai.torch_core import apply, find_bs, to_detach
from torch import nn

__all__ = ["DDPCallback", "DDPDataLoader", "init_distributed", "is_rank0", "rank", "world_size"]


def world_size() -> int:
    """Processes in this job: ``WORLD_SIZE`` as torchrun sets it (1 when not launched so)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``RANK``; 0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    """Whether this process writes files and prints: rank 0, or no distributed job at all."""
    return rank() == 0


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (``env://``); True if one is active.

    The backend defaults to NCCL with CUDA and gloo without; with CUDA each process takes the
    GPU ``LOCAL_RANK``.
    """
    if world_size() <= 1:
        return False
    if dist.is_initialized():
        return True
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, init_method="env://")
    return True


def _padded(n: int, world: int) -> int:
    return -(-n // world) * world


class DDPDataLoader(TfmdDL):
    """One rank's shard of a fastai loader, in the way of fastai's ``DistributedDL`` (which
    needs ``accelerate`` to import and broadcasts on CUDA only).

    Each epoch's order is drawn on rank 0 and broadcast (on the backend's device: CPU for
    gloo), padded with its first items to a multiple of the world size, and rank r reads the
    r-th contiguous piece. Gathered values (``learn.to_detach``) lose the padding again; a
    per-batch scalar (a mean loss or metric) is averaged over the ranks.
    """

    def __init__(self, dl: TfmdDL) -> None:
        self.dl, self.rank, self.world = dl, dist.get_rank(), dist.get_world_size()
        self.bs, self.drop_last, self.dataset = dl.bs, dl.drop_last, dl.dataset
        self.num_workers, self.offs, self.pin_memory = dl.num_workers, dl.offs, dl.pin_memory
        self.device = dl.device
        fake = dl.fake_l
        self.fake_l = _FakeLoader(self, fake.pin_memory, fake.num_workers, fake.timeout,
                                  persistent_workers=fake.persistent_workers,
                                  pin_memory_device=fake.pin_memory_device)

    def __len__(self) -> int:
        return _padded(len(self.dl), self.world) // self.world

    def get_idxs(self) -> list[int]:
        idxs = list(self.dl.get_idxs())
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        tensor = torch.as_tensor(idxs, dtype=torch.long, device=device)
        dist.broadcast(tensor, 0)
        idxs = tensor.cpu().tolist()
        self.n, self.n_padded = len(idxs), _padded(len(idxs), self.world)
        idxs += (idxs * (self.n_padded // max(1, self.n)))[:self.n_padded - self.n]
        per = self.n_padded // self.world
        return idxs[self.rank * per:(self.rank + 1) * per]

    def before_iter(self) -> None:
        self.i = 0
        self.dl.before_iter()

    def randomize(self) -> None:
        self.dl.randomize()

    def after_batch(self, b: Any) -> Any:
        self.i += find_bs(b)
        return self.dl.after_batch(b)

    def after_iter(self) -> None:
        self.dl.after_iter()

    def create_batches(self, samps: Any) -> Any:
        return self.dl.create_batches(samps)

    def to_detach(self, b: Any, cpu: bool = True, gather: bool = True) -> Any:
        if gather and isinstance(b, torch.Tensor) and b.ndim == 0:
            mean = b.detach().float().clone()
            dist.all_reduce(mean)
            mean = mean / self.world
            return mean.cpu() if cpu else mean
        b = to_detach(b, cpu, gather)  # gathers over the ranks (fastai's maybe_gather)
        if not gather or not hasattr(self, "n"):
            return b
        per = self.n_padded // self.world

        def unpad(t: Any) -> Any:
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                return t
            # this batch's rows from each rank that lie beyond the real items are padding
            extra = sum(max(0, min(len(t) // self.world, self.i + r * per - self.n))
                        for r in range(self.world))
            return t[:len(t) - extra] if extra else t

        return apply(unpad, b)


class DDPCallback(Callback):
    """Wrap the model in DistributedDataParallel and the loaders in :class:`DDPDataLoader` for
    the fit, and unwrap both afterwards (so ``validate``/``get_preds`` after the fit see the whole
    split on every rank). Does nothing when the job has one process."""

    order = 11  # like fastai's DistributedTrainer: before the recorder and the mixed precision
    run_valid = True

    def __init__(self, sync_bn: bool = True) -> None:
        self.sync_bn = sync_bn
        self.active = False

    def before_fit(self) -> None:
        self.active = init_distributed()
        if not self.active:
            return
        model = self.learn.model
        device = next(model.parameters()).device
        if self.sync_bn and device.type == "cuda":  # SyncBatchNorm runs on CUDA only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        self.learn.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.old_loaders = list(self.learn.dls.loaders)
        self.learn.dls.loaders = [self._wrap(dl) for dl in self.old_loaders]
        if rank() != 0:
            self.learn.logger = lambda *args, **kwargs: None

    def _wrap(self, dl: Any) -> Any:
        return dl if isinstance(dl, DDPDataLoader) else DDPDataLoader(dl)

    def before_train(self) -> None:
        if self.active:
            self.learn.dl = self._wrap(self.learn.dl)

    def before_validate(self) -> None:
        if self.active:
            self.learn.dl = self._wrap(self.learn.dl)

    def after_loss(self) -> None:
        """Make a non-finite loss on one rank non-finite on all (for the NaN guard)."""
        if not self.active or not self.training:
            return
        bad = torch.tensor([0.0 if bool(torch.isfinite(self.learn.loss.detach()).all())
                            else 1.0], device=self.learn.loss.device)
        dist.all_reduce(bad)
        if bad.item() > 0 and bool(torch.isfinite(self.learn.loss.detach()).all()):
            self.learn.loss = self.learn.loss * float("nan")

    def after_fit(self) -> None:
        if not self.active:
            return
        self.learn.model = self.learn.model.module
        self.learn.dls.loaders = self.old_loaders
        self.active = False
