"""Search spaces: which recipe values a study samples, and from what range.

A search space is YAML (or a mapping) from a dotted recipe key to a parameter spec::

    optimizer.lr:   {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
    optimizer.name: {type: categorical, choices: [adamw, ranger, sgd_momentum]}
    schedule.epochs: {type: int, low: 2, high: 8, step: 2}

Types are ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (``low``,
``high``, optional ``log`` or ``step``, default step 1), ``categorical`` (``choices``: strings,
numbers, booleans or null) and ``bool`` (shorthand for ``categorical`` with ``[false, true]``).

Two forms switch whole parts of a recipe:

- ``choices`` may be a mapping from a label to any recipe value; the label is sampled and its
  value set, e.g. a whole loss section::

      loss:
        type: categorical
        choices:
          weighted_ce: {name: weighted_cross_entropy, weights: sqrt_inv}
          focal: {name: focal, gamma: 2.0, alpha: sqrt_inv}

- ``callbacks.<name>: {type: bool}`` adds (true) or removes (false) the registered callback
  ``<name>`` (``ema``, ``sam``...) with its default options.

A parameter can depend on a value set before it. ``when: {optimizer.name: [adamw, ranger]}``
samples it only in trials where that key has one of those values, and ``key:`` lets one recipe
key have several parameters under their own names, e.g. the cheatsheet's eps sweep, which
differs by optimizer family::

    optimizer.eps:
      type: categorical
      choices: [1.0, 0.1, 0.01]
      when: {optimizer.name: [adamw, ranger]}
    optimizer.eps@adabelief:
      key: optimizer.eps
      type: categorical
      choices: [1.0e-8, 1.0e-16, 1.0e-12]
      when: {optimizer.name: [rangeradabelief]}

Keys are set in this order: sections and ``*.name`` keys first, then callback switches, then
the rest in file order. A key the trial's recipe does not accept after that (``optimizer.eps``
when ``sgd`` was sampled, which has no eps) is not sampled in that trial: Optuna's
define-by-run spaces handle such conditional parameters. Every spec is checked when the space
is loaded, so a typo fails before any trial runs.
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

__all__ = [
    "Param",
    "accepts",
    "apply_params",
    "apply_value",
    "check_space_keys",
    "default_space_path",
    "grid_points",
    "grid_values",
    "load_space",
    "ordered",
    "space_spec",
    "TrialSampler",
]

PARAM_TYPES = ("float", "int", "categorical", "bool")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "bool": {"type"},
}
_COMMON_FIELDS = {"key", "when"}
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
        values: the recipe values behind preset labels (``choices`` as a mapping), else None.
        name: the parameter's name in the study (default: ``key``); several parameters may set
            one key under different names when their ``when`` conditions exclude each other.
        when: ``((dotted key, allowed values), ...)``: sample only in trials where each key
            has one of its values (default: always).
    """

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    values: tuple[Any, ...] | None = None
    name: str = ""
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.key)

    def value_of(self, sampled: Any) -> Any:
        """The recipe value of a sampled choice (the preset behind a label, else itself)."""
        if self.values is None:
            return sampled
        return self.values[self.choices.index(sampled)]

    @property
    def is_callback_switch(self) -> bool:
        """True for ``callbacks.<name>: {type: bool}`` (adds or removes a callback)."""
        parts = self.key.split(".")
        return (len(parts) == 2 and parts[0] == "callbacks" and not parts[1].lstrip("-").isdigit()
                and self.choices == (False, True))

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
        """Sample this parameter from an ``optuna.Trial`` under :attr:`name`."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def candidates(self) -> tuple[Any, ...]:
        """Sampled values worth checking against a recipe: every choice, or both bounds."""
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


def _check_dotted(what: str, key: Any) -> str:
    if not isinstance(key, str) or not key or key.startswith(".") or key.endswith("."):
        raise ValueError(f"{what} must be dotted recipe keys, got {key!r}")
    return key


def _parse_when(name: str, when: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(when, Mapping) or not when:
        raise ValueError(f"search space {name!r}: when must be a mapping like "
                         f"{{optimizer.name: [adamw, ranger]}}, got {when!r}")
    out = []
    for key, allowed in when.items():
        _check_dotted(f"search space {name!r}: when keys", key)
        if isinstance(allowed, (str, int, float, bool)) or allowed is None:
            allowed = [allowed]
        if not isinstance(allowed, Sequence) or len(allowed) == 0:
            raise ValueError(f"search space {name!r}: when {key!r} needs a value or a "
                             f"non-empty list of values, got {allowed!r}")
        out.append((key, tuple(allowed)))
    return tuple(out)


def _parse_param(name: Any, spec: Any) -> Param:
    if not isinstance(name, str) or not name:
        raise ValueError(f"search space keys must be dotted recipe keys, got {name!r}")
    if not isinstance(spec, Mapping):
        raise ValueError(
            f"search space {name!r}: expected a mapping like "
            f"{{type: float, low: 1e-4, high: 1e-2, log: true}}, got {spec!r}"
        )
    if "key" in spec:
        key = _check_dotted(f"search space {name!r}: 'key' values", spec["key"])
    else:
        key = _check_dotted("search space keys (or give 'key:')", name)
    when = _parse_when(name, spec["when"]) if "when" in spec else ()
    spec = {k: v for k, v in spec.items() if k not in _COMMON_FIELDS}
    param = _parse_spec(name, spec)
    return Param(key, param.type, param.low, param.high, param.log, param.step, param.choices,
                 param.values, name=name, when=when)


def _parse_spec(key: str, spec: Mapping[str, Any]) -> Param:
    kind = spec.get("type", _MISSING)
    if kind is _MISSING:
        raise ValueError(f"search space {key!r}: missing 'type' (one of {', '.join(PARAM_TYPES)})")
    try:
        check_choice(f"parameter type for {key!r}", kind, PARAM_TYPES)
    except ChoiceError as err:
        raise ValueError(f"search space {key!r}: {err}") from None
    unknown = sorted(set(spec) - _FIELDS[kind])
    if unknown:
        hint = closest(unknown[0], _FIELDS[kind] | _COMMON_FIELDS)
        raise ValueError(
            f"search space {key!r}: unknown field(s) {unknown} for type {kind!r}; allowed: "
            f"{sorted(_FIELDS[kind] | _COMMON_FIELDS)}"
            + (f". Did you mean {hint!r}?" if hint else "")
        )
    if kind == "bool":
        return Param(key, "categorical", choices=(False, True))
    if kind == "categorical":
        choices = spec.get("choices")
        if isinstance(choices, Mapping):
            if len(choices) == 0:
                raise ValueError(
                    f"search space {key!r}: choices is empty; give at least one value")
            labels = tuple(choices)
            for label in labels:
                if not isinstance(label, str):
                    raise ValueError(f"search space {key!r}: a preset label must be a string, "
                                     f"got {label!r}")
            return Param(key, "categorical", choices=labels,
                         values=tuple(choices[label] for label in labels))
        if not isinstance(choices, Sequence) or isinstance(choices, str):
            raise ValueError(f"search space {key!r}: choices must be a list (or a mapping of "
                             f"labels to values), got {choices!r}")
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
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            from fasttricks.recipes import yaml_problem

            raise ValueError(f"search space file {str(path)!r} is not valid YAML: "
                             f"{yaml_problem(err)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"a search space must be a mapping of dotted recipe keys to specs, got "
            f"{type(raw).__name__}: {raw!r}"
        )
    if not raw:
        raise ValueError("the search space is empty: give at least one parameter to tune")
    space = {name: _parse_param(name, spec) for name, spec in raw.items()}
    _check_conditions(space)
    return space


def _check_conditions(space: Mapping[str, Param]) -> None:
    """``when`` keys set by the space come earlier in :func:`ordered` order and name values
    that parameter can take; parameters sharing a recipe key exclude each other."""
    position = {param.name: i for i, param in enumerate(ordered(space))}
    setters: dict[str, list[Param]] = {}
    for param in space.values():
        setters.setdefault(param.key, []).append(param)
    for param in space.values():
        for key, allowed in param.when:
            for setter in setters.get(key, []):
                if position[setter.name] >= position[param.name]:
                    raise ValueError(
                        f"search space {param.name!r}: its condition on {key!r} must be set "
                        f"before it; move {setter.name!r} above it (sections and *.name keys "
                        "are always set first)"
                    )
                if setter.type == "categorical":
                    unknown = [v for v in allowed if v not in setter.choices]
                    if unknown and len(setters[key]) == 1:
                        raise ValueError(
                            f"search space {param.name!r}: when {key!r} lists {unknown!r}, "
                            f"which {setter.name!r} never samples; its choices: "
                            f"{list(setter.choices or ())!r}"
                        )
    for key, params in setters.items():
        for i, first in enumerate(params):
            for second in params[i + 1:]:
                if not _exclusive(first, second):
                    raise ValueError(
                        f"search space {first.name!r} and {second.name!r} both set {key!r} "
                        "in the same trial; give them 'when' conditions that exclude each "
                        "other (e.g. on optimizer.name)"
                    )


def _exclusive(first: Param, second: Param) -> bool:
    other = dict(second.when)
    return any(key in other and not set(map(repr, allowed)) & set(map(repr, other[key]))
               for key, allowed in first.when)


def space_spec(space: Mapping[str, Param]) -> dict[str, dict[str, Any]]:
    """The YAML-ready mapping of ``space`` (``load_space(space_spec(s)) == s``)."""
    out: dict[str, dict[str, Any]] = {}
    for param in space.values():
        key = param.name
        if param.type == "categorical" and param.values is not None:
            out[key] = {"type": "categorical",
                        "choices": dict(zip(param.choices or (), param.values, strict=True))}
        elif param.type == "categorical":
            out[key] = {"type": "categorical", "choices": list(param.choices or ())}
        else:
            spec: dict[str, Any] = {"type": param.type, "low": param.low, "high": param.high}
            if param.log:
                spec["log"] = True
            if param.step is not None:
                spec["step"] = param.step
            out[key] = spec
        if param.key != param.name:
            out[key] = {"key": param.key, **out[key]}
        if param.when:
            out[key]["when"] = {k: list(v) for k, v in param.when}
    return out


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            full = f"{prefix}{name}"
            keys.append(full)
            keys.extend(_dotted_keys(value, full + "."))
    return keys


def ordered(space: Mapping[str, Param]) -> list[Param]:
    """Parameters in the order they are set: sections and ``*.name`` first, then callback
    switches, then the rest in space order (so conditional keys see the sampled name)."""

    return sorted(space.values(), key=_rank)


def _rank(param: Param) -> int:
    if "." not in param.key or param.key.endswith(".name"):
        return 0
    return 1 if param.is_callback_switch else 2


def _switched_callbacks(callbacks: Any, name: str, on: bool) -> list[dict[str, Any]]:
    """The ``callbacks`` list with callback ``name`` added (default options) or removed."""
    entries = [dict(e) for e in callbacks or []]
    present = [e for e in entries if e.get("name") == name]
    if on and not present:
        entries.append({"name": name})
    if not on:
        entries = [e for e in entries if e.get("name") != name]
    return entries


def _override(param: Param, sampled: Any, callbacks: Any) -> tuple[str, Any]:
    """The ``(dotted key, value)`` override that sets ``param`` to the sampled value."""
    if param.is_callback_switch:
        name = param.key.split(".", 1)[1]
        return "callbacks", _switched_callbacks(callbacks, name, bool(sampled))
    return param.key, param.value_of(sampled)


def apply_value(recipe: Mapping[str, Any], param: Param, sampled: Any) -> Any:
    """A copy of ``recipe`` with ``param`` set to the sampled value (validated by the recipe)."""
    from fasttricks.recipes import load_recipe

    key, value = _override(param, sampled, recipe.get("callbacks"))
    return load_recipe(recipe, {key: value})


def accepts(recipe: Mapping[str, Any], param: Param) -> bool:
    """Whether ``recipe`` has ``param.key`` at all (values aside): False for a conditional key
    such as ``optimizer.eps`` when the recipe's optimizer takes no eps."""
    for sampled in param.candidates():
        try:
            apply_value(recipe, param, sampled)
            return True
        except KeyError:
            return False
        except (ValueError, TypeError):
            continue
    return True


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple((str(k), _frozen(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class TrialSampler:
    """Turns sampled values into recipe overrides, and a recipe, for one trial at a time.

    Parameters are set in :func:`ordered` order. Whether the recipe accepts a key depends only
    on the structural values sampled before it (sections, ``*.name`` keys, callback switches),
    so the answer is computed once per combination of those and remembered: a trial then
    costs one ``load_recipe(base, overrides)`` call, a single validation.

    Args:
        recipe: the validated base recipe.
        space: the parsed search space.
    """

    def __init__(self, recipe: Mapping[str, Any], space: Mapping[str, Param]) -> None:
        self.recipe = recipe
        self.space = dict(space)
        self._params = ordered(space)
        self._accepts: dict[tuple[str, Any], bool] = {}

    def _accepted(self, param: Param, structure: dict[str, Any]) -> bool:
        key = (param.key, _frozen(structure))
        if key not in self._accepts:
            from fasttricks.recipes import load_recipe

            variant = load_recipe(self.recipe, structure) if structure else self.recipe
            self._accepts[key] = accepts(variant, param)
        return self._accepts[key]

    def overrides(self, sample: Any) -> dict[str, Any]:
        """``{dotted key: value}`` for every parameter the recipe accepts; ``sample(param)``
        returns the sampled value and is not called for the others."""
        out: dict[str, Any] = {}
        structure: dict[str, Any] = {}
        chosen: dict[str, Any] = {}
        for param in self._params:
            if not self._holds(param, chosen) or not self._accepted(param, structure):
                continue
            callbacks = structure.get("callbacks", self.recipe.get("callbacks"))
            sampled = sample(param)
            key, value = _override(param, sampled, callbacks)
            out[key] = value
            chosen[param.key] = sampled
            if _rank(param) < 2:
                structure[key] = value
        return _with_fit_defaults(self.recipe, out)

    def _holds(self, param: Param, chosen: Mapping[str, Any]) -> bool:
        """Whether every ``when`` condition of ``param`` holds for the values chosen so far
        (a key not sampled in this trial has the base recipe's value)."""
        for key, allowed in param.when:
            value = chosen[key] if key in chosen else _lookup(self.recipe, key)
            if not any(value == a and type(value) is type(a) or repr(value) == repr(a)
                       for a in allowed):
                return False
        return True

    def recipe_for(self, sample: Any) -> Any:
        """The trial's recipe: the base with every sampled value, in one ``load_recipe`` call."""
        from fasttricks.recipes import load_recipe

        return load_recipe(self.recipe, self.overrides(sample))


def _with_fit_defaults(recipe: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """A sampled ``schedule.fit`` gets its own default ``pct_start`` (0.75 for flat_cos, 0.25
    for one_cycle) unless the base recipe set one of its own or the space samples it."""
    from fasttricks.recipes._schema import _PCT_START

    base = recipe.get("schedule") or {}
    if ("schedule.fit" in out and "schedule.pct_start" not in out and base.get("fit") in
            _PCT_START and base.get("pct_start") == _PCT_START[base["fit"]]):
        out["schedule.pct_start"] = None
    return out


def _lookup(recipe: Any, dotted: str) -> Any:
    value = recipe
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def grid_values(param: Param) -> tuple[Any, ...]:
    """Every value a grid search tries for ``param``: its choices, or ``low, low + step, ...,
    high`` for a stepped number (step 1 for ints).

    Raises:
        ValueError: a float without ``step`` (a continuous range has no grid).
    """
    if param.type == "categorical":
        return tuple(param.choices or ())
    if param.type == "int":
        return tuple(range(int(param.low), int(param.high) + 1, int(param.step or 1)))
    if param.step is None:
        raise ValueError(
            f"grid search needs discrete parameters: {param.name!r} is a continuous float "
            f"in [{param.low}, {param.high}]; give it a step or make it categorical "
            f"(e.g. choices: [{param.low}, {param.high}])"
        )
    count = int(math.floor((param.high - param.low) / param.step + 1e-9)) + 1
    return tuple(float(param.low + i * param.step) for i in range(count))


class _Branch(Exception):
    def __init__(self, param: Param) -> None:
        super().__init__(param.name)
        self.param = param


def grid_points(recipe: Mapping[str, Any], space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every distinct combination of a discrete space, as ``{parameter name: value}``.

    A conditional parameter (one the trial's recipe does not accept, or whose ``when`` does
    not hold) is left out of the combinations where it is not sampled, so a grid over
    ``optimizer.name: [adamw, sgd]`` and ``optimizer.eps: [1.0, 0.1]`` has three points, not
    four: ``sgd`` has no eps. Points come in depth-first order of :func:`ordered`.

    Raises:
        ValueError: a continuous parameter (:func:`grid_values`).
    """
    values = {param.name: grid_values(param) for param in space.values()}
    sampler = TrialSampler(recipe, space)
    points: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = [{}]
    while pending:
        fixed = pending.pop()

        def sample(param: Param, fixed: dict[str, Any] = fixed) -> Any:
            if param.name not in fixed:
                raise _Branch(param)
            return fixed[param.name]

        try:
            sampler.overrides(sample)
        except _Branch as branch:
            name = branch.param.name
            pending.extend({**fixed, name: v} for v in reversed(values[name]))
            continue
        points.append(fixed)
    return points


def apply_params(recipe: Mapping[str, Any], space: Mapping[str, Param], sample: Any) -> Any:
    """Set every parameter of ``space`` in ``recipe`` (see :class:`TrialSampler`).

    ``sample(param)`` returns the sampled value (e.g. ``param.suggest(trial)``, or a stored
    trial's ``params[param.name]``); it is not called for keys the recipe does not accept
    after the earlier values were set.
    """
    return TrialSampler(recipe, space).recipe_for(sample)


def check_space_keys(space: Mapping[str, Param], recipe: Mapping[str, Any]) -> None:
    """Check that every key of ``space`` exists in ``recipe`` and accepts its values.

    Each candidate value (every choice, or both bounds) goes through
    ``fasttricks.recipes.set_in_recipe``, so a key the recipe schema does not know, or a choice
    the recipe rejects (an unknown optimizer name...), fails before any trial runs. A key that
    exists only for some choices of a ``*.name`` key (``optimizer.eps`` with ``sgd`` as the
    recipe's optimizer but ``adamw`` among the choices) is valid if one of them accepts it.

    Raises:
        KeyError: a key is not in the recipe; names the closest existing key.
        ValueError: the recipe rejects a candidate value; echoes key, value and the reason.
    """
    known = _dotted_keys(recipe)
    variants = [recipe]
    for param in ordered(space):
        if param.type == "categorical" and ("." not in param.key or param.key.endswith(".name")):
            for sampled in param.candidates():
                try:
                    variants.append(apply_value(recipe, param, sampled))
                except (KeyError, ValueError, TypeError):
                    pass
    for param in space.values():
        hosts = [v for v in variants if accepts(v, param)]
        if not hosts:
            try:
                apply_value(recipe, param, param.candidates()[0])
            except KeyError as err:
                hint = closest(param.key, known)
                raise ChoiceError(
                    f"search space key {param.key!r} is not a key of recipe "
                    f"{recipe.get('name', '?')!r} ({_reason(err)}); top-level sections: "
                    f"{', '.join(map(str, recipe))}"
                    + (f". Did you mean {hint!r}?" if hint else "")
                ) from None
        for sampled in param.candidates():
            errors = []
            for variant in hosts:
                try:
                    apply_value(variant, param, sampled)
                    break
                except (KeyError, ValueError, TypeError) as err:
                    errors.append(err)
            else:
                raise ValueError(
                    f"search space {param.key!r}: the recipe rejects the value "
                    f"{param.value_of(sampled)!r}: {_reason(errors[0])}"
                ) from None


def _reason(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def default_space_path(recipe_path: str | os.PathLike[str]) -> Path:
    """The search space shipped beside a recipe: ``dir/x.yaml`` -> ``dir/x.space.yaml``."""
    path = Path(recipe_path)
    name = path.name
    for suffix in (".yaml", ".yml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.space.yaml")
