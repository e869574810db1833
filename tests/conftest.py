"""Shared pytest setup: one CPU thread and a clean skip for CUDA-only tests."""

from __future__ import annotations

import pytest
import torch

# The tests train tiny models: a second thread only adds synchronisation cost, and on a busy
# 2-core machine it makes them many times slower.
torch.set_num_threads(1)


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
