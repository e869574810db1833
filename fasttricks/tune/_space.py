"""Search spaces: which recipe values a study samples, and from what range.

A search space is YAML (or a mapping) from a dotted recipe key to a parameter spec::

    optimizer.lr:   {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
    optimizer.name: {type: categorical, choices: [adamw, ranger, sgd_momentum]}
    schedule.epochs: {type: int, low: 2, high: 8, step: 2}

Types are ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (``low``,
``high``, optional ``log`` or ``step``, default step 1), ``categorical`` (``choices``: strings,
numbers, booleans or null) and ``bool`` (shorthand for ``categorical`` with ``[false, true]``).
Every spec is checked when the space is loaded, so a typo fails before any trial runs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fasttricks._validate import ChoiceError, check_choice, closest

__all__ = ["Param", "load_space", "check_space_keys", "default_space_path"]

PARAM_TYPES = ("float", "int", "categorical", "bool")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "bool": {"type"},
}
_MISSING = object()


@dataclass(frozen=True)
class Param:
    """One sampled value of a search space: the dotted recipe key and its distribution.

    Args:
        key: dotted recipe key, e.g. ``"optimizer.lr"``.
        type: ``"float"``, ``"int"`` or ``"categorical"`` (``bool`` specs become categorical).
        low, high: inclusive bounds for numbers (``low <= high``).
        log: sample on a log scale (numbers only; needs ``low > 0``; not with ``step``).
        step: grid step for numbers (default None: continuous floats, 1 for ints).
        choices: the candidates of a categorical parameter (at least one).
    """

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    def distribution(self) -> Any:
        """The equivalent ``optuna.distributions`` object."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=None if self.step is None else float(self.step))

    def suggest(self, trial: Any) -> Any:
        """Sample this parameter from an ``optuna.Trial`` (the key is the parameter name)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices or ()))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def candidates(self) -> tuple[Any, ...]:
        """Values worth checking against a recipe: every choice, or both bounds."""
        if self.type == "categorical":
            return tuple(self.choices or ())
        return (self.low, self.high)


def _number(key: str, field: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # YAML reads 1e-3 (no dot) as a string: accept numeric strings, reject the rest.
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"search space {key!r}: {field} must be a number, got {value!r}"
            ) from None
    if not math.isfinite(value):
        raise ValueError(f"search space {key!r}: {field} must be finite, got {value!r}")
    return value


def _parse_param(key: Any, spec: Any) -> Param:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
        raise ValueError(f"search space keys must be dotted recipe keys, got {key!r}")
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"search space {key!r}: expected a mapping like "
            f"{{type: float, low: 1e-4, high: 1e-2, log: true}}, got {spec!r}"
        )
    kind = spec.get("type", _MISSING)
    if kind is _MISSING:
        raise ValueError(f"search space {key!r}: missing 'type' (one of {', '.join(PARAM_TYPES)})")
    try:
        check_choice(f"parameter type for {key!r}", kind, PARAM_TYPES)
    except ChoiceError as err:
        raise ValueError(f"search space {key!r}: {err}") from None
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        hint = closest(unknown[0], _FIELDS[kind])
        raise ValueError(
            f"search space {key!r}: unknown field(s) {unknown} for type {kind!r}; allowed: "
            f"{sorted(_FIELDS[kind])}" + (f". Did you mean {hint!r}?" if hint else "")
        )
    if kind == "bool":
        return Param(key, "categorical", choices=(False, True))
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, Sequence) or isinstance(choices, str):
            raise ValueError(f"search space {key!r}: choices must be a list, got {choices!r}")
        if len(choices) == 0:
            raise ValueError(f"search space {key!r}: choices is empty; give at least one value")
        for choice in choices:
            if choice is not None and not isinstance(choice, (str, int, float, bool)):
                raise ValueError(
                    f"search space {key!r}: choice {choice!r} is not a string, number, "
                    "boolean or null"
                )
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"search space {key!r}: choices has duplicates: {list(choices)!r}")
        return Param(key, "categorical", choices=tuple(choices))
    for field in ("low", "high"):
        if field not in spec:
            raise ValueError(f"search space {key!r}: type {kind!r} needs {field!r}")
    low = _number(key, "low", spec["low"])
    high = _number(key, "high", spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"search space {key!r}: log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(key, "step", step)
        if step <= 0:
            raise ValueError(f"search space {key!r}: step must be > 0, got {step!r}")
        if log:
            raise ValueError(f"search space {key!r}: log and step cannot be used together")
    if low > high:
        raise ValueError(f"search space {key!r}: low must be <= high, got low={low!r} > "
                         f"high={high!r}")
    if log and low <= 0:
        raise ValueError(f"search space {key!r}: log scale needs low > 0, got low={low!r}")
    if kind == "int":
        for field, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and float(value) != int(value):
                raise ValueError(
                    f"search space {key!r}: {field} must be an integer for type 'int', "
                    f"got {value!r}"
                )
        return Param(key, "int", int(low), int(high), log,
                     None if step is None else int(step))
    return Param(key, "float", float(low), float(high), log,
                 None if step is None else float(step))


def load_space(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Param]:
    """Read and validate a search space from a YAML file or a mapping.

    Args:
        source: a path to a YAML file, or a mapping ``{dotted key: spec}`` (see the module
            docstring for the spec fields).

    Returns:
        ``{dotted key: Param}`` in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a spec is malformed (unknown type or field, empty choices, ``low > high``,
            log scale with ``low <= 0``...), echoing the key and the bad value.
    """
    if isinstance(source, Mapping):
        raw: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"search space file not found: {str(path)!r}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"a search space must be a mapping of dotted recipe keys to specs, got "
            f"{type(raw).__name__}: {raw!r}"
        )
    if not raw:
        raise ValueError("the search space is empty: give at least one parameter to tune")
    return {key: _parse_param(key, spec) for key, spec in raw.items()}


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            full = f"{prefix}{name}"
            keys.append(full)
            keys.extend(_dotted_keys(value, full + "."))
    return keys


def check_space_keys(space: Mapping[str, Param], recipe: Mapping[str, Any]) -> None:
    """Check that every key of ``space`` exists in ``recipe`` and accepts its values.

    Each candidate value (every choice, or both bounds) goes through
    ``fasttricks.recipes.set_in_recipe``, so a key the recipe schema does not know, or a choice
    the recipe rejects (an unknown optimizer name...), fails before any trial runs.

    Raises:
        KeyError: a key is not in the recipe; names the closest existing key.
        ValueError: the recipe rejects a candidate value; echoes key, value and the reason.
    """
    from fasttricks.recipes import set_in_recipe

    known = _dotted_keys(recipe)
    for key, param in space.items():
        for value in param.candidates():
            try:
                set_in_recipe(recipe, key, value)
            except KeyError as err:
                hint = closest(key, known)
                raise ChoiceError(
                    f"search space key {key!r} is not a key of recipe "
                    f"{recipe.get('name', '?')!r} ({_reason(err)}); top-level sections: "
                    f"{', '.join(map(str, recipe))}"
                    + (f". Did you mean {hint!r}?" if hint else "")
                ) from None
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"search space {key!r}: the recipe rejects the value {value!r}: "
                    f"{_reason(err)}"
                ) from None


def _reason(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def default_space_path(recipe_path: str | os.PathLike[str]) -> Path:
    """The search space shipped beside a recipe: ``recipes/x.yaml`` -> ``recipes/x.space.yaml``."""
    path = Path(recipe_path)
    name = path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.space.yaml")
