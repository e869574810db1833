"""Spread of repeated scores: the one place mean, sample std and standard error are computed.

Seeds, k-fold folds and ensemble members all report ``mean ± std (stderr)`` through
:func:`summarize`, so the three never disagree on ``ddof`` or on the one-value case.

Example:
    >>> s = summarize([0.9, 1.0])
    >>> round(s["mean"], 2), round(s["std"], 4), round(s["stderr"], 4)
    (0.95, 0.0707, 0.05)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["summarize"]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample standard deviation (ddof=1), standard error (std / sqrt(n)), min, max.

    With one value, std and stderr are 0. An empty sequence raises ``ValueError``.
    """
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    if n == 0:
        raise ValueError("summarize needs at least one value, got none")
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    return {"n": n, "mean": float(arr.mean()), "std": std,
            "stderr": std / math.sqrt(n) if n > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max())}
