"""The gradient noise scale against a brute-force computation over a whole linear-regression set."""

from __future__ import annotations

import math
import random

import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner

from fasttricks.batch_size import BatchSizeSuggestion, gradient_noise_scale, suggest_bs

N, D, SIGMA = 8192, 10, 1.0


def _regression(offset: float, seed: int = 0):
    """y = x @ w_true + sigma * noise; the model's weights are w_true + offset * unit."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w_true = torch.randn(D, generator=gen, dtype=torch.float64)
    y = x @ w_true + SIGMA * torch.randn(N, generator=gen, dtype=torch.float64)
    w0 = w_true + offset * torch.ones(D, dtype=torch.float64) / math.sqrt(D)
    return x.float(), y.float()[:, None], w0.float()


def _brute_force_noise_scale(x, y, w0):
    """tr(Σ) / |G|² from every per-example gradient of the MSE, g_i = 2 (x_i·w - y_i) x_i."""
    x, y, w0 = x.double(), y.double()[:, 0], w0.double()
    per_example = 2 * (x @ w0 - y)[:, None] * x
    mean = per_example.mean(0)
    trace_sigma = (per_example - mean).pow(2).sum(1).mean()
    return (trace_sigma / mean.pow(2).sum()).item(), trace_sigma.item(), mean.pow(2).sum().item()


def _learner(x, y, w0, bs=256):
    items = list(zip(x, y))
    dls = DataLoaders(DataLoader(items, bs=bs, shuffle=True, drop_last=True),
                      DataLoader(items[:512], bs=bs))
    model = torch.nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w0[None])
    return Learner(dls, model, loss_func=torch.nn.MSELoss())


@pytest.mark.parametrize("offset", [0.3, 1.0])
def test_noise_scale_matches_brute_force_over_the_dataset(offset):
    x, y, w0 = _regression(offset)
    expected, trace_sigma, grad_sq = _brute_force_noise_scale(x, y, w0)
    # the closed form for Gaussian x: about (|delta|^2 + sigma^2) (d + 2) / |delta|^2
    assert 0.5 < expected / ((offset**2 + SIGMA**2) * (D + 2) / offset**2) < 2
    torch.manual_seed(0)
    learn = _learner(x, y, w0)
    found = suggest_bs(learn, steps=200, show_progress=False)
    est = found.estimate
    assert (est.b_big, est.b_small) == (256, 32)
    assert est.steps == 3 * (N // 256)  # capped at three passes over the small set
    assert expected / 1.5 < found.noise_scale < expected * 1.5, (found.noise_scale, expected)
    assert trace_sigma / 1.5 < est.trace_sigma < trace_sigma * 1.5
    assert grad_sq / 1.5 < est.grad_sq < grad_sq * 1.5
    assert found.batch_size == 2 ** round(math.log2(found.noise_scale))
    # nothing was trained
    assert torch.equal(learn.model.weight.detach()[0], w0)
    assert learn.model.weight.grad is None


def test_at_the_minimum_the_gradient_is_lost_in_noise_and_max_bs_is_suggested():
    x, y, w0 = _regression(0.0)
    w_ls = torch.linalg.lstsq(x.double(), y.double()).solution[:, 0].float()
    random.seed(0)  # fastai's loaders draw their shuffling seed from the random module
    learn = _learner(x, y, w_ls)
    torch.manual_seed(0)
    found = suggest_bs(learn, steps=20, max_bs=4096, show_progress=False)
    # away from the minimum the estimate matches the brute-force noise scale (tested above); at
    # the minimum |G|^2 is float rounding, so the estimate is far larger than any such value
    assert found.noise_scale > 1000 or math.isinf(found.noise_scale)
    assert found.batch_size >= 2048
    assert isinstance(found, BatchSizeSuggestion)


def test_gradient_noise_scale_on_exact_two_point_case():
    """Two examples with gradients +1 and -1 around a mean of 0.5: computed by hand.

    Loss l_i(w) = g_i * w with g = (1.5, -0.5): G = 0.5, tr(Σ) = 1. Batches of both items
    split into two micro-batches of one: |G_small|² = (2.25 + 0.25) / 2 = 1.25,
    |G_big|² = 0.25, so |G|² = (2 * 0.25 - 1.25) / 1 = -0.75: with N = 2 the finite
    population makes the big batch exact, and the estimator reports it as noise-dominated.
    """
    model = torch.nn.Linear(1, 1, bias=False)
    batch = (torch.tensor([[1.5], [-0.5]]), torch.zeros(2, 1))

    def loss_func(pred, target):
        return pred.mean()

    with torch.no_grad():
        model.weight.fill_(1.0)
    est = gradient_noise_scale(model, loss_func, [batch], b_small=1)
    assert est.b_big == 2 and est.steps == 1
    assert est.trace_sigma == pytest.approx((1.25 - 0.25) / (1 - 0.5))
    assert est.grad_sq == pytest.approx(2 * 0.25 - 1.25)
    assert math.isinf(est.noise_scale)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"steps": 0}, "steps must be an int >= 1, got 0"),
        ({"b_small": 48}, "b_big=256 must be a multiple of b_small=48"),
        ({"b_small": 256}, "at least twice"),
        ({"b_big": 10**6}, "b_big=1000000 is more than the 8192 training items"),
        ({"max_bs": 4}, "max_bs must be an int >= 8, got 4"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    x, y, w0 = _regression(1.0)
    with pytest.raises(ValueError, match=match):
        suggest_bs(_learner(x, y, w0), show_progress=False, **kwargs)
