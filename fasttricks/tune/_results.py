"""What a finished study leaves in ``runs/<study>/``: best.yaml, trials.csv and PNG plots.

The best trial is the best value of the metric; trials that tie on it (validation accuracy
saturates at 1.0 on small data) are ranked by their last epoch's validation loss, then by
trial number (:func:`ranked_trials`). ``trials.csv`` has that ``rank``. When trials trained
on a subset of the data and the best ones were retrained on all of it, ``retrained.csv``
holds both results and the summary gives their rank correlation.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written result; plots come from ``optuna.visualization.matplotlib``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasttricks._io import atomic_write_csv, save_figure
from fasttricks.tune._logs import quiet_experimental
from fasttricks.tune._space import Param, apply_params

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PLOTS", "RETRAINED_ATTR", "best_recipe", "best_trial", "ranked_trials",
           "retrained_table", "subset_correlation", "tie_note", "trial_recipe",
           "write_results"]

RETRAINED_ATTR = "retrained"  # study user attribute: {trial number: {"subset", "full"}}
TIE_ATTR = "valid_loss"
MIN_CORRELATION_POINTS = 3

_log = logging.getLogger(__name__)

PLOTS = {
    "optimization_history.png": "plot_optimization_history",
    "param_importances.png": "plot_param_importances",
    "intermediate_values.png": "plot_intermediate_values",
}


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _tie_value(trial: Any) -> float:
    value = trial.user_attrs.get(TIE_ATTR)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.inf
    return float(value)


def ranked_trials(study: Any, direction: str | None = None) -> list[Any]:
    """Completed trials, best first: by value in the study's direction, ties by the last
    epoch's ``valid_loss`` (lower first; trials without one last), then by trial number.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(direction="maximize")
        >>> for acc, loss in [(1.0, 0.3), (0.9, 0.1), (1.0, 0.2)]:
        ...     t = study.ask()
        ...     t.set_user_attr("valid_loss", loss)
        ...     _ = study.tell(t, acc)
        >>> [t.number for t in ranked_trials(study)]
        [2, 0, 1]
    """
    if direction is None:
        direction = study.direction.name.lower()
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(_finished(study), key=lambda t: (sign * t.value, _tie_value(t), t.number))


def best_trial(study: Any) -> Any:
    """The first of :func:`ranked_trials` (Optuna's ``best_trial`` ignores ties).

    Raises:
        ValueError: the study has no completed trial yet.
    """
    ranked = ranked_trials(study)
    if not ranked:
        raise ValueError(f"study {study.study_name!r} has no completed trial yet")
    return ranked[0]


def tie_note(study: Any) -> str:
    """How the best trial was chosen among trials with the same value, or "" without a tie."""
    ranked = ranked_trials(study)
    if len(ranked) < 2 or ranked[0].value != ranked[1].value:
        return ""
    tied = sum(1 for t in ranked if t.value == ranked[0].value)
    loss = _tie_value(ranked[0])
    return (f"{tied} trials tie at {ranked[0].value:.6g}; the lowest valid_loss wins "
            f"({loss:.6g})" if math.isfinite(loss) else
            f"{tied} trials tie at {ranked[0].value:.6g}; the first one wins")


def trial_recipe(trial: Any, recipe: Mapping[str, Any], space: Mapping[str, Param]) -> Any:
    """``recipe`` with ``trial``'s sampled values of ``space`` set, as the trial had them."""
    params = trial.params
    return apply_params(recipe, space, lambda param: params[param.name])


def best_recipe(study: Any, recipe: Mapping[str, Any], space: Mapping[str, Param]) -> Any:
    """``recipe`` with the best trial's sampled values of ``space`` set (:func:`best_trial`).

    Raises:
        ValueError: the study has no completed trial yet.
    """
    return trial_recipe(best_trial(study), recipe, space)


def retrained_table(study: Any) -> pd.DataFrame:
    """The retrained trials: ``trial``, ``subset`` (the trial's value on the data subset),
    ``full`` (the same recipe retrained on all the training data), best trial first."""
    import pandas as pd

    records = study.user_attrs.get(RETRAINED_ATTR) or {}
    rows = [{"trial": int(n), "subset": r.get("subset"), "full": r.get("full"),
             "fraction": r.get("fraction")} for n, r in records.items()]
    table = pd.DataFrame(rows, columns=["trial", "subset", "full", "fraction"])
    order = {t.number: i for i, t in enumerate(ranked_trials(study))}
    table["order"] = table["trial"].map(lambda n: order.get(n, len(order)))
    return table.sort_values("order").drop(columns="order").reset_index(drop=True)


def subset_correlation(table: pd.DataFrame) -> tuple[float | None, str]:
    """Spearman rank correlation of the subset and full results, and a sentence saying it.

    It needs at least three trials measured both ways; with fewer the sentence says so.
    A correlation near 1 means gains found on the subset carry over to the full data.
    """
    both = table.dropna(subset=["subset", "full"])
    n = len(both)
    if n < MIN_CORRELATION_POINTS:
        return None, (f"subset vs full correlation needs at least {MIN_CORRELATION_POINTS} "
                      f"retrained trials, have {n} (retrain more with --retrain-top 3)")
    rho = both["subset"].rank().corr(both["full"].rank())
    if not math.isfinite(rho):
        return None, f"subset vs full correlation undefined over {n} trials (constant results)"
    return float(rho), f"subset vs full Spearman correlation over {n} trials: {rho:.3f}"


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

    ``best.yaml`` is the full recipe with the best values (:func:`best_trial`, ties broken on
    validation loss), runnable with ``python -m fasttricks.train out_dir/best.yaml``;
    ``trials.csv`` ranks the completed trials (``rank`` 1 is the best). With retrained trials
    ``retrained.csv`` holds their subset and full results. A plot Optuna cannot draw yet (parameter
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
    rank = {t.number: i + 1 for i, t in enumerate(ranked_trials(study))}
    if "number" in df:
        df.insert(1, "rank", df["number"].map(rank).astype("Int64"))
    written["trials"] = atomic_write_csv(df, out / "trials.csv")
    retrained = retrained_table(study)
    if len(retrained):
        written["retrained"] = atomic_write_csv(retrained, out / "retrained.csv")
    if _finished(study):
        best = best_trial(study)
        note = tie_note(study)
        header = (
            f"# best trial {best.number} of study {study.study_name!r}: "
            f"{study.user_attrs.get('metric', 'value')} = {best.value:.6g}\n"
            + (f"# {note}\n" if note else "")
            + f"# train it with: python -m fasttricks.train {out / 'best.yaml'}\n"
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
