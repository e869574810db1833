"""The diagnostics' plots: bars, heat maps, example images, scatter plots (matplotlib, Agg)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def bars(ax: Any, values: Any, names: Any, xlabel: str, title: str, color: str) -> None:
    """Horizontal bars in [0, 1], first row on top."""
    pos = np.arange(len(values))
    ax.barh(pos, values, color=color)
    ax.set_yticks(pos, [str(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def heat_map(ax: Any, cm: np.ndarray, classes: list, fig: Any) -> None:
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    c = len(classes)
    if c <= 30:
        ticks = np.arange(c)
        ax.set_xticks(ticks, [str(x) for x in classes], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [str(x) for x in classes], fontsize=7)
    if c <= 15:
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix")


