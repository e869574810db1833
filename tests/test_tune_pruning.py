"""Pruners with epochs as resource, and the fastai pruning callback on a plain Learner."""

from __future__ import annotations

import binascii
import math
import warnings

import numpy as np
import optuna
import pytest
import torch
import fastai.callback.progress  # noqa: F401  (Learner.no_bar, progress bars)
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fasttricks.tune import PruningCallback, describe_pruner, make_pruner, plan_pruner
from fasttricks.tune._pruners import bracket_plan, default_min_resource, default_n_brackets

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _recipe(epochs):
    return {"name": "toy", "schedule": {"epochs": epochs}}


# ---------------------------------------------------------------- pruner construction


@pytest.mark.parametrize("epochs,eta", [(1, 3), (9, 3), (10, 3), (27, 3), (100, 3), (64, 2)])
def test_hyperband_bracket_count_matches_the_paper_formula(epochs, eta):
    r = default_min_resource(epochs, eta)
    # floor(log_eta(E / r)) + 1 brackets, computed here with integer powers
    expected = 0
    while r * eta ** expected <= epochs:
        expected += 1
    assert len(bracket_plan(r, epochs, eta)) == expected
    assert 1 <= expected <= 4  # default min resource keeps <= 4 brackets


def test_hyperband_uses_epochs_as_resource_with_recipe_maximum():
    plan = plan_pruner("hyperband", _recipe(9))
    pruner = plan.build()
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._max_resource == 9 and pruner._min_resource == 1
    assert pruner._reduction_factor == 3
    text = describe_pruner(plan)
    assert "min 1, max 9" in text and "3 brackets" in text
    assert "bracket 0: rungs at epochs [1, 3]" in text


def _paper_iteration_trials(n_brackets, eta):
    # Li et al. 2018, Algorithm 1: bracket s starts ceil(B * eta**s / (s + 1)) configurations
    return sum(math.ceil(n_brackets * eta**s / (s + 1)) for s in range(n_brackets))


@pytest.mark.parametrize("n_trials", [1, 5, 14, 15, 20, 40, 50, 51, 146, 147, 1000])
@pytest.mark.parametrize("eta", [2, 3, 4])
def test_bracket_count_is_the_most_that_fit_eta_iterations_in_the_trial_budget(n_trials, eta):
    epochs = 81
    full = math.floor(math.log(epochs, eta) + 1e-9) + 1  # min resource 1
    expected = max(b for b in range(1, full + 1)
                   if b == 1 or eta * _paper_iteration_trials(b, eta) <= n_trials)
    assert default_n_brackets(1, epochs, eta, n_trials) == expected
    assert default_n_brackets(1, epochs, eta, None) == full


def test_bracket_count_thresholds_for_eta_3():
    counts = {n: default_n_brackets(1, 27, 3, n) for n in (14, 15, 50, 51, 146, 147)}
    assert counts == {14: 1, 15: 2, 50: 2, 51: 3, 146: 3, 147: 4}


def _planned_brackets(pruner, epochs, study_name="plan"):
    """Brackets Optuna itself builds (it plans them at the first prune call)."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name=study_name)
    trial = study.ask()
    trial.report(0.5, 1)
    trial.should_prune()
    return [(p._min_resource, p._min_early_stopping_rate) for p in pruner._pruners]


def test_hyperband_sized_to_twenty_trials_keeps_the_two_most_exploratory_brackets():
    plan = plan_pruner("hyperband", _recipe(27), n_trials=20)
    pruner = plan.build()
    # 3 iterations of 2 brackets take 3 * (2 + 3) = 15 trials, of 3 take 3 * 17 = 51
    assert _planned_brackets(pruner, 27) == [(1, 0), (1, 1)]
    text = describe_pruner(plan)
    assert "2 brackets of 4, sized to 20 trials" in text
    assert "bracket 0: rungs at epochs [1, 3, 9]" in text
    assert "bracket 1: rungs at epochs [3, 9]" in text
    assert "no early stop" not in text  # the conservative brackets are the ones dropped


@pytest.mark.parametrize("epochs,eta,r", [(27, 3, 1), (243, 3, 1), (64, 2, 1), (100, 4, 2)])
def test_optuna_plans_exactly_the_requested_brackets(epochs, eta, r):
    full = 0
    while r * eta**full <= epochs:
        full += 1
    for n_brackets in range(1, full + 1):
        pruner = make_pruner("hyperband", max_epochs=epochs, min_resource=r,
                             reduction_factor=eta, n_brackets=n_brackets)
        assert _planned_brackets(pruner, epochs) == [(r, s) for s in range(n_brackets)]
        assert len(bracket_plan(r, epochs, eta, n_brackets)) == n_brackets


def test_hyperband_without_a_trial_budget_is_full_hyperband_with_a_full_epoch_bracket():
    plan = plan_pruner("hyperband", _recipe(27))
    pruner = plan.build()
    assert _planned_brackets(pruner, 27) == [(1, s) for s in range(4)]
    assert "bracket 3: no early stop (full epochs)" in describe_pruner(plan)


def test_asha_is_one_successive_halving_bracket():
    plan = plan_pruner("asha", _recipe(30), min_resource=2)
    pruner = plan.build()
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert pruner._min_resource == 2 and pruner._min_early_stopping_rate == 0
    assert "rungs at epochs [2, 6, 18]" in describe_pruner(plan)


def test_the_plan_lives_in_our_object_not_on_optunas_pruner():
    plan = plan_pruner("hyperband", _recipe(9), n_trials=20)
    pruner = plan.build()
    assert not [name for name in vars(pruner) if "fasttricks" in name]
    assert (plan.min_resource, plan.max_epochs, plan.reduction_factor) == (1, 9, 3)
    assert pruner._max_resource == plan.max_resource
    with pytest.raises(TypeError, match="PrunerPlan"):
        describe_pruner(pruner)


def test_pruners_are_a_registry_with_did_you_mean():
    from fasttricks.tune import PRUNER_TYPES, PRUNERS

    assert sorted(PRUNERS) == PRUNER_TYPES.names()
    assert isinstance(plan_pruner("Median", _recipe(9)).build(), optuna.pruners.MedianPruner)
    with pytest.raises(KeyError, match="Did you mean 'median'"):
        PRUNER_TYPES.get("medain")


def test_median_warmup_is_in_epochs_and_none_never_prunes():
    median = make_pruner("median", _recipe(9), warmup_epochs=2, n_startup_trials=1)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert median._n_warmup_steps == 3  # steps are 1-based epochs: 1 and 2 are warm-up
    assert isinstance(make_pruner("none", _recipe(9)), optuna.pruners.NopPruner)


def test_unknown_pruner_lists_known_ones_and_closest_match():
    with pytest.raises(KeyError) as info:
        make_pruner("hyperbnd", _recipe(9))
    message = str(info.value)
    assert "'hyperbnd'" in message and "'asha'" in message and "Did you mean 'hyperband'" in message


@pytest.mark.parametrize("kwargs,needle", [
    ({"min_resource": 0}, "min_resource"),
    ({"min_resource": 20}, "min_resource"),
    ({"reduction_factor": 1}, "reduction_factor"),
    ({"n_brackets": 0}, "n_brackets"),
    ({"n_brackets": 4}, "n_brackets"),  # 9 epochs from 1 at eta 3: at most 3 brackets
    ({"n_brackets": 1.5}, "n_brackets"),
    ({"n_trials": 0}, "n_trials"),
])
def test_bad_pruner_budgets_are_rejected_with_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        make_pruner("hyperband", _recipe(9), **kwargs)


def test_recipe_without_positive_epochs_is_rejected():
    with pytest.raises(ValueError, match="schedule.epochs"):
        make_pruner("asha", _recipe(0))
    with pytest.raises(KeyError, match="schedule.epochs"):
        make_pruner("asha", {"name": "x"})


def test_median_pruner_never_prunes_during_warmup_epochs():
    study = optuna.create_study(
        direction="minimize", pruner=make_pruner("median", _recipe(6), warmup_epochs=3,
                                                 n_startup_trials=1))
    good = study.ask()
    for step in range(1, 7):
        good.report(0.1, step)
    study.tell(good, 0.1)
    bad = study.ask()
    answers = []
    for step in range(1, 7):
        bad.report(5.0, step)  # far worse than the median at every epoch
        answers.append(bad.should_prune())
    assert answers == [False, False, False, True, True, True]


# ------------------------------------------------- the double-ask bug of successive halving


def _name_in_first_bracket(epochs, eta=3, n_trials=2):
    """A study name whose first trials all land in Hyperband's bracket 0 (most aggressive).

    Hyperband (as Optuna implements it) hashes "<study name>_<trial number>" with CRC32 modulo
    the total trial budget; bracket s gets ceil(B * eta**(B-1-s) / (B-s)) of it.
    """
    n_brackets = math.floor(math.log(epochs, eta)) + 1
    budgets = [math.ceil(n_brackets * eta ** (n_brackets - 1 - s) / (n_brackets - s))
               for s in range(n_brackets)]
    for i in range(1000):
        name = f"bracket0-{i}"
        if all(binascii.crc32(f"{name}_{n}".encode()) % sum(budgets) < budgets[0]
               for n in range(n_trials)):
            return name
    raise AssertionError("no study name found")



def _run_first_trial_to_the_end(study, values):
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
        trial.should_prune()
    study.tell(trial, values[-1])


@pytest.mark.parametrize("name", ["asha", "hyperband"])
def test_successive_halving_answers_differently_when_asked_twice(name):
    """The reason a callback must remember its answer: the second call says "keep going"."""
    pruner = make_pruner(name, _recipe(9), min_resource=1)
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                study_name=_name_in_first_bracket(9))
    _run_first_trial_to_the_end(study, [0.9, 0.95, 0.97])
    trial = study.ask()
    trial.report(0.1, 1)  # far worse than trial 0 at rung epoch 1
    first = trial.should_prune()
    second = trial.should_prune()
    assert first is True
    assert second is False  # the rung was recorded by the first call


# ------------------------------------------------------------ callback on a plain Learner


def _learner(lr_scale, seed=0, epochs_data=64):
    torch.manual_seed(seed)
    x = torch.randn(epochs_data * 4, 8)
    w = torch.randn(8, 1)
    y = x @ w
    train = TensorDataset(x[:192], y[:192])
    valid = TensorDataset(x[192:], y[192:])
    dls = DataLoaders(DataLoader(train, batch_size=32, shuffle=True),
                      DataLoader(valid, batch_size=64))
    model = nn.Linear(8, 1)
    learn = Learner(dls, model, loss_func=nn.MSELoss(), lr=0.1 * lr_scale)
    return learn


class _EpochCounter(Callback):
    def __init__(self):
        self.epochs = 0

    def after_epoch(self):
        self.epochs += 1


class AskTwicePruningCallback(Callback):
    """The pattern this library avoids, written out: ask once per epoch, then AGAIN after fit."""

    order = 65

    def __init__(self, trial):
        self.trial = trial

    def after_epoch(self):
        value = float(self.learn.recorder.values[-1][1])  # valid_loss
        self.trial.report(value, self.epoch + 1)
        if self.trial.should_prune():
            from fastai.callback.core import CancelFitException

            raise CancelFitException()

    def after_fit(self):
        if self.trial.should_prune():
            raise optuna.TrialPruned()


def _objective(callback_factory, counters):
    def objective(trial):
        lr_scale = 1.0 if trial.number == 0 else 0.0  # trial 1 cannot learn: far worse
        learn = _learner(lr_scale)
        cb = callback_factory(trial)
        counter = _EpochCounter()
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            learn.fit(6, cbs=[cb, counter])
        counters.append(counter.epochs)
        if isinstance(cb, PruningCallback):
            cb.raise_if_pruned()
            return cb.values[-1]
        return float(learn.recorder.values[-1][1])

    return objective


def _study(name):
    return optuna.create_study(direction="minimize", study_name=_name_in_first_bracket(6),
                               pruner=make_pruner(name, _recipe(6), min_resource=1))


@pytest.mark.parametrize("name", ["asha", "hyperband"])
def test_ask_twice_callback_records_a_stopped_trial_as_complete(name):
    """Catches the bug: the stopped trial trains fewer epochs yet is recorded COMPLETE."""
    study = _study(name)
    counters = []
    study.optimize(_objective(AskTwicePruningCallback, counters), n_trials=2)
    trial = study.trials[1]
    assert counters[1] < 6  # the fit was cancelled early ...
    assert trial.state == TrialState.COMPLETE  # ... but the second ask said "do not prune"


@pytest.mark.parametrize("name", ["asha", "hyperband"])
def test_pruning_callback_records_a_stopped_trial_as_pruned(name):
    study = _study(name)
    counters = []
    study.optimize(_objective(lambda t: PruningCallback(t, "valid_loss", max_steps=6), counters),
                   n_trials=2)
    first, second = study.trials
    assert first.state == TrialState.COMPLETE and counters[0] == 6
    assert second.state == TrialState.PRUNED
    assert counters[1] < 6
    # one intermediate value per epoch trained, reported at steps 1..n
    assert sorted(second.intermediate_values) == list(range(1, counters[1] + 1))


def test_pruning_callback_reports_recorder_values_at_one_based_epochs():
    study = optuna.create_study(direction="minimize")
    trial = study.ask()
    learn = _learner(1.0)
    cb = PruningCallback(trial, "valid_loss")
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, cbs=[cb])
    recorded = [float(row[1]) for row in learn.recorder.values]
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == {1: recorded[0], 2: recorded[1], 3: recorded[2]}
    assert cb.step == 3 and not cb.pruned and math.isclose(cb.values[-1], recorded[-1])


def test_pruning_callback_asks_once_per_epoch_and_never_at_the_last():
    class CountingTrial:
        def __init__(self):
            self.asked = 0
            self.reported = []

        def report(self, value, step):
            self.reported.append(step)

        def should_prune(self):
            self.asked += 1
            return False

    trial = CountingTrial()
    learn = _learner(1.0)
    with learn.no_bar(), learn.no_logging():
        learn.fit(4, cbs=[PruningCallback(trial, "valid_loss", max_steps=4)])
    assert trial.reported == [1, 2, 3, 4]
    assert trial.asked == 3


def test_pruned_callback_keeps_a_later_fit_stage_stopped():
    class PruneAtOnce:
        def report(self, value, step):
            pass

        def should_prune(self):
            return True

    learn = _learner(1.0)
    cb = PruningCallback(PruneAtOnce(), "valid_loss")
    counter = _EpochCounter()
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, cbs=[cb, counter])
        learn.fit(3, cbs=[cb, counter])  # a second stage (e.g. after unfreeze)
    assert counter.epochs == 1 and cb.pruned_at == 1
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        cb.raise_if_pruned()


def test_unknown_monitor_names_the_recorded_columns():
    study = optuna.create_study()
    learn = _learner(1.0)
    with learn.no_bar(), learn.no_logging(), pytest.raises(Exception) as info:
        learn.fit(1, cbs=[PruningCallback(study.ask(), "acuracy")])
    assert "acuracy" in str(info.value) and "valid_loss" in str(info.value)


def test_nan_metric_is_pruned_by_successive_halving():
    study = optuna.create_study(direction="minimize", pruner=make_pruner("asha", _recipe(9)))
    trial = study.ask()
    trial.report(float("nan"), 1)
    assert trial.should_prune() is True
    assert np.isnan(study._storage.get_trial(trial._trial_id).intermediate_values[1])
