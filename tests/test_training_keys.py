"""Training-feature recipe keys: early stopping, accumulation, clipping, sgdr, fine_tune, bf16."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.metrics import Metric
from fastai.optimizer import SGD
from torch import nn

from conftest import N_IN, N_OUT, fit_quietly, tiny_learner, tiny_recipe, toy_data

from fasttricks.callbacks import (
    EarlyStoppingCallback,
    GradientAccumulationCallback,
    GradientClipCallback,
)
from fasttricks.lr import fit_sgdr, sgdr_epochs, stage_epochs
from fasttricks.recipes import RecipeError, build_learner, fit_learner, load_recipe
from fasttricks.tune._space import Param, apply_value, load_space


class _Sequence(Metric):
    """A metric whose value at epoch i is ``values[i]`` (a hand-made learning curve)."""

    def __init__(self, name, values):
        self._name, self.values, self.epoch_i = name, list(values), -1

    @property
    def name(self):
        return self._name

    def reset(self):
        self.epoch_i += 1

    def accumulate(self, learn):
        pass

    @property
    def value(self):
        return self.values[self.epoch_i]


def _stop_epoch(values, patience, min_delta, lower):
    """The 0-based epoch after which early stopping ends the fit, written out by hand."""
    best, wait = (math.inf if lower else -math.inf), 0
    for i, v in enumerate(values):
        better = v < best - min_delta if lower else v > best + min_delta
        if better:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                return i
    return None


@pytest.mark.parametrize("name, values, patience, min_delta", [
    ("score", [0.5, 0.6, 0.61, 0.6, 0.612, 0.59, 0.9, 0.9], 2, 0.005),
    ("score", [0.5, 0.4, 0.6, 0.55, 0.58, 0.57, 0.9, 0.9], 3, 0.0),
    ("my_error", [0.5, 0.4, 0.41, 0.39, 0.395, 0.4, 0.1, 0.1], 2, 0.0),
])
def test_early_stopping_stops_at_the_epoch_the_curve_says(name, values, patience, min_delta):
    x, y = toy_data(32)
    lower = name.endswith("error")
    expected = _stop_epoch(values, patience, min_delta, lower)
    assert expected is not None and expected < len(values) - 1
    stop = EarlyStoppingCallback(monitor=name, patience=patience, min_delta=min_delta)
    learn = tiny_learner(nn.Linear(N_IN, N_OUT), x, y, bs=16, cbs=[stop],
                         metrics=[_Sequence(name, values)])
    fit_quietly(learn, epochs=len(values))
    assert stop.stopped_epoch == expected
    assert len(learn.recorder.values) == expected + 1


def test_early_stopping_direction_comes_from_fasttricks_metrics(monkeypatch):
    import fasttricks.callbacks.early_stopping as es

    assert EarlyStoppingCallback("error_rate").comp is np.less
    assert EarlyStoppingCallback("balanced_accuracy").comp is np.greater
    monkeypatch.setattr(es, "lower_is_better", lambda name: name == "brier")
    assert EarlyStoppingCallback("brier").comp is np.less  # no "loss" in the name


def test_early_stopping_recipe_key_is_validated_and_a_bad_monitor_names_the_choices():
    r = tiny_recipe(callbacks=[{"name": "early_stopping", "monitor": "accuracy", "patience": 2}])
    assert r["callbacks"][0] == {"name": "early_stopping", "monitor": "accuracy", "patience": 2}
    with pytest.raises(RecipeError, match="callbacks.early_stopping.*patience must be"):
        tiny_recipe(callbacks=[{"name": "early_stopping", "patience": 0}])
    with pytest.raises(KeyError, match="Did you mean 'patience'"):
        tiny_recipe(callbacks=[{"name": "early_stopping", "patiance": 2}])
    learn = build_learner(tiny_recipe(callbacks=[{"name": "early_stopping",
                                                  "monitor": "acuracy"}]))
    with pytest.raises(KeyError, match="Did you mean 'accuracy'"):
        fit_learner(learn)


def test_gradient_clipping_bounds_the_total_norm_after_the_clip():
    class NormAfterClip(Callback):
        order = GradientClipCallback.order + 1

        def __init__(self):
            self.norms = []

        def before_step(self):
            grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    x, y = toy_data(64)
    x = x * 50  # big inputs, big gradients
    probe = NormAfterClip()
    learn = tiny_learner(nn.Linear(N_IN, N_OUT), x, y, bs=16, cbs=[probe])
    fit_quietly(learn, epochs=1)
    unclipped = probe.norms
    assert min(unclipped) > 1.0  # without clipping the norm is well above the bound
    probe = NormAfterClip()
    learn = tiny_learner(nn.Linear(N_IN, N_OUT), x, y, bs=16,
                         cbs=[GradientClipCallback(max_norm=0.25), probe])
    fit_quietly(learn, epochs=1)
    assert len(probe.norms) == 4
    np.testing.assert_allclose(probe.norms, 0.25, rtol=1e-5)
    with pytest.raises(RecipeError, match="max_norm must be > 0"):
        tiny_recipe(callbacks=[{"name": "grad_clip", "max_norm": 0}])


def test_accumulating_two_batches_equals_one_step_on_the_doubled_batch():
    x, y = toy_data(64)
    torch.manual_seed(0)
    init = nn.Linear(N_IN, N_OUT)
    sgd = partial(SGD, mom=0.0)

    def trained(bs, cbs):
        model = nn.Linear(N_IN, N_OUT)
        model.load_state_dict(init.state_dict())
        learn = tiny_learner(model, x, y, bs=bs, cbs=cbs, opt_func=sgd)
        fit_quietly(learn, epochs=1, lr=0.1)
        return model

    accumulated = trained(16, [GradientAccumulationCallback(n_acc=32)])
    doubled = trained(32, [])
    single = trained(16, [])
    for a, b, c in zip(accumulated.parameters(), doubled.parameters(), single.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, c, atol=1e-4)  # and four small steps differ
    with pytest.raises(RecipeError, match="n_acc must be"):
        tiny_recipe(callbacks=[{"name": "grad_accum", "n_acc": 0}])


def _sgdr_closed_form(step, n_steps, lr_max, n_cycles, cycle_len, cycle_mult):
    lengths = [cycle_len * cycle_mult ** i for i in range(n_cycles)]
    pos = step / n_steps * sum(lengths)  # in epochs
    for length in lengths:
        if pos < length:
            return lr_max * (1 + math.cos(math.pi * pos / length)) / 2
        pos -= length
    raise AssertionError("step past the schedule")


@pytest.mark.parametrize("n_cycles, cycle_len, cycle_mult", [(3, 1, 2), (3, 1, 1), (2, 2, 3)])
def test_sgdr_learning_rate_per_step_matches_the_closed_form(n_cycles, cycle_len, cycle_mult):
    x, y = toy_data(64)
    learn = tiny_learner(nn.Linear(N_IN, N_OUT), x, y, bs=16, lr=0.2)
    with learn.no_bar(), learn.no_logging():
        fit_sgdr(learn, n_cycles, cycle_len, cycle_mult)
    total = sgdr_epochs(n_cycles, cycle_len, cycle_mult)
    assert total == cycle_len * sum(cycle_mult ** i for i in range(n_cycles))
    lrs = learn.recorder.lrs
    assert len(lrs) == total * 4
    expected = [_sgdr_closed_form(i, len(lrs), 0.2, n_cycles, cycle_len, cycle_mult)
                for i in range(len(lrs))]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5, atol=1e-9)


def test_sgdr_recipe_sets_the_epochs_and_a_shorter_run_stops_early():
    r = tiny_recipe(**{"schedule.fit": "sgdr", "schedule.n_cycles": 2,
                       "schedule.cycle_mult": 3})
    assert r["schedule"]["epochs"] == 4  # 1 + 3
    learn = build_learner(r)
    with learn.no_bar(), learn.no_logging():
        fit_learner(learn, epochs=3)  # a shorter run of the same schedule
    assert len(learn.recorder.values) == 3
    with pytest.raises(RecipeError, match="schedule.cycle_len' must be >= 1"):
        tiny_recipe(**{"schedule.fit": "sgdr", "schedule.cycle_len": 0})
    with pytest.raises(KeyError, match="Did you mean 'sgdr'"):
        tiny_recipe(**{"schedule.fit": "sgd_r"})


def test_stage_epochs_split_the_budget_in_order():
    assert stage_epochs(5) == (1, 1, 3)
    assert stage_epochs(1) == (1, 0, 0)
    assert stage_epochs(4, 2, 0) == (2, 0, 2)
    assert stage_epochs(3, 0, 5) == (0, 3, 0)


def test_fine_tune_schedule_trains_the_documented_groups_at_the_documented_lrs():
    data = {"name": "synthetic", "n_samples": 300, "bs": 32}
    recipe = load_recipe({"name": "ft", "data": data, "model": {"name": "mlp"},
                          "optimizer": {"name": "adamw", "lr": 1e-2},
                          "schedule": {"fit": "fine_tune", "epochs": 4, "freeze_epochs": 1,
                                       "freeze_to_epochs": 1}, "fp16": False})
    learn = build_learner(recipe)
    model = learn.model  # Flatten, [Linear, BN, ReLU, Dropout] x 2, Linear
    learn.splitter = lambda m: [list(m[1].parameters()), list(m[5].parameters()),
                                list(m[9].parameters())]
    learn.create_opt()
    first = [p.detach().clone() for p in model[1].parameters()]
    middle = [p.detach().clone() for p in model[5].parameters()]
    seen = []

    class Watch(Callback):
        order = 100

        def before_fit(self):
            self.first = [p.detach().clone() for p in model[1].parameters()]
            self.middle = [p.detach().clone() for p in model[5].parameters()]

        def after_fit(self):
            seen.append((all(torch.equal(a, b) for a, b in zip(self.first, model[1].parameters())),
                         all(torch.equal(a, b)
                             for a, b in zip(self.middle, model[5].parameters()))))

    with learn.no_bar(), learn.no_logging():
        fit_learner(learn, cbs=[Watch()])
    stages = learn.fine_tune_stages
    assert [(s["stage"], s["epochs"]) for s in stages] == [
        ("frozen", 1), ("freeze_to(-2)", 1), ("unfrozen", 2)]
    lr = 1e-2
    np.testing.assert_allclose(stages[0]["lrs"], [lr] * 3)
    np.testing.assert_allclose(stages[1]["lrs"], [lr / 2] * 3)
    np.testing.assert_allclose(stages[2]["lrs"], [lr / 100, math.sqrt(lr / 100 * lr / 2), lr / 2],
                               rtol=1e-6)
    assert [s["trainable"] for s in stages] == [[False, False, True], [False, True, True],
                                                [True, True, True]]
    # (first group unchanged, middle group unchanged) per stage
    assert seen == [(True, True), (True, False), (False, False)]
    assert len(learn.recorder.values) == 4  # every stage's epochs are in the history
    assert not all(torch.equal(a, b) for a, b in zip(first, model[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(middle, model[5].parameters()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_bf16_on_the_cpu_autocasts_the_forward_pass_and_trains():
    dtypes = []
    r = tiny_recipe(fp16="bf16", **{"schedule.epochs": 1})
    assert r["fp16"] == "bf16"
    learn = build_learner(r)
    layer = next(m for m in learn.model.modules() if isinstance(m, nn.Linear))
    layer.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with learn.no_bar(), learn.no_logging():
        fit_learner(learn)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    off = build_learner(tiny_recipe(fp16=False))
    dtypes.clear()
    next(m for m in off.model.modules() if isinstance(m, nn.Linear)).register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype))
    off.model(torch.randn(4, 20))
    assert dtypes == [torch.float32]
    with pytest.raises(TypeError, match="'bf16'"):
        tiny_recipe(fp16="bf17")


@pytest.mark.parametrize("key, spec", [
    ("callbacks.early_stopping.patience", {"type": "int", "low": 1, "high": 4}),
    ("callbacks.early_stopping.min_delta", {"type": "float", "low": 0.0, "high": 0.01}),
    ("callbacks.grad_accum.n_acc", {"type": "categorical", "choices": [32, 64, 128]}),
    ("callbacks.grad_clip.max_norm", {"type": "float", "low": 0.1, "high": 10.0, "log": True}),
    ("schedule.fit", {"type": "categorical",
                      "choices": ["flat_cos", "one_cycle", "sgdr", "fine_tune"]}),
    ("schedule.n_cycles", {"type": "int", "low": 1, "high": 4}),
    ("schedule.cycle_mult", {"type": "int", "low": 1, "high": 3}),
    ("schedule.freeze_epochs", {"type": "int", "low": 0, "high": 2}),
    ("fp16", {"type": "categorical", "choices": ["auto", True, False, "bf16"]}),
    ("model", {"type": "categorical", "choices": {
        "local": {"name": "timm:test_resnet", "weights": "w.pth"},
        "hub": {"name": "timm:test_resnet", "pretrained": True}}}),
])
def test_every_training_key_can_be_sampled_from_a_search_space(key, spec):
    import optuna

    fit = {"n_cycles": "sgdr", "cycle_mult": "sgdr", "freeze_epochs": "fine_tune"}
    base = tiny_recipe(callbacks=[{"name": "early_stopping"}, {"name": "grad_accum"},
                                  {"name": "grad_clip"}],
                       **{"schedule.fit": fit.get(key.split(".")[-1], "flat_cos")})
    param: Param = load_space({key: spec})[key]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        trial = study.ask()
        recipe = apply_value(base, param, param.suggest(trial))
        got = recipe
        for part in key.split("."):
            got = (next(c for c in got if c["name"] == part) if isinstance(got, list)
                   else got[part])
        assert got == param.value_of(trial.params[key])
    switch = load_space({"callbacks.grad_clip": {"type": "bool"}})["callbacks.grad_clip"]
    assert [c["name"] for c in apply_value(tiny_recipe(), switch, True)["callbacks"]] == [
        "grad_clip"]
