"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

An interrupted or failing writer never leaves a half-written file at the destination: either the
old file (if any) is still there untouched, or the complete new one is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_text",
    "jsonable",
    "quiet_fit",
    "save_figure",
    "write_json",
]

# Files from mkstemp are created 0600; give the final file the mode a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps ``path``'s suffix (``.png``, ``.npy``), so writers that infer the
    format from the name work. Parent folders are created. If the body raises, the temporary
    file is removed and ``path`` is left as it was.

    Example::

        with atomic_path("runs/plot.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (default encoding utf-8); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically; returns the path.

    torch reports a failed write (a full disk, a file-size limit) as an opaque ``RuntimeError``;
    the bytes are then written once more with a plain file write, which either completes the
    file or raises the ``OSError`` that says why (ENOSPC, EFBIG).
    """
    import io

    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError:
            buffer = io.BytesIO()
            torch.save(obj, buffer)  # an object that cannot be saved raises here
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
    return Path(path)


def atomic_write_csv(df: Any, path: str | os.PathLike[str], **to_csv_kwargs: Any) -> Path:
    """``df.to_csv(path, index=False, **to_csv_kwargs)`` atomically; returns the path.

    ``index`` defaults to False; pass ``index=True`` to keep a pandas index.
    """
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return Path(path)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays made plain and NaN/inf floats made None (JSON ``null``).

    Mappings get string keys; tuples become lists; paths become strings.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy scalars and arrays
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
               sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically; returns the path.

    The one writer for every result file: NaN and infinities become ``null`` (JSON has no NaN),
    numpy values become plain numbers, and anything else unknown is written as its ``str``.
    """
    text = json.dumps(jsonable(obj), indent=indent, sort_keys=sort_keys, default=str,
                      allow_nan=False)
    return atomic_write_text(path, text + "\n")


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110,
                close: bool = True, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically as PNG (default 110 dpi), then close the figure."""
    savefig_kwargs.setdefault("format", "png")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, **savefig_kwargs)
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return Path(path)


@contextlib.contextmanager
def quiet_fit(learn: Any) -> Iterator[Any]:
    """Run a fastai fit without its progress bar and epoch table (``no_bar`` + ``no_logging``)."""
    with contextlib.ExitStack() as stack:
        if hasattr(learn, "no_logging"):
            stack.enter_context(learn.no_logging())
        if hasattr(learn, "no_bar"):
            stack.enter_context(learn.no_bar())
        yield learn
