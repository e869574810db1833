"""What a finished study leaves in ``runs/<study>/``: best.yaml, trials.csv and PNG plots.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written result; plots come from ``optuna.visualization.matplotlib``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fasttricks._io import atomic_write_csv, save_figure
from fasttricks.tune._logs import quiet_experimental
from fasttricks.tune._space import Param, apply_params

__all__ = ["best_recipe", "write_results", "PLOTS"]

_log = logging.getLogger(__name__)

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "intermediate_values.png": "plot_intermediate_values",
}


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_recipe(study: Any, recipe: Mapping[str, Any], space: Mapping[str, Param]) -> Any:
    """``recipe`` with the best trial's sampled values of ``space`` set, as the trial had them.

    Raises:
        ValueError: the study has no completed trial yet.
    """
    if not _finished(study):
        raise ValueError(f"study {study.study_name!r} has no completed trial yet")
    params = study.best_trial.params
    return apply_params(recipe, space, lambda param: params[param.name])


def _to_plain(value: Any) -> Any:
    """Recipe values as YAML-safe Python types (tuples to lists, numpy scalars to numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _save_plot(study: Any, function_name: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from optuna.visualization import matplotlib as optuna_mpl

    plot = getattr(optuna_mpl, function_name)
    try:
        with quiet_experimental():
            ax = plot(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        _log.warning("no %s: %s", path.name, err)
        return None
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(8, 5)
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def write_results(study: Any, recipe: Mapping[str, Any], out_dir: str | os.PathLike[str],
                  space: Mapping[str, Param]) -> dict[str, Path]:
    """Write ``best.yaml``, ``trials.csv`` and the PNG plots of ``study`` into ``out_dir``.

    ``best.yaml`` is the full recipe with the best values, runnable with
    ``python -m fasttricks.train out_dir/best.yaml``. A plot Optuna cannot draw yet (parameter
    importances need two completed trials) is skipped with a logged warning.

    Returns:
        ``{"best": path, "trials": path, "<plot>.png": path, ...}`` for the files written.
    """
    from fasttricks.recipes import recipe_to_dict, save_recipe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    df = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params",
                                       "user_attrs", "datetime_start", "datetime_complete"))
    written["trials"] = atomic_write_csv(df, out / "trials.csv")
    if _finished(study):
        best = study.best_trial
        header = (
            f"# best trial {best.number} of study {study.study_name!r}: "
            f"{study.user_attrs.get('metric', 'value')} = {best.value:.6g}\n"
            f"# train it with: python -m fasttricks.train {out / 'best.yaml'}\n"
        )
        best_values = _to_plain(recipe_to_dict(best_recipe(study, recipe, space)))
        written["best"] = save_recipe(best_values, out / "best.yaml", header=header)
    else:
        _log.warning("study %r has no completed trial: no best.yaml", study.study_name)
    for filename, function_name in PLOTS.items():
        path = _save_plot(study, function_name, out / filename)
        if path is not None:
            written[filename] = path
    return written
