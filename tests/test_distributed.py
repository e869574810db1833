"""DistributedDataParallel on CPU: two gloo processes with per-process batch b train the same
weights as one process with batch 2b over the same items, and gather the epoch's metrics."""

from __future__ import annotations

import os
import socket
from functools import partial

import pytest
import torch
import torch.multiprocessing as mp
from conftest import N_IN, N_OUT, tiny_learner, toy_data
import fastai.callback.progress  # noqa: F401 - learn.no_bar in the spawned processes
from fastai.metrics import accuracy
from torch import nn

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


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    x, y, vx, vy = _data()
    learn = tiny_learner(_model(), x, y, BS, cbs=[DDPCallback()], metrics=[accuracy],
                         valid=(vx, vy), lr=LR)
    with learn.no_bar(), learn.no_logging():
        learn.fit(EPOCHS, LR)
    if rank == 0:
        torch.save({"state": learn.model.state_dict(), "values": learn.recorder.values,
                    "wrapped": type(learn.model).__name__}, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process_reference():
    """One process, batch 2 * BS, items in the order the two ranks see them together: rank r
    reads the contiguous half r of the epoch, so global batch k is rank 0's batch k followed
    by rank 1's batch k."""
    x, y, vx, vy = _data()
    half = N // 2
    order = torch.cat([torch.cat([torch.arange(k, k + BS), torch.arange(half + k, half + k + BS)])
                       for k in range(0, half, BS)])
    learn = tiny_learner(_model(), x[order], y[order], 2 * BS, metrics=[accuracy],
                         valid=(vx, vy), lr=LR)
    with learn.no_bar(), learn.no_logging():
        learn.fit(EPOCHS, LR)
    return learn


def test_two_gloo_processes_train_the_weights_of_one_process_with_the_global_batch(tmp_path):
    out = tmp_path / "rank0.pt"
    mp.start_processes(partial(_rank_main), args=(2, _free_port(), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    ddp = torch.load(out, weights_only=False)
    ref = _single_process_reference()
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
