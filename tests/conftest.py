"""Shared pytest setup: deterministic CPU threads and a clean skip for CUDA-only tests."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run the test inside an empty temporary working directory (for `runs/` output)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
