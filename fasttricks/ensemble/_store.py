"""Finished ensemble members on disk: one record and one model file per fold / seed / cycle.

Everything read back to resume a run (member records, a snapshot run's optimizer state) is
loaded with ``torch.load(weights_only=True)``, which builds only tensors and plain containers
and runs no code; it is therefore written as tensors and plain Python values (:func:`to_plain`).
A file that cannot be read that way is ignored and its member trained again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fasttricks._io import atomic_torch_save

__all__ = ["MemberStore", "fingerprint", "safe_load", "to_plain"]

logger = logging.getLogger(__name__)


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able description (recipe and split settings)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy scalars made Python numbers and numpy arrays made tensors, so that
    ``torch.load(weights_only=True)`` reads it back; anything else unknown is a ``TypeError``."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (torch.Tensor, torch.Size, bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):  # named tuples too become plain tuples
        return tuple(to_plain(v) for v in obj)
    raise TypeError(f"cannot store {obj!r} (a {type(obj).__name__}) as plain data; allowed are "
                    "tensors, numbers, strings, None, and lists, tuples and dicts of them")


def safe_load(path: Path, map_location: Any = "cpu") -> Any | None:
    """``torch.load(path, weights_only=True)``; None (with a warning) if the file is missing or
    is not plain tensor data, e.g. a pickle that would run code."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable file is simply redone
        logger.warning("ignoring unreadable %s (%s); it will be redone", path,
                       str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


class MemberStore:
    """Per-member record files ``<name>.pt`` and model files ``<name>.pth`` in one folder.

    A record is written after its model, so an existing record means the member is finished. A
    record from different settings (its fingerprint differs) counts as unfinished and is
    retrained.
    """

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def model_path(self, name: str) -> Path:
        """The member's model file (a whole pickled module, for ``predict_ensemble``)."""
        return self.folder / f"{name}.pth"

    def record_path(self, name: str) -> Path:
        """The member's record file (predictions, scores and bookkeeping; plain data)."""
        return self.folder / f"{name}.pt"

    def load(self, name: str) -> dict | None:
        """The finished member's record, or None if it is missing, unreadable, made with other
        settings or lacks its model file."""
        path = self.record_path(name)
        record = safe_load(path)
        if record is None:
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint:
            logger.warning("%s was made with other settings; it will be redone", path)
            return None
        if not self.model_path(name).exists():
            logger.warning("%s has no model file %s; it will be redone", path,
                           self.model_path(name))
            return None
        return record

    def save(self, name: str, record: dict, model: nn.Module) -> dict:
        """Write the model (a whole pickled module; its state dict if it cannot be pickled),
        then the record that marks the member finished; returns the record as stored."""
        try:
            atomic_torch_save(model, self.model_path(name))
        except Exception as err:  # noqa: BLE001 - e.g. a hook holding a lambda
            logger.warning("cannot pickle the %s model (%s); saving its state dict instead, "
                           "load it with load_ensemble_member(path, model=...)", name, err)
            atomic_torch_save(model.state_dict(), self.model_path(name))
        stored = to_plain({**record, "fingerprint": self.fingerprint})
        atomic_torch_save(stored, self.record_path(name))
        return stored
