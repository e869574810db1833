"""decay_share: what one optimizer step's weight decay did to each parameter, checked against
parameter counts made by hand and against Adam's first step written out."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fasttricks.optim import decay_share


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].bias.fill_(0.5)  # norm biases start at 0, where there is nothing to decay
    return net


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


LOSS = nn.functional.cross_entropy
# counted by hand: Linear(4, 3) weight 12, Linear(3, 2) weight 6; biases 3 + 2, norm 3 + 3
MATRIX_ELEMENTS, VECTOR_ELEMENTS = 12 + 6, 3 + 3 + 3 + 2


def _elements(net: nn.Module, share: dict[str, float], value: float) -> int:
    return sum(p.numel() for k, p in net.named_parameters() if math.isclose(share[k], value,
                                                                           abs_tol=1e-3))


def test_bn_wd_false_decays_only_the_matrices():
    net = _net()
    share = decay_share(net, "ranger_nogc", LOSS, _batch())
    assert list(share) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert _elements(net, share, 1.0) == MATRIX_ELEMENTS
    assert _elements(net, share, 0.0) == VECTOR_ELEMENTS


def test_bn_wd_true_decays_every_parameter():
    net = _net()
    share = decay_share(net, "adamw", LOSS, _batch())
    assert _elements(net, share, 1.0) == MATRIX_ELEMENTS + VECTOR_ELEMENTS


def test_l2_without_momentum_is_lr_wd_p():
    # plain SGD, L2: the step's extra part is exactly -lr * wd * p on the decayed parameters
    net = _net()
    share = decay_share(net, "sgd", LOSS, _batch(), lr=0.05, wd=0.3, true_wd=False)
    assert _elements(net, share, 1.0) == MATRIX_ELEMENTS
    assert _elements(net, share, 0.0) == VECTOR_ELEMENTS


def test_l2_under_adam_matches_the_first_step_by_hand():
    # Adam's bias-corrected first step is lr * g / (|g| + eps); L2 swaps g for g + wd * p.
    # A small loss scale keeps g near wd * p, where L2 changes the step by far more than
    # float32 rounding.
    def loss(out, target):
        return 1e-3 * LOSS(out, target)

    net, (x, y) = _net(), _batch()
    lr, wd, eps = 1e-3, 0.1, 1e-5
    share = decay_share(net, "adamw", loss, (x, y), lr=lr, wd=wd, true_wd=False)
    ref = _net()
    loss(ref(x), y).backward()
    for key, p in ref.named_parameters():
        g, w = p.grad.double(), p.detach().double()
        diff = lr * ((g + wd * w) / ((g + wd * w).abs() + eps) - g / (g.abs() + eps))
        expected = float(diff.norm() / (lr * wd * w.norm()))
        assert share[key] == pytest.approx(expected, rel=1e-3), key
    assert share["0.weight"] > 2  # rescaled by Adam's denominator: far from decoupled's 1.0


def test_zero_parameter_is_nan_and_model_is_untouched():
    net = _net()
    with torch.no_grad():
        net[1].bias.zero_()
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    share = decay_share(net, "adamw", LOSS, _batch())
    assert math.isnan(share["1.bias"])
    for k, p in net.named_parameters():
        assert torch.equal(p, before[k]) and p.grad is None


def test_dropout_sees_one_mask_in_both_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    share = decay_share(net, "ranger_nogc", LOSS, _batch())
    assert share["0.weight"] == pytest.approx(1.0, abs=1e-3)
    assert share["0.bias"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kw", [{"wd": 0.0}, {"lr": -1.0}])
def test_bad_lr_or_wd_is_refused(kw):
    with pytest.raises(ValueError, match="lr > 0 and wd > 0"):
        decay_share(_net(), "adamw", LOSS, _batch(), **kw)
