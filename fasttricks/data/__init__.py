"""Data helpers for training: oversampling and weighted sampling of the training set, and k-fold
splits for cross-validation, and one stratified train/valid(/test) split.

`class_weights` lives in `fasttricks.losses` and is re-exported here for convenience.
"""

from __future__ import annotations

from fasttricks.data.folds import kfold_splits
from fasttricks.data.splits import stratified_split
from fasttricks.data.sampling import (
    WeightedSampler,
    item_weights,
    oversample,
    oversample_indices,
    weighted_dataloaders,
)
from fasttricks.losses import class_weights

__all__ = [
    "WeightedSampler",
    "class_weights",
    "item_weights",
    "kfold_splits",
    "oversample",
    "oversample_indices",
    "stratified_split",
    "weighted_dataloaders",
]
