"""The options of one tuning run, validated once, as one frozen object.

The command line builds a :class:`TuneOptions`, the library's :func:`~fasttricks.tune.tune`
takes one, and the launcher writes it once (atomically, as JSON) into the study folder, where
every worker process reads it instead of parsing flags again. A database URL is never written
there: it reaches workers through the environment variable :data:`STORAGE_ENV`, which, unlike
a command line, other users of the machine cannot read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasttricks._io import write_json
from fasttricks._validate import check_choice, check_range

__all__ = ["DIRECTIONS", "OPTIONS_FILE", "SAMPLERS", "STORAGE_ENV", "TuneOptions",
           "check_study_name", "default_threads"]

SAMPLERS = ("tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
OPTIONS_FILE = "options.json"
STORAGE_ENV = "FASTTRICKS_TUNE_STORAGE"
DEFAULT_N_TRIALS = 20


def default_threads(workers: int = 1) -> int:
    """CPU threads per worker: ``max(1, cpu_count // (2 * workers))``.

    Small models gain little from more threads, and an oversubscribed CPU (more busy threads
    than cores, e.g. on a shared machine) makes PyTorch's OpenMP threads spin and slows
    training by an order of magnitude; half the cores leaves room for the data pipeline.
    """
    return max(1, (os.cpu_count() or 1) // (2 * max(1, workers)))


def check_study_name(name: Any) -> str:
    """Return ``name`` if it can name a folder under ``runs/``, else raise ``ValueError``.

    Refused: empty names, ``/`` or ``\\`` in the name, and names made only of dots (``..``).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"study name must be a non-empty string, got {name!r}")
    if re.search(r"[/\\]|^\.+$", name) or "\x00" in name:
        raise ValueError(f"study name must be usable as a folder name (no '/', '\\\\' or "
                         f"'..'), got {name!r}")
    return name


def _optional_int(name: str, value: Any, low: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r}")
    check_range(name, value, low=low)


@dataclass(frozen=True)
class TuneOptions:
    """How to run a study; every field is checked when the object is made.

    Args:
        pruner: ``"hyperband"`` (default), ``"asha"``, ``"median"`` or ``"none"``.
        sampler: ``"tpe"`` (default), ``"random"`` or ``"grid"`` (every combination of a
            discrete space once, :class:`~fasttricks.tune.GridPointSampler`).
        n_trials: finished trials (COMPLETE or PRUNED) the study should hold; default None:
            20, or the number of grid points with ``sampler="grid"``.
        timeout: stop starting trials after this many seconds (default None).
        metric, direction: what to optimize (default: the recipe's primary metric, with the
            direction :func:`fasttricks.metrics.metric_direction` gives it).
        storage: None (journal file ``<root>/<study>/journal.log``), a file path, or a
            ``postgresql://`` / ``sqlite:///`` URL.
        study_name: default ``"<recipe name>-<pruner>"``; must be usable as a folder name.
        seed: the sampler's base seed (default 0); each trial's seed is derived from it, the
            study, the process and the trial (:func:`fasttricks.tune.sampler_seed`).
        workers: processes running trials at once, default 1 (this process).
        gpus: GPU ids dealt to workers in turn via ``CUDA_VISIBLE_DEVICES`` (default None).
        heartbeat, max_retry: RDB storages only: heartbeat seconds and retries of trials whose
            worker died (default None: off).
        max_failures: stop after this many failed trials in this run (default
            ``max(3, n_trials)``).
        mlflow: an MLflow tracking URI to log each trial to (needs ``mlflow``).
        subset: train trials on this stratified fraction of the training data, in (0, 1)
            (default None: all of it); ``best.yaml`` keeps the recipe's own data.
        retrain_best: when the study ends, retrain the best ``retrain_top`` trials on all the
            training data and record both results (default None: on when ``subset`` is set).
        retrain_top: how many of the best trials to retrain (default 1; 3 or more also give
            the rank correlation between subset and full results).
        threads: torch CPU threads per worker (default :func:`default_threads`).
        root: the folder of study folders, default ``runs``.
        out_dir: where results go (default ``<root>/<study name>``).
        progress: print one line per trial and the pruner plan (default True).
        write_results: write ``best.yaml``, ``trials.csv`` and plots at the end (default True).
        worker: this process's index when it is one of several workers (default None).
        launcher_pid: the process id of the launcher of the workers (set by the launcher).
        first_trial: the first trial number of this run (set by the launcher, so every
            worker counts failures over the same trials).
    """

    pruner: str = "hyperband"
    sampler: str = "tpe"
    n_trials: int | None = None
    timeout: float | None = None
    metric: str | None = None
    direction: str | None = None
    storage: str | None = None
    study_name: str | None = None
    seed: int | None = 0
    workers: int = 1
    gpus: tuple[str, ...] | None = None
    heartbeat: int | None = None
    max_retry: int | None = None
    max_failures: int | None = None
    mlflow: str | None = None
    subset: float | None = None
    retrain_best: bool | None = None
    retrain_top: int = 1
    threads: int | None = None
    root: str = "runs"
    out_dir: str | None = None
    progress: bool = True
    write_results: bool = True
    worker: int | None = None
    launcher_pid: int | None = None
    first_trial: int | None = None
    recipe_path: str | None = field(default=None, repr=False)
    space_path: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from fasttricks.tune._pruners import PRUNER_TYPES

        PRUNER_TYPES.get(self.pruner)
        check_choice("sampler", self.sampler, SAMPLERS)
        if self.direction is not None:
            check_choice("direction", self.direction, DIRECTIONS)
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise ValueError(f"metric must be a recorder column name, got {self.metric!r}")
        _optional_int("n_trials", self.n_trials, 1)
        if self.timeout is not None:
            check_range("timeout", self.timeout, low=0, low_inclusive=False)
        if self.study_name is not None:
            check_study_name(self.study_name)
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an integer or None, got {self.seed!r}")
        _optional_int("workers", self.workers, 1)
        _optional_int("retrain_top", self.retrain_top, 1)
        if self.subset is not None:
            if isinstance(self.subset, bool) or not isinstance(self.subset, (int, float)):
                raise TypeError(f"subset must be a fraction in (0, 1), got {self.subset!r}")
            check_range("subset", self.subset, 0.0, 1.0, low_inclusive=False,
                        high_inclusive=False)
        if self.retrain_best is not None and not isinstance(self.retrain_best, bool):
            raise TypeError(f"retrain_best must be true, false or None, got "
                            f"{self.retrain_best!r}")
        if self.retrain_best and self.subset is None:
            raise ValueError("retrain_best retrains trials on all the training data, so it "
                             "needs subset (a fraction in (0, 1)) for the trials")
        _optional_int("heartbeat", self.heartbeat, 1)
        _optional_int("max_retry", self.max_retry, 0)
        _optional_int("max_failures", self.max_failures, 1)
        _optional_int("threads", self.threads, 1)
        _optional_int("worker", self.worker, 0)
        if self.gpus is not None:
            if isinstance(self.gpus, str) or not isinstance(self.gpus, Sequence):
                raise TypeError(f"gpus must be a list of GPU ids like ['0', '1'], got "
                                f"{self.gpus!r}")
            gpus = tuple(str(g).strip() for g in self.gpus)
            if not gpus or not all(gpus):
                raise ValueError(f"gpus must be a non-empty list of GPU ids, got {self.gpus!r}")
            object.__setattr__(self, "gpus", gpus)
        if self.storage is not None and (not isinstance(self.storage, str) or not self.storage):
            raise ValueError(f"storage must be a file path or a database URL, got "
                             f"{self.storage!r}")
        object.__setattr__(self, "root", os.fspath(self.root))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", os.fspath(self.out_dir))

    # ------------------------------------------------------------------ derived values

    @property
    def failure_cap(self) -> int:
        """Failed trials this run tolerates: ``max_failures`` or ``max(3, n_trials)``."""
        if self.max_failures is not None:
            return self.max_failures
        return max(3, self.n_trials if self.n_trials is not None else DEFAULT_N_TRIALS)

    @property
    def retrains(self) -> bool:
        """Whether the best trials are retrained on all the data (``retrain_best``, default
        on with ``subset``)."""
        return self.subset is not None if self.retrain_best is None else self.retrain_best

    @property
    def thread_count(self) -> int:
        """Torch threads per process: ``threads`` or :func:`default_threads` of the workers."""
        return self.threads if self.threads is not None else default_threads(self.workers)

    @property
    def uses_workers(self) -> bool:
        """True when this process launches worker processes instead of running trials."""
        return self.worker is None and (self.workers > 1 or bool(self.gpus))

    @property
    def progress_prefix(self) -> str:
        """``"[w<i>] "`` before each progress line of worker ``i``, else nothing."""
        return "" if self.worker is None else f"[w{self.worker}] "

    def replace(self, **changes: Any) -> TuneOptions:
        """A checked copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ the options file

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields; a database URL is left out (see :data:`STORAGE_ENV`)."""
        from fasttricks.tune._storage import storage_kind

        data = dataclasses.asdict(self)
        data["gpus"] = list(self.gpus) if self.gpus is not None else None
        if storage_kind(self.storage) != "journal":
            data["storage"] = None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuneOptions:
        """Options from :meth:`to_dict`; an unknown field is an error naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tune option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the options (no database URL) to ``path`` atomically; returns the path."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TuneOptions:
        """Read options written by :meth:`save`; the storage URL comes from
        :data:`STORAGE_ENV` when that is set."""
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"tune options file {str(file)!r} not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"tune options file {str(file)!r} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"tune options file {str(file)!r} must hold a JSON object")
        if os.environ.get(STORAGE_ENV):
            data["storage"] = os.environ[STORAGE_ENV]
        return cls.from_dict(data)
