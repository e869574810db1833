"""Search-space YAML: parsing, validation errors, and sampling through Optuna."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fasttricks.tune import Param, load_space
from fasttricks.tune._space import default_space_path

optuna.logging.set_verbosity(optuna.logging.WARNING)

YAML = """
optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
optimizer.wd: {type: float, low: 0.0, high: 0.1, step: 0.01}
model.width: {type: int, low: 16, high: 128, step: 16}
optimizer.name: {type: categorical, choices: [adamw, ranger, sgd_momentum]}
loss.use_weights: {type: bool}
"""


def test_yaml_space_parses_each_type_in_file_order(tmp_path):
    path = tmp_path / "x.space.yaml"
    path.write_text(YAML)
    space = load_space(path)
    assert list(space) == ["optimizer.lr", "optimizer.wd", "model.width", "optimizer.name",
                           "loss.use_weights"]
    assert space["optimizer.lr"] == Param("optimizer.lr", "float", 1e-4, 1e-1, log=True)
    assert space["optimizer.lr"].distribution() == FloatDistribution(1e-4, 1e-1, log=True)
    assert space["optimizer.wd"].distribution() == FloatDistribution(0.0, 0.1, step=0.01)
    assert space["model.width"].distribution() == IntDistribution(16, 128, step=16)
    assert space["optimizer.name"].distribution() == CategoricalDistribution(
        ["adamw", "ranger", "sgd_momentum"])
    assert space["loss.use_weights"].choices == (False, True)


def test_yaml_exponent_without_dot_is_read_as_a_number():
    # PyYAML reads "1e-4" (no dot) as a string; a space must still accept it.
    space = load_space({"optimizer.lr": {"type": "float", "low": "1e-4", "high": "1e-2",
                                         "log": True}})
    assert space["optimizer.lr"].low == pytest.approx(1e-4)


def test_sampled_values_stay_inside_the_space():
    space = load_space({
        "a": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
        "b": {"type": "int", "low": 2, "high": 10, "step": 4},
        "c": {"type": "categorical", "choices": ["x", "y"]},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_b, seen_c = set(), set()
    for _ in range(40):
        trial = study.ask()
        values = {key: param.suggest(trial) for key, param in space.items()}
        assert 1e-3 <= values["a"] <= 1.0
        seen_b.add(values["b"])
        seen_c.add(values["c"])
        study.tell(trial, values["a"])
    assert seen_b == {2, 6, 10}
    assert seen_c == {"x", "y"}
    # log scale: with 40 log-uniform draws on [1e-3, 1], about a third fall below 1e-2
    below = sum(t.params["a"] < 1e-2 for t in study.trials)
    assert 5 <= below <= 25


@pytest.mark.parametrize("spec,needle", [
    ({"x": {"type": "categorical", "choices": []}}, "choices is empty"),
    ({"x": {"type": "float", "low": 2.0, "high": 1.0}}, "low must be <= high, got low=2.0"),
    ({"x": {"type": "int", "low": 5, "high": 1}}, "low must be <= high"),
    ({"x": {"type": "flot", "low": 0, "high": 1}}, "Did you mean 'float'"),
    ({"x": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "log scale needs low > 0"),
    ({"x": {"type": "float", "low": 1e-3, "high": 1.0, "log": True, "step": 0.1}},
     "log and step"),
    ({"x": {"type": "float", "low": 0, "hihg": 1}}, "Did you mean 'high'"),
    ({"x": {"type": "float", "low": 0}}, "needs 'high'"),
    ({"x": {"type": "int", "low": 0.5, "high": 3}}, "must be an integer"),
    ({"x": {"type": "float", "low": "abc", "high": 1}}, "low must be a number, got 'abc'"),
    ({"x": {"low": 0, "high": 1}}, "missing 'type'"),
    ({"x": [1, 2]}, "expected a mapping"),
    ({"x": {"type": "categorical", "choices": "adamw"}}, "choices must be a list"),
    ({"x": {"type": "categorical", "choices": [[1], [2]]}}, "is not a string, number"),
    ({"x": {"type": "categorical", "choices": ["a", "a"]}}, "duplicates"),
    ({}, "empty"),
    ({"x": {"type": "float", "low": 0, "high": 1, "step": 0}}, "step must be > 0"),
    ({"x": {"type": "float", "low": 0, "high": math.inf}}, "finite"),
])
def test_malformed_specs_fail_with_the_key_and_the_bad_value(spec, needle):
    with pytest.raises(ValueError) as info:
        load_space(spec)
    assert needle in str(info.value)
    if spec:
        assert "'x'" in str(info.value)


def test_missing_space_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.space.yaml"):
        load_space(tmp_path / "nope.space.yaml")


def test_space_file_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "bad.space.yaml"
    path.write_text("- optimizer.lr\n- optimizer.wd\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_space(path)


def test_default_space_sits_beside_the_recipe():
    assert str(default_space_path("recipes/digits.yaml")) == "recipes/digits.space.yaml"
    assert str(default_space_path("a/b.yml")) == "a/b.space.yaml"
