"""Hyperparameter tuning of fasttricks recipes with Optuna: ``python -m fasttricks.tune``.

A trial is a recipe with sampled values (``<name>.space.yaml`` beside the recipe says which
and from where), trained with a pruning callback that reports the validation metric every
epoch.
Pruners use epochs as their resource (Hyperband by default); studies live in a journal file
under ``runs/<study>/`` or in PostgreSQL, resume when re-run, and can be shared by worker
processes, one per GPU. How a run goes is one :class:`TuneOptions` object.

Example::

    from fasttricks.tune import TuneOptions, tune
    study = tune("digits", options=TuneOptions(pruner="hyperband", n_trials=20))
    print(study.best_params)
"""

from __future__ import annotations

from fasttricks._lazy import lazy_names
from fasttricks.tune._options import SAMPLERS, TuneOptions
from fasttricks.tune._pruners import (
    PRUNER_TYPES,
    PRUNERS,
    PrunerPlan,
    describe_pruner,
    make_pruner,
    plan_pruner,
)
from fasttricks.tune._results import (
    best_recipe,
    best_trial,
    ranked_trials,
    subset_correlation,
    write_results,
)
from fasttricks.tune._space import Param, grid_points, load_space
from fasttricks.tune._storage import make_storage
from fasttricks.tune._study import (
    PreparedStudy,
    TooManyFailures,
    TrialDiverged,
    prepare_study,
    run_study,
    tune,
)

__all__ = [
    "PRUNERS",
    "PRUNER_TYPES",
    "SAMPLERS",
    "GridPointSampler",
    "Param",
    "PreparedStudy",
    "PrunerPlan",
    "PruningCallback",
    "SeededSampler",
    "TooManyFailures",
    "TrialDiverged",
    "TuneOptions",
    "best_recipe",
    "best_trial",
    "describe_pruner",
    "grid_points",
    "load_space",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "plan_pruner",
    "prepare_study",
    "ranked_trials",
    "run_study",
    "sampler_seed",
    "subset_correlation",
    "tune",
    "write_results",
]

_LAZY = {
    # fastai and optuna are imported only when these are asked for, so storage-only processes
    # (and `import fasttricks.tune`) start fast.
    "PruningCallback": "_callback",
    "GridPointSampler": "_sampler",
    "SeededSampler": "_sampler",
    "make_sampler": "_sampler",
    "sampler_seed": "_sampler",
}


# no __dir__: dir(fasttricks.tune) lists what the module holds
__getattr__ = lazy_names(__name__, globals(), _LAZY)[0]
