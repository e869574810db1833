"""What ensembles show and write: progress lines, number formatting, score charts, tables."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasttricks._io import save_figure

__all__ = ["announce", "fmt", "member_line", "metrics_json", "predictions_frame",
           "save_score_plot"]

logger = logging.getLogger("fasttricks.ensemble")


def fmt(value: float | None) -> str:
    """``value`` with 4 decimals; ``"n/a"`` for None, NaN and infinities."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def metrics_json(d: dict | None) -> dict | None:
    """A metric dict with plain float values (None stays None)."""
    return None if d is None else {k: float(v) for k, v in d.items()}


def announce(message: str, progress: bool) -> None:
    """A progress line: printed (as fastai prints its progress) when ``progress``, else logged."""
    if progress:
        print(message, flush=True)
    else:
        logger.info(message)


def member_line(prefix: str, record: dict, key: str, resumed: bool) -> str:
    """``"<prefix>: valid <key> 0.9123, test 0.9050 [1.2s]"`` for one finished member."""
    line = f"{prefix}{' (already done)' if resumed else ''}: valid {key} "
    line += fmt(record["valid"][key])
    if record.get("test") is not None:
        line += f", test {fmt(record['test'][key])}"
    return line + f" [{float(record['seconds']):.1f}s]"


def save_score_plot(fig: Any, ax: Any, values: Sequence[float], path: Path) -> None:
    """Finish a score chart: the y axis spans the finite ``values`` padded by 0.6 times their
    range (taken as at least 1e-3), then legend and tight layout; saved atomically as PNG."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size:  # all NaN (a diverged run): leave matplotlib's default limits
        lo, hi = float(finite.min()), float(finite.max())
        pad = max(hi - lo, 1e-3) * 0.6
        ax.set_ylim(lo - pad, hi + pad)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def predictions_frame(preds: torch.Tensor, targets: torch.Tensor, vocab: list) -> Any:
    """One row per item: ``target`` (or ``target_<label>`` columns for multi-label) and one
    ``p_<class>`` probability column per class, for stacking or error analysis."""
    import pandas as pd

    p = preds.numpy().reshape(len(preds), -1)
    names = [str(v) for v in vocab] if len(vocab) == p.shape[1] else list(range(p.shape[1]))
    frame = pd.DataFrame({"item": np.arange(len(p))})
    t = targets.numpy()
    if t.ndim == 1:
        frame["target"] = t
    else:
        for j, n in enumerate(names):
            frame[f"target_{n}"] = t[:, j]
    for j, n in enumerate(names):
        frame[f"p_{n}"] = p[:, j]
    return frame
