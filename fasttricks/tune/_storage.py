"""Where a study lives: a journal file under ``runs/<study>/`` by default, or a database.

- default (no URL), or a file path: Optuna's :class:`~optuna.storages.JournalStorage` on a
  journal file: an append-only log, one JSON record per line, that several processes on one
  machine share safely (Optuna's lock file ``<journal>.lock``), nothing to install. The file is
  checked before it is opened and never written after a damaged record (see below).
- ``postgresql://user:password@host:port/database`` (``postgres://`` is an alias), or
  ``mysql://...``: Optuna's :class:`~optuna.storages.RDBStorage`, for many processes on many
  machines. A bare scheme gets the installed driver (SQLAlchemy 2.1 would pick psycopg 3 even
  where only psycopg2, the ``postgres`` extra, is installed). Only here can heartbeats detect a
  dead worker: with ``heartbeat`` every running trial refreshes a timestamp every ``heartbeat``
  seconds; a trial whose timestamp is older than ``grace_period`` (default ``2 * heartbeat``)
  is marked FAIL the next time any worker starts a trial, and ``max_retry`` re-queues it
  (Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`).
- ``sqlite:///...``: one process only; SQLite locks the whole file per write, so concurrent
  workers fail with "database is locked".

A damaged journal. A writer killed in the middle of a record, or a full disk, leaves a last
line without its newline. Optuna skips such a line when reading but appends the next record
right after it, which glues two records into one unreadable line and makes the whole study
unreadable. Here the journal is scanned when it is opened, and damaged lines are dropped with a
warning naming the file and the lines (the damaged file is copied to ``journal.log.bak-<time>``):
a damaged last line simply goes; after a damaged line in the middle, the later records are kept
when they still replay as written (the trials that were running at the damage lose their later
records and are run again, see :func:`_plan_repair`). When later records depend on the damaged
line (it created a trial they refer to), opening stops with :class:`StorageError` naming the
file, the line and the fix (:func:`repair_journal`, which keeps the records before it).
Every append checks, under the lock, that the file ends with a newline, and a failed append
(disk full) is cut back off, so no process writes after a partial record.

Every message shows a URL with its password masked (:func:`mask_url`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasttricks._io import atomic_path
from fasttricks._validate import check_range

__all__ = [
    "make_storage", "storage_kind", "default_journal_path", "mask_url", "resolve_db_url",
    "check_journal", "repair_journal", "StorageError", "RDB_SCHEMES",
]

RDB_SCHEMES = ("postgresql", "mysql", "sqlite")
JOURNAL_NAME = "journal.log"
BACKUP_INFIX = ".bak-"

# Driver preference when a URL names none: SQLAlchemy's own default first (if installed),
# then these, each as (SQLAlchemy driver name, module to import).
_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg2"), ("psycopg", "psycopg"), ("pg8000", "pg8000")),
    "mysql": (("mysqldb", "MySQLdb"), ("pymysql", "pymysql"), ("mysqlconnector", "mysql")),
}
_DRIVER_MODULES = {driver: module for pairs in _DRIVERS.values() for driver, module in pairs}
_DRIVER_MODULES.update({"psycopg2cffi": "psycopg2cffi", "mariadbconnector": "mariadb"})
_INSTALL_HINT = {
    "postgresql": "pip install 'fasttricks[postgres]' (psycopg2-binary)",
    "mysql": "pip install pymysql (and use mysql+pymysql://...)",
}
# Every record Optuna's journal writes starts like this (json.dumps, compact separators).
_RECORD_START = b'{"op_code":'
_SQLITE_MAGIC = b"SQLite format 3\x00"

_logger = logging.getLogger(__name__)


class StorageError(ValueError):
    """A study storage that cannot be opened or used: a damaged or foreign journal file, a
    database that refuses the connection, a missing driver. The message is one line, names the
    file or the (password-masked) URL and says how to fix it."""


def default_journal_path(study_name: str, root: str | os.PathLike[str] = "runs") -> Path:
    """The default study file: ``<root>/<study_name>/journal.log`` (root default ``runs``)."""
    return Path(root) / study_name / JOURNAL_NAME


def mask_url(url: str | os.PathLike[str] | None) -> str:
    """``url`` with the password replaced by ``***``, safe to print or log.

    ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``. Everything up to
    the last ``@`` counts as the password, so an unescaped ``@`` in it is hidden too. File paths
    and URLs without a password come back unchanged; None becomes ``"None"``.
    """
    if url is None:
        return "None"
    text = os.fspath(url)
    return re.sub(r"^([A-Za-z][\w+.-]*://[^:@/]*):.*@", r"\1:***@", text, flags=re.DOTALL)


def storage_kind(url: str | None) -> str:
    """``"journal"``, ``"postgresql"``, ``"mysql"`` or ``"sqlite"`` for a storage URL or path.

    ``postgres://`` counts as ``postgresql``; a driver suffix (``postgresql+psycopg2``) is
    ignored.

    Raises:
        StorageError: a URL scheme that is none of these (echoing the masked URL and the
            allowed ones).
    """
    if url is None or "://" not in url:
        return "journal"
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in RDB_SCHEMES:
        raise StorageError(
            f"unsupported storage URL {mask_url(url)!r}: use a file path (journal storage, the "
            "default), postgresql://user:password@host:port/database, mysql://... or "
            "sqlite:///file.db"
        )
    return scheme


def resolve_db_url(url: str) -> str:
    """The SQLAlchemy URL to open: a bare ``postgresql://`` (or ``postgres://``) or ``mysql://``
    gets the driver that is installed.

    SQLAlchemy's own default driver is kept when it can be imported (psycopg 3 for PostgreSQL
    since SQLAlchemy 2.1, psycopg2 before); otherwise the first installed of psycopg2, psycopg,
    pg8000 (mysqldb, pymysql, mysqlconnector for MySQL). An explicit driver
    (``postgresql+psycopg2://``) is kept as written. SQLite URLs come back unchanged.

    Raises:
        StorageError: no driver for the scheme is installed, or the named one is not (the
            message says what to install).
    """
    import sqlalchemy.engine
    from sqlalchemy.dialects import registry

    kind = storage_kind(url)
    if kind not in _DRIVERS:
        return url
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception as err:  # sqlalchemy.exc.ArgumentError; its message echoes the URL
        raise StorageError(f"cannot parse storage URL {mask_url(url)!r}: expected "
                           f"{kind}://user:password@host:port/database") from err
    _, _, driver = parsed.drivername.partition("+")
    if driver:
        module = _DRIVER_MODULES.get(driver)
        if module is not None and not _importable(module):
            raise StorageError(
                f"storage URL {mask_url(url)!r} names the driver {driver!r}, which is not "
                f"installed: pip install {driver if driver != 'psycopg2' else 'psycopg2-binary'}"
                f", or write {kind}://... to use the installed one"
            )
        return parsed.set(drivername=f"{kind}+{driver}").render_as_string(hide_password=False)
    candidates = list(_DRIVERS[kind])
    try:
        default = registry.load(kind).driver
    except Exception:  # noqa: BLE001 - no default is fine, the list decides
        default = None
    if default in _DRIVER_MODULES:
        candidates.insert(0, (default, _DRIVER_MODULES[default]))
    for name, module in candidates:
        if _importable(module):
            return parsed.set(drivername=f"{kind}+{name}").render_as_string(hide_password=False)
    names = ", ".join(dict.fromkeys(name for name, _ in candidates))
    raise StorageError(f"storage URL {mask_url(url)!r} needs a {kind} driver and none is "
                       f"installed ({names}): {_INSTALL_HINT[kind]}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- journal files


@dataclass(frozen=True)
class JournalCheck:
    """What a scan of a journal file found.

    Attributes:
        path: the file.
        lines: how many lines it has (a last line without newline counts).
        records: readable records before the first bad line.
        good_bytes: byte length of those records (where the readable prefix ends).
        bad_line: 1-based number of the first unreadable line, or None when all are readable.
        reason: why that line is unreadable ("" when none is).
    """

    path: Path
    lines: int
    records: int
    good_bytes: int
    bad_line: int | None
    reason: str

    @property
    def damaged_tail(self) -> bool:
        """The only unreadable line is the last one: dropping it loses one record at most."""
        return self.bad_line is not None and self.bad_line == self.lines


def _record_problem(line: bytes) -> str:
    """Why ``line`` (with its newline, if any) is not a journal record; "" when it is one."""
    if not line.endswith(b"\n"):
        return f"the line is cut off after {len(line)} bytes (no newline)"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"not JSON ({err})"
    if not isinstance(record, dict) or not isinstance(record.get("op_code"), int):
        return "JSON but not a journal record (no op_code)"
    return ""


def check_journal(path: str | os.PathLike[str]) -> JournalCheck:
    """Scan a journal file line by line (read only) and say where it stops being readable.

    Raises:
        StorageError: ``path`` is a directory, or a file that is not an Optuna journal (its
            first line is no journal record, e.g. a text, YAML or SQLite file).
    """
    path = Path(path)
    _refuse_non_file(path)
    lines = records = good = 0
    bad: int | None = None
    reason = ""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            lines = number
            if bad is not None:
                continue
            problem = _record_problem(line)
            if problem and number == 1 and not line.startswith(_RECORD_START):
                raise StorageError(_foreign_file_message(path, line))
            if problem:
                bad, reason = number, problem
            else:
                records += 1
                good += len(line)
    return JournalCheck(path, lines, records, good, bad, reason)


def _refuse_non_file(path: Path) -> None:
    if path.is_dir():
        raise StorageError(
            f"storage path {str(path)!r} is a directory, not a journal file: pass a file such "
            f"as {str(path / JOURNAL_NAME)!r}, or omit --storage for runs/<study>/{JOURNAL_NAME}"
        )
    if path.exists() and not path.is_file():
        raise StorageError(f"storage path {str(path)!r} is not a regular file")


def _foreign_file_message(path: Path, first_line: bytes) -> str:
    hint = "pass a new file name or an existing journal.log"
    if first_line.startswith(_SQLITE_MAGIC):
        hint = f"it is an SQLite database: use --storage sqlite:///{path}"
    return (f"storage file {str(path)!r} is not an Optuna journal (its first line is not a "
            f"journal record) and is left untouched: {hint}")


def _damage_message(check: JournalCheck, why: str = "") -> str:
    """One line for a damaged journal: ``why`` the damaged line cannot simply be dropped, or,
    without ``why``, damage found while the study is open (opening it again repairs it)."""
    path = str(check.path)
    where = (f"journal file {path!r} is damaged at line {check.bad_line} of {check.lines} "
             f"({check.reason})")
    if not why:
        return (f"{where} while this process had it open. Fix: run the command again; opening "
                f"the journal repairs it (a backup {path}{BACKUP_INFIX}* is kept)")
    return (
        f"{where}; it is not dropped on its own: {why}. "
        f"Fix: restore a backup copy ({path}{BACKUP_INFIX}*) if there is one, or keep the "
        f"{check.records} record(s) before line {check.bad_line} (a backup is kept) with: "
        f"python -c \"from fasttricks.tune._storage import repair_journal; "
        f"repair_journal({path!r})\""
    )


def _backup(path: Path) -> Path:
    """Copy ``path`` to ``<path>.bak-<YYYYmmdd-HHMMSS>`` (a new name if that exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}-{counter}")
        counter += 1
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def _lock_for(path: Path) -> Any:
    from optuna.storages.journal import JournalFileSymlinkLock

    return JournalFileSymlinkLock(str(path))


# Optuna's journal operations (optuna/storages/journal/_storage.py, JournalOperation) and trial
# states (TrialState: RUNNING 0, COMPLETE 1, PRUNED 2, FAIL 3, WAITING 4).
_CREATE_STUDY, _DELETE_STUDY, _CREATE_TRIAL, _SET_TRIAL_STATE, _DISCARD_TRIALS = 0, 1, 4, 6, 10
_STUDY_OPS = frozenset({1, 2, 3})
_TRIAL_OPS = frozenset({5, 6, 7, 8, 9})
_RUNNING, _FAIL, _WAITING = 0, 3, 4
_FINISHED = frozenset({1, 2, 3})


class _Replay:
    """What Optuna's replay (``JournalStorageReplayResult.apply_logs``) does with the ids a
    journal's records refer to, and whether each record takes effect as its writer meant.

    Optuna numbers studies and trials by the order of their create records (a trial's id is
    the count of trials created before it), so a record that refers to trial 7 means "the 8th
    trial created". Optuna silently ignores a record of another process that refers to a
    missing or finished trial; in an undamaged journal the records of a trial come from the
    worker that created it (or popped it from WAITING), except a FAIL written for a dead worker,
    and a waiting trial gets nothing but its start (or a FAIL).
    """

    def __init__(self) -> None:
        self.studies: dict[int, str] = {}
        self.next_study = 0
        self.trials: list[dict[str, Any]] = []  # study, number, owner, state

    def unfinished(self, state: int | None = None) -> set[int]:
        return {i for i, t in enumerate(self.trials)
                if t["state"] not in _FINISHED and (state is None or t["state"] == state)}

    def apply(self, record: dict[str, Any]) -> str:
        """Apply ``record``; return why it would not take effect as written ("" when it does)."""
        try:
            return self._apply(record["op_code"], record.get("worker_id"), record)
        except (KeyError, TypeError, ValueError) as err:
            return f"the record lacks a field Optuna needs ({type(err).__name__}: {err})"

    def _apply(self, op: int, worker: Any, record: dict[str, Any]) -> str:
        if op == _CREATE_STUDY:
            if record["study_name"] not in self.studies.values():  # a repeat is a no-op
                self.studies[self.next_study] = record["study_name"]
                self.next_study += 1
            return ""
        if op in _STUDY_OPS or op == _CREATE_TRIAL:
            study = record["study_id"]
            if study not in self.studies:
                return f"it refers to study id {study}, which does not exist at that point"
            if op == _DELETE_STUDY:
                del self.studies[study]
            elif op == _CREATE_TRIAL:
                number = sum(1 for t in self.trials if t["study"] == study)
                self.trials.append({"study": study, "number": number, "owner": worker,
                                    "state": int(record.get("state", _RUNNING))})
            return ""
        if op == _DISCARD_TRIALS:
            return ""
        if op not in _TRIAL_OPS:
            return f"unknown op_code {op}"
        trial_id = record["trial_id"]
        if not isinstance(trial_id, int) or not 0 <= trial_id < len(self.trials):
            return f"it refers to trial id {trial_id}, which does not exist at that point"
        trial = self.trials[trial_id]
        if trial["state"] in _FINISHED:
            return f"it updates trial {trial['number']} after that trial finished"
        if op == _SET_TRIAL_STATE:
            state = int(record["state"])
            if state == _RUNNING:  # a waiting (enqueued) trial is popped by a worker
                if trial["state"] != _WAITING:
                    return f"it starts trial {trial['number']}, which is not waiting"
                trial["owner"] = worker
            foreign = worker != trial["owner"] and state != _FAIL
            trial["state"] = state  # Optuna applies it either way
        elif trial["state"] == _WAITING:
            return f"it updates trial {trial['number']}, which has not started"
        else:
            foreign = worker != trial["owner"]
        if foreign:
            return f"it is written by a worker that does not run trial {trial['number']}"
        return ""


@dataclass(frozen=True)
class _RepairPlan:
    """How to repair a damaged journal: keep ``kept`` (bytes) and say ``summary``.

    ``truncates``: the records from the first damaged line on are all dropped (records after
    it depend on what it may have held: ``why``); otherwise only the damaged lines and the later
    records of the trials that were running when they were written are dropped.
    """

    kept: bytes
    truncates: bool
    summary: str
    why: str = ""


def _plan_repair(path: Path) -> _RepairPlan:
    """Drop the unreadable lines and what depends on them, keeping every record after them that
    still replays as it was written; or, when that is not possible, keep only the records before
    the first unreadable line.

    An unreadable line may have held anything. Records after it are checked by replaying them
    (:class:`_Replay`): each must refer to a study or trial that exists and is not finished,
    written by the worker that runs the trial. A line that created a trial shifts the ids of all
    later trials, which that check catches; then only truncation is consistent. A line about a
    running trial (a parameter, an attribute, its final state) leaves no such trace, so the
    trials that were running when the line was written lose their later records: they stay
    unfinished (RUNNING), as if their worker had been killed there, and are run again. A
    waiting trial whose start may have been on the damaged line is treated the same way.
    """
    lines = path.read_bytes().splitlines(keepends=True)
    bad = {n: _record_problem(line) for n, line in enumerate(lines, start=1)}
    bad = {n: problem for n, problem in bad.items() if problem}
    first = min(bad)
    prefix = b"".join(lines[: first - 1])
    suspects: set[int] = set()
    while True:
        replay = _Replay()
        kept: list[bytes] = []
        in_flight: set[int] = set()  # running when a damaged line was written: later ones drop
        unfinished: set[int] = set()  # running or waiting then: dropped if a later record fails
        dependent = 0
        failure = None
        for number, line in enumerate(lines, start=1):
            if number in bad:
                in_flight |= replay.unfinished(_RUNNING)
                unfinished |= replay.unfinished()
                continue
            record = json.loads(line)
            trial_id = record.get("trial_id") if record["op_code"] in _TRIAL_OPS else None
            if number > first and trial_id in in_flight | suspects:
                dependent += 1
                continue
            problem = replay.apply(record)
            if problem and number > first:
                failure = (number, problem, trial_id)
                break
            kept.append(line)
        if failure is None:
            break
        number, problem, trial_id = failure
        if trial_id in unfinished and trial_id not in suspects:
            suspects.add(trial_id)  # it may have been started on the damaged line: drop its rest
            continue
        why = f"line {number} depends on what it held ({problem})"
        return _RepairPlan(prefix, True, f"dropped the {len(lines) - first + 1} line(s) from "
                           f"line {first} on, since {why}, and kept the {first - 1} record(s) "
                           f"before it", why)
    lost = sorted({replay.trials[i]["number"] for i in in_flight | suspects})
    numbers = ", ".join(str(n) for n in sorted(bad))
    summary = f"dropped {len(bad)} line(s) (line {numbers}: {bad[first]})"
    if dependent:
        summary += (f" and the {dependent} later record(s) of trial(s) "
                    f"{', '.join(map(str, lost))}, which may have lost a record there (they stay "
                    f"unfinished and are run again)")
    summary += f"; kept the other {len(kept)} record(s)"
    return _RepairPlan(b"".join(kept), False, summary)


def repair_journal(path: str | os.PathLike[str], *, lock: Any = None) -> JournalCheck:
    """Repair a damaged journal, after copying it to ``<path>.bak-<time>``, losing as little as
    a consistent study allows.

    Unreadable lines are dropped, with the later records of the trials that were running when
    they were written; every other record after them is kept when it still replays as written
    (see :func:`_plan_repair`). When it does not (the damaged line created a trial or a study
    that later records refer to), the journal is cut back to the records before the first
    unreadable line: an append-only journal replayed up to any line is the study as it was at
    that moment. Either way the warning names the file, the lines and the backup. A file
    without damage is left alone. Runs under the journal's lock.

    Args:
        path: the journal file.
        lock: the journal's lock object (default: Optuna's symlink lock ``<path>.lock``).

    Returns:
        The scan after the repair.
    """
    path = Path(path)
    lock = lock or _lock_for(path)
    from optuna.storages.journal._file import get_lock_file

    with get_lock_file(lock):
        check = check_journal(path)
        if check.bad_line is None:
            return check
        _apply_repair(path, check, _plan_repair(path))
        return check_journal(path)


def _apply_repair(path: Path, check: JournalCheck, plan: _RepairPlan) -> None:
    """Under the lock: back the file up, write the kept records in its place (atomically)."""
    backup = _backup(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(plan.kept)
    _logger.warning("journal file %s: line %d of %d was unreadable; %s; the damaged file is "
                    "saved as %s", path, check.bad_line, check.lines, plan.summary, backup)


def _open_journal_checked(path: Path, lock: Any) -> None:
    """Repair or refuse a journal before Optuna reads it (see the module docstring)."""
    check = check_journal(path)
    if check.bad_line is None:
        return
    # A line may look cut off only because another process is writing it right now: decide
    # under the lock, where no writer is active.
    from optuna.storages.journal._file import get_lock_file

    with get_lock_file(lock):
        check = check_journal(path)
        if check.bad_line is None:
            return
        plan = _plan_repair(path)
        if plan.truncates and not check.damaged_tail:
            raise StorageError(_damage_message(check, plan.why))
        _apply_repair(path, check, plan)


def _journal_backend_class() -> type:
    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    class GuardedJournalFileBackend(JournalFileBackend):
        """Optuna's journal file backend that never appends after a partial record and names
        the file and line when a record cannot be read."""

        def __reduce__(self) -> tuple[Any, tuple[str]]:
            # The class is made on first use (optuna is imported lazily): pickle by path.
            return (journal_backend, (self._file_path,))

        def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
            try:
                yield from super().read_logs(log_number_from)
            except ValueError as err:  # json.JSONDecodeError, or Optuna's "Invalid log format"
                check = check_journal(self._file_path)
                if check.bad_line is None:
                    raise StorageError(f"journal file {self._file_path!r}: {err}") from err
                raise StorageError(_damage_message(check)) from err

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs)
                    + "\n").encode("utf-8")
            with get_lock_file(self._lock):
                self._drop_partial_tail()
                # Unbuffered, so that a failed write leaves nothing behind to flush later.
                with open(self._file_path, "ab", buffering=0) as f:
                    size = f.seek(0, os.SEEK_END)
                    try:
                        view = memoryview(data)
                        while view:
                            written = f.write(view)
                            view = view[written or 0:]
                        os.fsync(f.fileno())
                    except BaseException:
                        # Disk full, file size limit, interrupt: cut the partial record off.
                        try:
                            f.truncate(size)
                        except OSError:
                            pass  # the next append (or open) drops it
                        raise

        def _drop_partial_tail(self) -> None:
            """Under the lock: if the file does not end with a newline, cut it back to the last
            newline (after a backup), so the next record starts on its own line."""
            with open(self._file_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                end = size
                keep = 0
                while end > 0:
                    start = max(0, end - 65536)
                    f.seek(start)
                    chunk = f.read(end - start)
                    newline = chunk.rfind(b"\n")
                    if newline >= 0:
                        keep = start + newline + 1
                        break
                    end = start
            backup = _backup(Path(self._file_path))
            with open(self._file_path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            _logger.warning(
                "journal file %s ended with a partial record (%d bytes without newline: a "
                "writer was killed or the disk was full); dropped it before appending; the "
                "damaged file is saved as %s", self._file_path, size - keep, backup)

    return GuardedJournalFileBackend


_BACKEND_CLASS: type | None = None


def journal_backend(path: str | os.PathLike[str]) -> Any:
    """A checked journal-file backend for ``path`` (created when missing, with its folder).

    The file is scanned first: a damaged last line is backed up and dropped, a damaged earlier
    line, a directory or a file that is no journal raises :class:`StorageError`.
    """
    global _BACKEND_CLASS
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or text == "":
        raise StorageError(
            f"storage path {text!r} names a directory, not a journal file: pass a file such as "
            f"{os.path.join(text or '.', JOURNAL_NAME)!r}, or omit --storage for "
            f"runs/<study>/{JOURNAL_NAME}")
    path = Path(path)
    _refuse_non_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise StorageError(f"cannot create the folder of storage file {str(path)!r}: "
                           f"{err.strerror} ({err.filename})") from err
    lock = _lock_for(path)
    if path.exists():
        _open_journal_checked(path, lock)
    if _BACKEND_CLASS is None:
        _BACKEND_CLASS = _journal_backend_class()
    return _BACKEND_CLASS(str(path), lock)


# --------------------------------------------------------------------------- make_storage


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
            file there; ``postgresql://user:password@host:port/database`` (or ``postgres://``),
            ``mysql://...`` or ``sqlite:///...`` for Optuna's RDB storage.
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
        StorageError: (a ``ValueError``) a damaged or foreign journal file or a directory; a
            database that cannot be reached, refuses the password or does not exist; a missing
            driver. One line, password masked.
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
            f"SQLite storage {mask_url(url)!r} cannot serve {workers} workers: SQLite locks the "
            "whole file on every write, so concurrent trials fail with 'database is locked'. "
            "Use the default journal file (omit --storage) for several workers on one machine, "
            "or postgresql://... for several machines."
        )
    if kind == "journal":
        if heartbeat is not None or max_retry is not None or grace_period is not None:
            raise ValueError(
                "heartbeat, grace period and max retry need an RDB storage (postgresql://...): "
                "the journal file storage cannot detect dead workers"
            )
        path = url if url is not None else default_journal_path(study_name, root)
        return optuna.storages.JournalStorage(journal_backend(path))
    if max_retry is not None and heartbeat is None:
        raise ValueError(
            f"max_retry={max_retry} needs a heartbeat: only a heartbeat tells a dead worker's "
            "trial apart from a slow one (set heartbeat, e.g. 60 seconds)"
        )
    if grace_period is not None and heartbeat is None:
        raise ValueError(f"grace_period={grace_period} needs a heartbeat")
    resolved = resolve_db_url(url)
    with warnings.catch_warnings():
        # Heartbeats and retries are experimental in Optuna: a documented, intended use here.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = None
        if max_retry is not None:
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        return _open_rdb(resolved, kind, heartbeat, grace_period, callback, shown=url)


def _engine_kwargs(url: str, kind: str) -> dict[str, Any] | None:
    if kind == "sqlite":
        return None
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if kind == "postgresql" and "connect_timeout" not in url:
        # libpq waits forever for an unreachable host by default.
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def _open_rdb(url: str, kind: str, heartbeat: int | None, grace_period: int | None,
              callback: Any, attempts: int = 5, shown: str | None = None) -> Any:
    """RDBStorage, retrying when another process creates the tables at the same moment.

    Two workers starting on an empty database both run ``CREATE TABLE``/``CREATE TYPE``; the
    loser gets a unique-violation error although the schema is then complete. A connection
    that fails (server down, wrong password, unknown database) raises :class:`StorageError`.
    """
    import optuna
    import sqlalchemy.exc

    shown = shown or url
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=_engine_kwargs(url, kind),
                heartbeat_interval=heartbeat,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=callback,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == attempts - 1:
                raise StorageError(_connection_message(shown, err)) from err
            time.sleep(0.5 * (attempt + 1))
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as err:
            raise StorageError(_connection_message(shown, err)) from None
        except ImportError as err:
            raise StorageError(f"cannot open storage {mask_url(shown)!r}: its database driver "
                               f"cannot be imported ({err.__cause__ or err}); "
                               f"{_INSTALL_HINT.get(kind, 'install the driver')}") from None
    raise AssertionError("unreachable")


def _connection_message(url: str, err: Exception) -> str:
    """One line for a failed connection: what went wrong and what to check, password hidden."""
    import sqlalchemy.engine

    try:
        parsed = sqlalchemy.engine.make_url(url)
        user, database = parsed.username or "", parsed.database or ""
        place = f"{parsed.host or 'localhost'}:{parsed.port or 'default port'}"
        password = parsed.password
    except Exception:  # noqa: BLE001 - the URL was parsed before; be safe anyway
        user = database = place = ""
        password = None
    detail = str(getattr(err, "orig", None) or err)
    lower = detail.lower()
    if "password authentication failed" in lower or "no password supplied" in lower:
        why = (f"the server at {place} refused user {user!r} with this password: check user "
               "and password in the URL")
    elif "role" in lower and "does not exist" in lower:
        why = f"the server at {place} has no user {user!r}: check the user name in the URL"
    elif "database" in lower and "does not exist" in lower:
        why = (f"the server at {place} has no database {database!r}: create it first "
               f"(createdb {database}, or CREATE DATABASE {database}) or fix the URL")
    elif any(text in lower for text in ("connection refused", "could not connect",
                                        "timeout expired", "could not translate host",
                                        "name or service not known", "no route to host",
                                        "can't connect")):
        why = (f"no database server answers at {place}: is it running, and are host and port "
               "right?")
    else:
        first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        why = first or type(err).__name__
    message = f"cannot open storage {mask_url(url)!r}: {why}"
    if password:
        message = message.replace(password, "***")
    return message
