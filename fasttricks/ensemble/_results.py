"""What every ensemble returns: the fields that k-fold, seed and snapshot results share.

:class:`MemberScores` is one member alone (its scores, model file and time), the base of
:class:`~fasttricks.ensemble.FoldResult` and :class:`~fasttricks.ensemble.MemberResult`;
:class:`EnsembleScores` is the whole ensemble (the averaged test predictions and their
scores, the folder), the base of :class:`~fasttricks.ensemble.KFoldResult` and
:class:`~fasttricks.ensemble.EnsembleResult`. Their fields are keyword-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from fasttricks.ensemble._members import Member
from fasttricks.ensemble._report import metrics_json, save_score_plot
from fasttricks.ensemble._store import MemberStore

__all__ = ["EnsembleScores", "MemberScores"]


@dataclass(kw_only=True)
class MemberScores:
    """One member alone: its scores on the valid (held-out) and test split (``test`` None
    without a test split), its model file, the seconds it trained, and whether it was read back
    from an earlier run (``resumed``) instead of trained now."""

    valid: dict[str, float]
    test: dict[str, float] | None
    model_path: Path
    seconds: float
    resumed: bool = False

    @staticmethod
    def fields(member: Member, store: MemberStore) -> dict[str, Any]:
        """These fields of a finished member, from its stored record."""
        record = member.record
        return {"valid": record["valid"], "test": record.get("test"),
                "model_path": store.model_path(member.name),
                "seconds": float(record["seconds"]), "resumed": member.resumed}

    def to_json(self) -> dict[str, Any]:
        """The scores, seconds and model file name as strict-JSON-able values."""
        return {"valid": metrics_json(self.valid), "test": metrics_json(self.test),
                "seconds": self.seconds, "model": self.model_path.name}


@dataclass(kw_only=True)
class EnsembleScores:
    """A whole ensemble: the recipe name, the primary metric as keyed in the score dicts
    (``"loss"`` for the validation loss) and its direction (``"maximize"``/``"minimize"``,
    :func:`fasttricks.metrics.metric_direction`), the members' averaged test predictions, their
    targets and scores (None without a test split), the folder, the seconds the whole call took
    and the score chart once :meth:`plot` has drawn it."""

    name: str
    metric: str
    direction: str
    test_preds: torch.Tensor | None
    test_targets: torch.Tensor | None
    test: dict[str, float] | None
    out_dir: Path
    seconds: float = 0.0
    plot_path: Path | None = None
    bar_inches: ClassVar[float] = 1.0  # chart width per member

    def member_results(self) -> list[MemberScores]:
        """The members in order (the folds of a k-fold run, the seeds or cycles otherwise)."""
        raise NotImplementedError

    @property
    def model_paths(self) -> list[Path]:
        """The members' model files (whole pickled modules, for :func:`predict_ensemble`)."""
        return [m.model_path for m in self.member_results()]

    def summary(self) -> str:
        """One line saying what the ensemble scored."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path: str | PathLike | None = None) -> Path:
        """Bar chart of every member's score with the ensemble's as a line (a k-fold chart also
        shows each fold's held-out score and the out-of-fold one); saved as PNG (default
        ``<out_dir>/kfold.png``, ``seed.png`` or ``snapshot.png``), returns the path."""
        import matplotlib.pyplot as plt

        path = Path(path) if path is not None else self.out_dir / self._chart_name()
        n = len(self.member_results())
        fig, ax = plt.subplots(figsize=(self.bar_inches * n + 3, 3.6))
        save_score_plot(fig, ax, self._draw(ax, np.arange(n)), path)
        self.plot_path = path
        return path

    def _chart_name(self) -> str:
        raise NotImplementedError

    def _draw(self, ax: Any, x: np.ndarray) -> list[float]:
        """Draw the members at ``x`` on ``ax``; returns every value drawn (for the y range)."""
        raise NotImplementedError
