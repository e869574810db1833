"""average_predictions and predict_ensemble against means computed here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader as FastaiDataLoader
from torch import nn

from fasttricks.ensemble import average_predictions, predict_ensemble


def _probs(seed, n=7, c=3):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g), dim=1)


def test_mean_equals_the_elementwise_mean_and_weights_the_weighted_mean():
    a, b, c = _probs(0), _probs(1), _probs(2)
    got = average_predictions([a, b, c])
    want = torch.stack([a, b, c]).sum(0) / 3
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, want)
    got_w = average_predictions([a, b, c], weights=[1, 2, 5])
    torch.testing.assert_close(got_w, (1 * a + 2 * b + 5 * c) / 8)


def test_numpy_inputs_give_numpy_and_a_stacked_array_works_like_a_list():
    a, b = _probs(0).numpy(), _probs(1).numpy()
    got = average_predictions(np.stack([a, b]))
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6)


def test_geometric_mean_matches_the_formula_and_renormalises_softmax_rows():
    a, b = _probs(3).double(), _probs(4).double()
    got = average_predictions([a, b], method="geometric", weights=[3, 1])
    raw = a**0.75 * b**0.25
    torch.testing.assert_close(got.double(), raw / raw.sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    # independent sigmoid outputs (rows do not sum to 1) are not renormalised
    s1, s2 = torch.tensor([[0.9, 0.2]]), torch.tensor([[0.4, 0.8]])
    got = average_predictions([s1, s2], method="geometric")
    torch.testing.assert_close(got, torch.sqrt(s1 * s2))


def test_rank_average_averages_scaled_ranks_per_column_with_ties_shared():
    p1 = np.array([[0.1, 5.0], [0.9, 1.0], [0.5, 1.0], [0.2, 3.0]])
    p2 = np.array([[10.0, 0.0], [30.0, 0.2], [20.0, 0.1], [40.0, 0.3]])
    got = average_predictions([p1, p2], method="rank")
    # ranks written out by hand (1-based, ties averaged), scaled by (r - 1) / (n - 1)
    r1 = np.array([[1, 4], [4, 1.5], [3, 1.5], [2, 3]])
    r2 = np.array([[1, 1], [3, 3], [2, 2], [4, 4]])
    want = ((r1 - 1) / 3 + (r2 - 1) / 3) / 2
    np.testing.assert_allclose(got, want)


def test_bad_inputs_raise_clear_errors():
    a = _probs(0)
    with pytest.raises(ValueError, match="Did you mean 'geometric'"):
        average_predictions([a], method="geometic")
    with pytest.raises(ValueError, match="same shape"):
        average_predictions([a, a[:3]])
    with pytest.raises(ValueError, match="one entry per prediction \\(2\\), got 3"):
        average_predictions([a, a], weights=[1, 1, 1])
    with pytest.raises(ValueError, match="not all zero"):
        average_predictions([a, a], weights=[0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        average_predictions([a, -a], method="geometric")
    with pytest.raises(ValueError, match="empty"):
        average_predictions([])


def _fastai_dls(n=37, n_in=5, bs=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    items = list(zip(x, y))
    train = FastaiDataLoader(items, bs=bs, shuffle=True)
    valid = FastaiDataLoader(items, bs=bs)
    return DataLoaders(train, valid), x


def test_predict_ensemble_averages_the_saved_models_softmax_outputs(tmp_path):
    dls, x = _fastai_dls()
    models, paths = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        models.append(m)
        paths.append(tmp_path / f"m{seed}.pth")
        torch.save(m, paths[-1])
    with torch.no_grad():
        want = sum(torch.softmax(m(x), dim=1) for m in models) / 3
    got = predict_ensemble(paths, dls)
    torch.testing.assert_close(got, want)
    # the training loader is predicted in item order despite shuffle=True
    torch.testing.assert_close(predict_ensemble(paths, dls, ds_idx=0), want)
    # state dicts load into a copy of a template
    sd_paths = []
    for i, m in enumerate(models):
        sd_paths.append(tmp_path / f"sd{i}.pth")
        torch.save(m.state_dict(), sd_paths[-1])
    template = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    before = [p.clone() for p in template.parameters()]
    got_sd = predict_ensemble(sd_paths, dls.valid, model=template, weights=[1, 0, 0])
    with torch.no_grad():
        torch.testing.assert_close(got_sd, torch.softmax(models[0](x), dim=1))
    assert all(torch.equal(p, q) for p, q in zip(before, template.parameters()))
    with pytest.raises(ValueError, match="state dict"):
        predict_ensemble(sd_paths, dls)
    # state dicts need no unpickling: allow_pickle=False reads them, and refuses whole modules
    got_safe = predict_ensemble(sd_paths, dls, model=template, allow_pickle=False)
    torch.testing.assert_close(got_safe, want)
    with pytest.raises(ValueError, match="allow_pickle=False refuses"):
        predict_ensemble(paths, dls, allow_pickle=False)


def test_predict_ensemble_with_a_torch_loader_and_sigmoid(tmp_path):
    x = torch.randn(10, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, 0]), batch_size=3)
    ms = [nn.Linear(4, 2) for _ in range(2)]
    for i, m in enumerate(ms):
        torch.save(m, tmp_path / f"{i}.pt")
    got = predict_ensemble([tmp_path / "0.pt", tmp_path / "1.pt"], loader, activation="sigmoid",
                           method="geometric")
    with torch.no_grad():
        want = torch.sqrt(torch.sigmoid(ms[0](x)) * torch.sigmoid(ms[1](x)))
    torch.testing.assert_close(got, want)


def test_score_predictions_matches_cross_entropy_and_accuracy_on_the_logits():
    from fastai.losses import BCEWithLogitsLossFlat, CrossEntropyLossFlat
    from fastai.metrics import accuracy, accuracy_multi

    from fasttricks.ensemble import score_predictions

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    got = score_predictions(torch.softmax(logits, 1), y, CrossEntropyLossFlat(), [accuracy])
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), 1e-5)
    assert got["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    ym = (torch.rand(50, 4, generator=g) > 0.5).float()
    got = score_predictions(torch.sigmoid(logits), ym, BCEWithLogitsLossFlat(), [accuracy_multi])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, ym).item()
    assert got["loss"] == pytest.approx(bce, rel=1e-5)
    hits = ((logits > 0).float() == ym).float().mean().item()
    assert got["accuracy_multi"] == pytest.approx(hits)
