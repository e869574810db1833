"""Losses against their formulas written out here, gradients, precision and fastai integration."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fasttricks.losses import (
    AsymmetricLoss,
    AsymmetricLossSingleLabel,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    MultiLabelFocalLoss,
    class_weights,
    get_loss,
    list_losses,
    weighted_cross_entropy,
)

N_CLASSES = 5


def _single(n=12, c=N_CLASSES, seed=0, dtype=torch.float64, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen) * scale).to(dtype)
    targets = torch.randint(0, c, (n,), generator=gen)
    return logits, targets


def _multi(n=12, c=N_CLASSES, seed=0, dtype=torch.float64, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen) * scale).to(dtype)
    targets = (torch.rand(n, c, generator=gen) < 0.3).to(dtype)
    return logits, targets


# ---- reference formulas, element by element with plain math (float64) -----------------------


def _softmax_row(row):
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _reduce_ref(values, reduction):
    values = np.asarray(values, dtype=np.float64)
    return {"none": values, "sum": values.sum(), "mean": values.mean()}[reduction]


def focal_ref(logits, targets, gamma, alpha=None, reduction="mean"):
    out = []
    for row, t in zip(logits.tolist(), targets.tolist()):
        pt = _softmax_row(row)[t]
        a = 1.0 if alpha is None else (alpha if isinstance(alpha, float) else alpha[t])
        out.append(-a * (1 - pt) ** gamma * math.log(pt))
    return _reduce_ref(out, reduction)


def binary_focal_ref(logits, targets, gamma, alpha=None, reduction="mean"):
    out = []
    for row, trow in zip(logits.tolist(), targets.tolist()):
        for x, y in zip(row, trow):
            p = _sigmoid(x)
            pt = p if y == 1 else 1 - p
            a = 1.0 if alpha is None else (alpha if y == 1 else 1 - alpha)
            out.append(-a * (1 - pt) ** gamma * math.log(pt))
    return _reduce_ref(np.reshape(out, logits.shape), reduction)


def asl_ref(logits, targets, gamma_neg, gamma_pos, clip, reduction="mean"):
    out = []
    for row, trow in zip(logits.tolist(), targets.tolist()):
        for x, y in zip(row, trow):
            p = _sigmoid(x)
            if y == 1:
                out.append(-((1 - p) ** gamma_pos) * math.log(p))
            else:
                pm = max(p - clip, 0.0)
                out.append(-(pm**gamma_neg) * math.log(1 - pm))
    return _reduce_ref(np.reshape(out, logits.shape), reduction)


def asl_single_ref(logits, targets, gamma_pos, gamma_neg, eps, reduction="mean"):
    out = []
    for row, t in zip(logits.tolist(), targets.tolist()):
        p = _softmax_row(row)
        c = len(row)
        total = 0.0
        for j, pj in enumerate(p):
            q = (1 - eps) * (j == t) + eps / c
            w = (1 - pj) ** gamma_pos if j == t else pj**gamma_neg
            total -= q * w * math.log(pj)
        out.append(total)
    return _reduce_ref(out, reduction)


def _close(actual, expected, tol=1e-7):
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=tol, atol=tol)


# ---- formulas --------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("alpha", [None, 0.25, [0.5, 1.0, 2.0, 0.1, 3.0]])
def test_focal_loss_matches_lin_formula(gamma, alpha, reduction):
    logits, targets = _single()
    loss = FocalLoss(gamma=gamma, alpha=alpha, reduction=reduction)
    _close(loss(logits, targets), focal_ref(logits, targets, gamma, alpha, reduction))


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy():
    logits, targets = _single()
    weight = torch.tensor([0.5, 1.0, 2.0, 0.1, 3.0], dtype=torch.float64)
    for reduction in ("none", "sum"):
        focal = FocalLoss(gamma=0.0, alpha=weight, reduction=reduction)(logits, targets)
        ce = F.cross_entropy(logits, targets, weight=weight, reduction=reduction)
        _close(focal, ce.numpy())
    plain = FocalLoss(gamma=0.0)(logits, targets)
    _close(plain, F.cross_entropy(logits, targets).numpy())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma,alpha", [(1.0, None), (2.0, 0.25), (0.5, 0.6), (0.0, 0.25)])
def test_multilabel_focal_matches_binary_focal_formula(gamma, alpha, reduction):
    logits, targets = _multi()
    loss = MultiLabelFocalLoss(gamma=gamma, alpha=alpha, reduction=reduction)
    _close(loss(logits, targets), binary_focal_ref(logits, targets, gamma, alpha, reduction))


def test_multilabel_focal_with_gamma_zero_and_no_alpha_is_bce():
    logits, targets = _multi()
    for reduction in ("none", "mean", "sum"):
        ours = MultiLabelFocalLoss(gamma=0.0, alpha=None, reduction=reduction)(logits, targets)
        _close(ours, F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction))


def test_multilabel_focal_accepts_the_cheatsheets_unweighted_alpha_one():
    logits, targets = _multi()
    for mode in ("balance", "scale"):
        loss = MultiLabelFocalLoss(alpha=1, gamma=2, alpha_mode=mode, reduction="none")
        _close(loss(logits, targets), binary_focal_ref(logits, targets, 2.0, None, "none"))


def soft_binary_focal_ref(logits, targets, gamma, a_pos=1.0, a_neg=1.0, eps=0.0,
                          probs=False, reduction="mean"):
    """Focal loss linear in the (smoothed) target: y' = y (1 - eps) + eps / 2."""
    out = []
    for row, trow in zip(logits.tolist(), targets.tolist()):
        for x, y in zip(row, trow):
            p = x if probs else _sigmoid(x)
            ys = y * (1 - eps) + eps / 2
            log_p = max(math.log(p), -100.0) if p > 0 else -100.0
            log_q = max(math.log(1 - p), -100.0) if p < 1 else -100.0
            out.append(-(ys * a_pos * (1 - p) ** gamma * log_p
                         + (1 - ys) * a_neg * p**gamma * log_q))
    return _reduce_ref(np.reshape(out, logits.shape), reduction)


@pytest.mark.parametrize("alpha", [0.25, 0.6, 3.0])
def test_multilabel_focal_alpha_modes_are_lin_balance_and_scalar_factor(alpha):
    logits, targets = _multi()
    scale = MultiLabelFocalLoss(gamma=2.0, alpha=alpha, alpha_mode="scale", reduction="none")
    _close(scale(logits, targets),
           soft_binary_focal_ref(logits, targets, 2.0, alpha, alpha, reduction="none"))
    if alpha < 1:
        balance = MultiLabelFocalLoss(gamma=2.0, alpha=alpha, reduction="none")
        _close(balance(logits, targets),
               soft_binary_focal_ref(logits, targets, 2.0, alpha, 1 - alpha, reduction="none"))
    else:
        with pytest.raises(ValueError, match=r"alpha_mode='scale'.*|.*alpha_mode='scale'"):
            MultiLabelFocalLoss(alpha=alpha)


def test_multilabel_focal_per_class_alpha_in_both_modes():
    logits, targets = _multi(c=3)
    alpha = [0.2, 0.5, 0.9]
    out = MultiLabelFocalLoss(gamma=1.0, alpha=alpha, reduction="none")(logits, targets)
    out_scale = MultiLabelFocalLoss(gamma=1.0, alpha=[2.0, 0.0, 1.0], alpha_mode="scale",
                                    reduction="none")(logits, targets)
    for c in range(3):
        ref = soft_binary_focal_ref(logits[:, c:c + 1], targets[:, c:c + 1], 1.0, alpha[c],
                                    1 - alpha[c], reduction="none")
        _close(out[:, c:c + 1], ref)
        factor = [2.0, 0.0, 1.0][c]
        ref = soft_binary_focal_ref(logits[:, c:c + 1], targets[:, c:c + 1], 1.0, factor,
                                    factor, reduction="none")
        _close(out_scale[:, c:c + 1], ref)
    with pytest.raises(ValueError, match=r"\(0, 1\).*alpha_mode='scale'"):
        MultiLabelFocalLoss(alpha=[0.5, 1.5])


def test_focal_loss_takes_the_same_alpha_mode_names():
    logits, targets = _single()
    scale = FocalLoss(gamma=2.0, alpha=0.25, alpha_mode="scale")(logits, targets)
    balance = FocalLoss(gamma=2.0, alpha=0.25, alpha_mode="balance")(logits, targets)
    _close(scale, focal_ref(logits, targets, 2.0, 0.25))
    _close(balance, scale.numpy())
    _close(FocalLoss(alpha=1.0)(logits, targets), focal_ref(logits, targets, 2.0, None))
    with pytest.raises(ValueError, match="'scal'.*Did you mean 'scale'"):
        FocalLoss(alpha_mode="scal")
    with pytest.raises(ValueError, match="alpha_mode"):
        MultiLabelFocalLoss(alpha_mode="lin")


@pytest.mark.parametrize("gamma,alpha", [(0.0, None), (2.0, 0.25), (1.0, 1)])
def test_multilabel_focal_on_probabilities_matches_logits_and_formula(gamma, alpha):
    logits, targets = _multi()
    probs = torch.sigmoid(logits)
    on_probs = MultiLabelFocalLoss(gamma=gamma, alpha=alpha, logits=False, reduction="none")
    on_logits = MultiLabelFocalLoss(gamma=gamma, alpha=alpha, reduction="none")
    _close(on_probs(probs, targets), on_logits(logits, targets).detach().numpy(), tol=1e-9)
    a = 1.0 if alpha in (None, 1) else alpha
    b = 1.0 if alpha in (None, 1) else 1 - alpha
    _close(on_probs(probs, targets),
           soft_binary_focal_ref(probs, targets, gamma, a, b, probs=True, reduction="none"))
    if gamma == 0.0:  # plain BCE on probabilities: torch's BCELoss
        _close(on_probs(probs, targets), F.binary_cross_entropy(probs, targets, reduction="none"))


def test_multilabel_focal_on_probabilities_is_finite_at_zero_and_one():
    probs = torch.tensor([[0.0, 1.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    loss = MultiLabelFocalLoss(gamma=0.0, alpha=None, logits=False, reduction="none")
    out = loss(probs, targets)
    _close(out, np.array([[0.0, 0.0, 100.0, 100.0]]))
    _close(out, F.binary_cross_entropy(probs, targets, reduction="none").detach().numpy())
    out.sum().backward()
    assert torch.isfinite(probs.grad).all()
    assert torch.equal(loss.activation(probs.detach()), probs.detach())  # no second sigmoid


@pytest.mark.parametrize("bad", [torch.tensor([[0.5, 1.2]]), torch.tensor([[-0.1, 0.5]]),
                                 torch.tensor([[float("nan"), 0.5]])])
def test_multilabel_focal_on_probabilities_checks_the_range(bad):
    loss = MultiLabelFocalLoss(logits=False)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*logits=True"):
        loss(bad, torch.zeros_like(bad))
    with pytest.raises(TypeError, match="logits must be True or False"):
        MultiLabelFocalLoss(logits="yes")


# ---- binary label smoothing ------------------------------------------------------------------


def _smoothed(targets, eps):
    return [[y * (1 - eps) + eps / 2 for y in row] for row in targets.tolist()]


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_bce_label_smoothing_pulls_targets_toward_half(eps):
    logits, targets = _multi()
    pos_weight = [2.0, 1.0, 0.5, 1.0, 3.0]
    loss = BCEWithLogitsLoss(pos_weight=pos_weight, label_smoothing=eps, reduction="none")
    expected = []
    for row, srow in zip(logits.tolist(), _smoothed(targets, eps)):
        expected.append([
            -(ys * pw * math.log(_sigmoid(x)) + (1 - ys) * math.log(1 - _sigmoid(x)))
            for x, ys, pw in zip(row, srow, pos_weight)
        ])
    _close(loss(logits, targets), np.array(expected))
    # positives become 1 - eps/2 and negatives eps/2
    assert math.isclose(_smoothed(torch.tensor([[1.0, 0.0]]), eps)[0][0], 1 - eps / 2)


@pytest.mark.parametrize("eps", [0.1, 0.2])
@pytest.mark.parametrize("alpha,mode", [(None, "balance"), (0.25, "balance"), (2.0, "scale")])
def test_multilabel_focal_label_smoothing_matches_formula(eps, alpha, mode):
    logits, targets = _multi()
    loss = MultiLabelFocalLoss(gamma=2.0, alpha=alpha, alpha_mode=mode, label_smoothing=eps,
                               reduction="none")
    a_pos = 1.0 if alpha is None else alpha
    a_neg = 1.0 if alpha is None else (1 - alpha if mode == "balance" else alpha)
    expected = []
    for row, srow in zip(logits.tolist(), _smoothed(targets, eps)):
        expected.append([
            -(ys * a_pos * (1 - _sigmoid(x)) ** 2 * math.log(_sigmoid(x))
              + (1 - ys) * a_neg * _sigmoid(x) ** 2 * math.log(1 - _sigmoid(x)))
            for x, ys in zip(row, srow)
        ])
    _close(loss(logits, targets), np.array(expected))


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_asymmetric_loss_label_smoothing_matches_formula(eps):
    logits, targets = _multi()
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05
    loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, label_smoothing=eps, reduction="none")
    expected = []
    for row, srow in zip(logits.tolist(), _smoothed(targets, eps)):
        values = []
        for x, ys in zip(row, srow):
            p = _sigmoid(x)
            pm = max(p - clip, 0.0)
            values.append(-(ys * (1 - p) ** gamma_pos * math.log(p)
                            + (1 - ys) * pm**gamma_neg * math.log(1 - pm)))
        expected.append(values)
    _close(loss(logits, targets), np.array(expected))


def test_label_smoothing_is_validated_on_binary_losses():
    for cls in (BCEWithLogitsLoss, MultiLabelFocalLoss, AsymmetricLoss):
        with pytest.raises(ValueError, match="label_smoothing"):
            cls(label_smoothing=1.0)
        with pytest.raises(ValueError, match="label_smoothing"):
            cls(label_smoothing=-0.1)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    "gamma_neg,gamma_pos,clip", [(4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 0.5, 0.2), (3, 0, 0)]
)
def test_asymmetric_loss_matches_ridnik_formula(gamma_neg, gamma_pos, clip, reduction):
    logits, targets = _multi()
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction=reduction)
    expected = asl_ref(logits, targets, gamma_neg, gamma_pos, clip, reduction)
    _close(loss(logits, targets), expected)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_asymmetric_loss_without_clip_and_equal_gammas_is_focal(gamma):
    logits, targets = _multi()
    asl = AsymmetricLoss(gamma_neg=gamma, gamma_pos=gamma, clip=0.0, reduction="none")
    focal = MultiLabelFocalLoss(gamma=gamma, alpha=None, reduction="none")
    _close(asl(logits, targets), focal(logits, targets).numpy())


def test_asymmetric_loss_defaults_are_the_papers_recommendation():
    loss = AsymmetricLoss()
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip) == (4.0, 0.0, 0.05)


def test_asymmetric_loss_discards_negatives_below_the_clip_margin():
    logits = torch.tensor([[-5.0, 5.0]])  # p = 0.0067 < clip for the first label
    targets = torch.tensor([[0.0, 0.0]])
    per_label = AsymmetricLoss(clip=0.05, reduction="none")(logits, targets)
    assert per_label[0, 0].item() == 0.0
    assert per_label[0, 1].item() > 0.0


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma_pos,gamma_neg,eps", [(0.0, 4.0, 0.1), (1.0, 2.0, 0.2), (2, 0, 0)])
def test_asymmetric_single_label_matches_formula(gamma_pos, gamma_neg, eps, reduction):
    logits, targets = _single()
    loss = AsymmetricLossSingleLabel(gamma_pos, gamma_neg, eps, reduction=reduction)
    expected = asl_single_ref(logits, targets, gamma_pos, gamma_neg, eps, reduction)
    _close(loss(logits, targets), expected)


def test_asymmetric_single_label_reduces_to_focal_and_smoothed_ce():
    logits, targets = _single()
    no_smoothing = AsymmetricLossSingleLabel(gamma_pos=2.0, gamma_neg=4.0, label_smoothing=0.0)
    _close(no_smoothing(logits, targets), FocalLoss(gamma=2.0)(logits, targets).numpy())
    smoothed = AsymmetricLossSingleLabel(gamma_pos=0.0, gamma_neg=0.0, label_smoothing=0.1)
    expected = F.cross_entropy(logits, targets, label_smoothing=0.1)
    _close(smoothed(logits, targets), expected.numpy())


def test_weighted_cross_entropy_uses_sqrt_inverse_frequency_weights():
    labels = np.array([0] * 64 + [1] * 16 + [2] * 4 + [3] * 1)
    expected_weight = torch.tensor([1 / 8, 1 / 4, 1 / 2, 1.0], dtype=torch.float64)
    loss = weighted_cross_entropy(labels)
    np.testing.assert_allclose(loss.weight.numpy(), expected_weight.numpy(), rtol=1e-6)
    logits, targets = _single(c=4)
    for reduction in ("none", "mean", "sum"):
        loss.reduction = reduction
        ref = F.cross_entropy(logits, targets, weight=expected_weight, reduction=reduction)
        _close(loss(logits, targets), ref.numpy(), tol=1e-6)


def test_cross_entropy_matches_torch_with_smoothing_and_ignore_index():
    logits, targets = _single()
    targets[3] = -100
    ours = CrossEntropyLoss(label_smoothing=0.1)(logits, targets)
    _close(ours, F.cross_entropy(logits, targets, label_smoothing=0.1).numpy())


def test_bce_matches_torch_with_weight_and_pos_weight():
    logits, targets = _multi()
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    pos_weight = torch.tensor([4.0, 1.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    ours = BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight)(logits, targets)
    ref = F.binary_cross_entropy_with_logits(
        logits, targets, weight=weight, pos_weight=pos_weight
    )
    _close(ours, ref.numpy(), tol=1e-6)


# ---- flattening, reduction, validation ---------------------------------------------------------


def _all_losses():
    return [
        CrossEntropyLoss(),
        weighted_cross_entropy(weights=[1.0, 2.0, 3.0, 4.0, 5.0]),
        FocalLoss(alpha=[1.0, 2.0, 3.0, 4.0, 5.0]),
        AsymmetricLossSingleLabel(),
        BCEWithLogitsLoss(),
        MultiLabelFocalLoss(),
        AsymmetricLoss(),
        AsymmetricLoss(gamma_pos=0.5, gamma_neg=0.5),
        FocalLoss(gamma=0.5),
        MultiLabelFocalLoss(alpha=1, gamma=2),
        MultiLabelFocalLoss(alpha=2.0, alpha_mode="scale", label_smoothing=0.1),
        BCEWithLogitsLoss(label_smoothing=0.1),
        AsymmetricLoss(label_smoothing=0.1),
    ]


def _data_for(loss, **kwargs):
    return _multi(**kwargs) if loss.multilabel else _single(**kwargs)


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_runtime_reduction_switch_gives_per_item_losses(loss):
    logits, targets = _data_for(loss)
    mean = loss(logits, targets)
    loss.reduction = "none"
    per_item = loss(logits, targets)
    loss.reduction = "sum"
    total = loss(logits, targets)
    expected_shape = (12, N_CLASSES) if loss.multilabel else (12,)
    assert per_item.shape == expected_shape
    _close(total, per_item.sum().numpy())
    if not isinstance(getattr(loss, "weight", None), torch.Tensor):  # weighted CE: torch mean
        _close(mean, per_item.mean().numpy())


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_bad_reduction_is_refused_at_construction_and_at_run_time(loss):
    with pytest.raises(ValueError, match="'avg'.*'mean'"):
        loss.reduction = "avg"
    with pytest.raises(ValueError, match="reduction"):
        type(loss)(reduction="elementwise")


def test_class_axis_is_flattened_like_fastai():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, N_CLASSES, 3, 4, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, N_CLASSES, (2, 3, 4), generator=gen)
    flat_logits = logits.permute(0, 2, 3, 1).reshape(-1, N_CLASSES)
    ours = FocalLoss(gamma=2.0, axis=1, reduction="none")(logits, targets)
    _close(ours, focal_ref(flat_logits, targets.reshape(-1), 2.0, reduction="none"))
    multi_targets = (torch.rand(2, N_CLASSES, 3, generator=gen) < 0.5).double()
    multi_logits = logits[..., 0]
    asl = AsymmetricLoss(axis=1, reduction="none")(multi_logits, multi_targets)
    expected = asl_ref(multi_logits.permute(0, 2, 1).reshape(-1, N_CLASSES),
                       multi_targets.permute(0, 2, 1).reshape(-1, N_CLASSES), 4.0, 0.0, 0.05,
                       "none")
    _close(asl, expected)


def test_wrong_number_of_class_weights_is_an_error():
    logits, targets = _single(c=3)
    with pytest.raises(ValueError, match="5 entries but the logits have 3 classes"):
        FocalLoss(alpha=[1.0] * 5)(logits, targets)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FocalLoss(gamma=-1.0),
        lambda: FocalLoss(alpha=[1.0, -1.0]),
        lambda: FocalLoss(alpha=0.0),
        lambda: AsymmetricLoss(clip=1.0),
        lambda: AsymmetricLoss(gamma_neg=float("nan")),
        lambda: MultiLabelFocalLoss(thresh=1.5),
        lambda: CrossEntropyLoss(weight=[0.0, 0.0]),
        lambda: AsymmetricLossSingleLabel(label_smoothing=1.0),
    ],
)
def test_bad_hyperparameters_raise_value_errors(make):
    with pytest.raises(ValueError):
        make()


# ---- gradients and numerics --------------------------------------------------------------------


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_gradients_match_finite_differences_in_float64(loss):
    logits, targets = _data_for(loss, n=4, scale=1.5)
    logits.requires_grad_(True)
    for reduction in ("mean", "none"):
        loss.reduction = reduction
        assert torch.autograd.gradcheck(lambda x: loss(x, targets), (logits,), eps=1e-6,
                                        atol=1e-6)


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_extreme_logits_give_finite_loss_and_gradients(loss):
    logits, targets = _data_for(loss, n=16, dtype=torch.float32)
    extreme = torch.where(logits > 0, 100.0, -100.0).requires_grad_(True)
    value = loss(extreme, targets)
    value.backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(extreme.grad).all()
    # a confidently wrong prediction costs about its margin, not inf or nan
    if not loss.multilabel:
        wrong = torch.full((1, N_CLASSES), -100.0)
        wrong[0, 0] = 100.0
        assert 1.0 < loss(wrong, torch.tensor([1])).item() < 1e4


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_bfloat16_autocast_on_cpu_matches_float32(loss):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, N_CLASSES)
    x = torch.randn(64, 8)
    targets = (
        (torch.rand(64, N_CLASSES) < 0.3).float() if loss.multilabel
        else torch.randint(0, N_CLASSES, (64,))
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        amp_loss = loss(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert amp_loss.dtype == torch.float32
    reference = loss(logits.detach().float(), targets)
    assert abs(amp_loss.item() - reference.item()) <= 1e-3 * max(1.0, abs(reference.item()))


def test_multilabel_focal_on_probabilities_under_bfloat16_autocast_computes_in_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, N_CLASSES), torch.nn.Sigmoid())
    x = torch.randn(64, 8)
    targets = (torch.rand(64, N_CLASSES) < 0.3).float()
    loss = MultiLabelFocalLoss(alpha=1, gamma=2, logits=False, label_smoothing=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = model(x)
        amp_loss = loss(probs, targets)
    assert amp_loss.dtype == torch.float32
    reference = soft_binary_focal_ref(probs.detach().double(), targets, 2.0, eps=0.1, probs=True)
    assert abs(amp_loss.item() - reference) <= 1e-5 * max(1.0, abs(reference))


@pytest.mark.cuda
@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_float16_autocast_on_cuda_matches_float32(loss):
    torch.manual_seed(0)
    loss = loss.cuda()
    model = torch.nn.Linear(8, N_CLASSES).cuda()
    x = torch.randn(64, 8, device="cuda") * 10
    targets = (
        (torch.rand(64, N_CLASSES, device="cuda") < 0.3).float() if loss.multilabel
        else torch.randint(0, N_CLASSES, (64,), device="cuda")
    )
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        logits = model(x)
        amp_loss = loss(logits, targets)
    assert logits.dtype == torch.float16
    assert amp_loss.dtype == torch.float32
    scaler.scale(amp_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    reference = loss(logits.detach().float(), targets)
    assert abs(amp_loss.item() - reference.item()) <= 1e-3 * max(1.0, abs(reference.item()))


# ---- fastai hooks --------------------------------------------------------------------------


def test_single_label_activation_and_decodes():
    logits, _ = _single()
    loss = FocalLoss()
    probs = loss.activation(logits)
    _close(probs.sum(1), np.ones(12))
    assert torch.equal(loss.decodes(probs), logits.argmax(1))
    assert loss.y_int is True


def test_multilabel_decodes_uses_threshold_argument():
    probs = torch.tensor([[0.2, 0.45, 0.7]])
    loss = AsymmetricLoss(thresh=0.4)
    assert loss.decodes(probs).tolist() == [[False, True, True]]
    assert loss.decodes(probs, thresh=0.6).tolist() == [[False, False, True]]
    assert torch.equal(loss.activation(torch.tensor([0.0])), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="thresh"):
        loss.decodes(probs, thresh=2.0)


@pytest.mark.parametrize("loss", _all_losses(), ids=lambda l: type(l).__name__)
def test_losses_pickle_for_learner_export(loss):
    restored = pickle.loads(pickle.dumps(loss))
    logits, targets = _data_for(loss)
    _close(restored(logits, targets), loss(logits, targets).detach().numpy())


def _tabular_learner(loss_func, multilabel, y_range=None):
    from fastai.tabular.all import (
        CategoryBlock,
        MultiCategoryBlock,
        Normalize,
        TabularPandas,
        tabular_learner,
    )

    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    if multilabel:
        df["lab_a"] = (df.x1 > 0).astype(float)
        df["lab_b"] = (df.x2 > 0.5).astype(float)
        y_names, y_block = ["lab_a", "lab_b"], MultiCategoryBlock(encoded=True, vocab=["a", "b"])
    else:
        df["y"] = np.where(df.x1 > 0.5, "hi", np.where(df.x1 < -0.5, "lo", "mid"))
        y_names, y_block = "y", CategoryBlock()
    splits = (list(range(90)), list(range(90, n)))
    to = TabularPandas(df, procs=[Normalize], cont_names=["x1", "x2"], y_names=y_names,
                       y_block=y_block, splits=splits)
    dls = to.dataloaders(bs=30)
    learn = tabular_learner(dls, layers=[16], loss_func=loss_func, y_range=y_range)
    return learn, df


def test_multilabel_focal_on_probabilities_works_with_a_sigmoid_model_in_fastai():
    loss_func = MultiLabelFocalLoss(alpha=1, gamma=2, logits=False)
    learn, _ = _tabular_learner(loss_func, multilabel=True, y_range=(0, 1))
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2)
        probs, targets, decoded, losses = learn.get_preds(with_decoded=True, with_loss=True)
        raw = learn.model(*[t for t in learn.dls.valid.one_batch()[:2]]).detach()
    _close(probs[:len(raw)].double(), raw.double().numpy(), tol=1e-6)  # no extra sigmoid
    assert torch.equal(decoded, probs > 0.5)
    expected = soft_binary_focal_ref(probs.double(), targets.double(), 2.0, probs=True,
                                     reduction="none")
    _close(losses.double(), expected.mean(1), tol=1e-5)


@pytest.mark.parametrize("loss_func", [FocalLoss(), AsymmetricLossSingleLabel(),
                                       weighted_cross_entropy(weights=[1.0, 2.0, 1.0])],
                         ids=lambda l: type(l).__name__)
def test_single_label_loss_works_as_fastai_loss_func(loss_func):
    learn, df = _tabular_learner(loss_func, multilabel=False)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2)
        probs, targets, decoded, losses = learn.get_preds(with_decoded=True, with_loss=True)
    assert probs.shape == (30, 3)
    _close(probs.sum(1).double(), np.ones(30), tol=1e-5)
    assert torch.equal(decoded, probs.argmax(1))
    assert losses.shape == (30,)
    assert loss_func.reduction == "mean"  # restored after get_preds
    with learn.no_bar():
        _, idx, row_probs = learn.predict(df.iloc[0])
    assert row_probs.shape == (3,)
    assert int(idx) == int(row_probs.argmax())


@pytest.mark.parametrize(
    "loss_func", [AsymmetricLoss(), MultiLabelFocalLoss(), BCEWithLogitsLoss()],
    ids=lambda l: type(l).__name__,
)
def test_multilabel_loss_works_as_fastai_loss_func(loss_func):
    learn, df = _tabular_learner(loss_func, multilabel=True)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, 1e-2)
        probs, targets, decoded, losses = learn.get_preds(with_decoded=True, with_loss=True)
    assert probs.shape == (30, 2)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert torch.equal(decoded, probs > 0.5)
    assert losses.shape == (30,)
    with learn.no_bar():
        _, flags, row_probs = learn.predict(df.iloc[0])
    assert torch.equal(flags, row_probs > 0.5)


# ---- class weights ------------------------------------------------------------------------------


def test_class_weights_on_hand_made_counts():
    labels = [0] * 100 + [1] * 25 + [2] * 4
    np.testing.assert_allclose(class_weights(labels).numpy(), [0.2, 0.4, 1.0], rtol=1e-6)
    np.testing.assert_allclose(class_weights(labels, "inv").numpy(), [0.04, 0.16, 1.0],
                               rtol=1e-6)
    beta = 0.99
    inv_eff = [(1 - beta) / (1 - beta**n) for n in (100, 25, 4)]
    expected = np.array(inv_eff) / max(inv_eff)
    np.testing.assert_allclose(class_weights(labels, "effective_number", beta=beta).numpy(),
                               expected, rtol=1e-6)


def test_class_weights_follow_vocab_order_for_names_and_indices():
    names = ["dog"] * 9 + ["cat"] * 1 + ["eel"] * 4
    np.testing.assert_allclose(class_weights(names).numpy(), [1.0, 1 / 3, 0.5], rtol=1e-6)
    vocab = ["eel", "dog", "cat"]
    np.testing.assert_allclose(class_weights(names, vocab=vocab).numpy(), [0.5, 1 / 3, 1.0],
                               rtol=1e-6)
    indices = [1] * 9 + [2] * 1 + [0] * 4  # the same labels as indices into vocab
    np.testing.assert_allclose(class_weights(indices, vocab=vocab).numpy(), [0.5, 1 / 3, 1.0],
                               rtol=1e-6)


def test_class_weights_for_multi_hot_labels_count_positives():
    multi_hot = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1]] * 4)
    np.testing.assert_allclose(class_weights(multi_hot).numpy(), [0.5, 1.0, 1.0], rtol=1e-6)


def test_class_weights_name_the_class_without_samples():
    with pytest.raises(ValueError, match="class 'cat' has no samples"):
        class_weights(["dog", "eel"], vocab=["cat", "dog", "eel"])
    with pytest.raises(ValueError, match="class 1 has no samples"):
        class_weights([0, 0, 2])
    with pytest.raises(ValueError, match="class 3 has no samples"):
        class_weights([0, 1, 2], n_classes=4)
    with pytest.raises(ValueError, match="class 'b' has no samples"):
        class_weights(np.array([[1, 0], [1, 0]]), vocab=["a", "b"])


def test_class_weights_refuse_labels_outside_the_vocab():
    with pytest.raises(ValueError, match=r"\['cow'\] are not in the vocab"):
        class_weights(["dog", "cow"], vocab=["cat", "dog"])
    with pytest.raises(ValueError, match="not valid class indices"):
        class_weights([0, 1, 5], vocab=["a", "b"])
    with pytest.raises(ValueError, match="3 columns but the vocab has 2"):
        class_weights(np.eye(3), vocab=["a", "b"])
    with pytest.raises(ValueError, match="multi-hot"):
        class_weights(np.array([[0.5, 1.0]]))


def test_class_weights_unknown_method_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'sqrt_inv'"):
        class_weights([0, 1], method="sqrt_inverse")
    with pytest.raises(ValueError, match="beta"):
        class_weights([0, 1], method="effective_number", beta=1.0)


# ---- registry -----------------------------------------------------------------------------------


def test_registry_lists_the_contract_names():
    expected = {"cross_entropy", "weighted_cross_entropy", "focal", "bce", "multilabel_focal",
                "asl", "asl_single"}
    assert expected <= set(list_losses())
    assert list_losses("*focal") == ["focal", "multilabel_focal"]


def test_register_loss_refuses_a_taken_name_unless_overwrite():
    from fasttricks.losses import LOSSES, LossConfig, register_loss

    config = LossConfig(FocalLoss, False, "focal under another name")
    register_loss("Focal_Test", config)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_loss("focal_test", config)
        register_loss("focal_test", config, overwrite=True)
        assert type(get_loss("FOCAL_TEST", gamma=1.0)) is FocalLoss
        with pytest.raises(TypeError, match="LossConfig"):
            register_loss("focal_bad", FocalLoss)
    finally:
        LOSSES._entries.pop("focal_test", None)


@pytest.mark.parametrize(
    "name,cls",
    [("cross_entropy", CrossEntropyLoss), ("focal", FocalLoss), ("bce", BCEWithLogitsLoss),
     ("multilabel_focal", MultiLabelFocalLoss), ("asl", AsymmetricLoss),
     ("asl_single", AsymmetricLossSingleLabel), ("ASL", AsymmetricLoss)],
)
def test_get_loss_builds_each_registered_loss(name, cls):
    assert type(get_loss(name)) is cls


def test_get_loss_computes_class_weights_from_labels():
    labels = np.array([0] * 16 + [1] * 4 + [2] * 1)
    wce = get_loss("weighted_cross_entropy", labels=labels)
    np.testing.assert_allclose(wce.weight.numpy(), [0.25, 0.5, 1.0], rtol=1e-6)
    inv = get_loss("weighted_cross_entropy", labels=labels, weights="inv")
    np.testing.assert_allclose(inv.weight.numpy(), [1 / 16, 0.25, 1.0], rtol=1e-6)
    focal = get_loss("focal", labels=labels, alpha="sqrt_inv", gamma=1.0)
    np.testing.assert_allclose(focal.alpha.numpy(), [0.25, 0.5, 1.0], rtol=1e-6)
    assert focal.gamma == 1.0
    multi_hot = np.array([[1, 0], [1, 0], [1, 0], [1, 1]])
    bce = get_loss("bce", labels=multi_hot, pos_weight="inv")
    np.testing.assert_allclose(bce.pos_weight.numpy(), [0.25, 1.0], rtol=1e-6)


def test_get_loss_errors_are_helpful():
    with pytest.raises(KeyError, match="Did you mean 'focal'"):
        get_loss("focl")
    with pytest.raises(TypeError, match="gama.*did you mean 'gamma'"):
        get_loss("focal", gama=2.0)
    with pytest.raises(ValueError, match="pass labels"):
        get_loss("weighted_cross_entropy")
    with pytest.raises(ValueError, match="pass labels"):
        get_loss("focal", alpha="sqrt_inv")
    with pytest.raises(TypeError, match="needs the training labels"):
        FocalLoss(alpha="sqrt_inv")


@pytest.mark.parametrize(
    "loss_func,multilabel",
    [(FocalLoss(), False), (AsymmetricLossSingleLabel(), False), (AsymmetricLoss(), True),
     (MultiLabelFocalLoss(), True)],
    ids=lambda v: type(v).__name__ if not isinstance(v, bool) else str(v),
)
def test_losses_give_per_sample_values_to_the_batch_loss_filter(loss_func, multilabel):
    from fasttricks.callbacks import BatchLossFilterCallback

    learn, _ = _tabular_learner(loss_func, multilabel=multilabel)
    seen = []
    original_forward = loss_func.forward

    def recording_forward(inp, targ):
        out = original_forward(inp, targ)
        seen.append((loss_func.reduction, tuple(out.shape)))
        return out

    loss_func.forward = recording_forward
    try:
        with learn.no_bar(), learn.no_logging():
            learn.fit(1, 1e-2, cbs=BatchLossFilterCallback(loss_perc=0.8))
    finally:
        del loss_func.forward
    train_calls = [shape for reduction, shape in seen if reduction == "none"]
    assert train_calls and all(shape[0] == 30 for shape in train_calls)
    assert loss_func.reduction == "mean"
    assert np.isfinite(learn.recorder.values[-1]).all()
