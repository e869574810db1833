"""The plain-torch schedules against what fastai's fit_one_cycle / fit_flat_cos set each batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import fastai.callback.progress  # noqa: F401  (patches Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle / fit_flat_cos)
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import SGD, Adam

from fasttricks.optim import create_optimizer
from fasttricks.schedules import CombinedCosineLR, flat_cos, one_cycle, sched_cos

N_ITEMS, BS, EPOCHS = 56, 8, 3  # 7 batches per epoch, 21 steps


class _RecordHypers(Callback):
    """Records fastai's ``opt.hypers`` (lr and mom of every group) as each batch starts."""

    order = 61  # after ParamScheduler (60) has set this batch's values

    def before_fit(self) -> None:
        self.seen = []

    def before_step(self) -> None:
        self.seen.append([(h["lr"], h["mom"]) for h in self.opt.hypers])


def _fastai_run(fit: str, opt_func, **kwargs) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_ITEMS, 3, generator=gen)
    items = [(xi, xi.sum(0, keepdim=True)) for xi in x]
    dls = DataLoaders(DataLoader(items, bs=BS, shuffle=True, drop_last=True),
                      DataLoader(items[:16], bs=BS))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    learn = Learner(dls, model, loss_func=torch.nn.MSELoss(), opt_func=opt_func,
                    splitter=lambda m: [list(m[0].parameters()), list(m[1].parameters())])
    recorder = _RecordHypers()
    with learn.no_bar(), learn.no_logging():
        getattr(learn, fit)(EPOCHS, cbs=recorder, **kwargs)
    seen = np.array(recorder.seen)  # (steps, groups, [lr, mom])
    assert seen.shape == (EPOCHS * N_ITEMS // BS, 2, 2)
    return seen


def _torch_run(optimizer, make_scheduler, steps, mom_key="betas") -> np.ndarray:
    scheduler = make_scheduler(optimizer)
    seen = []
    for _ in range(steps):
        seen.append([
            (g["lr"], g[mom_key][0] if mom_key == "betas" else g[mom_key])
            for g in optimizer.param_groups
        ])
        optimizer.step()
        scheduler.step()
    return np.array(seen)


def _two_groups():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    return [{"params": model[0].parameters()}, {"params": model[1].parameters()}]


@pytest.mark.parametrize("pct_start,div,div_final", [(0.25, 25.0, 1e5), (0.3, 10.0, 1e3)])
def test_one_cycle_matches_fastai_fit_one_cycle_step_for_step(pct_start, div, div_final):
    fastai_seen = _fastai_run("fit_one_cycle", Adam, lr_max=slice(1e-3, 1e-2),
                              pct_start=pct_start, div=div, div_final=div_final)
    steps = len(fastai_seen)
    ours = _torch_run(
        torch.optim.Adam(_two_groups(), lr=0.123),
        lambda opt: one_cycle(opt, steps, lr_max=[1e-3, 1e-2], div=div, div_final=div_final,
                              pct_start=pct_start),
        steps,
    )
    np.testing.assert_allclose(ours, fastai_seen, rtol=1e-5, atol=0)
    # the shape fastai promises: warm-up from lr_max/div to lr_max, momentum the other way
    assert math.isclose(ours[0, 1, 0], 1e-2 / div, rel_tol=1e-9)
    assert ours[:, 1, 0].max() <= 1e-2 * (1 + 1e-12)
    assert math.isclose(ours[0, 0, 1], 0.95) and ours[:, 0, 1].min() >= 0.85


def test_one_cycle_schedules_sgd_momentum_like_fastai_sgd():
    fastai_seen = _fastai_run("fit_one_cycle", lambda p, lr: SGD(p, lr, mom=0.9), lr_max=3e-2)
    steps = len(fastai_seen)
    ours = _torch_run(torch.optim.SGD(_two_groups(), lr=3e-2, momentum=0.9),
                      lambda opt: one_cycle(opt, steps), steps, mom_key="momentum")
    np.testing.assert_allclose(ours, fastai_seen, rtol=1e-5, atol=0)


def test_flat_cos_matches_fastai_fit_flat_cos_and_leaves_momentum_alone():
    fastai_seen = _fastai_run("fit_flat_cos", Adam, lr=slice(2e-3, 4e-3))
    steps = len(fastai_seen)
    ours = _torch_run(torch.optim.Adam(_two_groups(), lr=1.0, betas=(0.9, 0.99)),
                      lambda opt: flat_cos(opt, steps, lr=[2e-3, 4e-3]), steps)
    np.testing.assert_allclose(ours[..., 0], fastai_seen[..., 0], rtol=1e-5, atol=0)
    assert (ours[..., 1] == 0.9).all() and (fastai_seen[..., 1] == 0.9).all()
    flat = int(0.75 * steps)
    np.testing.assert_allclose(ours[: flat + 1, 1, 0], 4e-3)


def test_schedule_formula_written_out():
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    total, lr_max = 40, 0.1
    sched = one_cycle(opt, total, lr_max=lr_max, moms=None)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    expected = []
    for k in range(total + 1):
        pos = k / total
        if pos < 0.25:
            start, end, t = lr_max / 25, lr_max, pos / 0.25
        else:
            start, end, t = lr_max, lr_max / 1e5, (pos - 0.25) / 0.75
        expected.append(start + (1 + math.cos(math.pi * (1 - t))) * (end - start) / 2)
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert math.isclose(lrs[-1], lr_max / 1e5)
    assert sched_cos(1.0, 0.0, 0.5) == pytest.approx(0.5)
    assert opt.param_groups[0]["momentum"] == 0.0  # plain SGD stays plain SGD
    with pytest.raises(ValueError, match="stepped 41 times but the schedule has total_steps=40"):
        sched.step()


@pytest.mark.parametrize("name", ["ranger", "rangeradabelief", "adamw", "rmsprop"])
def test_one_cycle_drives_fasttricks_optimizers(name):
    model = torch.nn.Linear(3, 1)
    opt = create_optimizer(model, name, lr=1e-3)
    sched = one_cycle(opt, 10)
    key = "betas" if "betas" in opt.param_groups[0] else "momentum"
    moms, lrs = [], []
    for _ in range(10):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        mom = opt.param_groups[0][key]
        moms.append(mom[0] if key == "betas" else mom)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        opt.zero_grad()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 25) and max(lrs) == pytest.approx(1e-3, rel=0.1)
    assert moms[0] == pytest.approx(0.95) and min(moms) < 0.9
    if key == "betas":  # beta2 untouched
        assert opt.param_groups[0]["betas"][1] == create_optimizer(model, name, lr=1e-3
                                                                   ).param_groups[0]["betas"][1]


def test_scheduler_state_dict_resumes_the_same_schedule():
    def make():
        opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=1e-2)
        return opt, one_cycle(opt, 20)

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    for _ in range(5):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
    assert isinstance(sched, CombinedCosineLR)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda o: one_cycle(o, 0), ValueError, "total_steps must be a positive int.*got 0"),
        (lambda o: one_cycle(o, 10.5), ValueError, "total_steps.*10.5"),
        (lambda o: one_cycle(o, 10, lr_max=-1.0), ValueError, "lr_max must be > 0, got -1.0"),
        (lambda o: one_cycle(o, 10, lr_max=[1e-3, 1e-2]), ValueError,
         "2 values but the optimizer has 1 parameter groups"),
        (lambda o: one_cycle(o, 10, lr_max="fast"), TypeError, "lr_max must be a number"),
        (lambda o: one_cycle(o, 10, div=0), ValueError, "div must be > 0, got 0"),
        (lambda o: one_cycle(o, 10, div_final=float("inf")), ValueError, "div_final"),
        (lambda o: one_cycle(o, 10, pct_start=1.5), ValueError, "pct_start must be.*1.5"),
        (lambda o: one_cycle(o, 10, moms=(0.95, 0.85)), ValueError, "moms must be three"),
        (lambda o: one_cycle(o, 10, moms=(0.95, 1.2, 0.95)), ValueError, "moms.*1.2"),
        (lambda o: flat_cos(o, 10, pct_start=-0.1), ValueError, "pct_start"),
        (lambda o: flat_cos("adam", 10), TypeError, "torch.optim.Optimizer, got str"),
    ],
)
def test_bad_arguments_are_clear_errors(make, error, match):
    opt = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=1e-3)
    with pytest.raises(error, match=match):
        make(opt)
