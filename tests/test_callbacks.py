"""Batch loss filter, save-best, EMA, NaN guard and the callback registry."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback, CancelStepException
from fastai.learner import Metric
from fastai.metrics import accuracy
from fastai.optimizer import Adam
from torch import nn

from conftest import N_IN, N_OUT, fit_quietly, tiny_learner, toy_data

from fasttricks.callbacks import (
    BatchLossFilterCallback,
    EMACallback,
    NaNGuardCallback,
    NonFiniteLossError,
    SaveBestCallback,
    ema_decay,
    get_callback,
    list_callbacks,
    loss_filter_mask,
)

def _model(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(N_IN, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(8, N_OUT))


class WeightLog(Callback):
    """Copies of the weights after every optimizer step and at the end of every epoch's training."""

    order = 100

    def before_fit(self):
        self.steps, self.epochs = [], []

    def after_step(self):
        self.steps.append([p.detach().clone() for p in self.learn.model.parameters()])

    def after_train(self):
        self.epochs.append(copy.deepcopy(self.learn.model.state_dict()))


# --- batch loss filter ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("perc", "kept"),
    [(0.5, {1}), (0.8, {1, 3}), (0.81, {1, 3, 2}), (0.95, {1, 3, 2, 4}), (1.0, {0, 1, 2, 3, 4})],
)
def test_loss_filter_mask_keeps_highest_losses_up_to_the_share(perc, kept):
    losses = torch.tensor([0.1, 5.0, 1.0, 3.0, 0.9])  # total 10; sorted 5, 3, 1, 0.9, 0.1
    mask = loss_filter_mask(losses, perc)
    assert set(torch.nonzero(mask).flatten().tolist()) == kept


def test_loss_filter_mask_keeps_at_least_one_sample():
    assert loss_filter_mask(torch.zeros(4), 0.5).sum() == 1
    assert loss_filter_mask(torch.tensor([2.0, 7.0, 1.0]), 1e-6).tolist() == [False, True, False]


def test_loss_filter_trains_on_the_kept_samples_only():
    x, y = toy_data(8, seed=2)
    model = _model()
    lr, perc = 0.5, 0.6
    with torch.no_grad():
        per_sample = F.cross_entropy(model(x), y, reduction="none")
    keep = loss_filter_mask(per_sample, perc)
    # independent reference: sort, cumulative share, smallest prefix reaching the share
    order = per_sample.argsort(descending=True)
    share = per_sample[order].cumsum(0) / per_sample.sum()
    n_keep = int((share < perc).sum()) + 1
    assert set(order[:n_keep].tolist()) == set(torch.nonzero(keep).flatten().tolist())
    assert 1 < n_keep < 8
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x[order[:n_keep]]), y[order[:n_keep]]).backward()
    expected = [p.detach() - lr * p.grad for p in ref.parameters()]

    seen = {}

    class Spy(Callback):
        order = 50

        def after_loss(self):
            if self.training:
                seen["loss"] = float(self.learn.loss)

    cb = BatchLossFilterCallback(loss_perc=perc)
    learn = tiny_learner(model, x, y, bs=8, cbs=[cb, Spy()])
    fit_quietly(learn, 1, lr)
    for p, w in zip(learn.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)
    assert seen["loss"] == pytest.approx(float(per_sample.mean()), rel=1e-5)  # logged: full batch
    assert learn.loss_func.reduction == "mean"


def test_loss_filter_leaves_validation_untouched():
    x, y = toy_data(32)
    vx, vy = toy_data(16, seed=9)
    model = _model()
    plain = tiny_learner(copy.deepcopy(model), x, y, bs=16, valid=(vx, vy))
    filt = tiny_learner(model, x, y, bs=16, valid=(vx, vy), cbs=[BatchLossFilterCallback(0.5)])
    fit_quietly(filt, 1)
    plain.model.load_state_dict(filt.model.state_dict())
    with torch.no_grad():
        expected = float(F.cross_entropy(filt.model(vx), vy))
    assert filt.recorder.values[-1][1] == pytest.approx(expected, rel=1e-5)
    assert plain.validate()[0] == pytest.approx(expected, rel=1e-5)


def test_loss_filter_schedule_sets_the_share_over_training():
    x, y = toy_data(32)
    counts = []

    class Count(Callback):
        order = 50

        def after_loss(self):
            if self.training:
                counts.append((self.learn.pct_train, int(cb.keep.sum())))

    cb = BatchLossFilterCallback(schedule=lambda pct: 1.0 if pct < 0.5 else 1e-6)
    fit_quietly(tiny_learner(_model(), x, y, bs=8, cbs=[cb, Count()]), 1)
    assert [n for _, n in counts] == [8, 8, 1, 1]


def test_loss_filter_works_with_tuple_outputs():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _model()

        def forward(self, x):
            out = self.body(x)
            return out, out.detach() * 0

    class FirstHeadCE(nn.Module):
        def __init__(self):
            super().__init__()
            self.reduction = "mean"

        def forward(self, pred, y):
            return F.cross_entropy(pred[0], y, reduction=self.reduction)

    x, y = toy_data(16)
    learn = tiny_learner(TwoHeads(), x, y, bs=8, loss=FirstHeadCE(),
                         cbs=[BatchLossFilterCallback()])
    fit_quietly(learn, 1)
    assert learn.recorder.values[-1][0] > 0


def test_loss_filter_refuses_a_loss_without_reduction():
    x, y = toy_data(16)
    learn = tiny_learner(_model(), x, y, bs=8, loss=lambda p, t: F.cross_entropy(p, t))
    learn.add_cb(BatchLossFilterCallback())
    with pytest.raises(TypeError, match="reduction"):
        fit_quietly(learn)


def test_loss_filter_rejects_bad_share():
    with pytest.raises(ValueError, match="loss_perc must be > 0.0 and <= 1.0, got 1.5"):
        BatchLossFilterCallback(1.5)


# --- save-best -----------------------------------------------------------------------------------
class EpochScore(Metric):
    """A metric whose value is fixed per epoch, to force the best epoch."""

    def __init__(self, scores, name="score"):
        self.scores, self._name, self.epoch = scores, name, 0

    def reset(self):
        pass

    def accumulate(self, learn):
        self.epoch = learn.epoch

    @property
    def value(self):
        return self.scores[self.epoch]

    @property
    def name(self):
        return self._name


def test_save_best_reloads_the_weights_of_the_peak_epoch(tmp_path):
    x, y = toy_data(32)
    scores = [0.2, 0.5, 0.9, 0.4, 0.3]
    log, best = WeightLog(), SaveBestCallback(monitor="score")
    learn = tiny_learner(_model(), x, y, bs=8, metrics=[EpochScore(scores)], cbs=[best, log],
                         path=tmp_path)
    fit_quietly(learn, len(scores), 0.2)
    assert best.best_epoch == 2
    assert best.best_value == pytest.approx(0.9)
    assert best.reloaded and best.ckpt_path == tmp_path / "models" / "best.pth"
    state = learn.model.state_dict()
    for k, v in log.epochs[2].items():
        assert torch.equal(state[k], v)
    assert not torch.equal(log.epochs[2]["0.weight"], log.epochs[4]["0.weight"])
    saved = torch.load(best.ckpt_path, weights_only=True)
    assert torch.equal(saved["0.weight"], log.epochs[2]["0.weight"])


def test_save_best_lower_is_better_for_losses_and_min_delta(tmp_path):
    x, y = toy_data(32)
    best = SaveBestCallback(monitor="my_loss", min_delta=0.1, reload=False)
    assert best.lower_is_better
    metric = EpochScore([1.0, 0.95, 0.5, 0.45], name="my_loss")
    learn = tiny_learner(_model(), x, y, bs=8, metrics=[metric], cbs=[best], path=tmp_path)
    fit_quietly(learn, 4)
    assert (best.best_epoch, best.best_value) == (2, 0.5)  # 0.95 and 0.45 are within min_delta
    assert not best.reloaded
    assert not SaveBestCallback(monitor="accuracy").lower_is_better


def test_save_best_with_opt_saves_the_optimizer_state_of_the_best_epoch(tmp_path):
    x, y = toy_data(32)
    states = []

    class OptLog(Callback):
        order = 62

        def after_epoch(self):
            states.append(copy.deepcopy(self.learn.opt.state_dict()))

    best = SaveBestCallback(monitor="score", with_opt=True)
    learn = tiny_learner(_model(), x, y, bs=8, metrics=[EpochScore([0.3, 0.7, 0.2])],
                         cbs=[best, OptLog()], opt_func=partial(Adam), path=tmp_path)
    fit_quietly(learn, 3, 1e-2)
    saved = torch.load(best.ckpt_path, weights_only=False)
    assert set(saved) == {"model", "opt"}
    avg = [s["grad_avg"] for s in saved["opt"]["state"] if "grad_avg" in s]
    ref = [s["grad_avg"] for s in states[1]["state"] if "grad_avg" in s]
    assert avg and all(torch.equal(a, r) for a, r in zip(avg, ref))
    now = [s["grad_avg"] for s in learn.opt.state_dict()["state"] if "grad_avg" in s]
    assert all(torch.equal(a, r) for a, r in zip(now, ref))  # reloaded with the weights


def test_save_best_unknown_monitor_lists_recorded_names_and_closest(tmp_path):
    x, y = toy_data(16)
    learn = tiny_learner(_model(), x, y, bs=8, metrics=[accuracy], path=tmp_path,
                         cbs=[SaveBestCallback(monitor="acuracy")])
    with pytest.raises(KeyError) as err:
        fit_quietly(learn)
    msg = str(err.value)
    assert "'acuracy'" in msg and "train_loss, valid_loss, accuracy" in msg
    assert "Did you mean 'accuracy'?" in msg


def test_save_best_write_is_atomic(tmp_path, monkeypatch):
    x, y = toy_data(32)
    log, best = WeightLog(), SaveBestCallback(monitor="score", reload=False)
    learn = tiny_learner(_model(), x, y, bs=8, metrics=[EpochScore([0.1, 0.9])], cbs=[best, log],
                         path=tmp_path)
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint dies half-way through writing
            with open(f, "wb") as fh:
                fh.write(b"PARTIAL")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        fit_quietly(learn, 2, 0.2)
    monkeypatch.setattr(torch, "save", real_save)
    files = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert files == ["best.pth"]  # no temporary file left behind
    saved = torch.load(tmp_path / "models" / "best.pth", weights_only=True)
    assert torch.equal(saved["0.weight"], log.epochs[0]["0.weight"])  # the old best is intact
    assert str(calls[1]) != str(tmp_path / "models" / "best.pth")  # written under a temp name


# --- EMA -----------------------------------------------------------------------------------------
def _ema_by_hand(init, steps, decay, warmup=True):
    ema = [w.clone() for w in init]
    for n, ws in enumerate(steps):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        ema = [d * e + (1 - d) * w for e, w in zip(ema, ws)]
    return ema


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_weights_equal_the_formula_after_n_steps(warmup):
    x, y = toy_data(48)
    model = _model()
    init = [p.detach().clone() for p in model.parameters()]
    log, ema = WeightLog(), EMACallback(decay=0.9, warmup=warmup, swap_at_end=False)
    learn = tiny_learner(model, x, y, bs=8, cbs=[ema, log], opt_func=partial(Adam))
    fit_quietly(learn, 2, 1e-2)
    assert ema.num_updates == len(log.steps) == 12
    expected = _ema_by_hand(init, log.steps, 0.9, warmup)
    for e, w in zip(ema.ema_params, expected):
        torch.testing.assert_close(e, w, rtol=1e-5, atol=1e-6)
    for p, w in zip(learn.model.parameters(), log.steps[-1]):  # raw weights kept
        assert torch.equal(p.detach(), w)
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10**6) == 0.999


def test_ema_swaps_in_at_end_validates_with_ema_and_keeps_buffers():
    x, y = toy_data(48)
    vx, vy = toy_data(16, seed=5)
    model = _model(bn=True)
    seen = {}

    class Spy(Callback):
        order = 70

        def after_train(self):
            seen["running_mean"] = self.learn.model[1].running_mean.clone()

    log, ema = WeightLog(), EMACallback(decay=0.8)
    learn = tiny_learner(model, x, y, bs=8, cbs=[ema, log, Spy()], valid=(vx, vy))
    fit_quietly(learn, 1, 0.2)
    for p, e in zip(learn.model.parameters(), ema.ema_params):
        assert torch.equal(p.detach(), e)
    assert any(not torch.equal(e, w) for e, w in zip(ema.ema_params, log.steps[-1]))
    # buffers: the raw model's last running statistics, not an average of them
    assert torch.equal(learn.model[1].running_mean, seen["running_mean"])
    learn.model.eval()
    with torch.no_grad():
        ema_valid_loss = float(F.cross_entropy(learn.model(vx), vy))
    assert learn.recorder.values[-1][1] == pytest.approx(ema_valid_loss, rel=1e-5)


def test_ema_skips_cancelled_steps():
    x, y = toy_data(32)

    class SkipOdd(Callback):
        order = 20

        def before_step(self):
            if self.learn.iter % 2 == 1:
                raise CancelStepException()

    ema = EMACallback()
    fit_quietly(tiny_learner(_model(), x, y, bs=8, cbs=[ema, SkipOdd()]), 1)
    assert ema.num_updates == 2


def test_ema_state_is_saved_and_reloaded(tmp_path):
    x, y = toy_data(32)
    ema = EMACallback(decay=0.95, swap_at_end=False)
    learn = tiny_learner(_model(), x, y, bs=8, cbs=[ema], path=tmp_path)
    fit_quietly(learn, 1)
    learn.save("ckpt")
    path = ema.save("ckpt")
    assert path == tmp_path / "models" / "ckpt_ema.pth"

    other = EMACallback(decay=0.5)
    learn2 = tiny_learner(_model(seed=7), x, y, bs=8, cbs=[other], path=tmp_path)
    learn2.load("ckpt")
    other.load("ckpt")
    assert (other.decay, other.num_updates) == (0.95, 4)
    for a, b in zip(other.ema_params, ema.ema_params):
        assert torch.equal(a, b)
    # training continues from the restored state exactly as the original would
    fit_quietly(learn, 1)
    fit_quietly(learn2, 1)
    assert other.num_updates == ema.num_updates == 8
    for a, b in zip(other.ema_params, ema.ema_params):
        torch.testing.assert_close(a, b)


def test_ema_with_save_best_keeps_the_best_ema_weights(tmp_path):
    x, y = toy_data(32)
    scores = [0.1, 0.8, 0.3]
    snaps = []

    class Snap(Callback):  # what validation saw at each epoch (the EMA weights)
        order = 62

        def after_epoch(self):
            snaps.append(copy.deepcopy(self.learn.model.state_dict()))

    ema, best = EMACallback(decay=0.5), SaveBestCallback(monitor="score")
    learn = tiny_learner(_model(), x, y, bs=8, metrics=[EpochScore(scores)],
                         cbs=[ema, best, Snap()], path=tmp_path)
    fit_quietly(learn, 3, 0.3)
    assert best.best_epoch == 1
    state = torch.load(tmp_path / "models" / "best_ema.pth", weights_only=True)
    assert state["num_updates"] == 8  # saved with the epoch-1 checkpoint (2 epochs x 4 steps)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, snaps[1][k])
    assert not torch.equal(snaps[1]["0.weight"], snaps[2]["0.weight"])


# --- NaN guard -----------------------------------------------------------------------------------
def test_nan_guard_stops_a_run_with_huge_lr_and_names_the_remedies():
    x, y = toy_data(64)
    torch.manual_seed(0)
    layers = [nn.Linear(N_IN, 16), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Linear(16, 16), nn.ReLU()]
    deep = nn.Sequential(*layers, nn.Linear(16, N_OUT))
    guard = NaNGuardCallback()
    learn = tiny_learner(deep, x, y, bs=8, cbs=[guard], opt_func=partial(Adam, eps=1e-5))
    with pytest.raises(NonFiniteLossError) as err:
        fit_quietly(learn, 5, 1e6)
    msg = str(err.value)
    assert "the training loss is" in msg
    assert "raise the optimizer's eps to 1e-4 or higher (eps in effect: 1e-05)" in msg
    assert "lower the learning rate about 10x (lr in effect: 1e+06; try 1e+05)" in msg
    assert len(learn.recorder.values) < 5  # stopped before the end
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_nan_guard_without_raising_just_stops():
    x, y = toy_data(64)
    guard = NaNGuardCallback(raise_error=False)
    learn = tiny_learner(_model(), x, y, bs=8, cbs=[guard])  # SGD: no eps
    fit_quietly(learn, 5, 1e6)
    assert guard.message is not None and "the current optimizer has no eps" in guard.message
    assert len(learn.recorder.values) < 5


def test_nan_guard_counts_consecutive_skipped_steps():
    x, y = toy_data(64)

    class AlwaysSkip(Callback):
        order = 20

        def before_step(self):
            raise CancelStepException()

    guard = NaNGuardCallback(max_skipped_steps=3, raise_error=False)
    fit_quietly(tiny_learner(_model(), x, y, bs=8, cbs=[guard, AlwaysSkip()]), 2)
    assert "3 optimizer steps in a row were skipped" in guard.message
    assert "batch 2" in guard.message


def test_nan_guard_is_quiet_on_a_healthy_run():
    x, y = toy_data(32)
    guard = NaNGuardCallback()
    learn = tiny_learner(_model(), x, y, bs=8, cbs=[guard])
    fit_quietly(learn, 2)
    assert guard.message is None and len(learn.recorder.values) == 2


# --- registry ------------------------------------------------------------------------------------
def test_registry_builds_every_callback_by_name():
    assert list_callbacks() == ["cutmix", "early_stopping", "ema", "grad_accum", "grad_clip",
                                "loss_filter", "mixup", "nan_guard", "sam", "save_best"]
    for name in list_callbacks():
        assert isinstance(get_callback(name), Callback)
    assert get_callback("EMA", decay=0.9).decay == 0.9
    assert get_callback("save_best", monitor="accuracy").monitor == "accuracy"


def test_registry_errors_name_the_closest_match_and_allowed_arguments():
    with pytest.raises(KeyError, match="Did you mean 'save_best'"):
        get_callback("savebest")
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['rate'\]; allowed"):
        get_callback("loss_filter", rate=0.5)


def test_np_comparators_are_accepted():
    best = SaveBestCallback(monitor="score", comp=np.less)
    assert best.lower_is_better


def test_registered_callbacks_are_listed_by_glob_and_usable_from_a_recipe():
    from fasttricks.callbacks import CALLBACKS, callback_options, register_callback
    from fasttricks.recipes import load_recipe

    class Halve(Callback):
        def __init__(self, factor: float = 0.5) -> None:
            self.factor = factor

    register_callback("halve_test", Halve)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_callback("halve_test", Halve)
        register_callback("HALVE_TEST", Halve, overwrite=True)
        assert list_callbacks("halve*") == ["halve_test"]
        assert list(callback_options("halve_test")) == ["factor"]
        assert get_callback("halve_test", factor=2).factor == 2
        raw = {"data": "synthetic", "model": "mlp", "callbacks": [{"name": "halve_test"}]}
        r = load_recipe(raw, {"callbacks.halve_test.factor": "1e-1"})
        assert r["callbacks"][0] == {"name": "halve_test", "factor": 0.1}
        with pytest.raises(KeyError, match="Did you mean 'factor'"):
            load_recipe(raw, {"callbacks.halve_test.facter": 1})
        with pytest.raises(TypeError, match="Callback class"):
            register_callback("not_a_callback", object)
    finally:
        CALLBACKS._entries.pop("halve_test", None)
