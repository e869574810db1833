"""DistributedDataParallel on CPU: two gloo processes with per-process batch b train the same
weights as one process with batch 2b over the same items, and gather the epoch's metrics; with
SAM (both backward passes synchronised), EMA (the same averaged weights), save-best (only rank 0
writes, every rank ends with the best weights) and the NaN guard (all ranks stop together)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import N_IN, N_OUT, tiny_learner, toy_data
import fastai.callback.progress  # noqa: F401 - learn.no_bar in the spawned processes
from fastai.callback.core import Callback
from fastai.metrics import accuracy
from torch import nn

from fasttricks.callbacks import EMACallback, NaNGuardCallback, SAMCallback, SaveBestCallback
from fasttricks.callbacks.nan_guard import NonFiniteLossError
from fasttricks.distributed import DDPCallback

pytestmark = pytest.mark.slow

N, BS, EPOCHS, LR = 32, 4, 2, 0.1  # BS per process; the global batch is 2 * BS


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_IN, 8), nn.ReLU(), nn.Linear(8, N_OUT))


def _data():
    x, y = toy_data(N, seed=1)
    vx, vy = toy_data(16, seed=2)
    return x, y, vx, vy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_the_weights_of_one_process_with_the_global_batch(
        ddp_runs):
    ddp = ddp_runs[0]["plain"]
    ref = _reference([])
    assert ddp["wrapped"] == "Sequential"  # unwrapped after the fit
    ref_state = ref.model.state_dict()
    assert ddp["state"].keys() == ref_state.keys()
    start = _model().state_dict()
    for k in ref_state:
        assert not torch.allclose(ref_state[k], start[k])  # training moved every tensor
        torch.testing.assert_close(ddp["state"][k], ref_state[k], atol=1e-6, rtol=1e-5)
    # the epoch table: train loss (smoothed), valid loss and accuracy over the whole split
    for got, want in zip(ddp["values"], ref.recorder.values):
        torch.testing.assert_close(torch.tensor(got[1:], dtype=torch.float64),
                                   torch.tensor(want[1:], dtype=torch.float64),
                                   atol=1e-5, rtol=1e-5)


def test_one_process_is_left_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x, y, vx, vy = _data()
    learn = tiny_learner(_model(), x, y, 2 * BS, cbs=[DDPCallback()], valid=(vx, vy), lr=LR)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, LR)
    plain = tiny_learner(_model(), x, y, 2 * BS, valid=(vx, vy), lr=LR)
    with plain.no_bar(), plain.no_logging():
        plain.fit(1, LR)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(learn.model.state_dict()[k], v)


# ------------------------------------------------------------ callbacks under DDP (gloo, CPU)
# (one spawn of two ranks, ddp_runs, serves every test of this file)

EMA_DECAY, SAM_RHO, SAVE_EPOCHS = 0.8, 0.05, 3


def _join_in_time(fn, args: tuple, seconds: float = 90) -> None:
    """Run ``fn(rank, *args)`` in two spawned processes; fail (and kill them) if they are not
    done within ``seconds``: a rank left waiting in a collective is a hang, not a slow test."""
    ctx = mp.start_processes(fn, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"the two DDP processes were still running after {seconds:.0f}s (a hang)")


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def _fit(cbs, bs: int, x=None, y=None, epochs: int = EPOCHS, path: str = ".",
         ddp: bool = False):
    data = _data()
    x = data[0] if x is None else x
    y = data[1] if y is None else y
    learn = tiny_learner(_model(), x, y, bs, cbs=[*([DDPCallback()] if ddp else []), *cbs],
                         metrics=[accuracy], valid=data[2:], lr=LR, path=path)
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, LR)
    return learn


def _state(learn) -> dict:
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}


def _ranks_main(rank: int, world: int, port: int, out: str) -> None:
    """One process group, one fit per case: plain, SAM, EMA, save-best, then a nan loss on
    rank 1; each rank saves what it ended with (and lists the files it wrote into its own
    folder)."""
    _join(rank, world, port)
    learn = _fit([], BS, ddp=True)
    results = {"plain": {"state": learn.model.state_dict(), "values": learn.recorder.values,
                         "wrapped": type(learn.model).__name__}}
    results["sam"] = _state(_fit([SAMCallback(rho=SAM_RHO)], BS, ddp=True))
    ema = EMACallback(decay=EMA_DECAY, warmup=False)
    results["ema"] = {"model": _state(_fit([ema], BS, ddp=True)),
                      "ema": [e.clone() for e in ema.ema_params]}
    folder = Path(out) / f"rank{rank}"
    folder.mkdir()
    best = SaveBestCallback(monitor="valid_loss", comp=np.greater, fname="best")
    learn = _fit([best], BS, epochs=SAVE_EPOCHS, path=str(folder), ddp=True)
    results["save_best"] = {"model": _state(learn), "best_epoch": best.best_epoch,
                            "reloaded": best.reloaded,
                            "files": sorted(str(p.relative_to(folder))
                                            for p in folder.rglob("*") if p.is_file())}
    torch.save(results, Path(out) / f"rank{rank}.pt")  # before the case that could hang
    try:
        _fit([_PoisonOneRank(rank), NaNGuardCallback()], BS, ddp=True)
        results["nan"] = None
    except NonFiniteLossError as err:
        results["nan"] = str(err)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _global_batch_order() -> torch.Tensor:
    """The items in the order the two ranks see them together: rank r reads the contiguous
    half r of the epoch, so global batch k is rank 0's batch k followed by rank 1's batch k."""
    half = N // 2
    return torch.cat([torch.cat([torch.arange(k, k + BS), torch.arange(half + k, half + k + BS)])
                      for k in range(0, half, BS)])


def _reference(cbs, epochs: int = EPOCHS, path: str = "."):
    """One process, batch 2 * BS, the items in :func:`_global_batch_order`."""
    x, y, _, _ = _data()
    order = _global_batch_order()
    return _fit(cbs, 2 * BS, x[order], y[order], epochs=epochs, path=path)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """What each of two gloo ranks ended with in every case of :func:`_ranks_main` (one
    process group for all, as starting the processes is most of the time)."""
    out = tmp_path_factory.mktemp("ddp")
    _join_in_time(_ranks_main, (2, _free_port(), str(out)), seconds=150)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)


def test_sam_synchronises_both_backward_passes_under_ddp(ddp_runs):
    ref = _state(_reference([SAMCallback(rho=SAM_RHO)]))
    plain = _state(_reference([]))
    assert any(not torch.allclose(ref[k], plain[k], atol=1e-4) for k in ref)  # SAM mattered
    for rank in (0, 1):  # a rank-local second gradient would move each rank its own way
        _assert_same_weights(ddp_runs[rank]["sam"], ref)


def test_ema_weights_under_ddp_equal_the_single_process_ema(ddp_runs):
    ema = EMACallback(decay=EMA_DECAY, warmup=False)
    learn = _reference([ema])
    names = [k for k, v in learn.model.named_parameters()]
    raw = _state(_reference([]))
    assert any(not torch.allclose(e, raw[k], atol=1e-4) for k, e in zip(names, ema.ema_params))
    for rank in (0, 1):
        got = ddp_runs[rank]["ema"]
        for mine, want in zip(got["ema"], ema.ema_params):
            torch.testing.assert_close(mine, want, atol=1e-6, rtol=1e-5)
        _assert_same_weights(got["model"], _state(learn))  # swapped in at the end of fit


def test_save_best_writes_on_rank_0_only_and_every_rank_ends_with_the_best(ddp_runs,
                                                                          tmp_path):
    best = SaveBestCallback(monitor="valid_loss", comp=np.greater, fname="best")
    ref = _reference([best], epochs=SAVE_EPOCHS, path=str(tmp_path))
    assert best.reloaded and best.best_epoch < SAVE_EPOCHS - 1  # the best is not the last
    rank0, rank1 = (r["save_best"] for r in ddp_runs)
    assert rank0["files"] == ["models/best.pth"] and rank1["files"] == []
    assert rank0["best_epoch"] == rank1["best_epoch"] == best.best_epoch
    assert rank0["reloaded"] and rank1["reloaded"]
    for got in (rank0, rank1):
        _assert_same_weights(got["model"], _state(ref))


class _PoisonOneRank(Callback):
    """Make rank 1's training loss nan at one batch (before DDPCallback looks at it)."""

    order = 5

    def __init__(self, rank: int, epoch: int = 1, batch: int = 2) -> None:
        self.rank, self.at = rank, (epoch, batch)

    def after_loss(self) -> None:
        if self.training and self.rank == 1 and (self.epoch, self.iter) == self.at:
            self.learn.loss = self.learn.loss * float("nan")


def test_a_nan_loss_on_one_rank_stops_every_rank_at_the_same_batch(ddp_runs):
    # rank 0's loss was finite: without the shared check it would train on and wait forever
    # for rank 1 in the gradient all-reduce (the fixture fails on a hang instead)
    for rank in (0, 1):
        error = ddp_runs[rank]["nan"]
        assert error is not None, f"rank {rank} trained to the end"
        assert "Training stopped at epoch 1, batch 2: the training loss is nan" in error
