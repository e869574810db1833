"""Shared pytest setup: one CPU thread, a clean skip for CUDA-only tests, and the small data,
learner and recipe builders several test files use (``from conftest import ...``)."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from torch import nn

# The tests train tiny models: a second thread only adds synchronisation cost, and on a busy
# 2-core machine it makes them many times slower.
torch.set_num_threads(1)

N_IN, N_OUT = 5, 3

# The test command also executes the recipe notebooks (nbmake, after tests/): their kernels
# inherit this environment, and FASTTRICKS_QUICK=1 makes each notebook shrink its epochs, trials
# and data. A notebook run alone under pytest is quick too (it sees PYTEST_CURRENT_TEST).
os.environ.setdefault("FASTTRICKS_QUICK", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


def skip_without_kernel() -> None:
    """Skip where the optimizers' C kernel cannot be built; fail instead under
    FASTTRICKS_REQUIRE_NATIVE=1 (CI installs a compiler, so there it must build)."""
    from fasttricks.optim._native import native_status

    status = native_status()
    if not status["available"]:
        if os.environ.get("FASTTRICKS_REQUIRE_NATIVE") == "1":
            pytest.fail(f"FASTTRICKS_REQUIRE_NATIVE=1 but no C kernel: {status['reason']}")
        pytest.skip(f"no C kernel here: {status['reason']}")


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run the test inside an empty temporary working directory (for `runs/` output)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------ tiny learners


def toy_data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` items with ``N_IN`` features and a 3-class label that depends on them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_IN, generator=g)
    y = (x[:, 0] + 2 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def tiny_learner(model, x, y, bs, cbs=(), opt_func=None, metrics=(), path=".", valid=None,
                 loss=None, lr=1e-3, device="cpu"):
    """A fastai Learner over ``(x, y)`` in order (no shuffling), plain SGD without momentum or
    weight decay; ``valid`` defaults to the first batch of the training items."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.optimizer import SGD

    vx, vy = valid if valid is not None else (x[:bs], y[:bs])
    dls = DataLoaders(
        DataLoader(list(zip(x, y)), bs=bs, shuffle=False, device=device),
        DataLoader(list(zip(vx, vy)), bs=bs, shuffle=False, device=device),
        device=device,
    )
    return Learner(dls, model.to(device),
                   loss_func=loss if loss is not None else nn.CrossEntropyLoss(),
                   opt_func=opt_func or partial(SGD, mom=0.0), lr=lr, wd=0.0,
                   metrics=list(metrics), cbs=list(cbs), path=path)


def fit_quietly(learn, epochs=1, lr=0.1):
    """``learn.fit(epochs, lr)`` without the progress bar and the epoch table."""
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, lr)


# ------------------------------------------------------------------------------- tiny recipes


def tiny_recipe(**changes):
    """A small, fast synthetic recipe (300 items, MLP, 2 epochs); ``changes`` are dotted
    overrides such as ``**{"schedule.epochs": 3}``."""
    from fasttricks.recipes import load_recipe

    recipe = {
        "name": "tiny",
        "data": {"name": "synthetic", "n_samples": 300, "bs": 32},
        "model": {"name": "mlp", "hidden": [16]},
        "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"epochs": 2},
        "metrics": ["accuracy"],
        "seed": 0,
    }
    return load_recipe(recipe, changes)
