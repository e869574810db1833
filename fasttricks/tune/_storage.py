"""Where a study lives: a journal file under ``runs/<study>/`` by default, or a database.

- default (no URL), or a file path: Optuna's :class:`~optuna.storages.JournalStorage` on a
  :class:`~optuna.storages.journal.JournalFileBackend`: an append-only log that several
  processes on one machine share safely (file lock), nothing to install.
- ``postgresql://...`` (or ``mysql://...``): Optuna's :class:`~optuna.storages.RDBStorage`, for
  many processes on many machines. Only here can heartbeats detect a dead worker: with
  ``heartbeat`` every running trial refreshes a timestamp every ``heartbeat`` seconds; a trial
  whose timestamp is older than ``grace_period`` (default ``2 * heartbeat``) is marked FAIL the
  next time any worker starts a trial, and ``max_retry`` re-queues it (Optuna's
  :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`).
- ``sqlite:///...``: one process only; SQLite locks the whole file per write, so concurrent
  workers fail with "database is locked".
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from fasttricks._validate import check_range

__all__ = ["make_storage", "storage_kind", "default_journal_path", "RDB_SCHEMES"]

RDB_SCHEMES = ("postgresql", "mysql", "sqlite")
JOURNAL_NAME = "journal.log"


def default_journal_path(study_name: str, root: str | os.PathLike[str] = "runs") -> Path:
    """The default study file: ``<root>/<study_name>/journal.log`` (root default ``runs``)."""
    return Path(root) / study_name / JOURNAL_NAME


def storage_kind(url: str | None) -> str:
    """``"journal"``, ``"postgresql"``, ``"mysql"`` or ``"sqlite"`` for a storage URL or path.

    Raises:
        ValueError: a URL scheme that is none of these (echoing the URL and the allowed ones).
    """
    if url is None or "://" not in url:
        return "journal"
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in RDB_SCHEMES:
        raise ValueError(
            f"unsupported storage URL {url!r}: use a file path (journal storage, the default), "
            "postgresql://user:password@host:port/database, mysql://... or sqlite:///file.db"
        )
    return scheme


def make_storage(
    url: str | None = None,
    study_name: str = "study",
    *,
    workers: int = 1,
    heartbeat: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    root: str | os.PathLike[str] = "runs",
) -> Any:
    """Open the storage of a study.

    Args:
        url: None (default) for ``<root>/<study_name>/journal.log``; a file path for a journal
            file there; ``postgresql://...``, ``mysql://...`` or ``sqlite:///...`` for Optuna's
            RDB storage.
        study_name: names the default folder.
        workers: how many processes will share the storage (SQLite accepts only 1).
        heartbeat: seconds between heartbeats of running trials (RDB only; default None: off).
        grace_period: seconds without heartbeat before a running trial counts as dead
            (default ``2 * heartbeat``).
        max_retry: re-queue a dead worker's trial up to this many times (needs ``heartbeat``;
            default None: no retry).
        root: the folder of default journal files (default ``runs``).

    Raises:
        ValueError: SQLite with more than one worker, heartbeat/retry options without an RDB
            storage or without a heartbeat, or out-of-range numbers.
    """
    import optuna

    check_range("workers", workers, low=1)
    if heartbeat is not None:
        check_range("heartbeat", heartbeat, low=1)
    if grace_period is not None:
        check_range("grace_period", grace_period, low=1)
    if max_retry is not None:
        check_range("max_retry", max_retry, low=0)
    kind = storage_kind(url)
    if kind == "sqlite" and workers > 1:
        raise ValueError(
            f"SQLite storage {url!r} cannot serve {workers} workers: SQLite locks the whole file "
            "on every write, so concurrent trials fail with 'database is locked'. Use the default "
            "journal file (omit --storage) for several workers on one machine, or "
            "postgresql://... for several machines."
        )
    if kind == "journal":
        if heartbeat is not None or max_retry is not None or grace_period is not None:
            raise ValueError(
                "heartbeat, grace period and max retry need an RDB storage (postgresql://...): "
                "the journal file storage cannot detect dead workers"
            )
        path = Path(url) if url is not None else default_journal_path(study_name, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if max_retry is not None and heartbeat is None:
        raise ValueError(
            f"max_retry={max_retry} needs a heartbeat: only a heartbeat tells a dead worker's "
            "trial apart from a slow one (set heartbeat, e.g. 60 seconds)"
        )
    if grace_period is not None and heartbeat is None:
        raise ValueError(f"grace_period={grace_period} needs a heartbeat")
    with warnings.catch_warnings():
        # Heartbeats and retries are experimental in Optuna: a documented, intended use here.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = None
        if max_retry is not None:
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        return _open_rdb(url, kind, heartbeat, grace_period, callback)


def _open_rdb(url: str, kind: str, heartbeat: int | None, grace_period: int | None,
              callback: Any, attempts: int = 5) -> Any:
    """RDBStorage, retrying when another process creates the tables at the same moment.

    Two workers starting on an empty database both run ``CREATE TABLE``/``CREATE TYPE``; the
    loser gets a unique-violation error although the schema is then complete.
    """
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True} if kind != "sqlite" else None,
                heartbeat_interval=heartbeat,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=callback,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
