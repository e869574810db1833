"""fasttricks.optim inside fastai: every name trains a Learner, and fastai's schedulers,
discriminative learning rates, freezing, checkpoints and mixed precision work with it."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision  # noqa: F401  (patches Learner.to_fp16)
from fastai.callback.schedule import ParamScheduler  # noqa: F401  (patches fit_* and lr_find)
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.torch_core import set_seed
from torch import nn

from fasttricks.optim import get_optimizer, list_optimizers

NAMES = list_optimizers()
# learning rates at which every optimizer makes progress within a few epochs
LRS = {"sgd": 0.1, "sgd_momentum": 0.05, "sgd_nesterov": 0.05, "rmsprop": 1e-3, "adamw": 1e-2}
DEFAULT_LR = 3e-2


def make_dls(shuffle: bool = True) -> DataLoaders:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(384, 8, generator=gen)
    w = torch.randn(8, 3, generator=gen)
    y = (x @ w + 0.1 * torch.randn(384, 3, generator=gen)).argmax(1)
    train, valid = list(zip(x[:256], y[:256])), list(zip(x[256:], y[256:]))
    return DataLoaders(DataLoader(train, bs=16, shuffle=shuffle, drop_last=shuffle),
                       DataLoader(valid, bs=128), device="cpu")


def make_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, 3))


def three_groups(m: nn.Sequential) -> list[list[nn.Parameter]]:
    return [list(m[0].parameters()) + list(m[1].parameters()), list(m[3].parameters()),
            list(m[5].parameters())]


def make_learner(name: str, path=None, shuffle: bool = True, **overrides) -> Learner:
    set_seed(0)
    learn = Learner(make_dls(shuffle), make_model(), loss_func=nn.CrossEntropyLoss(),
                    opt_func=get_optimizer(name, **overrides), splitter=three_groups)
    if path is not None:
        learn.path = path
    return learn


def quiet_fit(learn: Learner, method: str, *args, **kwargs) -> None:
    with learn.no_logging(), learn.no_bar():
        getattr(learn, method)(*args, **kwargs)


def validate(learn: Learner) -> float:
    with learn.no_bar():
        return learn.validate()[0]


class RecordGroups(Callback):
    """Records the wrapped torch optimizer's parameter-group values after every batch."""

    order = 70

    def before_fit(self):
        self.rows = []

    def after_batch(self):
        if self.training:
            self.rows.append([dict(g) for g in self.learn.opt.opt.param_groups])


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_optimizer_trains_a_learner_with_fit_flat_cos(name):
    learn = make_learner(name)
    before = validate(learn)
    quiet_fit(learn, "fit_flat_cos", 4, LRS.get(name, DEFAULT_LR))
    after = validate(learn)
    assert np.isfinite(after)
    assert after < 0.8 * before, (name, before, after)
    assert len(learn.opt.param_groups) == 3  # the splitter's groups, untouched


def test_fit_one_cycle_schedules_beta1_of_ranger():
    learn = make_learner("ranger")
    rec = RecordGroups()
    quiet_fit(learn, "fit_one_cycle", 2, 1e-2, moms=(0.95, 0.85, 0.95), cbs=rec)
    beta1 = [row[0]["betas"][0] for row in rec.rows]
    assert min(beta1) == pytest.approx(0.85, abs=0.01)
    assert beta1[-1] == pytest.approx(0.95, abs=1e-3)
    assert all(row[0]["betas"][1] == 0.99 for row in rec.rows)
    np.testing.assert_allclose(beta1, learn.recorder.hps["mom"], rtol=1e-12)


@pytest.mark.parametrize("name", ["sgd_momentum", "rmsprop"])
def test_fit_one_cycle_leaves_momentum_alone_when_set_betas_is_false(name):
    learn = make_learner(name)
    rec = RecordGroups()
    quiet_fit(learn, "fit_one_cycle", 2, LRS[name], cbs=rec)
    lrs = [row[-1]["lr"] for row in rec.rows]
    assert max(lrs) > 5 * min(lrs)  # the lr was scheduled ...
    assert {row[g]["momentum"] for row in rec.rows for g in range(3)} == {0.9}  # ... mom not


def test_lr_find_runs_and_restores_model_and_optimizer_state(tmp_path):
    learn = make_learner("ranger", path=tmp_path)
    quiet_fit(learn, "fit", 1, 1e-3)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_logging(), learn.no_bar():
        suggestion = learn.lr_find(show_plot=False)
    assert 1e-7 < suggestion.valley < 10
    for p, w in zip(learn.model.parameters(), weights):
        torch.testing.assert_close(p.detach(), w)
    assert all(st["step"] == 16 for st in learn.opt.opt.state.values())


def test_discriminative_lrs_land_in_the_right_groups_and_frozen_groups_do_not_move():
    learn = make_learner("rangeradabelief")
    learn.train_bn = False
    learn.freeze_to(1)
    start = [[p.detach().clone() for p in g] for g in three_groups(learn.model)]
    rec = RecordGroups()
    quiet_fit(learn, "fit", 1, slice(1e-4, 1e-2), cbs=rec)
    assert [g["lr"] for g in rec.rows[-1]] == pytest.approx([1e-4, 1e-3, 1e-2])
    groups = three_groups(learn.model)
    assert all(torch.equal(p, p0) for p, p0 in zip(groups[0], start[0]))
    assert all(not torch.equal(p, p0) for p, p0 in zip(groups[1], start[1]))
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
    quiet_fit(learn, "fit", 1, slice(1e-3))  # slice(hi): hi/10 for all but the last group
    assert [g["lr"] for g in learn.opt.opt.param_groups] == pytest.approx([1e-4, 1e-4, 1e-3])
    assert not torch.equal(groups[0][0], start[0][0])


def test_freeze_keeps_batchnorm_trainable_with_train_bn():
    learn = make_learner("ranger")
    learn.create_opt()
    learn.freeze()
    assert not learn.model[0].weight.requires_grad
    assert learn.model[1].weight.requires_grad  # fastai's train_bn, via the wrapper's state
    assert learn.model[5].weight.requires_grad


@pytest.mark.parametrize("name", ["ranger", "rangeradabelief", "adamw", "sgd_nesterov"])
def test_saved_and_reloaded_learner_continues_identically(name, tmp_path):
    lr = LRS.get(name, DEFAULT_LR)
    learn = make_learner(name, path=tmp_path, shuffle=False)
    quiet_fit(learn, "fit", 1, lr)  # 16 steps: past RAdam's warm-up and two Lookahead syncs
    learn.save("ckpt", with_opt=True)
    quiet_fit(learn, "fit", 1, lr)
    learn2 = make_learner(name, path=tmp_path, shuffle=False)
    learn2.load("ckpt", with_opt=True)
    quiet_fit(learn2, "fit", 1, lr)
    for p1, p2 in zip(learn.model.parameters(), learn2.model.parameters()):
        torch.testing.assert_close(p1, p2, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["ranger", "rangeradabelief_nogc", "adamw"])
def test_deep_copied_learner_fits_like_the_original(name):
    learn = make_learner(name, shuffle=False)
    quiet_fit(learn, "fit", 1, 1e-2)  # the optimizer has state now
    clone = copy.deepcopy(learn)
    quiet_fit(learn, "fit", 1, 1e-2)
    quiet_fit(clone, "fit", 1, 1e-2)
    for p1, p2 in zip(learn.model.parameters(), clone.model.parameters()):
        torch.testing.assert_close(p1, p2, atol=0, rtol=0)


def test_learner_wd_reaches_the_optimizer_and_overrides_are_the_default():
    learn = make_learner("ranger", wd=0.05, eps=1e-5)
    learn.create_opt()
    assert learn.opt.hypers[0]["wd"] == 0.05 and learn.opt.hypers[0]["eps"] == 1e-5
    learn.wd = 0.2
    rec = RecordGroups()
    quiet_fit(learn, "fit", 1, 1e-3, cbs=rec)
    assert rec.rows[-1][0]["weight_decay"] == 0.2


def test_opt_func_spreads_a_slice_lr_over_groups_and_call_hypers_win():
    groups = three_groups(make_model())
    opt = get_optimizer("ranger", eps=1e-5)(groups, lr=slice(1e-4, 1e-2), eps=1e-3)
    assert [g["lr"] for g in opt.opt.param_groups] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert {g["eps"] for g in opt.opt.param_groups} == {1e-3}
    with pytest.raises(ValueError, match="eps must be > 0"):
        get_optimizer("ranger")(groups, lr=1e-3, eps=0.0)


def test_opt_func_pickles_and_the_copy_builds_the_same_optimizer():
    opt_func = get_optimizer("rangeradabelief", eps=1e-16, use_gc=False)
    clone = pickle.loads(pickle.dumps(opt_func))  # learn.export pickles the opt_func
    assert repr(clone) == "get_optimizer('rangeradabelief', eps=1e-16, use_gc=False)"
    opt = clone([nn.Linear(2, 2).weight], lr=1e-3)
    assert opt.hypers[0]["eps"] == 1e-16 and opt.hypers[0]["use_gc"] is False


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
@pytest.mark.parametrize("name", ["ranger", "adamw"])
def test_to_fp16_learner_trains(name):
    # without CUDA fastai's MixedPrecision disables autocast and the scaler but still drives
    # the optimizer through its GradScaler path; the CUDA test below covers real fp16
    learn = make_learner(name).to_fp16()
    before = validate(learn)
    quiet_fit(learn, "fit_one_cycle", 3, 1e-2)
    assert validate(learn) < before


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ranger", "rangeradabelief", "adamw", "sgd_nesterov"])
def test_cuda_fp16_learner_trains_with_grad_scaler(name):
    set_seed(0)
    dls = make_dls()
    dls.to("cuda")
    learn = Learner(dls, make_model().cuda(), loss_func=nn.CrossEntropyLoss(),
                    opt_func=get_optimizer(name), splitter=three_groups).to_fp16()
    before = validate(learn)
    quiet_fit(learn, "fit_one_cycle", 4, LRS.get(name, DEFAULT_LR))
    assert validate(learn) < 0.9 * before
    if name == "adamw":
        assert learn.opt.opt.defaults["fused"] is True
