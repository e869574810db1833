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




def f1_bars(report: Any, title: str, path: Any, max_classes: int = 40,
            with_ap: bool = False) -> Any:
    """Per-class F1 bars, worst first (and average precision beside them when ``with_ap``)."""
    from fasttricks._io import save_figure

    plt = pyplot()
    rep = report.head(max_classes)
    n_panels = 2 if with_ap else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, max(3, 0.22 * len(rep) + 1.5)))
    axes = np.atleast_1d(axes)
    bars(axes[0], rep["f1"], rep["class"], "F1", title, "C0")
    if with_ap:
        bars(axes[1], rep["ap"].fillna(0), rep["class"], "average precision",
             "per-label average precision", "C1")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def confusion_plot(cm: np.ndarray, classes: list, path: Any) -> Any:
    """The confusion matrix as a heat map (rows actual, columns predicted)."""
    from fasttricks._io import save_figure

    plt = pyplot()
    side = min(12, max(4, 0.4 * len(classes) + 2))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    heat_map(ax, cm, classes, fig)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def _as_image(item: Any) -> np.ndarray | None:
    """An item as something ``imshow`` draws: a path read with PIL, or a (c, h, w) array."""
    if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__"):
        from PIL import Image

        with Image.open(item) as im:
            return np.asarray(im.convert("RGB"))
    arr = np.asarray(item)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        return arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        return arr
    return None


def can_show_images(x: Any, kind: str) -> bool:
    """Whether the items are images: an image dataset, or arrays shaped (n, 1|3, h, w)."""
    if kind == "image":
        return True
    if kind != "array":
        return False
    shape = np.shape(x)
    return len(shape) == 4 and shape[1] in (1, 3) and min(shape[2:]) >= 4


def example_grid(images: list, titles: list[str], path: Any, suptitle: str) -> Any:
    """A grid of example images with one title each (fastai's ``plot_top_losses`` layout)."""
    from fasttricks._io import save_figure

    plt = pyplot()
    n = len(images)
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(title, fontsize=7)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def top_loss_examples(frame: Any, x: Any, path: Any, n: int = 15) -> Any:
    """The first ``n`` top-loss items as images titled actual / predicted / loss / p(actual)."""
    rows = frame.head(n)
    images, titles = [], []
    for _, r in rows.iterrows():
        image = _as_image(x[int(r["index"])])
        if image is None:
            continue
        images.append(image)
        prob = f" / {r['prob_actual']:.2f}" if "prob_actual" in r else ""
        titles.append(f"{r['actual']} / {r['predicted']}\n{r['loss']:.2f}{prob}")
    if not images:
        return None
    return example_grid(images, titles, path, "top losses: actual / predicted, loss / p(actual)")
