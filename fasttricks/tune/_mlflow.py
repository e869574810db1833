"""Log each finished trial to MLflow (optional extra: ``pip install 'fasttricks[mlflow]'``)."""

from __future__ import annotations

from typing import Any

__all__ = ["MLflowLogger", "import_mlflow"]


def import_mlflow() -> Any:
    """Import ``mlflow`` or raise ImportError saying how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise ImportError(
            "--mlflow needs the mlflow package, which is not installed: "
            "pip install 'fasttricks[mlflow]' (or pip install mlflow)"
        ) from err
    return mlflow


class MLflowLogger:
    """An Optuna study callback: one MLflow run per finished trial.

    The experiment is named after the study; each run holds the trial's sampled parameters,
    its state, the epochs it trained, the per-epoch metric (as steps) and the final value.

    Args:
        tracking_uri: where MLflow stores runs, e.g. ``file:./mlruns`` or ``http://host:5000``.
        study_name: the MLflow experiment name.
        metric: the metric's name in MLflow.
    """

    def __init__(self, tracking_uri: str, study_name: str, metric: str) -> None:
        self._mlflow = import_mlflow()
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.metric = metric

    def __call__(self, study: Any, trial: Any) -> None:
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.study_name)
        with mlflow.start_run(run_name=f"trial-{trial.number}"):
            mlflow.log_params(trial.params)
            mlflow.set_tags({"optuna.state": trial.state.name,
                             "optuna.trial_number": str(trial.number)})
            for step, value in sorted(trial.intermediate_values.items()):
                mlflow.log_metric(self.metric, value, step=step)
            if trial.value is not None:
                mlflow.log_metric(f"final_{self.metric}", trial.value)
            mlflow.log_metric("epochs", float(trial.user_attrs.get("epochs", 0)))
