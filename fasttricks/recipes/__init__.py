"""Recipes: a YAML file -> a validated, read-only recipe -> fastai Learner -> fit, evaluate.

Three layers, each importing only the one before it:

- the schema (``_schema``): :func:`load_recipe` validates once and returns a :class:`Recipe`;
  :func:`set_in_recipe`, :func:`recipe_to_dict`, :func:`save_recipe`, :func:`primary_metric`.
  Importable without fastai.
- the built-in recipes (``_builtin``), shipped with the package: :func:`list_recipes`,
  :func:`resolve_recipe` (a file, else a built-in name such as ``"digits"``),
  :func:`builtin_recipe_path`, :func:`recipe_description`; ``python -m fasttricks.recipes list``.
- the builders (``_build``): :func:`build_dataloaders`, :func:`build_learner` (the one place a
  Learner is made from a recipe).
- running (``_run``): :func:`fit_learner`, :func:`evaluate`, :func:`run_recipe`
  (:class:`RunResult`) and the one seed loop, :func:`seed_runs` / :func:`run_seeds`.

The builders and runners are imported on first use, so ``import fasttricks.recipes`` stays
light. Metrics and their directions come from :mod:`fasttricks.metrics`; run folders are
written by :mod:`fasttricks.runs`.
"""

from __future__ import annotations

from fasttricks._lazy import lazy_names
from fasttricks.recipes._builtin import (
    builtin_recipe_path,
    list_recipes,
    recipe_description,
    resolve_recipe,
)
from fasttricks.recipes._schema import (
    FrozenDict,
    FrozenList,
    Recipe,
    RecipeError,
    UnknownOptionError,
    check_metric_fits,
    list_metrics,
    load_recipe,
    primary_metric,
    recipe_to_dict,
    save_recipe,
    set_in_recipe,
    yaml_problem,
)

_LAZY = {
    "build_dataloaders": "_build",
    "build_learner": "_build",
    "learning_rate": "_build",
    "set_learning_rate": "_build",
    "RunResult": "_run",
    "evaluate": "_run",
    "fit_learner": "_run",
    "run_recipe": "_run",
    "run_seeds": "_run",
    "seed_range": "_run",
    "seed_runs": "_run",
}

__all__ = [
    "FrozenDict",
    "FrozenList",
    "Recipe",
    "RecipeError",
    "UnknownOptionError",
    "builtin_recipe_path",
    "check_metric_fits",
    "list_metrics",
    "list_recipes",
    "load_recipe",
    "primary_metric",
    "recipe_description",
    "recipe_to_dict",
    "resolve_recipe",
    "save_recipe",
    "set_in_recipe",
    "yaml_problem",
    *sorted(_LAZY),
]


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)
