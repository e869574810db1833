"""threshold_sweep: macro-F1 of multi-label predictions at each threshold, against
scikit-learn's f1_score and a case counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from fasttricks.metrics import threshold_sweep


def test_counted_by_hand():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    sweep = threshold_sweep(probs, targets, [0.5, 0.8])
    # t=0.5: label 0 TP 1, FP 1, FN 1 -> 2/4; label 1 TP 1 -> 1.0; mean 0.75
    # t=0.8: label 0 TP 1, FN 1 -> 2/3; label 1 no prediction, one target -> 0; mean 1/3
    assert sweep.to_dict() == pytest.approx({0.5: 0.75, 0.8: 1 / 3})
    assert sweep.idxmax() == 0.5 and sweep.index.name == "threshold"


def test_matches_sklearn_macro_f1_on_every_default_threshold():
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 6)) < [0.05, 0.1, 0.2, 0.3, 0.5, 0.0]).astype(int)
    probs = np.clip(0.6 * targets + rng.random(targets.shape) * 0.6, 0, 1)
    sweep = threshold_sweep(torch.tensor(probs), torch.tensor(targets))
    assert len(sweep) == 37 and sweep.index[0] == 0.05 and sweep.index[-1] == 0.95
    for t, value in sweep.items():
        ref = f1_score(targets, (probs > t).astype(int), average="macro", zero_division=0)
        assert value == pytest.approx(ref, abs=1e-12), t


@pytest.mark.parametrize("thresholds", [[], [0.0], [1.5]])
def test_thresholds_outside_zero_one_are_refused(thresholds):
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        threshold_sweep(np.zeros((2, 2)), np.zeros((2, 2)), thresholds)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="one 2-D shape"):
        threshold_sweep(np.zeros((3, 2)), np.zeros((3, 3)))
