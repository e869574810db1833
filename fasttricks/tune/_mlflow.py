"""Log tuning trials and run folders to MLflow (optional: ``pip install mlflow-skinny``).

Two entry points: :class:`MLflowLogger`, an Optuna study callback that logs one MLflow run per
finished trial (its sampled parameters, the monitored metric per epoch, the final value and the
trial's recipe as an artifact), and :func:`log_run_folder`, which logs a run folder written by
:func:`fasttricks.runs.write_run` (every recipe value as a parameter, every ``metrics.csv``
column per epoch, the validation and test scores, and the folder's files as artifacts); the
train command's ``--mlflow`` and the tuner's retrained trials use it.

MLflow 3 refuses a plain file store (``file:./mlruns``) unless the environment variable
``MLFLOW_ALLOW_FILE_STORE=true`` is set; :func:`check_tracking_uri` says so before any
training starts.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["MLflowLogger", "check_tracking_uri", "flat_params", "import_mlflow",
           "log_run_folder"]

_MAX_PARAM_CHARS = 500


def import_mlflow() -> Any:
    """Import ``mlflow`` or raise ImportError saying how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise ImportError(
            "--mlflow needs the mlflow package, which is not installed: "
            "pip install 'fasttricks[mlflow]' (or pip install mlflow-skinny)"
        ) from err
    return mlflow


def check_tracking_uri(uri: str) -> None:
    """Open the MLflow store at ``uri`` once, so a store MLflow refuses fails before training.

    Raises:
        ImportError: mlflow is not installed.
        ValueError: MLflow cannot open the store (the message is MLflow's, in one line).
    """
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    try:
        mlflow.tracking.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as err:
        message = " ".join(str(err).split())
        raise ValueError(f"MLflow cannot use tracking URI {uri!r}: {message}") from None


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a.b": "value"}`` for every leaf of a nested mapping (MLflow parameters are strings).

    Example:
        >>> flat_params({"optimizer": {"name": "adamw", "lr": 0.003}, "seed": 0})
        {'optimizer.name': 'adamw', 'optimizer.lr': '0.003', 'seed': '0'}
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = str(value)[:_MAX_PARAM_CHARS]
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _client_run(mlflow: Any, uri: str, experiment: str, run_name: str) -> Any:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name)


def log_run_folder(tracking_uri: str, experiment: str, run_dir: str | os.PathLike[str],
                   run_name: str | None = None) -> str:
    """Log a finished run folder to MLflow as one run; returns the MLflow run id.

    Parameters: every recipe value under its dotted key. Metrics: each numeric column of
    ``metrics.csv`` per epoch (step = epoch number, from 1), and ``final_valid_<name>`` /
    ``test_<name>`` from ``summary.json``. Artifacts: every file of the folder.

    Args:
        tracking_uri: where MLflow stores runs, e.g. ``file:./mlruns`` or ``http://host:5000``.
        experiment: the MLflow experiment name (created when missing).
        run_dir: a folder written by :func:`fasttricks.runs.write_run`.
        run_name: the MLflow run name (default: the folder's name).
    """
    from fasttricks.recipes import recipe_to_dict
    from fasttricks.runs import read_run

    mlflow = import_mlflow()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    history = run["history"]
    with _client_run(mlflow, tracking_uri, experiment, run_name or run_dir.name) as active:
        mlflow.log_params(flat_params(recipe_to_dict(run["recipe"])))
        epochs = history["epoch"] if "epoch" in history else range(len(history))
        for column in history.columns:
            if column in ("epoch", "timestamp"):
                continue
            for epoch, value in zip(epochs, history[column]):
                value = _finite(value)
                if value is not None:
                    mlflow.log_metric(column, value, step=int(epoch) + 1)
        for split, prefix in (("valid", "final_valid_"), ("test", "test_")):
            for name, value in (run["summary"].get(split) or {}).items():
                value = _finite(value)
                if value is not None:
                    mlflow.log_metric(f"{prefix}{name}", value)
        mlflow.log_artifacts(str(run_dir))
        return active.info.run_id


class MLflowLogger:
    """An Optuna study callback: one MLflow run per finished trial.

    The experiment is named after the study; each run holds the trial's sampled parameters,
    its state, the epochs it trained, the per-epoch metric (as steps 1, 2, ...), the final
    value, the last epoch's ``valid_loss`` and, with ``recipe_for``, the trial's recipe as the
    artifact ``recipe.yaml``.

    Args:
        tracking_uri: where MLflow stores runs, e.g. ``file:./mlruns`` or ``http://host:5000``.
        study_name: the MLflow experiment name.
        metric: the metric's name in MLflow.
        recipe_for: ``trial -> recipe`` (the trial's full recipe), or None for no artifact.
    """

    def __init__(self, tracking_uri: str, study_name: str, metric: str,
                 recipe_for: Callable[[Any], Any] | None = None) -> None:
        self._mlflow = import_mlflow()
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.metric = metric
        self.recipe_for = recipe_for

    def __call__(self, study: Any, trial: Any) -> None:
        mlflow = self._mlflow
        with _client_run(mlflow, self.tracking_uri, self.study_name, f"trial-{trial.number}"):
            mlflow.log_params(trial.params)
            mlflow.set_tags({"optuna.state": trial.state.name,
                             "optuna.trial_number": str(trial.number)})
            for step, value in sorted(trial.intermediate_values.items()):
                if _finite(value) is not None:
                    mlflow.log_metric(self.metric, value, step=step)
            if trial.value is not None:
                mlflow.log_metric(f"final_{self.metric}", trial.value)
            mlflow.log_metric("epochs", float(trial.user_attrs.get("epochs", 0)))
            loss = _finite(trial.user_attrs.get("valid_loss"))
            if loss is not None:
                mlflow.log_metric("final_valid_loss", loss)
            if self.recipe_for is not None and trial.state.name in ("COMPLETE", "PRUNED"):
                self._log_recipe(trial)

    def _log_recipe(self, trial: Any) -> None:
        from fasttricks.recipes import save_recipe

        with tempfile.TemporaryDirectory(prefix="fasttricks-mlflow-") as tmp:
            path = save_recipe(self.recipe_for(trial), Path(tmp) / "recipe.yaml")
            self._mlflow.log_artifact(str(path))
