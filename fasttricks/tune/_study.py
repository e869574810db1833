"""Run a study: a trial is the recipe with sampled values, trained with a pruning callback.

The study is resumable: it is created with ``load_if_exists``, and trials already finished
(COMPLETE or PRUNED) count toward ``n_trials``, so re-running the same command continues to
exactly ``n_trials``. Several processes may run the same study on one storage; each starts a
new trial only while ``finished + running < n_trials``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fasttricks._validate import check_choice, check_range
from fasttricks.tune._progress import TrialProgress
from fasttricks.tune._pruners import describe_pruner, make_pruner, recipe_epochs
from fasttricks.tune._space import (
    Param,
    apply_params,
    check_space_keys,
    default_space_path,
    load_space,
)
from fasttricks.tune._storage import make_storage, storage_kind

__all__ = ["tune", "make_sampler", "SAMPLERS", "DIRECTIONS", "resolve_metric", "prepare_study"]

_log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
WORKER_ATTR = "worker"
EPOCHS_ATTR = "epochs"


class SurplusTrialError(RuntimeError):
    """A trial another worker made unnecessary: the study already has ``n_trials`` in flight."""


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    """Hide Optuna's ExperimentalWarning (one per heartbeat, retry and plot call); nothing else."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def make_sampler(name: str = "tpe", seed: int | None = 0, n_trials: int | None = None) -> Any:
    """An Optuna sampler by name: ``"tpe"`` (default) or ``"random"``.

    TPE (Bergstra et al. 2011) starts with ``min(10, max(3, n_trials // 3))`` random trials
    (Optuna's default is 10, too many for a 12-trial study) and uses the constant-liar
    strategy so parallel workers do not propose the same point.

    Raises:
        KeyError: unknown name (lists the known samplers and the closest match).
    """
    import optuna

    check_choice("sampler", name, SAMPLERS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = 10 if n_trials is None else min(10, max(3, n_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def resolve_metric(recipe: Mapping[str, Any], metric: str | None = None,
                   direction: str | None = None) -> tuple[str, str]:
    """The monitored metric and its direction.

    Default: ``fasttricks.recipes.primary_metric(recipe)``. A ``metric`` must be a column the
    recorder logs every epoch: ``train_loss``, ``valid_loss`` or one of the recipe's metrics.
    Without ``direction``, names containing "loss" are minimized and the rest maximized
    (fastai's tracker convention).

    Raises:
        KeyError: a metric the recipe does not record (lists those it does).
    """
    if direction is not None:
        check_choice("direction", direction, DIRECTIONS)
    if metric is None:
        from fasttricks.recipes import primary_metric

        default_metric, default_direction = primary_metric(recipe)
        return default_metric, direction or default_direction
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a recorder column name, got {metric!r}")
    recorded = ["train_loss", "valid_loss", *recipe.get("metrics", [])]
    check_choice("metric", metric, recorded)
    if direction is None:
        direction = "minimize" if "loss" in metric else "maximize"
    return metric, direction


def _load_recipe(recipe: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    from fasttricks.recipes import load_recipe

    return load_recipe(recipe)


def _load_space(space: Any, recipe_source: Any) -> dict[str, Param]:
    if space is None:
        if isinstance(recipe_source, Mapping):
            raise ValueError("give a search space: a recipe mapping has no shipped space beside it")
        path = default_space_path(recipe_source)
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


def worker_id() -> str:
    """``host:pid`` of this process, stored on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphaned_trials(study: Any, pids: Sequence[int] | None = None) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone.

    A worker killed without a chance to clean up (SIGKILL, power loss) leaves its trial
    RUNNING; without heartbeats nothing else would ever finish it. ``pids`` restricts the check
    to these processes (default: any dead process of this host). When the storage has a
    heartbeat-stale callback (``max_retry``), it runs for these trials too, so they are
    re-queued. Returns the trial numbers.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(WORKER_ATTR, ""))
        owner_host, _, pid_text = owner.rpartition(":")
        if owner_host != host or not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid() or (pids is not None and pid not in pids) or _pid_alive(pid):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        retry = _stale_callback(study)
        if retry is not None:
            with quiet_experimental():
                retry(study, study._storage.get_trial(trial._trial_id))
    if failed:
        _log.warning("marked trials %s FAIL: their worker process ended mid-trial", failed)
    return failed


def _stale_callback(study: Any) -> Any:
    getter = getattr(study._storage, "get_heartbeat_stale_trial_callback", None)
    return getter() if getter is not None and _heartbeat_enabled(study) else None


def _heartbeat_enabled(study: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def default_threads(workers: int = 1) -> int:
    """CPU threads per worker: ``max(1, cpu_count // (2 * workers))``.

    Small models gain little from more threads, and an oversubscribed CPU (more busy threads
    than cores, e.g. on a shared machine) makes PyTorch's OpenMP threads spin and slows
    training by an order of magnitude; half the cores leaves room for the data pipeline.
    """
    return max(1, (os.cpu_count() or 1) // (2 * max(1, workers)))


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
    """The Optuna objective: sample ``space`` into ``recipe``, build, fit, return ``metric``."""
    from fasttricks.recipes import build_learner, fit_learner
    from fasttricks.tune._callback import PruningCallback

    def objective(trial: Any) -> float:
        import optuna

        trial_recipe = apply_params(recipe, space, lambda param: param.suggest(trial))
        pruning = PruningCallback(trial, monitor=metric, max_steps=recipe_epochs(trial_recipe))
        learn = build_learner(trial_recipe)
        trial.set_user_attr("device", str(next(learn.model.parameters()).device))
        try:
            with _quiet_fit(learn):
                fit_learner(learn, trial_recipe, cbs=[pruning])
        finally:
            trial.set_user_attr(EPOCHS_ATTR, pruning.step)
        pruning.raise_if_pruned()
        if not pruning.values:
            raise optuna.TrialPruned("the fit ended before the first epoch")
        return pruning.values[-1]

    return objective


@contextlib.contextmanager
def _quiet_fit(learn: Any) -> Iterator[None]:
    """No per-epoch table and no progress bar: the study prints one line per trial instead."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(learn.no_logging())
        if hasattr(type(learn), "no_bar"):
            stack.enter_context(learn.no_bar())
        yield


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
        raise SurplusTrialError(
            f"not needed: {ahead} trials before it are finished or running (n_trials={n_trials})"
        )


def prepare_study(
    recipe: str | os.PathLike[str] | Mapping[str, Any],
    space: Any = None,
    *,
    pruner: str = "hyperband",
    sampler: str = "tpe",
    n_trials: int = 20,
    metric: str | None = None,
    direction: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    workers: int = 1,
    heartbeat: int | None = None,
    max_retry: int | None = None,
    root: str | os.PathLike[str] = "runs",
) -> tuple[Any, dict[str, Any], dict[str, Param], str]:
    """Validate every input and create (or load) the study; no trial runs here.

    Returns ``(study, resolved recipe, space, metric)``. See :func:`tune` for the arguments.
    """
    import optuna

    check_choice("pruner", pruner, ("hyperband", "asha", "median", "none"))
    check_choice("sampler", sampler, SAMPLERS)
    if direction is not None:
        check_choice("direction", direction, DIRECTIONS)
    check_range("n_trials", n_trials, low=1)
    storage_kind(storage)
    resolved = _load_recipe(recipe)
    parsed_space = _load_space(space, recipe)
    check_space_keys(parsed_space, resolved)
    metric, direction = resolve_metric(resolved, metric, direction)
    pruner_obj = make_pruner(pruner, resolved, n_trials=n_trials)
    name = study_name or f"{resolved.get('name', 'recipe')}-{pruner}"
    store = make_storage(storage, name, workers=workers, heartbeat=heartbeat,
                         max_retry=max_retry, root=root)
    with quiet_experimental():
        study = optuna.create_study(
            study_name=name,
            storage=store,
            sampler=make_sampler(sampler, seed, n_trials),
            pruner=pruner_obj,
            direction=direction,
            load_if_exists=True,
        )
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
        study.set_user_attr("space", {k: _param_dict(p) for k, p in parsed_space.items()})
    return study, resolved, parsed_space, metric


def _param_dict(param: Param) -> dict[str, Any]:
    from fasttricks.tune._space import space_spec

    return space_spec({param.key: param})[param.key]


def run_trials(study: Any, objective: Any, n_trials: int, timeout: float | None = None,
               callbacks: Sequence[Any] = ()) -> None:
    """Run trials one at a time until ``n_trials`` are finished (COMPLETE or PRUNED).

    Before each trial: dead workers' trials are failed (heartbeat, or a gone local process),
    and a new trial starts only while ``finished + running < n_trials`` or a retry waits.
    With heartbeats, a worker waits while others still run the last trials, since one of them
    may die and need a replacement. Two workers that start a trial at the same moment are
    resolved by trial number: the later one, if it would exceed ``n_trials``, is recorded as
    FAIL ("not needed") before doing any work.
    """
    import optuna

    start = time.monotonic()
    heartbeat = _heartbeat_enabled(study)

    def guarded(trial: Any) -> Any:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        _check_not_surplus(trial, n_trials)
        return objective(trial)
    while True:
        if timeout is not None and time.monotonic() - start >= timeout:
            return
        if heartbeat:  # works across machines, and re-queues per max_retry
            with quiet_experimental():
                optuna.storages.fail_stale_trials(study)
        else:
            fail_orphaned_trials(study)
        counts = count_trials(study)
        if counts["finished"] >= n_trials:
            return
        if counts["finished"] + counts["running"] >= n_trials and counts["waiting"] == 0:
            if not heartbeat:
                return
            time.sleep(min(2.0, study._storage.get_heartbeat_interval()))
            continue
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
        with quiet_experimental():
            study.optimize(guarded, n_trials=1, timeout=left, catch=(SurplusTrialError,),
                           callbacks=list(callbacks))


def tune(
    recipe: str | os.PathLike[str] | Mapping[str, Any],
    space: Any = None,
    *,
    pruner: str = "hyperband",
    sampler: str = "tpe",
    n_trials: int = 20,
    timeout: float | None = None,
    metric: str | None = None,
    direction: str | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = 0,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    heartbeat: int | None = None,
    max_retry: int | None = None,
    mlflow: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] = "runs",
    progress: bool = True,
    write_results: bool = True,
    progress_prefix: str = "",
    threads: int | None = None,
) -> Any:
    """Tune ``recipe`` over ``space`` with Optuna; returns the ``optuna.Study``.

    A trial sets each sampled value with ``set_in_recipe``, builds the learner with
    ``build_learner``, fits it with ``fit_learner`` plus a :class:`PruningCallback` that reports
    ``metric`` every epoch, and returns the metric of the last epoch. Re-running with the same
    study name resumes: finished trials count toward ``n_trials``.

    Args:
        recipe: a recipe path or mapping (``fasttricks.recipes.load_recipe``).
        space: a search-space path or mapping (default: ``<recipe>.space.yaml`` beside it).
        pruner: ``"hyperband"`` (default), ``"asha"``, ``"median"`` or ``"none"``.
        sampler: ``"tpe"`` (default) or ``"random"``.
        n_trials: finished trials (COMPLETE or PRUNED) the study should hold, default 20.
        timeout: stop starting trials after this many seconds (default None).
        metric, direction: what to optimize (default ``primary_metric(recipe)``).
        storage: None (journal file ``<root>/<study>/journal.log``), a file path, or a
            ``postgresql://`` / ``sqlite:///`` URL.
        study_name: default ``"<recipe name>-<pruner>"``.
        seed: sampler seed (worker ``i`` uses ``seed + i``), default 0.
        workers: processes running trials at once, default 1 (this process).
        gpus: GPU ids, one per worker in turn, via ``CUDA_VISIBLE_DEVICES`` (default None).
        heartbeat, max_retry: RDB storages only: heartbeat seconds and retries of trials whose
            worker died (default None: off).
        mlflow: an MLflow tracking URI to log each trial to (needs ``mlflow``).
        out_dir: where results go (default ``<root>/<study name>``).
        root: the folder of study folders, default ``runs``.
        progress: print one line per trial and the pruner plan (default True).
        write_results: write ``best.yaml``, ``trials.csv`` and plots at the end (default True).
        threads: torch CPU threads per worker while training (default
            :func:`default_threads`: half the cores divided among the workers, at least 1).

    Raises:
        KeyError: unknown pruner, sampler or direction, or a space key not in the recipe.
        ValueError: a malformed space, SQLite with several workers, conflicting study.
    """
    import optuna

    from fasttricks.tune._results import write_results as _write_results

    check_range("workers", workers, low=1)
    if timeout is not None:
        check_range("timeout", timeout, low=0, low_inclusive=False)
    study, resolved, parsed_space, metric = prepare_study(
        recipe, space, pruner=pruner, sampler=sampler, n_trials=n_trials, metric=metric,
        direction=direction, storage=storage, study_name=study_name, seed=seed,
        workers=workers, heartbeat=heartbeat, max_retry=max_retry, root=root,
    )
    out = Path(out_dir) if out_dir is not None else Path(root) / study.study_name
    if progress and not progress_prefix:
        done = count_trials(study)["finished"]
        print(f"study {study.study_name!r}: {done}/{n_trials} trials finished, "
              f"{study.direction.name.lower()} {metric}", flush=True)
        print(describe_pruner(study.pruner), flush=True)
    with _optuna_log_level(optuna.logging.WARNING if progress else None):
        if mlflow is not None:
            from fasttricks.tune._mlflow import MLflowLogger

            mlflow_logger = MLflowLogger(mlflow, study.study_name, metric)
        try:
            if workers > 1 or gpus:
                from fasttricks.tune._workers import launch_workers

                launch_workers(
                    study, resolved, parsed_space, out, n_workers=workers, gpus=gpus,
                    args=dict(pruner=pruner, sampler=sampler, n_trials=n_trials,
                              timeout=timeout, metric=metric,
                              direction=study.direction.name.lower(), storage=storage,
                              seed=seed, heartbeat=heartbeat, max_retry=max_retry,
                              mlflow=mlflow, threads=threads if threads is not None
                              else default_threads(workers)),
                    root=root,
                )
            else:
                callbacks: list[Any] = []
                if progress:
                    callbacks.append(
                        TrialProgress(metric, recipe_epochs(resolved), progress_prefix))
                if mlflow is not None:
                    callbacks.append(mlflow_logger)
                objective = make_objective(resolved, parsed_space, metric)
                with _torch_threads(threads if threads is not None else default_threads(1)):
                    run_trials(study, objective, n_trials, timeout, callbacks)
        except KeyboardInterrupt:
            # The running trials are already recorded as FAIL (by Optuna in this process, by
            # the launcher for workers); keep what the finished ones found.
            if write_results:
                _write_results(study, resolved, out, parsed_space)
            raise
        if write_results:
            written = _write_results(study, resolved, out, parsed_space)
            if progress:
                _print_summary(study, metric, written)
    return study


@contextlib.contextmanager
def _optuna_log_level(level: int | None) -> Iterator[None]:
    """Optuna's own INFO line per trial would repeat ours: raise its level while we print."""
    import optuna

    if level is None:
        yield
        return
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(level)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _print_summary(study: Any, metric: str, written: Mapping[str, Path]) -> None:
    counts = count_trials(study)
    from optuna.trial import TrialState

    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    print(f"done: {counts['finished']} trials finished ({pruned} pruned), "
          f"{counts['failed']} failed", flush=True)
    if "best" in written:
        best = study.best_trial
        print(f"best trial {best.number}: {metric}={best.value:.4f} {best.params}", flush=True)
    print(f"results in {Path(next(iter(written.values()))).parent}/: "
          f"{', '.join(p.name for p in written.values())}", flush=True)
