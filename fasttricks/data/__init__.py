"""Data helpers for training: oversampling and weighted sampling of the training set, and k-fold
splits for cross-validation, and one stratified train/valid(/test) split.

`class_weights` (per-class weights from the training labels) is shared with `fasttricks.losses`.
"""

from __future__ import annotations

from fasttricks._labels import CLASS_WEIGHT_METHODS, class_weights
from fasttricks.data.folds import kfold_splits
from fasttricks.data.splits import label_rate_gaps, stratified_split
from fasttricks.data.subsets import drop_class_indices
from fasttricks.data.sampling import (
    WeightedSampler,
    item_weights,
    oversample,
    oversample_indices,
    weighted_dataloaders,
)

__all__ = [
    "CLASS_WEIGHT_METHODS",
    "WeightedSampler",
    "class_weights",
    "drop_class_indices",
    "item_weights",
    "kfold_splits",
    "label_rate_gaps",
    "oversample",
    "oversample_indices",
    "stratified_split",
    "weighted_dataloaders",
]
