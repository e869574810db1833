"""Importing fastai through fasttricks is quiet about fastai's own torch.jit.script calls, and
leaves the warning on for everything else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JIT = "`torch.jit.script` is deprecated"


def _stderr(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stderr


def test_fastai_alone_warns_and_through_fasttricks_it_does_not():
    assert JIT in _stderr("import fastai.layers")  # the warning this is about exists
    assert JIT not in _stderr("import fasttricks.recipes")


def test_the_filter_is_gone_once_fastai_is_imported():
    code = ("import warnings, fasttricks.recipes, fastai.layers, sys\n"
            "assert not any(f[1] is not None and 'jit' in f[1].pattern for f in warnings.filters)\n"
            "assert not any(type(f).__name__ == '_QuietFastaiLayers' for f in sys.meta_path)\n"
            "warnings.warn('" + JIT + ". (a user call)', FutureWarning)\n")
    assert "(a user call)" in _stderr(code)
