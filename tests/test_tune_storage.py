"""Storage selection (journal file by default, RDB for databases, SQLite refused for workers),
damaged and foreign journal files, concurrent processes on one journal, URLs and drivers."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState

from fasttricks.recipes import builtin_recipe_path
from fasttricks.tune import make_storage
from fasttricks.tune._storage import (
    StorageError, check_journal, mask_url, repair_journal, resolve_db_url, storage_kind,
)

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_default_storage_is_a_journal_file_under_runs(tmp_cwd):
    storage = make_storage(None, "digits-hyperband")
    assert isinstance(storage, JournalStorage)
    assert (tmp_cwd / "runs" / "digits-hyperband" / "journal.log").is_file()


def test_a_path_is_a_journal_file_there(tmp_path):
    storage = make_storage(str(tmp_path / "sub" / "study.log"), "x", workers=4)
    assert isinstance(storage, JournalStorage)
    assert (tmp_path / "sub" / "study.log").is_file()


def test_sqlite_is_accepted_for_one_worker(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", workers=1)
    assert isinstance(storage, RDBStorage)


def test_sqlite_with_several_workers_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError) as info:
        make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", workers=2)
    message = str(info.value)
    assert "2 workers" in message and "database is locked" in message
    assert "postgresql://" in message


def test_heartbeat_needs_an_rdb_storage_and_retry_needs_a_heartbeat(tmp_path):
    with pytest.raises(ValueError, match="RDB storage"):
        make_storage(None, "x", heartbeat=5, root=tmp_path)
    with pytest.raises(ValueError, match="needs a heartbeat"):
        make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", max_retry=2)


def test_sqlite_heartbeat_and_retry_are_wired_into_optuna(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path / 'a.db'}", "x", heartbeat=3, max_retry=2)
    assert storage.get_heartbeat_interval() == 3
    callback = storage.get_heartbeat_stale_trial_callback()
    assert isinstance(callback, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert callback._max_retry == 2


@pytest.mark.parametrize("url,kind", [
    (None, "journal"), ("runs/x.log", "journal"), ("postgresql://u@h/db", "postgresql"),
    ("postgresql+psycopg2://u@h/db", "postgresql"), ("postgres://u@h/db", "postgresql"),
    ("sqlite:///a.db", "sqlite"), ("mysql://u@h/db", "mysql"),
])
def test_storage_kind_from_url(url, kind):
    assert storage_kind(url) == kind


def test_unknown_storage_scheme_lists_the_supported_ones():
    with pytest.raises(ValueError, match="redis://h.*postgresql://"):
        storage_kind("redis://h")


def _add_trials(path, n, out):
    storage = make_storage(path, "shared")
    study = optuna.load_study(study_name="shared", storage=storage)
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, float(trial.number))
    out.put(os.getpid())


def test_journal_file_is_safe_for_concurrent_processes(tmp_path):
    path = str(tmp_path / "journal.log")
    optuna.create_study(study_name="shared", storage=make_storage(path, "shared"))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_add_trials, args=(path, 15, out)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    study = optuna.load_study(study_name="shared", storage=make_storage(path, "shared"))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(30))  # no lost and no duplicate trial numbers
    assert all(t.value == t.number for t in study.trials)


# ---------------------------------------------------------------- damaged and foreign journals


def _records(path):
    """Every line of a journal parsed independently of Optuna and of the code under test."""
    data = Path(path).read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def _backups(path):
    return sorted(Path(path).parent.glob(Path(path).name + ".bak-*"))


def _quadratic_study(path, n_trials, name="q"):
    study = optuna.create_study(study_name=name, storage=make_storage(str(path), name),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(0))
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.25) ** 2, n_trials=n_trials)
    return study


def _cut_last_record(path, keep=0.5):
    """Truncate the file in the middle of its last record, as a killed writer leaves it."""
    data = Path(path).read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + int((len(data) - start) * keep)
    Path(path).write_bytes(data[:cut])
    return data[start:], data[:cut]


def test_a_truncated_real_study_is_backed_up_repaired_and_resumed(tmp_path):
    """The command line on the digits recipe; its journal loses half of its last record (as a
    writer killed mid-write leaves it); the same command with more trials resumes."""
    import yaml

    recipe = yaml.safe_load(builtin_recipe_path("digits").read_text())
    recipe["schedule"]["epochs"] = 2
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "tiny.space.yaml").write_text(yaml.safe_dump(
        {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}))
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")

    def cli(n_trials):
        return subprocess.run(
            [sys.executable, "-m", "fasttricks.tune", "--recipe", "tiny.yaml", "--n-trials",
             str(n_trials), "--pruner", "none", "--sampler", "random", "--threads", "1",
             "--study-name", "cut"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    first = cli(2)
    assert first.returncode == 0, first.stderr
    path = tmp_path / "runs" / "cut" / "journal.log"
    storage = make_storage(str(path))
    before = {t.number: (t.params, t.value) for t in
              optuna.load_study(study_name="cut", storage=storage).trials}
    assert len(before) == 2 and all(value is not None for _, value in before.values())
    lost, damaged = _cut_last_record(path)
    assert json.loads(lost)["op_code"] != 0  # a trial's record, not the study's creation
    second = cli(4)
    assert second.returncode == 0, second.stderr
    assert "unreadable" in second.stderr and ".bak-" in second.stderr
    (backup,) = _backups(path)
    assert backup.read_bytes() == damaged  # the damaged file, byte for byte
    records = _records(path)  # every line a whole record: nothing was glued onto the cut one
    assert records[: len(_records_of(damaged))] == _records_of(damaged)
    study = optuna.load_study(study_name="cut", storage=make_storage(str(path)))
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 4
    # the trial whose last record was cut lost only that record; the other one is intact
    kept = {t.number: (t.params, t.value) for t in study.trials if t.number in before}
    assert sum(kept[n] == before[n] for n in before) >= len(before) - 1
    assert all(kept[n][0] == before[n][0] for n in before)


def _records_of(data):
    return [json.loads(line) for line in data.splitlines(keepends=True) if line.endswith(b"\n")]


def test_truncated_tail_resumes_and_new_trials_append_whole_records(tmp_path, caplog):
    path = tmp_path / "journal.log"
    study = _quadratic_study(path, 4)
    values = {t.number: t.value for t in study.trials}
    lost, damaged = _cut_last_record(path, keep=0.4)
    assert json.loads(lost)["op_code"] == 6  # the last trial's "complete" record
    with caplog.at_level(logging.WARNING, logger="fasttricks.tune._storage"):
        resumed = _quadratic_study(path, 3)
    assert "dropped 1 line" in caplog.text
    assert _backups(path)[0].read_bytes() == damaged
    records = _records(path)  # fails if a record was glued onto the partial line
    old = _records_of(damaged)
    assert records[: len(old)] == old
    # load_if_exists first tries to create the study; then create, param, complete per trial
    assert [r["op_code"] for r in records[len(old):]] == [0] + [4, 5, 6] * 3
    reread = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    states = [t.state for t in reread.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.RUNNING] + [TrialState.COMPLETE] * 3
    assert all(reread.trials[n].value == values[n] for n in range(3))
    assert [t.value for t in reread.trials[4:]] == [t.value for t in resumed.trials[4:]]


def test_a_partial_first_record_is_a_damaged_journal_not_a_foreign_file(tmp_path):
    path = tmp_path / "journal.log"
    optuna.create_study(study_name="q", storage=make_storage(str(path)))
    _cut_last_record(path, keep=0.5)
    _quadratic_study(path, 2)
    assert [r["op_code"] for r in _records(path)][0] == 0
    assert len(_backups(path)) == 1


def test_a_record_cut_off_by_another_process_is_dropped_before_the_next_append(tmp_path, caplog):
    """A process that already has the study open must not glue its record onto a partial one."""
    path = tmp_path / "journal.log"
    study = _quadratic_study(path, 2)
    partial = b'{"op_code":4,"worker_id":"dead-1","study_id":0,"datet'
    with open(path, "ab") as f:  # what a writer killed mid-record leaves
        f.write(partial)
    with caplog.at_level(logging.WARNING, logger="fasttricks.tune._storage"):
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=2)
    assert f"partial record ({len(partial)} bytes" in caplog.text
    assert len(_records(path)) == 1 + 2 * 3 + 2 * 3  # study, then 3 records per trial
    assert len(optuna.load_study(study_name="q", storage=make_storage(str(path))).trials) == 4


FULL_DISK = textwrap.dedent("""
    import errno, os, resource, signal, sys
    import optuna
    from fasttricks.tune._storage import make_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = sys.argv[1]
    study = optuna.create_study(study_name="q", storage=make_storage(path))
    objective = lambda t: t.suggest_float("x", -1, 1) ** 2
    study.optimize(objective, n_trials=2)
    size = os.path.getsize(path)
    # The kernel refuses writes past this size, part way into the next record (a full disk).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, hard))
    try:
        study.ask()
    except OSError as err:
        assert err.errno == errno.EFBIG, err
        print("write failed", os.path.getsize(path) - size)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    study.optimize(objective, n_trials=2)
""")


def test_a_failed_append_is_cut_back_off_so_the_journal_stays_whole(tmp_path):
    path = tmp_path / "journal.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "write failed 0" in result.stdout  # the partial record was cut off again
    records = _records(path)
    study = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert len(records) == 1 + 4 * 3


GARBLED = b'{"op_code": 5, "worker_id": "\xff\xfe garbled\n'


def _two_worker_study(path, n_trials):
    """A real study with two threads (two Optuna workers) interleaving their records: per trial
    a create, two params, an intermediate value, a user attribute and the final state."""
    import time

    study = optuna.create_study(study_name="q", storage=make_storage(str(path)),
                                sampler=optuna.samplers.RandomSampler(0))

    def objective(trial):
        x, y = trial.suggest_float("x", -1, 1), trial.suggest_int("y", 0, 9)
        time.sleep(0.02)  # both threads hold a running trial at the same time
        trial.report(x, 0)
        trial.set_user_attr("tag", trial.number)
        return x * x + y

    study.optimize(objective, n_trials=n_trials, n_jobs=2)
    return {t.number: (t.params, t.value) for t in study.trials}


def _garble(path, line_number):
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_number - 1] = GARBLED
    path.write_bytes(b"".join(lines))
    return b"".join(lines)


def _running_at(records, line_number):
    """Trial ids created before ``line_number`` (1-based) whose final state comes after it,
    worked out from the records alone (trial id = order of the create records)."""
    created = [i for i, r in enumerate(records[: line_number - 1]) if r["op_code"] == 4]
    ids = range(len(created))
    finished = {r["trial_id"] for r in records[: line_number - 1]
                if r["op_code"] == 6 and r["state"] != 0}
    return {t for t in ids if t not in finished}


def test_a_garbled_middle_line_is_dropped_and_the_records_after_it_kept(tmp_path, caplog):
    path = tmp_path / "journal.log"
    _quadratic_study(path, 3)  # lines: study, then create, param, complete per trial
    original = {t.number: (t.params, t.value)
                for t in optuna.load_study(study_name="q", storage=make_storage(str(path))).trials}
    damaged = _garble(path, 6)  # trial 1's parameter
    with caplog.at_level(logging.WARNING, logger="fasttricks.tune._storage"):
        study = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    said = f"journal file {path}: line 6 of 10 was unreadable; dropped 1 line(s) (line 6: "
    assert said in caplog.text
    assert "1 later record(s) of trial(s) 1" in caplog.text and "kept the other 8" in caplog.text
    assert _backups(path)[0].read_bytes() == damaged
    # trial 1 lost its parameter and then its final state; trials 0 and 2 are whole
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING,
                                               TrialState.COMPLETE]
    assert [(t.params, t.value) for t in study.trials if t.number != 1] == [original[0],
                                                                          original[2]]
    assert len(_records(path)) == 8
    # the study goes on: two more trials append whole records
    _quadratic_study(path, 2)
    reread = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    assert len(reread.trials) == 5 and reread.trials[2].params == original[2][0]


@pytest.mark.parametrize("where", [0.4, 0.6, 0.8])
def test_with_two_workers_only_the_trials_running_at_the_damage_are_lost(tmp_path, where):
    path = tmp_path / "journal.log"
    original = _two_worker_study(path, 8)
    records = _records(path)
    # a record about a trial in the middle (not a create, which the next test covers)
    line = next(n for n in range(int(len(records) * where), len(records))
                if records[n - 1]["op_code"] not in (0, 4))
    lost = _running_at(records, line)
    assert 1 <= len(lost) <= 2
    _garble(path, line)
    study = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    assert len(study.trials) == 8
    kept = {t.number: (t.params, t.value) for t in study.trials
            if t.state == TrialState.COMPLETE}
    assert set(kept) == set(range(8)) - lost
    assert all(kept[n] == original[n] for n in kept)  # params and values as they were
    assert {t.number for t in study.trials if t.state == TrialState.RUNNING} == lost


def test_a_garbled_trial_creation_falls_back_to_the_records_before_it(tmp_path):
    path = tmp_path / "journal.log"
    original = _two_worker_study(path, 6)
    records = _records(path)
    creates = [n for n, r in enumerate(records, start=1) if r["op_code"] == 4]
    line = creates[3]  # trial id 3: every later trial's id would shift by one
    damaged = _garble(path, line)
    with pytest.raises(StorageError) as info:
        make_storage(str(path))
    message = str(info.value)
    assert "\n" not in message and f"line {line} of {len(records)}" in message
    assert "depends on what it held" in message and "repair_journal" in message
    assert path.read_bytes() == damaged and not _backups(path)  # nothing written
    check = repair_journal(path)  # the named fix: the records before the damage, a backup
    assert check.bad_line is None and check.records == line - 1
    assert _backups(path)[0].read_bytes() == damaged
    study = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    before = records[: line - 1]
    done = {r["trial_id"] for r in before if r["op_code"] == 6 and r["state"] == 1}
    assert len(study.trials) == sum(r["op_code"] == 4 for r in before) == 3
    assert {t.number for t in study.trials if t.state == TrialState.COMPLETE} == done
    assert all((t.params, t.value) == original[t.number] for t in study.trials
               if t.number in done)


def test_a_garbled_start_of_an_enqueued_trial_drops_that_trials_later_records(tmp_path):
    path = tmp_path / "journal.log"
    study = optuna.create_study(study_name="q", storage=make_storage(str(path)))
    for x in (0.1, 0.2):
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=3)
    records = _records(path)
    # the second enqueued trial (id 1) is popped: state RUNNING, written by the worker
    line = next(n for n, r in enumerate(records, start=1)
                if r["op_code"] == 6 and r["trial_id"] == 1 and r["state"] == 0)
    _garble(path, line)
    study = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.WAITING,
                                               TrialState.COMPLETE]
    assert study.trials[0].params == {"x": 0.1}
    # the waiting trial is run again with its enqueued value
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
    assert study.trials[1].state == TrialState.COMPLETE and study.trials[1].params == {"x": 0.2}


def test_a_line_garbled_while_open_names_the_file_and_line(tmp_path):
    path = tmp_path / "journal.log"
    study = _quadratic_study(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(3, b"garbage\n")
    path.write_bytes(b"".join(lines))
    with pytest.raises(StorageError, match=r"journal\.log.*line 4 of \d+ .*Expecting value.*"
                                           r"run the command again"):
        study.optimize(lambda t: t.suggest_float("x", -1, 1), n_trials=1)
    # opening it again drops the junk line; trial 0 was running there, so it stays unfinished
    # (as does trial 2, whose create record was written just before the failed read)
    reopened = optuna.load_study(study_name="q", storage=make_storage(str(path)))
    assert [t.state for t in reopened.trials] == [TrialState.RUNNING, TrialState.COMPLETE,
                                                  TrialState.RUNNING]
    assert reopened.trials[1].params == study.trials[1].params


def test_storage_pointing_at_a_directory_is_refused_by_name(tmp_path):
    folder = tmp_path / "runs" / "study"
    folder.mkdir(parents=True)
    with pytest.raises(StorageError, match=f"{folder}.* is a directory.*journal.log"):
        make_storage(str(folder))
    assert list(folder.iterdir()) == []
    new = tmp_path / "new_folder"
    with pytest.raises(StorageError, match="names a directory"):
        make_storage(f"{new}/")  # not made into a file called new_folder
    assert not new.exists()


@pytest.mark.parametrize("content,hint", [
    (b"optimizer:\n  lr: 0.01\n", "new file name"),
    (b"just some notes without a newline", "new file name"),
    (b"SQLite format 3\x00" + bytes(100), "sqlite:///"),
])
def test_storage_pointing_at_a_non_journal_file_is_refused_by_name(tmp_path, content, hint):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(StorageError) as info:
        make_storage(str(path))
    assert f"{str(path)!r} is not an Optuna journal" in str(info.value)
    assert hint in str(info.value)
    assert path.read_bytes() == content and not _backups(path)


def test_check_journal_counts_lines_and_finds_the_first_bad_one(tmp_path):
    path = tmp_path / "journal.log"
    _quadratic_study(path, 1)
    good = path.read_bytes()
    assert check_journal(path).bad_line is None and check_journal(path).records == 4
    path.write_bytes(good + b'{"no_op":1}\n' + good[:20])
    check = check_journal(path)
    assert (check.lines, check.records, check.bad_line) == (6, 4, 5)
    assert check.good_bytes == len(good) and not check.damaged_tail


CONCURRENT = textwrap.dedent("""
    import os, sys
    import optuna
    from fasttricks.tune._storage import make_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    study = optuna.create_study(study_name="shared", storage=make_storage(path),
                                load_if_exists=True, sampler=optuna.samplers.RandomSampler(seed))
    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        return trial.suggest_float("x", -1, 1) ** 2
    study.optimize(objective, n_trials=n)
""")


@pytest.mark.parametrize("damaged", [False, True])
def test_two_processes_on_one_journal_keep_every_trial_once(tmp_path, damaged):
    """Two interpreters started together (both repairing a cut tail when damaged)."""
    path = tmp_path / "journal.log"
    _quadratic_study(path, 2, name="shared")
    if damaged:
        _cut_last_record(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                  "")]))
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(path), "12", str(seed)],
                              env=env, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    assert len(_backups(path)) == int(damaged)  # one repair, however many processes opened it
    records = _records(path)
    study = optuna.load_study(study_name="shared", storage=make_storage(str(path)))
    trials = study.trials
    assert [t.number for t in trials] == list(range(26))
    new = [t for t in trials if "pid" in t.user_attrs]
    assert len(new) == 24 and len({t.user_attrs["pid"] for t in new}) == 2
    assert all(t.state == TrialState.COMPLETE and t.value == t.params["x"] ** 2 for t in new)
    # each trial was created exactly once: one create-trial record per trial
    assert sum(r["op_code"] == 4 for r in records) == 26


# ---------------------------------------------------------------- URLs, drivers, masking


@pytest.mark.parametrize("url,shown", [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql+psycopg2://u:p%40ss@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
    ("postgres://u:p@ss:w@h/db", "postgres://u:***@h/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("redis://admin:hunter2@h", "redis://admin:***@h"),
    ("runs/x/journal.log", "runs/x/journal.log"),
])
def test_mask_url_hides_the_password(url, shown):
    assert mask_url(url) == shown


def test_unsupported_url_error_masks_the_password():
    with pytest.raises(StorageError) as info:
        make_storage("redis://admin:hunter2@cache:6379/0")
    assert "hunter2" not in str(info.value) and "redis://admin:***@cache" in str(info.value)


@pytest.mark.parametrize("installed,driver", [
    ({"psycopg2"}, "psycopg2"),                 # what the postgres extra installs
    ({"psycopg2", "psycopg"}, "psycopg"),       # SQLAlchemy 2.1's own default, when present
    ({"pg8000"}, "pg8000"),
])
def test_bare_postgresql_url_gets_the_installed_driver(monkeypatch, installed, driver):
    import fasttricks.tune._storage as storage

    monkeypatch.setattr(storage, "_importable", lambda module: module in installed)
    from sqlalchemy.dialects import registry

    default = registry.load("postgresql").driver
    expected = default if default in installed else driver
    for scheme in ("postgresql", "postgres"):
        url = resolve_db_url(f"{scheme}://user:p%40ss@host:5433/db")
        assert url == f"postgresql+{expected}://user:p%40ss@host:5433/db"


def test_the_installed_driver_opens_a_bare_postgresql_url():
    """With this environment's packages (psycopg2-binary from the postgres extra)."""
    import sqlalchemy

    pytest.importorskip("psycopg2")
    url = resolve_db_url("postgresql://user:pw@host/db")
    engine = sqlalchemy.create_engine(url)  # loads the driver; connects only when used
    assert engine.dialect.name == "postgresql"
    assert engine.dialect.driver in ("psycopg2", "psycopg")


def test_no_postgresql_driver_says_what_to_install(monkeypatch):
    import fasttricks.tune._storage as storage

    monkeypatch.setattr(storage, "_importable", lambda module: False)
    with pytest.raises(StorageError) as info:
        make_storage("postgresql://user:secret@host/db")
    message = str(info.value)
    assert "fasttricks[postgres]" in message and "psycopg2" in message
    assert "secret" not in message
    with pytest.raises(StorageError, match="names the driver 'psycopg2'.*psycopg2-binary"):
        make_storage("postgresql+psycopg2://user:secret@host/db")


def test_a_journal_storage_survives_pickling(tmp_path):
    import pickle

    path = tmp_path / "journal.log"
    _quadratic_study(path, 2)
    storage = pickle.loads(pickle.dumps(make_storage(str(path))))
    study = optuna.load_study(study_name="q", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
    assert len(_records(path)) == 1 + 3 * 3
