"""Learning-rate helpers: the lr_find range and the staged fine-tuning rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.torch_core import params
from torch import nn

from fasttricks.datasets import load_dataset
from fasttricks.loaders import array_dataloaders
from fasttricks.lr import LRRange, fine_tune_staged, suggest_lr
from fasttricks.optim import get_optimizer


def _learner(seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    splits = load_dataset("synthetic", n_samples=400, seed=seed)
    dls: DataLoaders = array_dataloaders(splits, bs=32, device="cpu")
    model = nn.Sequential(
        nn.Sequential(nn.Linear(20, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
        nn.Linear(32, 3),
    )
    return Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=get_optimizer("adamw"),
                   splitter=lambda m: [params(m[0]), params(m[1]), params(m[2])])


def test_suggest_lr_is_the_range_between_steepest_and_minimum_over_ten(tmp_cwd):
    learn = _learner()
    before = [p.detach().clone() for p in learn.model.parameters()]
    rng = suggest_lr(learn, num_it=60)
    # lr_find puts the weights back
    for p, q in zip(before, learn.model.parameters()):
        assert torch.equal(p, q)
    # recompute both suggestions from the recorded sweep, as the cheatsheet defines them
    lrs = torch.tensor(learn.recorder.lrs[60 // 10:-5])
    losses = torch.tensor([float(x) for x in learn.recorder.losses[60 // 10:-5]])
    keep = ~torch.isnan(losses)
    lrs, losses = lrs[keep], losses[keep]
    minimum = lrs[losses.argmin()].item() / 10
    slopes = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    steep = lrs[slopes.argmin()].item()
    assert rng.minimum == pytest.approx(minimum)
    assert rng.steep == pytest.approx(steep)
    assert rng.low == min(steep, minimum) and rng.high == max(steep, minimum)
    assert rng.mid == pytest.approx(math.sqrt(steep * minimum))
    assert list(tmp_cwd.iterdir()) == []  # lr_find's checkpoint went to a temp folder


def test_lr_range_orders_its_ends_and_prints_them():
    r = LRRange(steep=1e-2, minimum=1e-3)
    assert (r.low, r.high) == (1e-3, 1e-2)
    assert "1.00e-03" in str(r) and "1.00e-02" in str(r)


def test_fine_tune_staged_uses_the_cheatsheet_learning_rates_per_group():
    learn = _learner()
    first_body = [p.detach().clone() for p in learn.model[0].parameters()]
    lr = 1e-2
    stages = fine_tune_staged(learn, lr, epochs=(1, 1, 1))
    assert [s["stage"] for s in stages] == ["frozen", "freeze_to(-2)", "unfrozen"]
    # flat_cos: the first batch of each stage runs at the stage's peak learning rate
    np.testing.assert_allclose(stages[0]["lrs"], [lr, lr, lr])
    assert stages[0]["trainable"] == [False, False, True]
    np.testing.assert_allclose(stages[1]["lrs"], [lr / 2] * 3)
    assert stages[1]["trainable"] == [False, True, True]
    lo, hi = lr / 100, lr / 2
    geometric = [lo, math.sqrt(lo * hi), hi]  # slice(lo, hi) over three groups
    np.testing.assert_allclose(stages[2]["lrs"], geometric, rtol=1e-6)
    assert stages[2]["trainable"] == [True, True, True]
    # the first group only trained in the last stage: it did change by then
    assert any(not torch.equal(a, b) for a, b in zip(first_body, learn.model[0].parameters()))


def test_fine_tune_staged_leaves_frozen_groups_untouched_and_skips_empty_stages():
    learn = _learner()
    body = [p.detach().clone() for p in learn.model[0].parameters()]
    head = [p.detach().clone() for p in learn.model[2].parameters()]
    stages = fine_tune_staged(learn, 1e-2, epochs=(1, 0, 0))
    assert [s["stage"] for s in stages] == ["frozen"]
    for a, b in zip(body, learn.model[0].parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(head, learn.model[2].parameters()))


def test_fine_tune_staged_rejects_bad_arguments():
    learn = _learner()
    with pytest.raises(ValueError, match="lr must be > 0"):
        fine_tune_staged(learn, -1.0)
    with pytest.raises(ValueError, match="three non-negative integers"):
        fine_tune_staged(learn, 1e-3, epochs=(1, 1))
    with pytest.raises(KeyError, match="Did you mean 'one_cycle'"):
        fine_tune_staged(learn, 1e-3, fit="onecycle")
