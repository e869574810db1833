"""Shared helpers: argument checks with clear messages and atomic file writes."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest
import torch

from fasttricks._io import (
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_text,
)
from fasttricks._validate import ChoiceError, check_choice, check_range, closest


# ---------------------------------------------------------------- _validate
def test_closest_finds_the_nearest_name_case_insensitively():
    assert closest("rangr", ["adamw", "ranger", "sgd"]) == "ranger"
    assert closest("ADAMW", ["adamw", "ranger"]) == "adamw"
    assert closest("zzzzzz", ["adamw", "ranger"]) is None


def test_check_choice_returns_value_when_allowed():
    assert check_choice("pruner", "asha", ["hyperband", "asha"]) == "asha"


def test_check_choice_error_lists_allowed_values_and_suggests_closest():
    with pytest.raises(KeyError) as info:
        check_choice("optimizer", "rangr", ["adamw", "ranger", "sgd"])
    msg = str(info.value)
    assert "'rangr'" in msg and "'adamw'" in msg and "'sgd'" in msg
    assert "Did you mean 'ranger'?" in msg
    assert not msg.startswith('"')  # readable text, not KeyError's repr quoting


def test_check_choice_error_is_also_a_value_error_and_handles_unhashable():
    with pytest.raises(ValueError):
        check_choice("fit", "cosine", ["flat_cos", "one_cycle"])
    with pytest.raises(ChoiceError, match="known"):
        check_choice("fit", ["x"], {"flat_cos", "one_cycle"})


@pytest.mark.parametrize(
    ("kwargs", "value", "fragment"),
    [
        ({"low": 0, "low_inclusive": False}, 0.0, "eps must be > 0, got 0.0"),
        ({"low": 0}, -1e-3, "eps must be >= 0, got -0.001"),
        ({"low": 0, "high": 1, "high_inclusive": False}, 1.0, "eps must be >= 0 and < 1, got 1.0"),
        ({"high": 5}, 6, "eps must be <= 5, got 6"),
        ({}, float("nan"), "eps must be a real number, got nan"),
    ],
)
def test_check_range_message_names_argument_bound_and_value(kwargs, value, fragment):
    with pytest.raises(ValueError) as info:
        check_range("eps", value, **kwargs)
    assert str(info.value) == fragment


def test_check_range_accepts_bounds_and_rejects_non_numbers():
    assert check_range("p", 0.0, low=0, high=1) == 0.0
    assert check_range("p", 1, low=0, high=1) == 1
    with pytest.raises(TypeError, match="'abc'"):
        check_range("p", "abc", low=0)


# ---------------------------------------------------------------- _io
def test_atomic_write_text_and_bytes_roundtrip_and_replace(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second ü")
    assert target.read_text(encoding="utf-8") == "second ü"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failing_writer_leaves_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")

    with (
        pytest.raises(RuntimeError, match="midway"),
        atomic_path(target) as tmp,
        open(tmp, "w") as fh,
    ):
        fh.write("half of the new con")
        fh.flush()
        raise RuntimeError("writer died midway")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_failing_writer_creates_no_destination_when_none_existed(tmp_path):
    class Boom:
        def to_csv(self, path, **kwargs):
            with open(path, "w") as fh:
                fh.write("a,b\n1,")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_csv(Boom(), tmp_path / "table.csv")
    assert list(tmp_path.iterdir()) == []


def test_temp_path_keeps_suffix_and_final_file_has_normal_permissions(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"png")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_atomic_torch_save_and_csv_roundtrip(tmp_path):
    obj = {"w": torch.arange(5.0), "step": 3}
    atomic_torch_save(obj, tmp_path / "ckpt.pth")
    loaded = torch.load(tmp_path / "ckpt.pth")
    assert loaded["step"] == 3 and torch.equal(loaded["w"], obj["w"])

    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5]})
    atomic_write_csv(df, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), df)
