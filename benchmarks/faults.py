"""Robustness benchmark: make each fault happen for real, recover, and count what was lost.

Faults (each ``--runs`` times, default 2):

- ``train killed``: SIGKILL at a random point of ``python -m fasttricks.train`` over a previous
  whole run; the folder must still be that whole run, and re-running must finish a new one.
- ``kfold killed``: SIGKILL at a random point of ``--kfold 3``; finished folds must be reused.
- ``tune killed (journal)`` / ``tune killed (postgres)``: SIGKILL of the launcher and its
  workers at a random point of ``python -m fasttricks.tune`` (PostgreSQL only where initdb is
  available, see ``tests/pg_cluster.py``); re-running must reach ``--n-trials`` finished trials
  without losing a finished one or repeating parameters.
- ``journal truncated`` / ``journal garbled``: in a finished study's journal, the last record
  cut at a random byte, or a random line of the middle half replaced by junk; re-running
  repairs it (saying so): the cut record goes, a garbled line goes with the later records of
  the trial running there, or, when later records depend on it (it created a trial), the
  command stops naming the file and the fix, which is then applied (keeping the records
  before it).
- ``disk full (RLIMIT_FSIZE)``: training under a file-size limit too small for ``model.pth``;
  the previous run must stay whole, and the command must fail in one line.
- ``NaN data`` / ``diverging lr``: an inf column / SGD at lr=100; the command must refuse in one
  line and write nothing; the remedy it names (``data.impute=median`` / a lower lr) recovers.

Recovered = after the fault, re-running the same command (with the remedy the message names,
for the last three) ends with a whole, correct result: the run folder reads back
(:func:`fasttricks.runs.read_run`) and its ``model.pth`` reproduces the saved test score; the
study has exactly ``n_trials`` finished trials. Lost work = finished units (a previous whole
run, finished folds, finished trials) that were gone or redone after recovery. Duplicated =
finished trials whose parameters repeat another's. A run that does not recover records why in
its row's ``failures`` (the failing command's last error line, or the check that failed).

A new process pays Python's and fastai's imports (most of a command's time on a tiny recipe),
so the benchmark starts as few as it can: a command that is killed or runs under a file-size
limit is a process of its own, as are the one training run (train killed, disk full) and the
one tuning run (journal rows) that the other runs start from as copies, and whose times set
the kill points; the re-runs that recover, and the refused commands of the last two rows, run
the same command line through the same ``main()`` in this process.

Usage: ``python benchmarks/faults.py [--runs 2] [--seed 0]``; writes
``benchmarks/results/faults.json``. A tiny recipe (one epoch) and three trials keep it to a
few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _machine import machine_info  # noqa: E402

RECIPE = {
    "name": "faults",
    "data": {"name": "digits", "bs": 64},
    "model": {"name": "cnn2d", "channels": [4, 8]},
    "optimizer": {"name": "adamw", "lr": 5e-3},
    "schedule": {"epochs": 1},
    "metrics": ["accuracy"],
    "seed": 0,
    "fp16": False,
}
SPACE = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
         "optimizer.wd": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
N_TRIALS = 3
KFOLD_RESULT = "result.json"  # written last by a finished k-fold run


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg",
            "PYTHONWARNINGS": "ignore"}


def run(args: list[str], cwd: Path, kill_after: float | None = None,
        limit_fsize: int | None = None, timeout: float = 300) -> tuple[int | None, str]:
    """Run ``python ARGS`` in ``cwd``; SIGKILL its whole process group after ``kill_after``
    seconds (rc None when killed). Returns (exit code, stderr + stdout)."""
    def preexec() -> None:
        os.setsid()
        if limit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=preexec)
    try:
        out, err = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
        return proc.returncode, err + out
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            return None, err + out
        return proc.returncode, err + out  # it finished before the kill


_MAINS = {"fasttricks.train": ("fasttricks.train", "main"),
          "fasttricks.tune": ("fasttricks.tune._cli", "main")}


def rerun(args: list[str], cwd: Path) -> tuple[int | None, str]:
    """Run ``python ARGS`` (``-m fasttricks.train`` or ``-m fasttricks.tune``) again, the same
    command line through the same ``main()``, but in this process, where the imports are
    already done. Returns (exit code, stderr + stdout)."""
    import importlib
    import io

    assert args[0] == "-m" and args[1] in _MAINS, args
    module, name = _MAINS[args[1]]
    main = getattr(importlib.import_module(module), name)
    err, out = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = main(args[2:])
            except SystemExit as stop:  # argparse
                rc = stop.code if isinstance(stop.code, int) else 2
    finally:
        os.chdir(here)
    return rc, err.getvalue() + out.getvalue()


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("error:", "interrupted:"))]


# ------------------------------------------------------------------------------ checks


def whole_run(run_dir: Path) -> bool:
    """The folder reads back and its model reproduces the saved test score."""
    from fasttricks.recipes import build_learner, evaluate
    from fasttricks.runs import read_run

    try:
        back = read_run(run_dir)
    except (FileNotFoundError, ValueError):
        return False
    import torch

    learn = build_learner(back["recipe"])
    learn.model.load_state_dict(torch.load(run_dir / "model.pth", weights_only=True))
    test = evaluate(learn)
    saved = back["summary"]["test"]
    return abs(test["accuracy"] - saved["accuracy"]) < 1e-6 and not leftovers(run_dir)


def leftovers(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.parent.glob(f".{run_dir.name}.*")]


def fingerprint_run(run_dir: Path) -> bytes | None:
    try:
        return b"".join((run_dir / f).read_bytes() for f in ("summary.json", "model.pth"))
    except OSError:
        return None


def study_trials(name: str, storage: str | None, root: Path) -> list[Any]:
    import optuna

    from fasttricks.tune._storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=make_storage(storage, name, root=root))
    return study.get_trials(deepcopy=False)


def finished(trials: list[Any]) -> dict[int, tuple]:
    from optuna.trial import TrialState

    return {t.number: tuple(sorted(t.params.items())) for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}


def finished_in(name: str, journal: bytes, root: Path) -> dict[int, tuple]:
    """The finished trials a journal's bytes hold (read from a copy under ``root``)."""
    (root / name).mkdir(parents=True)
    (root / name / "journal.log").write_bytes(journal)
    return finished(study_trials(name, None, root))


def duplicates(done: dict[int, tuple]) -> int:
    return len(done) - len(set(done.values()))


# ------------------------------------------------------------------------------ faults


def last_error(text: str) -> str:
    """Why a command failed: its last ``error:`` line, else its last non-empty line (the last
    line of a traceback)."""
    lines = error_lines(text) or [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


class Outcome:
    """One run of a fault: recovered or not (and why not), lost and duplicated units."""

    def __init__(self, recovered: bool, lost: int = 0, duplicated: int = 0, why: str = "",
                 note: str = "") -> None:
        self.recovered, self.lost, self.duplicated = recovered, lost, duplicated
        self.why = "" if recovered else (why or "the result was not whole")
        self.note = note


def _check(rc: int | None, text: str, ok: bool, broken: str) -> tuple[bool, str]:
    """(recovered, why not): a failing command's last error line, else ``broken``."""
    if rc != 0:
        return False, f"exit {rc}: {last_error(text)}"
    return ok, "" if ok else broken


class Bench:
    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng = work, rng
        self.recipe = work / "faults.yaml"
        self.recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
        self.space = work / "faults.space.yaml"
        self.space.write_text(yaml.safe_dump(SPACE))
        self.durations: dict[str, float] = {}
        self.whole: dict[str, Path] = {}  # a finished run folder / study journal to start from

    def train_args(self, out: Path, *extra: str) -> list[str]:
        return ["-m", "fasttricks.train", str(self.recipe), "--out", str(out), "--no-progress",
                "--threads", "1", *extra]

    def tune_args(self, name: str, storage: str | None = None) -> list[str]:
        args = ["-m", "fasttricks.tune", "--recipe", str(self.recipe), "--space",
                str(self.space), "--n-trials", str(N_TRIALS), "--pruner", "none",
                "--threads", "1", "--study-name", name]
        return args + (["--storage", storage] if storage else [])

    def timed(self, key: str, args: list[str], cwd: Path) -> tuple[int | None, str]:
        t0 = time.perf_counter()
        rc, text = run(args, cwd)
        self.durations.setdefault(key, time.perf_counter() - t0)
        return rc, text

    def kill_point(self, key: str) -> float:
        return self.rng.uniform(0.2, 1.0) * self.durations[key]

    def previous_run(self, out: Path) -> None:
        """A previous whole run in ``out/faults``: trained once, then copied."""
        if "train" not in self.whole:
            first = self.work / "train-whole"
            rc, text = self.timed("train", self.train_args(first), self.work)
            assert rc == 0, text
            self.whole["train"] = first / "faults"
        shutil.copytree(self.whole["train"], out / "faults")

    def finished_study(self, cwd: Path) -> str:
        """A study of ``N_TRIALS`` finished trials under ``cwd/runs`` (its journal copied from
        one tuned once); returns its name."""
        name = "faults-study"
        if "study" not in self.whole:
            first = self.work / "study-whole"
            first.mkdir()
            rc, text = self.timed("journal", self.tune_args(name), first)
            assert rc == 0, text
            self.whole["study"] = first / "runs" / name / "journal.log"
        (cwd / "runs" / name).mkdir(parents=True)
        shutil.copyfile(self.whole["study"], cwd / "runs" / name / "journal.log")
        return name

    def train_killed(self, i: int) -> Outcome:
        out = self.work / f"train{i}"
        self.previous_run(out)
        before = fingerprint_run(out / "faults")
        run(self.train_args(out, "--set", "seed=1"), self.work,
            kill_after=self.kill_point("train"))
        # still the previous whole run (or, if the kill came late, the new whole run)
        intact = fingerprint_run(out / "faults") == before or whole_run(out / "faults")
        rc, text = rerun(self.train_args(out, "--set", "seed=1"), self.work)
        ok, why = _check(rc, text, whole_run(out / "faults"), "the new run is not whole")
        return Outcome(ok, 0 if intact else 1, why=why)

    def kfold_killed(self, i: int) -> Outcome:
        out = self.work / f"kfold{i}"
        args = self.train_args(out, "--kfold", "3")
        if "train" not in self.durations:
            self.previous_run(self.work / "kfold-probe")
        # the kill point is drawn over one training command's time plus two more fits
        run(args, self.work, kill_after=self.kill_point("train") * 1.2)
        folder = out / "faults" / "kfold"
        snap = {p: p.stat().st_mtime_ns for p in folder.rglob("*.pth")} if folder.exists() else {}
        rc, text = rerun(args, self.work)
        lost = sum(1 for p, m in snap.items() if not p.exists() or p.stat().st_mtime_ns != m)
        ok, why = _check(rc, text, (folder / KFOLD_RESULT).is_file(), f"no {KFOLD_RESULT}")
        return Outcome(ok, lost, why=why)

    def tune_killed(self, i: int, storage: str | None, key: str) -> Outcome:
        cwd = self.work / f"{key}{i}"
        cwd.mkdir()
        name = f"faults-{key}-{i}"
        args = self.tune_args(name, storage)
        if "journal" not in self.durations:
            self.finished_study(self.work / "probe")  # times one whole tuning command
        run(args, cwd, kill_after=self.kill_point("journal"))
        try:
            before = finished(study_trials(name, storage, cwd / "runs"))
        except Exception:  # noqa: BLE001  killed before the study was created
            before = {}
        rc, text = rerun(args, cwd)
        after = finished(study_trials(name, storage, cwd / "runs"))
        lost = sum(1 for n, p in before.items() if after.get(n) != p)
        ok, why = _check(rc, text, len(after) == N_TRIALS
                         and (cwd / "runs" / name / "best.yaml").is_file(),
                         f"{len(after)} of {N_TRIALS} trials finished, or no best.yaml")
        return Outcome(ok, lost, duplicates(after), why)

    def journal_damaged(self, i: int, how: str) -> Outcome:
        """A finished study's journal damaged: its last record cut at a random byte, or a
        random line of its second and third quarters replaced by junk; then the same tuning
        command again."""
        cwd = self.work / f"journal-{how}{i}"
        cwd.mkdir()
        name = self.finished_study(cwd)
        args = self.tune_args(name)
        journal = cwd / "runs" / name / "journal.log"
        before = finished(study_trials(name, None, cwd / "runs"))
        data = journal.read_bytes()
        lines = data.splitlines(keepends=True)
        note = ""
        if how == "truncated":
            last = lines[-1]
            cut = self.rng.randrange(1, len(last) - 1)
            journal.write_bytes(b"".join(lines[:-1]) + last[:cut])
            # the cut record is destroyed by the fault itself: count only what the intact
            # records held
            before = finished_in(name, b"".join(lines[:-1]), self.work / f"intact-{how}{i}")
        else:
            k = self.rng.randrange(len(lines) // 4, 3 * len(lines) // 4)
            op = lines[k][:14].decode(errors="replace")
            lines[k] = b'{"op_code": 5, "worker_id": "\xff\xfe garbled\n'
            journal.write_bytes(b"".join(lines))
            cut = finished_in(name, b"".join(lines[:k]), self.work / f"cut-{how}{i}")
            cut_lost = sum(1 for n, p in before.items() if cut.get(n) != p)
            note = (f"line {k + 1} of {len(lines)} ({op}...); cutting the journal there would "
                    f"lose {cut_lost} trial(s)")
        rc, text = rerun(args, cwd)
        if rc != 0 and how == "garbled":
            # the message names the file and the fix: apply it, then re-run the same command
            named = [ln for ln in error_lines(text)
                     if "journal.log" in ln and "with: python -c " in ln]
            if not named:
                return Outcome(False, len(before), why=f"exit {rc}: {last_error(text)}",
                               note=note)
            note += ": records after it depend on it, the named fix truncates"
            fix = shlex.split(named[0].split("with: ", 1)[1])
            subprocess.run(fix, cwd=cwd, env=_env(), check=True, capture_output=True)
            rc, text = rerun(args, cwd)
        after = finished(study_trials(name, None, cwd / "runs"))
        lost = sum(1 for n, p in before.items() if after.get(n) != p)
        ok, why = _check(rc, text, len(after) == N_TRIALS,
                         f"{len(after)} of {N_TRIALS} trials finished")
        return Outcome(ok, lost, duplicates(after), why, note)

    def disk_full(self, i: int) -> Outcome:
        out = self.work / f"disk{i}"
        self.previous_run(out)
        before = fingerprint_run(out / "faults")
        size = (out / "faults" / "model.pth").stat().st_size
        rc, text = run(self.train_args(out, "--set", "seed=1"), self.work,
                       limit_fsize=max(size // 2, 1024))
        refused = rc == 1 and len(error_lines(text)) == 1
        refusal = "" if refused else f"not refused in one line (exit {rc}): {last_error(text)}"
        lost = 0 if fingerprint_run(out / "faults") == before else 1
        rc, text = rerun(self.train_args(out, "--set", "seed=1"), self.work)
        ok, why = _check(rc, text, whole_run(out / "faults"), "the new run is not whole")
        return Outcome(refused and ok, lost, why=refusal or why)

    def nan_data(self, i: int) -> Outcome:
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(i)
        n = 200
        df = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
        df.loc[rng.integers(n), "b"] = self.rng.choice([np.inf, -np.inf])
        df["target"] = np.where(df["a"] > 0, "pos", "neg")
        csv = self.work / f"nan{i}.csv"
        df.to_csv(csv, index=False)
        recipe = self.work / f"nan{i}.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "faults", "data": {"name": "tabular_csv", "path": str(csv),
                                       "y_name": "target", "bs": 32},
            "model": {"name": "tabular", "layers": [8]}, "schedule": {"epochs": 1},
            "metrics": ["accuracy"]}))
        out = self.work / f"nanout{i}"
        base = ["-m", "fasttricks.train", str(recipe), "--out", str(out), "--no-progress",
                "--threads", "1"]
        rc, text = rerun(base, self.work)
        lines = error_lines(text)
        refused = rc == 2 and len(lines) == 1 and "'b'" in lines[0] and not out.joinpath(
            "faults").exists()
        refusal = "" if refused else f"not refused naming 'b' (exit {rc}): {last_error(text)}"
        rc, text = rerun([*base, "--set", "data.impute=median"], self.work)
        ok, why = _check(rc, text, whole_tabular(out / "faults"), "the run is not whole")
        return Outcome(refused and ok, why=refusal or why)

    def diverging(self, i: int) -> Outcome:
        out = self.work / f"div{i}"
        opt = ["sgd", "sgd_momentum"][i % 2]
        rc, text = rerun(self.train_args(out, "--set", f"optimizer.name={opt}", "--set",
                                         "optimizer.lr=100"), self.work)
        lines = error_lines(text)
        refused = (rc == 1 and len(lines) == 1 and "lower the learning rate" in lines[0]
                   and not (out / "faults").exists())
        refusal = "" if refused else f"not refused (exit {rc}): {last_error(text)}"
        rc, text = rerun(self.train_args(out, "--set", f"optimizer.name={opt}", "--set",
                                         "optimizer.lr=0.1"), self.work)
        ok, why = _check(rc, text, whole_run(out / "faults"), "the run is not whole")
        return Outcome(refused and ok, why=refusal or why)


def whole_tabular(run_dir: Path) -> bool:
    import math

    from fasttricks.runs import read_run

    try:
        back = read_run(run_dir)
    except FileNotFoundError:
        return False
    return math.isfinite(back["summary"]["test"]["loss"]) and not leftovers(run_dir)


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from pg_cluster import find_postgres_bin, postgres_cluster
    except ImportError:
        yield None
        return
    if find_postgres_bin() is None:
        yield None
        return
    try:
        with postgres_cluster("faults_bench") as url:
            yield url
    except BaseException as err:  # noqa: BLE001  pytest's skip/fail outside pytest
        if type(err).__name__ in ("Skipped", "Failed"):
            yield None
        else:
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated fault names to run")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "faults.json"))
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")  # the re-runs in this process save plots
    import torch

    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    rows = []
    load = [round(x, 2) for x in os.getloadavg()]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fasttricks-faults-") as tmp, postgres() as pg_url:
        bench = Bench(Path(tmp), rng)
        faults: dict[str, Callable[[int], Outcome] | None] = {
            "train killed": bench.train_killed,
            "kfold killed": bench.kfold_killed,
            "tune killed (journal)": lambda i: bench.tune_killed(i, None, "journal"),
            "tune killed (postgres)": (lambda i: bench.tune_killed(i, pg_url, "postgres"))
            if pg_url else None,
            "journal truncated": lambda i: bench.journal_damaged(i, "truncated"),
            "journal garbled": lambda i: bench.journal_damaged(i, "garbled"),
            "disk full (RLIMIT_FSIZE)": bench.disk_full,
            "NaN data": bench.nan_data,
            "diverging lr": bench.diverging,
        }
        only = set(args.only.split(",")) if args.only else None
        for fault, func in faults.items():
            if only is not None and fault not in only:
                continue
            if func is None:
                rows.append({"fault": fault, "runs": 0, "recovered": 0, "lost": 0,
                             "duplicated": 0, "note": "skipped: no PostgreSQL server binaries"})
                print(f"{fault:26s} skipped (no PostgreSQL)", flush=True)
                continue
            t0 = time.perf_counter()
            outcomes = [func(i) for i in range(args.runs)]
            row: dict[str, Any] = {
                "fault": fault, "runs": len(outcomes),
                "recovered": sum(o.recovered for o in outcomes),
                "lost": sum(o.lost for o in outcomes),
                "duplicated": sum(o.duplicated for o in outcomes),
                "seconds": round(time.perf_counter() - t0, 1),
                # why each run that did not recover failed: its command's last error line
                "failures": [o.why for o in outcomes if not o.recovered],
            }
            notes = [o.note for o in outcomes if o.note]
            if notes:
                row["damaged"] = notes
            rows.append(row)
            print(f"{fault:26s} runs {row['runs']}  recovered {row['recovered']}/{row['runs']}"
                  f"  lost {row['lost']}  duplicated {row['duplicated']}  "
                  f"[{row['seconds']}s]", flush=True)
            for why in row["failures"]:
                print(f"    failed: {why}", flush=True)
    total = time.perf_counter() - t_start
    print("\n| fault | runs | recovered | lost work | duplicated trials |\n|---|---|---|---|---|")
    for r in rows:
        rec = f"{100 * r['recovered'] / r['runs']:.0f}%" if r["runs"] else "skipped"
        print(f"| {r['fault']} | {r['runs']} | {rec} | {r['lost']} | {r['duplicated']} |")
    print(f"total {total:.0f}s")
    result = {"rows": rows, "runs": args.runs, "seed": args.seed, "n_trials": N_TRIALS,
              "recipe": RECIPE, "seconds": round(total, 1),
              "load_average": {"start": load, "end": [round(x, 2) for x in os.getloadavg()]},
              "machine": machine_info()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from fasttricks._io import write_json

    write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
