"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

An interrupted or failing writer never leaves a half-written file at the destination: either the
old file (if any) is still there untouched, or the complete new one is.
"""

from __future__ import annotations

import contextlib
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
    """``torch.save(obj, path)`` atomically; returns the path."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_csv(df: Any, path: str | os.PathLike[str], **to_csv_kwargs: Any) -> Path:
    """``df.to_csv(path, index=False, **to_csv_kwargs)`` atomically; returns the path.

    ``index`` defaults to False; pass ``index=True`` to keep a pandas index.
    """
    to_csv_kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **to_csv_kwargs)
    return Path(path)
