"""Data helpers: k-fold splits (more helpers are re-exported here by their modules)."""

from __future__ import annotations

from fasttricks.data.folds import kfold_splits

__all__ = ["kfold_splits"]
