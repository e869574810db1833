"""The results table across run folders, on run folders written by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fasttricks.recipes import load_recipe, save_recipe
from fasttricks.results_table import find_runs, main, results_table, to_markdown

REPO = Path(__file__).resolve().parents[1]

RUNS = {  # folder: (overrides, valid accuracy, test accuracy, test loss)
    "a": ({"optimizer.lr": 1e-3}, 0.95, 0.94, 0.20),
    "b": ({"optimizer.lr": 3e-3, "data.bs": 32}, 0.97, 0.96, 0.15),
    "sweep/c": ({"optimizer.lr": 1e-2}, 0.90, 0.91, 0.30),
}


def _run_folder(folder, overrides, valid, test, loss, finished=True):
    folder.mkdir(parents=True)
    save_recipe(load_recipe("digits", overrides), folder / "recipe.yaml")
    pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.5], "valid_loss": [0.9, loss],
                  "accuracy": [0.5, valid]}).to_csv(folder / "metrics.csv", index=False)
    if finished:  # a whole run folder holds the weights and the curves too
        (folder / "model.pth").write_bytes(b"weights")
        (folder / "curves.png").write_bytes(b"png")
        (folder / "summary.json").write_text(json.dumps({
            "name": "digits", "epochs": 2, "train_seconds": 1.5,
            "valid": {"loss": loss, "accuracy": valid},
            "test": {"loss": loss, "accuracy": test}}))


@pytest.fixture
def runs(tmp_path):
    for name, (overrides, valid, test, loss) in RUNS.items():
        _run_folder(tmp_path / name, overrides, valid, test, loss)
    _run_folder(tmp_path / "crashed", {"optimizer.lr": 5e-2}, 0.1, 0.1, 9.0, finished=False)
    return tmp_path


def test_finished_and_unfinished_runs_are_told_apart(runs):
    finished, unfinished = find_runs(runs)
    assert [p.relative_to(runs).as_posix() for p in finished] == ["a", "b", "sweep/c"]
    assert [p.relative_to(runs).as_posix() for p in unfinished] == ["crashed"]


def test_table_has_the_keys_that_differ_and_the_scores(runs):
    table = results_table(runs)
    assert list(table.columns) == ["run", "data.bs", "optimizer.lr", "epochs", "train_seconds",
                                   "valid_loss", "valid_accuracy", "test_loss", "test_accuracy"]
    assert table["run"].tolist() == ["a", "b", "sweep/c"]
    assert table["optimizer.lr"].tolist() == [1e-3, 3e-3, 1e-2]
    assert table["data.bs"].tolist() == [64, 32, 64]
    assert table["test_accuracy"].tolist() == [0.94, 0.96, 0.91]
    assert table.attrs["skipped"] == ["crashed"]


def test_sort_puts_the_best_first_in_the_metrics_direction(runs):
    assert results_table(runs, sort="test_accuracy")["run"].tolist() == ["b", "a", "sweep/c"]
    assert results_table(runs, sort="test_loss")["run"].tolist() == ["b", "a", "sweep/c"]
    assert results_table(runs, sort="optimizer.lr")["run"].tolist() == ["a", "b", "sweep/c"]
    with pytest.raises(KeyError, match="test_acuracy.*Did you mean 'test_accuracy'"):
        results_table(runs, sort="test_acuracy")


def test_markdown_has_a_header_rule_and_one_row_per_run(runs):
    text = to_markdown(results_table(runs, sort="test_accuracy"))
    lines = text.splitlines()
    assert lines[0].startswith("| run | data.bs | optimizer.lr |")
    assert set(lines[1]) <= {"|", "-"} and len(lines) == 2 + 3
    assert lines[2].startswith("| b | 32 | 0.003 |") and lines[2].endswith("| 0.15 | 0.96 |")


def test_cli_writes_csv_and_markdown_and_skips_unfinished(runs, capsys):
    out = runs / "table" / "results.csv"
    assert main(["table", str(runs), "--out", str(out), "--sort", "test_accuracy"]) == 0
    printed = capsys.readouterr().out
    assert "3 runs ->" in printed and "1 unfinished run(s) skipped" in printed
    csv = pd.read_csv(out)
    assert csv["run"].tolist() == ["b", "a", "sweep/c"]
    assert out.with_suffix(".md").read_text() == to_markdown(results_table(runs,
                                                                           "test_accuracy"))


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["table", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: runs folder "
                                               f"{str(tmp_path / 'missing')!r} not found")
    assert main(["table", str(tmp_path)]) == 2
    assert "no finished run under" in capsys.readouterr().err


def test_python_dash_m_fasttricks_runs_table(runs):
    done = subprocess.run([sys.executable, "-m", "fasttricks.runs", "table", str(runs),
                           "--sort", "valid_accuracy"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].startswith("| b |")
    assert (runs / "results.csv").is_file() and (runs / "results.md").is_file()
