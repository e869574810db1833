"""Ensembles: averaged predictions, k-fold training with out-of-fold predictions, seed and
snapshot ensembles.

The averaging maths are pure functions (:func:`average_predictions`); the training functions
(:func:`kfold_fit`, :func:`seed_ensemble`, :func:`snapshot_ensemble`) go through the recipe API
(:func:`fasttricks.recipes.build_learner` / :func:`fasttricks.recipes.fit_learner`), so a fold
is trained exactly like ``python -m fasttricks.train`` would train the same recipe.

Modules, one concept each:

- ``_average``: combining predictions (mean, geometric, rank); numpy and torch only.
- ``_predict``, ``_score``: loading saved members, predicting with them, scoring predictions
  with a recipe's loss and metrics.
- ``_store``, ``_members``: finished members on disk (read back with ``weights_only=True``) and
  the one "keep the finished member or train and save it" loop all ensembles share.
- ``_results``: the fields every member result and ensemble result share.
- ``_kfold``, ``_ensembles``: k-fold cross-validation; seed and snapshot ensembles.
- ``_parallel``, ``_worker``: members claimed once by worker processes from a shared study
  (:class:`~fasttricks.ensemble._parallel.Workers`); ``_seed_runs``: the train command's
  ``--seeds`` run folders as such members (:func:`run_seeds_in_workers`).
- ``_report``: progress lines, score charts and prediction tables.
"""

from __future__ import annotations

from fasttricks.ensemble._average import AVERAGING_METHODS, average_predictions
from fasttricks.ensemble._ensembles import (
    EnsembleResult,
    MemberResult,
    seed_ensemble,
    snapshot_ensemble,
)
from fasttricks.ensemble._kfold import FoldResult, KFoldResult, kfold_fit
from fasttricks.ensemble._predict import ACTIVATIONS, load_ensemble_member, predict_ensemble
from fasttricks.ensemble._score import score_predictions
from fasttricks.ensemble._seed_runs import run_seeds_in_workers

__all__ = [
    "ACTIVATIONS",
    "AVERAGING_METHODS",
    "EnsembleResult",
    "FoldResult",
    "KFoldResult",
    "MemberResult",
    "average_predictions",
    "kfold_fit",
    "load_ensemble_member",
    "predict_ensemble",
    "run_seeds_in_workers",
    "score_predictions",
    "seed_ensemble",
    "snapshot_ensemble",
]
