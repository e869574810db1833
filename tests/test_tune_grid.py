"""Conditional search spaces, grid search, ties broken on validation loss, the shipped spaces."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from fasttricks.recipes import builtin_recipe_path, load_recipe
from fasttricks.tune import GridPointSampler, best_recipe, grid_points, load_space, ranked_trials
from fasttricks.tune import tune, write_results
from fasttricks.tune._space import default_space_path
from fasttricks.tune._cli import main
from fasttricks.tune._space import TrialSampler, check_space_keys, grid_values

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)

COND = {
    "optimizer.name": {"type": "categorical", "choices": ["adamw", "rangeradabelief",
                                                          "sgd_momentum"]},
    "optimizer.eps": {"type": "categorical", "choices": [1.0, 0.1, 0.01],
                      "when": {"optimizer.name": ["adamw"]}},
    "optimizer.eps@adabelief": {"key": "optimizer.eps", "type": "categorical",
                                "choices": [1e-8, 1e-16, 1e-12],
                                "when": {"optimizer.name": "rangeradabelief"}},
    "data.bs": {"type": "categorical", "choices": [32, 64]},
}


def _recipe(**overrides):
    return load_recipe("digits",
                       {"schedule.epochs": 1, "model.channels": [8, 16], **overrides})


def _brute_force_cond():
    """The grid written out by hand: eps only where the optimizer's family samples it."""
    points = []
    for name, bs in itertools.product(["adamw", "rangeradabelief", "sgd_momentum"], [32, 64]):
        eps = {"adamw": [("optimizer.eps", e) for e in (1.0, 0.1, 0.01)],
               "rangeradabelief": [("optimizer.eps@adabelief", e) for e in (1e-8, 1e-16, 1e-12)],
               "sgd_momentum": [None]}[name]
        for e in eps:
            point = {"optimizer.name": name, "data.bs": bs}
            if e is not None:
                point[e[0]] = e[1]
            points.append(point)
    return points


def _keyset(points):
    return sorted(tuple(sorted(p.items())) for p in points)


def test_grid_points_are_the_conditional_tree_written_out_by_hand():
    points = grid_points(_recipe(), load_space(COND))
    assert len(points) == (3 + 3 + 1) * 2 == 14
    assert _keyset(points) == _keyset(_brute_force_cond())
    assert len(set(map(str, _keyset(points)))) == len(points)  # no duplicates


def test_conditional_eps_reaches_the_recipe_of_its_optimizer_only():
    sampler = TrialSampler(_recipe(), load_space(COND))
    for point in _brute_force_cond():
        recipe = sampler.recipe_for(lambda param: point[param.name])
        name = point["optimizer.name"]
        eps = point.get("optimizer.eps", point.get("optimizer.eps@adabelief"))
        assert recipe["optimizer"]["name"] == name
        assert recipe["optimizer"].get("eps") == eps
        assert recipe["data"]["bs"] == point["data.bs"]


def test_stepped_numbers_give_every_grid_value_and_a_continuous_float_is_refused():
    space = load_space({"a.b": {"type": "int", "low": 2, "high": 8, "step": 2},
                        "a.c": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1},
                        "a.d": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    assert grid_values(space["a.b"]) == (2, 4, 6, 8)
    assert grid_values(space["a.c"]) == pytest.approx((0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"'a\.d' is a continuous float.*step"):
        grid_values(space["a.d"])


def test_grid_sampler_runs_every_point_exactly_once_in_an_optuna_study():
    space = load_space({**COND, "schedule.pct_start": {"type": "float", "low": 0.2,
                                                        "high": 0.4, "step": 0.1}})
    recipe = _recipe()
    points = grid_points(recipe, space)
    assert len(points) == 14 * 3
    sampler = TrialSampler(recipe, space)
    study = optuna.create_study(sampler=GridPointSampler(points, seed=1))
    study.optimize(lambda t: len(sampler.overrides(lambda p: p.suggest(t))), n_trials=len(points))
    seen = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.params.items()}
            for t in study.trials]
    expected = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in p.items()}
                for p in points]
    assert _keyset(seen) == _keyset(expected)


def test_a_failed_grid_point_is_run_again():
    points = [{"x": 1}, {"x": 2}]
    study = optuna.create_study(sampler=GridPointSampler(points, seed=0))

    def objective(trial):
        x = trial.suggest_categorical("x", [1, 2])
        if x == 2 and not any(t.state.name == "FAIL" for t in trial.study.trials):
            raise RuntimeError("first try fails")
        return x

    study.optimize(objective, n_trials=3, catch=(RuntimeError,))
    done = sorted(t.params["x"] for t in study.trials if t.state.name == "COMPLETE")
    assert done == [1, 2]


def test_tune_with_grid_defaults_n_trials_to_the_grid_size(tmp_path):
    space = {"optimizer.name": {"type": "categorical", "choices": ["adamw", "sgd_momentum"]},
             "optimizer.eps": {"type": "categorical", "choices": [1.0, 0.01]}}
    study = tune(_recipe(), space, sampler="grid", pruner="none", root=tmp_path, threads=1,
                 progress=False)
    got = sorted(tuple(sorted(t.params.items())) for t in study.trials)
    # sgd_momentum has no eps: three points, not four
    assert got == sorted([(("optimizer.eps", 1.0), ("optimizer.name", "adamw")),
                          (("optimizer.eps", 0.01), ("optimizer.name", "adamw")),
                          (("optimizer.name", "sgd_momentum"),)])
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    with pytest.raises(ValueError, match="more than the grid's 3 points"):
        tune(_recipe(), space, sampler="grid", n_trials=4, root=tmp_path, study_name="g2",
             progress=False)


def test_cli_grid_over_a_continuous_space_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["--recipe", "digits", "--sampler", "grid"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: grid search needs discrete parameters")
    assert "'optimizer.lr' is a continuous float" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("spec, needle", [
    ({"optimizer.name": {"type": "categorical", "choices": ["adamw"]},
      "optimizer.eps": {"type": "float", "low": 0.1, "high": 1, "when": {"optimizer.name":
                                                                          ["adamx"]}}},
     r"lists \['adamx'\], which 'optimizer.name' never samples"),
    ({"optimizer.eps": {"type": "float", "low": 0.1, "high": 1},
      "eps2": {"key": "optimizer.eps", "type": "float", "low": 0.1, "high": 1}},
     "both set 'optimizer.eps' in the same trial"),
    ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 1, "when": {"optimizer.wd": 1}},
      "optimizer.wd": {"type": "categorical", "choices": [1, 2]}},
     "must be set before it"),
    ({"optimizer.eps": {"type": "float", "low": 0.1, "high": 1, "when": []}},
     "when must be a mapping"),
])
def test_bad_conditions_fail_when_the_space_is_loaded(spec, needle):
    with pytest.raises(ValueError, match=needle):
        load_space(spec)


def test_space_spec_round_trips_conditions():
    from fasttricks.tune._space import space_spec

    space = load_space(COND)
    assert load_space(space_spec(space)) == space


@pytest.mark.parametrize("name", ["digits", "longtail", "mnist1d", "multilabel"])
def test_shipped_spaces_follow_the_cheatsheet(name):
    recipe = load_recipe(name)
    space = load_space(default_space_path(builtin_recipe_path(name)))
    check_space_keys(space, recipe)
    assert space["data.bs"].choices == (32, 64, 128)
    assert space["schedule.fit"].choices == ("flat_cos", "one_cycle")
    sampler = TrialSampler(recipe, space)
    for opt, fit, bs in itertools.product(space["optimizer.name"].choices,
                                          ("flat_cos", "one_cycle"), (32, 128)):
        def pick(param):
            fixed = {"optimizer.name": opt, "schedule.fit": fit, "data.bs": bs}
            return fixed.get(param.key, param.choices[-1] if param.choices else param.low)

        sampled = sampler.recipe_for(pick)
        eps = sampled["optimizer"].get("eps")
        if opt == "rangeradabelief":
            assert eps == 1e-12
        elif opt in ("adamw", "ranger"):
            assert eps == 0.01
        else:
            assert eps is None
        # each schedule keeps fastai's own default warm-up fraction
        assert sampled["schedule"]["pct_start"] == {"flat_cos": 0.75, "one_cycle": 0.25}[fit]
        assert sampled["data"]["bs"] == bs


# ---------------------------------------------------------------------------- ties


def _constructed_study(direction, values, losses):
    study = optuna.create_study(direction=direction)
    for i, (value, loss) in enumerate(zip(values, losses)):
        trial = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1.0)})
        trial.params  # noqa: B018  (sampled on ask)
        if loss is not None:
            trial.set_user_attr("valid_loss", loss)
        study.tell(trial, value)
    return study


def test_ties_on_the_metric_are_broken_on_validation_loss_then_trial_number():
    study = _constructed_study("maximize", [1.0, 1.0, 0.9, 1.0, 1.0],
                               [0.30, 0.10, 0.05, None, 0.10])
    # value first (1.0 beats 0.9), then lowest valid_loss (0.10 < 0.30 < missing), then number
    assert [t.number for t in ranked_trials(study)] == [1, 4, 0, 3, 2]
    low = _constructed_study("minimize", [0.2, 0.1, 0.1], [0.5, 0.4, 0.3])
    assert [t.number for t in ranked_trials(low)] == [2, 1, 0]


def test_best_yaml_trials_csv_and_summary_use_the_tie_break(tmp_path):
    study = _constructed_study("maximize", [1.0, 1.0, 0.9], [0.30, 0.10, 0.05])
    study.set_user_attr("metric", "accuracy")
    recipe = _recipe()
    space = load_space({"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1.0}})
    lr = study.trials[1].params["optimizer.lr"]
    assert best_recipe(study, recipe, space)["optimizer"]["lr"] == lr
    written = write_results(study, recipe, tmp_path, space)
    text = written["best"].read_text()
    assert "best trial 1 " in text and "2 trials tie at 1; the lowest valid_loss wins (0.1)" in text
    assert load_recipe(written["best"])["optimizer"]["lr"] == pytest.approx(lr)
    trials = pd.read_csv(written["trials"])
    assert dict(zip(trials["number"], trials["rank"])) == {0: 2, 1: 1, 2: 3}


def test_a_study_records_each_trials_last_validation_loss(tmp_path):
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    study = tune(_recipe(), space, sampler="random", pruner="none", n_trials=2, root=tmp_path,
                 threads=1, progress=False)
    for trial in study.trials:
        loss = trial.user_attrs["valid_loss"]
        assert isinstance(loss, float) and math.isfinite(loss) and 0 < loss < 5
