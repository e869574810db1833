"""Run a study: a trial is the recipe with sampled values, trained with a pruning callback.

The study is resumable: it is created with ``load_if_exists``, and trials already finished
(COMPLETE or PRUNED) count toward ``n_trials``, so re-running the same command continues to
exactly ``n_trials``. Several processes may run the same study on one storage; each starts a
new trial only while ``finished + running < n_trials``. Failed trials are capped
(``max_failures``), and every trial is sampled with its own seed (:func:`sampler_seed`), so
restarts and parallel workers explore new points.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from fasttricks._validate import check_choice, check_range
from fasttricks.tune._logs import optuna_log_level, quiet_experimental
from fasttricks.tune._options import (
    DEFAULT_N_TRIALS,
    DIRECTIONS,
    OPTIONS_FILE,
    SAMPLERS,
    TuneOptions,
    check_study_name,
    default_threads,
)
from fasttricks.tune._progress import TrialProgress
from fasttricks.tune._pruners import PrunerPlan, plan_pruner, recipe_epochs
from fasttricks.tune._space import (
    Param,
    TrialSampler,
    check_space_keys,
    default_space_path,
    grid_points,
    load_space,
    space_spec,
)
from fasttricks.tune._storage import make_storage, storage_kind
from fasttricks.tune._workers import (
    WORKER_ATTR,
    LastWorker,
    fail_orphaned_trials,
    heartbeat_enabled,
    live_local_trials,
    worker_id,
)

__all__ = [
    "DIRECTIONS",
    "PreparedStudy",
    "SAMPLERS",
    "TooManyFailures",
    "TrialDiverged",
    "count_trials",
    "failure_summary",
    "prepare_study",
    "resolve_metric",
    "retrain_best",
    "run_study",
    "run_trials",
    "tune",
]

_log = logging.getLogger(__name__)

EPOCHS_ATTR = "epochs"
ERROR_ATTR = "error"
TIE_ATTR = "valid_loss"  # the last epoch's validation loss: breaks ties of the metric
SURPLUS_ATTR = "surplus"


class SurplusTrialError(RuntimeError):
    """A trial another worker made unnecessary: the study already has ``n_trials`` in flight."""


class TrialDiverged(ValueError):
    """A trial whose monitored metric ended NaN or infinite."""


class TooManyFailures(RuntimeError):
    """The run stopped because ``max_failures`` trials failed; the message names the most
    common failure."""


# ---------------------------------------------------------------------------- inputs


def resolve_metric(recipe: Mapping[str, Any], metric: str | None = None,
                   direction: str | None = None) -> tuple[str, str]:
    """The monitored metric and its direction.

    Default: ``fasttricks.recipes.primary_metric(recipe)``. A ``metric`` must be a column the
    recorder logs every epoch: ``train_loss``, ``valid_loss`` or one of the recipe's metrics.
    Without ``direction`` it comes from :func:`fasttricks.metrics.metric_direction` (losses
    and errors are minimized).

    Raises:
        KeyError: a metric the recipe does not record (lists those it does).
    """
    from fasttricks.metrics import metric_direction

    if direction is not None:
        check_choice("direction", direction, DIRECTIONS)
    if metric is None:
        from fasttricks.recipes import primary_metric

        metric = primary_metric(recipe)[0]
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a recorder column name, got {metric!r}")
    recorded = ["train_loss", "valid_loss", *(recipe.get("metrics") or [])]
    check_choice("metric", metric, recorded)
    return metric, direction or metric_direction(metric)


def _load_space(space: Any, recipe_source: Any) -> dict[str, Param]:
    if space is None:
        if isinstance(recipe_source, Mapping):
            raise ValueError("give a search space: a recipe mapping has no shipped space beside it")
        from fasttricks.recipes import resolve_recipe

        path = default_space_path(resolve_recipe(recipe_source))  # a built-in name too
        if not path.is_file():
            raise FileNotFoundError(
                f"no search space given and none beside the recipe: {str(path)!r} not found"
            )
        space = path
    if isinstance(space, Mapping) and space and all(isinstance(v, Param) for v in space.values()):
        return dict(space)
    return load_space(space)


def count_trials(study: Any) -> dict[str, int]:
    """Trials of ``study`` by state: finished (COMPLETE + PRUNED), running, waiting, failed."""
    from optuna.trial import TrialState

    counts = {"finished": 0, "running": 0, "waiting": 0, "failed": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            counts["finished"] += 1
        elif trial.state == TrialState.RUNNING:
            counts["running"] += 1
        elif trial.state == TrialState.WAITING:
            counts["waiting"] += 1
        else:
            counts["failed"] += 1
    return counts


def failure_summary(study: Any, first_trial: int = 0) -> tuple[int, str | None, int]:
    """``(failed trials, most common error, its count)`` among trials ``>= first_trial``.

    Counted are trials that failed with an error of their own (recorded in the ``error`` user
    attribute): not those another worker made unnecessary, not those interrupted or orphaned.
    """
    from optuna.trial import TrialState

    errors = [
        str(t.user_attrs[ERROR_ATTR])
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.number >= first_trial and ERROR_ATTR in t.user_attrs
    ]
    if not errors:
        return 0, None, 0
    # the same failure with other numbers in it (an lr, a batch index) counts as one
    kinds = [re.sub(r"\d+(\.\d+)?([eE][-+]?\d+)?", "#", e) for e in errors]
    kind, count = collections.Counter(kinds).most_common(1)[0]
    return len(errors), errors[kinds.index(kind)], count


def _check_failures(study: Any, cap: int, first_trial: int) -> None:
    failed, message, count = failure_summary(study, first_trial)
    if failed >= cap:
        raise TooManyFailures(
            f"stopped after {failed} failed trials (--max-failures {cap}); most common failure "
            f"({count} of {failed}): {message}"
        )


# ---------------------------------------------------------------------------- the objective


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    check_range("threads", n, low=1)
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_objective(recipe: Mapping[str, Any], space: Mapping[str, Param], metric: str) -> Any:
    """The Optuna objective: sample ``space`` into ``recipe``, build, fit, return ``metric``.

    A trial's recipe is made in one ``load_recipe(recipe, overrides)`` call
    (:class:`~fasttricks.tune._space.TrialSampler`). A final value that is NaN or infinite
    raises :class:`TrialDiverged` (the trial fails and counts toward ``max_failures``). The
    last epoch's ``valid_loss`` is kept as the trial's user attribute ``valid_loss``: trials
    that tie on the metric (validation accuracy saturates at 1.0 on small data) are ranked by
    it (:func:`fasttricks.tune.ranked_trials`).
    """
    from fasttricks._io import quiet_fit
    from fasttricks.recipes import build_learner, fit_learner
    from fasttricks.tune._callback import PruningCallback

    sampler = TrialSampler(recipe, space)

    def objective(trial: Any) -> float:
        import optuna

        trial_recipe = sampler.recipe_for(lambda param: param.suggest(trial))
        pruning = PruningCallback(trial, monitor=metric, max_steps=recipe_epochs(trial_recipe))
        learn = build_learner(trial_recipe)
        trial.set_user_attr("device", str(next(learn.model.parameters()).device))
        try:
            with quiet_fit(learn):
                fit_learner(learn, trial_recipe, cbs=[pruning])
        finally:
            trial.set_user_attr(EPOCHS_ATTR, pruning.step)
        _record_valid_loss(trial, learn)
        pruning.raise_if_pruned()
        if not pruning.values:
            raise optuna.TrialPruned("the fit ended before the first epoch")
        value = pruning.values[-1]
        if not math.isfinite(value):
            raise TrialDiverged(f"{metric} is {value} after epoch {pruning.step}")
        return value

    return objective


def _record_valid_loss(trial: Any, learn: Any) -> None:
    values = learn.recorder.values
    if values and len(values[-1]) > 1 and values[-1][1] is not None:
        loss = float(values[-1][1])
        trial.set_user_attr(TIE_ATTR, loss if math.isfinite(loss) else None)


def _check_not_surplus(trial: Any, n_trials: int) -> None:
    from optuna.trial import TrialState

    study = trial.study
    trials = study.get_trials(deepcopy=False)
    me = next((t for t in trials if t.number == trial.number), None)
    if me is not None and "failed_trial" in me.system_attrs:
        return  # a retry replaces a failed trial: always run it
    busy = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    ahead = sum(1 for t in trials if t.number < trial.number and t.state in busy)
    if ahead >= n_trials:
        trial.set_user_attr(SURPLUS_ATTR, True)
        raise SurplusTrialError(
            f"not needed: {ahead} trials before it are finished or running (n_trials={n_trials})"
        )


def _guarded(objective: Any, n_trials: int) -> Any:
    """``objective`` that records who runs it, skips surplus trials, and records its error."""

    def run(trial: Any) -> Any:
        import optuna

        trial.set_user_attr(WORKER_ATTR, worker_id())
        _check_not_surplus(trial, n_trials)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr(ERROR_ATTR, f"{type(err).__name__}: {err}"[:500])
            raise

    return run


# ---------------------------------------------------------------------------- the study


class PreparedStudy(NamedTuple):
    """A created (or loaded) study with everything a run needs, checked once."""

    study: Any
    recipe: Any
    space: dict[str, Param]
    trial_recipe: Any
    metric: str
    options: TuneOptions
    pruner: PrunerPlan
    out_dir: Path
    first_trial: int


def _study_name(recipe: Mapping[str, Any], options: TuneOptions) -> str:
    return check_study_name(options.study_name or f"{recipe.get('name', 'recipe')}-"
                                                  f"{options.pruner}")


def _open_study(name: str, recipe: Mapping[str, Any], metric: str, direction: str,
                options: TuneOptions, pruner: PrunerPlan,
                grid: list[dict[str, Any]] | None = None) -> Any:
    import optuna

    from fasttricks.tune._sampler import GridPointSampler, SeededSampler, sampler_seed

    workers = 1 if options.worker is not None else options.workers
    store = make_storage(options.storage, name, workers=workers, heartbeat=options.heartbeat,
                         max_retry=options.max_retry, root=options.root)
    with quiet_experimental():
        study = optuna.create_study(study_name=name, storage=store, pruner=pruner.build(),
                                    direction=direction, load_if_exists=True)
    finished = count_trials(study)["finished"]
    seed = None if options.seed is None else sampler_seed(
        options.seed, name, options.worker or 0, finished)
    if grid is not None:
        study.sampler = GridPointSampler(grid, seed)
    else:
        study.sampler = SeededSampler(options.sampler, seed, options.n_trials)
    return study


def _check_same_study(study: Any, metric: str, direction: str,
                      space: Mapping[str, Param]) -> None:
    name = study.study_name
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {name!r} already exists and {study.direction.name.lower()}s; asked to "
            f"{direction} {metric!r}. Use another --study-name."
        )
    previous = study.user_attrs.get("metric")
    if previous is not None and previous != metric:
        raise ValueError(
            f"study {name!r} already tunes metric {previous!r}, not {metric!r}. Use another "
            "--study-name."
        )
    if previous is None:
        study.set_user_attr("metric", metric)
        study.set_user_attr("space", space_spec(space))


def _write_study_folder(out: Path, recipe: Any, space: Mapping[str, Param],
                        options: TuneOptions) -> TuneOptions:
    """Write ``recipe.yaml``, ``space.yaml`` and ``options.json`` once into the study folder;
    returns the options pointing at those files (what workers and ``--report`` read)."""
    import yaml

    from fasttricks._io import atomic_write_text
    from fasttricks.recipes import save_recipe

    out.mkdir(parents=True, exist_ok=True)
    recipe_path = save_recipe(recipe, out / "recipe.yaml")
    space_path = atomic_write_text(out / "space.yaml",
                                   yaml.safe_dump(space_spec(space), sort_keys=False))
    saved = options.replace(recipe_path=str(recipe_path), space_path=str(space_path))
    saved.save(out / OPTIONS_FILE)
    return saved


def prepare_study(
    recipe: str | os.PathLike[str] | Mapping[str, Any],
    space: Any = None,
    options: TuneOptions | None = None,
    **changes: Any,
) -> PreparedStudy:
    """Validate every input and create (or load) the study; no trial runs here.

    ``options`` (default ``TuneOptions()``) with ``changes`` applied say how; see
    :class:`~fasttricks.tune.TuneOptions`. A launcher (not a worker) also writes the resolved
    recipe, the space and the options into the study folder.

    Raises:
        KeyError: unknown pruner, sampler, direction or metric, or a space key not in the
            recipe.
        ValueError: a malformed space or option, SQLite with several workers, a study that
            already tunes another metric or direction.
    """
    from fasttricks.recipes import load_recipe

    options = (options or TuneOptions()).replace(**changes) if changes else (
        options or TuneOptions())
    storage_kind(options.storage)
    resolved = load_recipe(recipe)
    parsed_space = _load_space(space, recipe)
    check_space_keys(parsed_space, resolved)
    trial_recipe = (resolved if options.subset is None
                    else load_recipe(resolved, {"data.subset": options.subset}))
    metric, direction = resolve_metric(resolved, options.metric, options.direction)
    grid = grid_points(trial_recipe, parsed_space) if options.sampler == "grid" else None
    options = options.replace(n_trials=_n_trials(options.n_trials, grid))
    pruner = plan_pruner(options.pruner, resolved, n_trials=options.n_trials)
    name = _study_name(resolved, options)
    study = _open_study(name, resolved, metric, direction, options, pruner, grid)
    _check_same_study(study, metric, direction, parsed_space)
    out = Path(options.out_dir) if options.out_dir is not None else Path(options.root) / name
    options = options.replace(study_name=name, metric=metric, direction=direction)
    if options.worker is None:
        first = len(study.get_trials(deepcopy=False))
        options = options.replace(first_trial=first, launcher_pid=os.getpid())
        options = _write_study_folder(out, resolved, parsed_space, options)
    first = options.first_trial if options.first_trial is not None else 0
    return PreparedStudy(study, resolved, parsed_space, trial_recipe, metric, options, pruner,
                         out, first)


def _n_trials(n_trials: int | None, grid: list[dict[str, Any]] | None) -> int:
    """The trial budget: as given, else the grid's size (grid search) or 20."""
    if grid is None:
        return DEFAULT_N_TRIALS if n_trials is None else n_trials
    if n_trials is not None and n_trials > len(grid):
        raise ValueError(f"n_trials={n_trials} is more than the grid's {len(grid)} points; "
                         "leave it out to run every point once")
    return len(grid) if n_trials is None else n_trials


def run_trials(study: Any, objective: Any, n_trials: int, timeout: float | None = None,
               callbacks: Sequence[Any] = (), max_failures: int | None = None,
               first_trial: int = 0) -> None:
    """Run trials one at a time until ``n_trials`` are finished (COMPLETE or PRUNED).

    Before each trial: dead workers' trials are failed (heartbeat, or a gone local process),
    and a new trial starts only while ``finished + running < n_trials`` or a retry waits.
    While other processes still run the last trials and one of them could die (heartbeats, or
    a live process of this host), a worker waits to run its replacement. Two workers that
    start a trial at the same moment are resolved by trial number: the later one, if it would
    exceed ``n_trials``, is recorded as FAIL ("not needed") before doing any work.

    Raises:
        TooManyFailures: ``max_failures`` trials numbered ``>= first_trial`` failed (default
            ``max(3, n_trials)``).
    """
    cap = max(3, n_trials) if max_failures is None else max_failures
    start = time.monotonic()
    guarded = _guarded(objective, n_trials)
    while True:
        _check_failures(study, cap, first_trial)
        if timeout is not None and time.monotonic() - start >= timeout:
            return
        _fail_dead_trials(study)
        counts = count_trials(study)
        if counts["finished"] >= n_trials:
            return
        if counts["finished"] + counts["running"] >= n_trials and counts["waiting"] == 0:
            if not (heartbeat_enabled(study) or live_local_trials(study)):
                return
            time.sleep(1.0)
            continue
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        with quiet_experimental():
            study.optimize(guarded, n_trials=1, timeout=left, catch=(Exception,),
                           callbacks=list(callbacks))


def _fail_dead_trials(study: Any) -> None:
    import optuna

    if heartbeat_enabled(study):  # works across machines, and re-queues per max_retry
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
    else:
        fail_orphaned_trials(study)


def _trial_callbacks(prepared: PreparedStudy) -> list[Any]:
    options = prepared.options
    callbacks: list[Any] = []
    if options.progress:
        callbacks.append(TrialProgress(prepared.metric, recipe_epochs(prepared.recipe),
                                       options.progress_prefix))
    if options.mlflow is not None:
        from fasttricks.tune._mlflow import MLflowLogger

        from fasttricks.tune._results import trial_recipe

        callbacks.append(MLflowLogger(
            options.mlflow, prepared.study.study_name, prepared.metric,
            recipe_for=lambda trial: trial_recipe(trial, prepared.trial_recipe, prepared.space)))
    return callbacks


def _run_here(prepared: PreparedStudy) -> None:
    options = prepared.options
    objective = make_objective(prepared.trial_recipe, prepared.space, prepared.metric)
    threads = options.threads if options.threads is not None else default_threads(1)
    with _torch_threads(threads):
        run_trials(prepared.study, objective, options.n_trials, options.timeout,
                   _trial_callbacks(prepared), options.failure_cap, prepared.first_trial)


def _run_workers(prepared: PreparedStudy) -> None:
    from fasttricks.tune._workers import launch_workers

    options = prepared.options.replace(threads=prepared.options.thread_count)
    path = options.save(prepared.out_dir / OPTIONS_FILE)
    codes = launch_workers(prepared.study, options, path)
    _check_failures(prepared.study, options.failure_cap, prepared.first_trial)
    if any(code != 0 for code in codes) and count_trials(prepared.study)["finished"] < \
            options.n_trials:
        _log.warning("workers ended early (exit codes %s): re-run the same command to resume",
                     codes)


def _announce(prepared: PreparedStudy) -> None:
    options = prepared.options
    if not options.progress or options.worker is not None:
        return
    done = count_trials(prepared.study)["finished"]
    print(f"study {prepared.study.study_name!r}: {done}/{options.n_trials} trials finished, "
          f"{prepared.study.direction.name.lower()} {prepared.metric}", flush=True)
    print(prepared.pruner.describe(), flush=True)


def _launcher_gone(options: TuneOptions) -> bool:
    return options.launcher_pid is not None and os.getppid() != options.launcher_pid


def _should_write_results(prepared: PreparedStudy, last: Any = None) -> bool:
    """The launcher writes the results; a worker does when the launcher died, it is the last
    worker to finish (``last``, a :class:`~fasttricks.tune._workers.LastWorker`: no other can
    still add a trial) and no trial is running any more."""
    options = prepared.options
    if not options.write_results:
        return False
    if options.worker is None:
        return True
    last_out = last.done() if last is not None else True
    return _launcher_gone(options) and last_out and count_trials(prepared.study)["running"] == 0


def retrain_best(prepared: PreparedStudy) -> dict[str, dict[str, Any]]:
    """Retrain the best ``retrain_top`` trials on all the training data.

    Each trial's recipe (the study's recipe, without the subset, with the trial's values) is
    trained with :func:`fasttricks.recipes.run_recipe` into ``<out>/retrained/trial_<n>/`` (a
    run folder). Its last-epoch metric is recorded beside the trial's subset value in the
    study's user attribute ``retrained``, so a re-run skips trials already retrained and
    ``--report`` shows the correlation again. Returns that record.
    """
    from fasttricks.recipes import run_recipe
    from fasttricks.runs import write_run
    from fasttricks.tune._results import RETRAINED_ATTR, ranked_trials, trial_recipe

    study, options = prepared.study, prepared.options
    done: dict[str, dict[str, Any]] = dict(study.user_attrs.get(RETRAINED_ATTR) or {})
    threads = options.threads if options.threads is not None else default_threads(1)
    for trial in ranked_trials(study)[: options.retrain_top]:
        if str(trial.number) in done:
            continue
        recipe = trial_recipe(trial, prepared.recipe, prepared.space)
        with _torch_threads(threads):
            result = run_recipe(recipe, progress=False)
        run_dir = write_run(result, prepared.out_dir / "retrained" / f"trial_{trial.number}")
        column = result.history[prepared.metric] if prepared.metric in result.history else None
        full = float(column.iloc[-1]) if column is not None and len(column) else math.nan
        done[str(trial.number)] = {"subset": float(trial.value), "full": full,
                                   "fraction": options.subset, "run": str(run_dir)}
        study.set_user_attr(RETRAINED_ATTR, done)
        if options.mlflow is not None:
            from fasttricks.tune._mlflow import log_run_folder

            log_run_folder(options.mlflow, study.study_name, run_dir,
                           run_name=f"trial-{trial.number}-full")
        if options.progress:
            print(f"retrained trial {trial.number} on all the training data: "
                  f"{prepared.metric}={full:.4f} (on the {options.subset:g} subset: "
                  f"{trial.value:.4f}) -> {run_dir}", flush=True)
    return done


def _finish(prepared: PreparedStudy, summary: bool, last: Any = None) -> None:
    from fasttricks.tune._results import write_results

    if not _should_write_results(prepared, last):
        return
    if summary and prepared.options.retrains and count_trials(prepared.study)["finished"]:
        retrain_best(prepared)
    written = write_results(prepared.study, prepared.recipe, prepared.out_dir, prepared.space)
    if summary and prepared.options.progress and prepared.options.worker is None:
        print_summary(prepared.study, prepared.metric, written)


def run_study(prepared: PreparedStudy) -> Any:
    """Run the trials of a prepared study (here, or in worker processes) and write its results;
    returns the ``optuna.Study``.

    Raises:
        TooManyFailures: ``max_failures`` trials of this run failed (results are still
            written for the trials that finished).
    """
    import optuna

    _announce(prepared)
    last = LastWorker(prepared.out_dir) if prepared.options.worker is not None else None
    try:
        # Our progress line reports a failed trial; Optuna's warning would add a traceback.
        with optuna_log_level(optuna.logging.ERROR if prepared.options.progress else None):
            try:
                if prepared.options.uses_workers:
                    _run_workers(prepared)
                else:
                    _run_here(prepared)
            except (KeyboardInterrupt, TooManyFailures):
                # The running trials are already recorded as FAIL (by Optuna in this process,
                # by the launcher for workers); keep what the finished ones found.
                _finish(prepared, summary=False, last=last)
                raise
            _finish(prepared, summary=True, last=last)
    finally:
        if last is not None:
            last.close()
    return prepared.study


def tune(
    recipe: str | os.PathLike[str] | Mapping[str, Any],
    space: Any = None,
    options: TuneOptions | None = None,
    **changes: Any,
) -> Any:
    """Tune ``recipe`` over ``space`` with Optuna; returns the ``optuna.Study``.

    A trial applies its sampled values in one ``load_recipe(recipe, overrides)`` call, builds
    the learner with ``build_learner``, fits it with ``fit_learner`` plus a
    :class:`PruningCallback` that reports the metric every epoch, and returns the metric of the
    last epoch. Re-running with the same study name resumes: finished trials count toward
    ``n_trials``.

    Args:
        recipe: a recipe path or mapping (``fasttricks.recipes.load_recipe``).
        space: a search-space path or mapping (default: ``<recipe>.space.yaml`` beside it).
        options: a :class:`~fasttricks.tune.TuneOptions` (default ``TuneOptions()``).
        **changes: option fields to change, e.g. ``pruner="asha", n_trials=10``.

    Raises:
        KeyError: unknown pruner, sampler or direction, or a space key not in the recipe.
        ValueError: a malformed space or option, SQLite with several workers, conflicting
            study.
        TooManyFailures: too many trials failed (``max_failures``).

    Example::

        study = tune("digits", pruner="asha", n_trials=10)
    """
    return run_study(prepare_study(recipe, space, options, **changes))


def print_summary(study: Any, metric: str, written: Mapping[str, Path]) -> None:
    """The closing lines: trials finished, pruned and failed, the best trial (and how a tie
    was broken), subset vs full results of retrained trials, the files."""
    from optuna.trial import TrialState

    from fasttricks.tune._results import best_trial, retrained_table, subset_correlation, tie_note

    counts = count_trials(study)
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    print(f"done: {counts['finished']} trials finished ({pruned} pruned), "
          f"{counts['failed']} failed", flush=True)
    if "best" in written:
        best = best_trial(study)
        print(f"best trial {best.number}: {metric}={best.value:.4f} {best.params}", flush=True)
        note = tie_note(study)
        if note:
            print(f"ties: {note}", flush=True)
    retrained = retrained_table(study)
    if len(retrained):
        for row in retrained.itertuples():
            print(f"trial {row.trial}: {metric}={row.subset:.4f} on the subset, "
                  f"{row.full:.4f} retrained on all the data", flush=True)
        print(subset_correlation(retrained)[1], flush=True)
    print(f"results in {Path(next(iter(written.values()))).parent}/: "
          f"{', '.join(p.name for p in written.values())}", flush=True)
