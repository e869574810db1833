"""Ensemble members in worker processes: same results as one after another, each member trained
once, a killed worker's member retried, a rerun trains nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from fasttricks.ensemble import kfold_fit, seed_ensemble, snapshot_ensemble
from fasttricks.ensemble._parallel import JOURNAL_NAME, _member_of
from fasttricks.recipes import load_recipe, save_recipe
from fasttricks.train import main as train_main
from member_journal import member_study, trained_per_member

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def tiny_digits(epochs: int = 2):
    return load_recipe({
        "name": "tiny_digits", "data": {"name": "digits", "bs": 128},
        "model": {"name": "mlp", "hidden": [32], "dropout": 0.0},
        "loss": {"name": "cross_entropy"}, "optimizer": {"name": "adamw", "lr": 1e-2},
        "schedule": {"fit": "flat_cos", "epochs": epochs}, "metrics": ["accuracy"], "seed": 0,
    })


def _pid(trial) -> int:
    """The pid of the process that claimed ``trial`` (its ``worker`` attribute, host:pid)."""
    return int(trial.user_attrs["worker"].rpartition(":")[2])


def _running_trial(kdir: Path, launcher: subprocess.Popen, choose, timeout: float = 240):
    """The first RUNNING member trial that ``choose(launcher's, other workers')`` picks from
    the job's journal while ``launcher`` runs (None if none is picked in ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and launcher.poll() is None:
        time.sleep(0.3)
        if not (kdir / JOURNAL_NAME).exists():
            continue
        try:
            running = member_study(kdir).get_trials(states=(TrialState.RUNNING,))
        except (ValueError, KeyError):
            continue
        claimed = [t for t in running if "worker" in t.user_attrs]
        picked = choose([t for t in claimed if _pid(t) == launcher.pid],
                        [t for t in claimed if _pid(t) != launcher.pid])
        if picked:
            return picked[0]
    return None


def _numbers(result_json: Path) -> dict:
    """result.json without what depends on the clock."""
    data = json.loads(result_json.read_text())
    data.pop("summary")
    for member in data.get("folds", data.get("members", [])):
        member.pop("seconds")
    return data


def test_two_workers_give_the_sequential_kfold_results(tmp_path):
    assert torch.get_num_threads() == 1  # the workers run one thread each too
    seq = kfold_fit(tiny_digits(), 3, out_dir=tmp_path / "seq", progress=False)
    par = kfold_fit(tiny_digits(), 3, out_dir=tmp_path / "par", progress=False, workers=2,
                    threads=1)
    assert torch.equal(seq.oof_preds, par.oof_preds)
    assert torch.equal(seq.test_preds, par.test_preds)
    for a, b in zip(seq.folds, par.folds):
        wa = torch.load(a.model_path, weights_only=False).state_dict()
        wb = torch.load(b.model_path, weights_only=False).state_dict()
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert a.valid == b.valid and a.test == b.test and a.best_epoch == b.best_epoch
    kdir = tmp_path / "par" / "tiny_digits" / "kfold"
    assert _numbers(tmp_path / "seq" / "tiny_digits" / "kfold" / "result.json") == \
        _numbers(kdir / "result.json")
    study = member_study(kdir)
    assert trained_per_member(study) == {0: 1, 1: 1, 2: 1}
    owners = {t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(owners) == 2, owners  # both workers took members
    from fasttricks.tune._workers import worker_id

    assert worker_id() in owners  # the launching process is one of them (worker 0)

    # a rerun finds every fold finished: nothing is trained, no worker is started
    stamps = {p: p.stat().st_mtime_ns for p in kdir.glob("fold_*.pt*")}
    again = kfold_fit(tiny_digits(), 3, out_dir=tmp_path / "par", progress=False, workers=2)
    assert all(f.resumed for f in again.folds)
    assert {p: p.stat().st_mtime_ns for p in kdir.glob("fold_*.pt*")} == stamps
    assert trained_per_member(member_study(kdir)) == {0: 1, 1: 1, 2: 1}


def test_started_workers_give_the_sequential_kfold_results(tmp_path, monkeypatch):
    """Where forking is unsafe the other workers are fresh interpreters; same results."""
    from fasttricks.ensemble import _parallel
    from fasttricks.tune._workers import worker_id

    started = []
    popen = subprocess.Popen
    monkeypatch.setattr(_parallel, "START_METHOD", "spawn")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a[0]) or
                        popen(*a, **k))
    # folds of a few seconds, so the started worker (seconds of imports) gets some of them
    recipe = tiny_digits(epochs=120)
    seq = kfold_fit(recipe, 4, out_dir=tmp_path / "seq", progress=False)
    par = kfold_fit(recipe, 4, out_dir=tmp_path / "par", progress=False, workers=2,
                    threads=1)
    assert [cmd[1:3] for cmd in started] == [["-m", "fasttricks.ensemble._worker"]]
    assert torch.equal(seq.oof_preds, par.oof_preds)
    assert torch.equal(seq.test_preds, par.test_preds)
    assert [f.valid for f in seq.folds] == [f.valid for f in par.folds]
    study = member_study(tmp_path / "par" / "tiny_digits" / "kfold")
    assert trained_per_member(study) == {0: 1, 1: 1, 2: 1, 3: 1}
    owners = {t.user_attrs["worker"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert worker_id() in owners and len(owners) == 2  # this process and the started one


def test_two_workers_give_the_sequential_seed_ensemble(tmp_path):
    seq = seed_ensemble(tiny_digits(), seeds=[3, 4], out_dir=tmp_path / "seq", progress=False)
    par = seed_ensemble(tiny_digits(), seeds=[3, 4], out_dir=tmp_path / "par", progress=False,
                        workers=2, threads=1)
    assert torch.equal(seq.valid_preds, par.valid_preds)
    assert [m.valid for m in seq.members] == [m.valid for m in par.members]
    assert _numbers(seq.out_dir / "result.json") == _numbers(par.out_dir / "result.json")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_train_seeds_with_two_workers_gives_the_sequential_run_folders(tmp_path, capfd):
    recipe = tmp_path / "r.yaml"
    save_recipe(tiny_digits(), recipe)
    args = [str(recipe), "--seeds", "3", "--threads", "1", "--no-progress"]
    assert train_main([*args, "--out", str(tmp_path / "seq")]) == 0
    capfd.readouterr()
    assert train_main([*args, "--workers", "2", "--out", str(tmp_path / "par")]) == 0
    out = capfd.readouterr().out  # the workers' lines too
    seq, par = tmp_path / "seq" / "tiny_digits", tmp_path / "par" / "tiny_digits"
    for seed in (0, 1, 2):
        a, b = _state(seq / f"seed_{seed}" / "model.pth"), _state(par / f"seed_{seed}" /
                                                                  "model.pth")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        sa = json.loads((seq / f"seed_{seed}" / "summary.json").read_text())
        sb = json.loads((par / f"seed_{seed}" / "summary.json").read_text())
        assert (sa["valid"], sa["test"], sa["seed"]) == (sb["valid"], sb["test"], seed)
    w0, w1 = _state(seq / "seed_0" / "model.pth"), _state(seq / "seed_1" / "model.pth")
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)  # the seeds did differ
    assert (seq / "seeds.csv").read_text() == (par / "seeds.csv").read_text()
    assert json.loads((seq / "seeds.json").read_text()) == \
        json.loads((par / "seeds.json").read_text())
    assert sorted(re.findall(r"worker \d: (seed_\d) trained", out)) == ["seed_0", "seed_1",
                                                                       "seed_2"]
    study = member_study(par)
    assert trained_per_member(study) == {0: 1, 1: 1, 2: 1}

    # a rerun with one seed more trains only that seed, in a worker; the others are kept
    stamps = {p: p.stat().st_mtime_ns for p in par.glob("seed_*/*")}
    assert train_main([*args[:1], "--seeds", "4", *args[3:], "--workers", "2", "--out",
                       str(tmp_path / "par")]) == 0
    out = capfd.readouterr().out
    assert re.findall(r"worker \d: (seed_\d) trained", out) == ["seed_3"]
    assert out.count("(already done)") == 4  # the final pass finds every seed on disk
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(pd.read_csv(par / "seeds.csv")) == 4


def test_a_killed_worker_member_is_retried_and_every_member_trained_once(tmp_path):
    recipe = tmp_path / "r.yaml"
    save_recipe(tiny_digits(epochs=100), recipe)  # members of a few seconds
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fasttricks.train", str(recipe), "--kfold", "3", "--workers",
         "2", "--threads", "1", "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kdir = out / "tiny_digits" / "kfold"
    # the launching process trains members too (worker 0): kill the other worker
    victim = _running_trial(kdir, launcher, lambda mine, others: others)
    assert victim is not None, launcher.communicate()[0]
    time.sleep(0.5)  # mid-member
    pid = _pid(victim)
    os.kill(pid, signal.SIGKILL)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output
    assert f"pid {pid}) ended with code -9" in output

    study = member_study(kdir)
    member = _member_of(victim)
    killed = study.get_trials(deepcopy=False)[victim.number]
    assert killed.state == TrialState.FAIL
    assert not (kdir / f"fold_{member}.pt").exists() or trained_per_member(study)[member] == 1
    assert trained_per_member(study) == {0: 1, 1: 1, 2: 1}
    # the killed worker's fold was trained again by the one left, the launching process
    (retried,) = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
                  if _member_of(t) == member and t.user_attrs.get("trained")]
    assert _pid(retried) == launcher.pid and retried.number > victim.number
    result = json.loads((kdir / "result.json").read_text())
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    assert "3-fold: OOF accuracy" in output


def test_a_killed_launcher_leaves_its_member_to_the_forked_worker_and_a_rerun_reports(
        tmp_path):
    recipe = tmp_path / "r.yaml"
    save_recipe(tiny_digits(epochs=60), recipe)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "fasttricks.train", str(recipe), "--kfold", "3", "--workers",
           "2", "--threads", "1", "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "launcher.log"  # a file: the forked worker keeps the launcher's stdout
    launcher = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    kdir = out / "tiny_digits" / "kfold"
    # the launcher's member, once both workers are busy (the forked one exists)
    claimed = _running_trial(kdir, launcher, lambda mine, others: mine if others else [])
    assert claimed is not None, log.read_text()
    launcher.kill()  # SIGKILL, mid-member: no clean-up of any kind
    launcher.wait(timeout=60)
    # the forked worker carries on alone, frees the dead launcher's member and trains it
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and set(trained_per_member(member_study(kdir))) != {0, 1, 2}:
        time.sleep(0.5)
    study = member_study(kdir)
    assert study.get_trials(deepcopy=False)[claimed.number].state == TrialState.FAIL, \
        log.read_text()
    assert trained_per_member(study) == {0: 1, 1: 1, 2: 1}
    assert not (kdir / "result.json").exists()  # the report was the launcher's to write
    # the same command again trains nothing and writes the report
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert trained_per_member(member_study(kdir)) == {0: 1, 1: 1, 2: 1}
    result = json.loads((kdir / "result.json").read_text())
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    assert "3-fold: OOF accuracy" in rerun.stdout


def test_workers_without_kfold_is_a_one_line_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    save_recipe(tiny_digits(), recipe)
    assert train_main([str(recipe), "--workers", "2", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --workers, --gpus and --storage apply to --kfold and --seeds "
                          "N > 1 (a single run, like a snapshot ensemble, is one fit)")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        kfold_fit(tiny_digits(), 3, out_dir=tmp_path, progress=False, workers=0)
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        seed_ensemble(tiny_digits(), [0], out_dir=tmp_path, progress=False, workers=0)
    with pytest.raises(ValueError, match=r"^workers=2: a snapshot ensemble is one fit .*"
                                         r"workers does not apply; allowed is 1"):
        snapshot_ensemble(tiny_digits(), 2, out_dir=tmp_path, progress=False, workers=2)
    assert not (tmp_path / "tiny_digits").exists()  # refused before anything was made
    with pytest.raises(SystemExit):
        train_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "with --kfold or --seeds: train the folds or seeds in N worker processes" in help_text
    assert "nor for a snapshot ensemble: each is one fit" in help_text
