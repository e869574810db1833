"""Hyperparameter tuning of fasttricks recipes with Optuna: ``python -m fasttricks.tune``.

A trial is a recipe with sampled values (``recipes/<name>.space.yaml`` says which and from
where), trained with a pruning callback that reports the validation metric every epoch.
Pruners use epochs as their resource (Hyperband by default); studies live in a journal file
under ``runs/<study>/`` or in PostgreSQL, resume when re-run, and can be shared by worker
processes, one per GPU.

Example::

    from fasttricks.tune import tune
    study = tune("recipes/digits.yaml", pruner="hyperband", n_trials=20)
    print(study.best_params)
"""

from __future__ import annotations

from typing import Any

from fasttricks.tune._pruners import PRUNERS, describe_pruner, make_pruner
from fasttricks.tune._results import best_recipe, write_results
from fasttricks.tune._space import Param, load_space
from fasttricks.tune._storage import make_storage
from fasttricks.tune._study import SAMPLERS, make_sampler, prepare_study, tune

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Param",
    "PruningCallback",
    "best_recipe",
    "describe_pruner",
    "load_space",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "prepare_study",
    "tune",
    "write_results",
]


def __getattr__(name: str) -> Any:
    # PruningCallback subclasses a fastai Callback: import fastai only when it is asked for,
    # so storage-only processes (and `import fasttricks.tune`) start fast.
    if name == "PruningCallback":
        from fasttricks.tune._callback import PruningCallback

        return PruningCallback
    raise AttributeError(f"module 'fasttricks.tune' has no attribute {name!r}")
