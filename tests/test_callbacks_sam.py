"""SAMCallback: one step equals the two-pass update by hand, sam-pytorch, fp16 scaling and skips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.training import GradientAccumulation, GradientClip
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.torch_core import L
from torch import nn

from conftest import N_IN, N_OUT, fit_quietly, tiny_learner, toy_data

from fasttricks.callbacks import SAMCallback, get_callback, sam_perturbation

def _model(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.BatchNorm1d(N_IN)] if bn else []
    layers += [nn.Linear(N_IN, 8), nn.Tanh(), nn.Linear(8, N_OUT)]
    return nn.Sequential(*layers)


def _grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _sam_by_hand(model, x, y, lr, rho, adaptive):
    """One SAM/ASAM + plain SGD step written out from the paper's formulas."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    w0 = [p.detach().clone() for p in params]
    g1 = _grads(model, x, y)
    if adaptive:  # e = rho * |w|^2 g / || |w| g ||
        norm = math.sqrt(sum(float(((w.abs() * g) ** 2).sum()) for w, g in zip(w0, g1)))
        e = [rho * w * w * g / (norm + 1e-12) for w, g in zip(w0, g1)]
    else:  # e = rho * g / ||g||
        norm = math.sqrt(sum(float((g**2).sum()) for g in g1))
        e = [rho * g / (norm + 1e-12) for g in g1]
    with torch.no_grad():
        for p, w, e_ in zip(params, w0, e):
            p.copy_(w + e_)
    g2 = _grads(model, x, y)
    return [w - lr * g for w, g in zip(w0, g2)], g2


@pytest.mark.parametrize("adaptive", [False, True])
def test_one_sam_step_equals_two_pass_update_by_hand(adaptive):
    x, y = toy_data(16)
    model = _model()
    rho, lr = (1.0 if adaptive else 0.2), 0.5
    expected, _ = _sam_by_hand(model, x, y, lr, rho, adaptive)
    learn = tiny_learner(model, x, y, bs=16, cbs=[SAMCallback(rho=rho, adaptive=adaptive)])
    fit_quietly(learn, 1, lr)
    for p, w in zip(learn.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)
    # and it is not the plain SGD step
    g_plain = _grads(copy.deepcopy(model), x, y)
    plain = [w.detach() - lr * g for w, g in zip(model.parameters(), g_plain)]
    moved = [float((p.detach() - q).abs().max()) for p, q in zip(learn.model.parameters(), plain)]
    assert max(moved) > 1e-4


def test_sam_perturbation_matches_formula():
    torch.manual_seed(1)
    params = [torch.randn(3, 4), torch.randn(4)]
    grads = [torch.randn(3, 4), torch.randn(4)]
    e = sam_perturbation(params, grads, rho=0.3)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    for e_, g in zip(e, grads):
        torch.testing.assert_close(e_, 0.3 * g / norm)
    ea = sam_perturbation(params, grads, rho=0.3, adaptive=True)
    norm_a = torch.sqrt(sum(((w.abs() * g) ** 2).sum() for w, g in zip(params, grads)))
    for e_, w, g in zip(ea, params, grads):
        torch.testing.assert_close(e_, 0.3 * w.abs() ** 2 * g / norm_a)


def test_plain_sam_with_sgd_matches_sam_pytorch():
    from sam import SAM  # sam-pytorch 0.0.1 (test extra)

    x, y = toy_data(48, seed=3)
    model = _model(seed=3)
    ref = copy.deepcopy(model)
    rho, lr = 0.1, 0.3
    base = torch.optim.SGD(ref.parameters(), lr=lr)
    ref_opt = SAM(ref.parameters(), base, rho=rho)
    for xb, yb in zip(x.split(16), y.split(16)):

        def closure(xb=xb, yb=yb):
            ref_opt.zero_grad()
            loss = F.cross_entropy(ref(xb), yb)
            loss.backward()
            return loss

        ref_opt.step(closure)

    learn = tiny_learner(model, x, y, bs=16, cbs=[SAMCallback(rho=rho)])
    fit_quietly(learn, 1, lr)
    for p, q in zip(learn.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_second_pass_leaves_batchnorm_running_stats_alone():
    x, y = toy_data(16)
    model = _model(bn=True)
    learn = tiny_learner(model, x, y, bs=16, cbs=[SAMCallback(rho=0.5)])
    fit_quietly(learn, 1, 0.1)
    bn = learn.model[0]
    m = bn.momentum
    # one update from the first pass only: running = (1 - m) * init + m * batch statistic
    torch.testing.assert_close(bn.running_mean, m * x.mean(0))
    torch.testing.assert_close(bn.running_var, (1 - m) * torch.ones(N_IN) + m * x.var(0))
    assert int(bn.num_batches_tracked) == 1
    assert bn.momentum == m


def test_gradient_accumulation_is_refused_with_a_clear_error():
    x, y = toy_data(16)
    learn = tiny_learner(_model(), x, y, bs=8, cbs=[SAMCallback(), GradientAccumulation(16)])
    with pytest.raises(ValueError, match="GradientAccumulation"):
        fit_quietly(learn)


def test_gradient_clip_clips_the_second_gradients():
    x, y = toy_data(16)
    model = _model()
    lr, rho, max_norm = 0.5, 0.2, 0.05
    _, g2 = _sam_by_hand(model, x, y, lr, rho, adaptive=False)
    total = math.sqrt(sum(float((g**2).sum()) for g in g2))
    assert total > max_norm  # the clip is active
    coef = max_norm / (total + 1e-6)
    expected = [w.detach() - lr * coef * g for w, g in zip(model.parameters(), g2)]
    learn = tiny_learner(model, x, y, bs=16, cbs=[SAMCallback(rho=rho), GradientClip(max_norm)])
    fit_quietly(learn, 1, lr)
    for p, w in zip(learn.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)


def test_bad_rho_is_rejected():
    with pytest.raises(ValueError, match="rho must be > 0.0, got -1"):
        SAMCallback(rho=-1)
    assert isinstance(get_callback("sam", rho=0.1, adaptive=True), SAMCallback)


# --- fp16 logic on the CPU: the learner's GradScaler path with a CPU GradScaler ----------------
class CPUMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision with a CPU autocast and a CPU GradScaler (same events and logic)."""

    def __init__(self, dtype=torch.float16, autocast_enabled=True, init_scale=2.0**12):
        super().__init__()
        self.dtype, self.autocast_enabled, self.init_scale = dtype, autocast_enabled, init_scale

    def before_fit(self):
        self.autocast = torch.autocast("cpu", dtype=self.dtype, enabled=self.autocast_enabled)
        self.learn.scaler = torch.amp.GradScaler("cpu", init_scale=self.init_scale)
        self.scales = L()


class InjectInf(Callback):
    """Make the gradient of the first parameter inf on backward call number ``which`` of a batch."""

    order = 0

    def __init__(self, which: int, batches=(0,)):
        self.which, self.batches = which, batches

    def before_fit(self):
        p = next(self.learn.model.parameters())
        self.handle = p.register_hook(self._hook)
        self.calls, self.forwards, self.scales_seen = 0, [], []

    def before_batch(self):
        self.calls = 0
        if self.training:
            self.scales_seen.append(self.learn.scaler.get_scale())

    def _hook(self, g):
        self.calls += 1
        if self.calls == self.which and self.learn.iter in self.batches:
            return torch.full_like(g, float("inf"))
        return g

    def after_fit(self):
        self.handle.remove()


def test_scaled_sam_step_matches_unscaled_step():
    # no autocast: the only difference is the loss scale, which must be undone exactly
    x, y = toy_data(32)
    model = _model()
    ref = tiny_learner(copy.deepcopy(model), x, y, bs=16, cbs=[SAMCallback(rho=0.2)])
    fit_quietly(ref, 1, 0.5)
    cbs = [CPUMixedPrecision(autocast_enabled=False, init_scale=2.0**14), SAMCallback(rho=0.2)]
    learn = tiny_learner(model, x, y, bs=16, cbs=cbs)
    fit_quietly(learn, 1, 0.5)
    for p, q in zip(learn.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_fp16_autocast_sam_close_to_fp32():
    x, y = toy_data(32)
    model = _model()
    ref = tiny_learner(copy.deepcopy(model), x, y, bs=16, cbs=[SAMCallback(rho=0.2)])
    fit_quietly(ref, 2, 0.5)
    learn = tiny_learner(model, x, y, bs=16, cbs=[CPUMixedPrecision(), SAMCallback(rho=0.2)])
    fit_quietly(learn, 2, 0.5)
    for p, q in zip(learn.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("which", [1, 2], ids=["first_pass_inf", "second_pass_inf"])
def test_overflowing_step_is_skipped_and_weights_stay(which):
    x, y = toy_data(32)
    model = _model()
    w0 = [p.detach().clone() for p in model.parameters()]
    inject = InjectInf(which, batches=(0,))
    sam = SAMCallback(rho=0.2)
    forwards = []
    model.register_forward_hook(lambda m, i, o: forwards.append(1))
    learn = tiny_learner(model, x, y, bs=32,
                         cbs=[CPUMixedPrecision(init_scale=2.0**10), sam, inject])
    fit_quietly(learn, 1, 0.5)
    for p, w in zip(learn.model.parameters(), w0):
        assert torch.equal(p.detach(), w)  # not moved, not even by the perturbation
    assert inject.scales_seen == [2.0**10]
    assert learn.scaler is None  # fit ended; check the backoff through a second fit below
    n_train_forwards = 1 if which == 1 else 2  # the first-pass overflow skips the second pass
    assert len(forwards) == n_train_forwards + 1  # + one validation batch
    # the next fit's step is not skipped (only batch 0 of the first fit overflowed)
    inject.batches = ()
    fit_quietly(learn, 1, 0.5)
    assert any(not torch.equal(p.detach(), w) for p, w in zip(learn.model.parameters(), w0))


def test_overflow_makes_the_scaler_back_off():
    x, y = toy_data(32)
    inject = InjectInf(2, batches=(0,))
    cbs = [CPUMixedPrecision(init_scale=2.0**10), SAMCallback(rho=0.2), inject]
    learn = tiny_learner(_model(), x, y, bs=16, cbs=cbs)
    fit_quietly(learn, 1, 0.5)
    # batch 0's second pass overflowed -> scale halved for batch 1
    assert inject.scales_seen == [2.0**10, 2.0**9]


# --- CUDA: the real learn.to_fp16() -------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_fp16_sam_matches_fp32_within_tolerance():
    x, y = toy_data(64)
    model = _model()
    ref = tiny_learner(copy.deepcopy(model), x, y, bs=16, cbs=[SAMCallback(rho=0.1)], device="cuda")
    fit_quietly(ref, 2, 0.3)
    learn = tiny_learner(model, x, y, bs=16, cbs=[SAMCallback(rho=0.1)], device="cuda").to_fp16()
    fit_quietly(learn, 2, 0.3)
    for p, q in zip(learn.model.parameters(), ref.model.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-2, atol=3e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("which", [1, 2], ids=["first_pass_inf", "second_pass_inf"])
def test_cuda_fp16_injected_inf_gradient_leaves_weights_unchanged(which):
    x, y = toy_data(32)
    model = _model().cuda()
    w0 = [p.detach().clone() for p in model.parameters()]
    inject = InjectInf(which, batches=(0,))
    learn = tiny_learner(model, x, y, bs=32, cbs=[SAMCallback(rho=0.2), inject], device="cuda")
    learn.to_fp16()
    fit_quietly(learn, 1, 0.5)
    for p, w in zip(learn.model.parameters(), w0):
        assert torch.equal(p.detach(), w)


_LR = {"sgd": 0.2, "sgd_momentum": 0.05, "sgd_nesterov": 0.05, "rmsprop": 3e-3, "adamw": 1e-2}
# the ranger family (RAdam warm-up + lookahead) needs a larger lr to move in 32 steps


def _every_optimizer() -> list[tuple[str, bool]]:
    from fasttricks.optim import list_optimizers

    cases = [pytest.param(name, False, id=f"sam-{name}") for name in list_optimizers()]
    return cases + [pytest.param(n, True, id=f"asam-{n}") for n in ("adamw", "sgd_momentum")]


@pytest.mark.parametrize(("name", "adaptive"), _every_optimizer())
def test_sam_with_every_optimizer_lowers_the_loss(name, adaptive):
    from fasttricks.optim import get_optimizer

    x, y = toy_data(256, seed=4)
    vx, vy = toy_data(64, seed=5)
    learn = Learner(
        DataLoaders(
            DataLoader(list(zip(x, y)), bs=16, shuffle=False),
            DataLoader(list(zip(vx, vy)), bs=64, shuffle=False),
        ),
        _model(seed=4),
        loss_func=nn.CrossEntropyLoss(),
        opt_func=get_optimizer(name),
        cbs=[SAMCallback(rho=0.5 if adaptive else 0.05, adaptive=adaptive)],
    )
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()[0]
        learn.fit(2, _LR.get(name, 0.1))
        after = learn.validate()[0]
    assert after < 0.8 * before, (name, before, after)


def test_sam_with_loss_filter_uses_the_kept_samples_in_both_passes():
    from fasttricks.callbacks import BatchLossFilterCallback, loss_filter_mask

    x, y = toy_data(16, seed=6)
    model = _model(seed=6)
    lr, rho, perc = 0.5, 0.2, 0.5
    with torch.no_grad():
        keep = loss_filter_mask(F.cross_entropy(model(x), y, reduction="none"), perc)
    assert 1 < int(keep.sum()) < 16
    expected, _ = _sam_by_hand(model, x[keep], y[keep], lr, rho, adaptive=False)
    cbs = [BatchLossFilterCallback(perc), SAMCallback(rho=rho)]
    learn = tiny_learner(model, x, y, bs=16, cbs=cbs)
    fit_quietly(learn, 1, lr)
    for p, w in zip(learn.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)
    assert learn.loss_func.reduction == "mean"
