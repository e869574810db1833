"""Losses for imbalanced and multi-label classification, ready for a fastai `Learner`.

Every loss here

* takes raw logits (`MultiLabelFocalLoss` also takes probabilities with ``logits=False``)
  and computes in float32 even under `torch.autocast`, in log-softmax / log-sigmoid form, so
  logits of +-100 give a finite loss and finite gradients;
* the binary losses (BCE, multi-label focal, ASL) take ``label_smoothing=eps``, which pulls
  every target toward 0.5: ``y * (1 - eps) + eps / 2``;
* flattens like fastai's ``*Flat`` losses: the class axis (``axis``, default last) is moved
  last and leading dimensions are merged, so segmentation-shaped outputs work too;
* has a switchable ``reduction`` attribute (``"mean"``, ``"sum"`` or ``"none"``), which is
  what fastai's ``Learner.loss_not_reduced``, ``get_preds(with_loss=True)`` and per-sample
  callbacks set at run time;
* carries fastai's ``activation`` (softmax or sigmoid) and ``decodes`` (argmax, or a
  threshold for multi-label) so ``learn.get_preds`` and ``learn.predict`` just work.

Single-label losses return one value per item for ``reduction="none"``; multi-label losses
return an ``(items, classes)`` matrix.

Example::

    from fasttricks.losses import FocalLoss, get_loss
    learn = Learner(dls, model, loss_func=FocalLoss(gamma=2.0))
    learn = Learner(dls, model, loss_func=get_loss("focal", labels=train_y, alpha="sqrt_inv"))
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasttricks._labels import CLASS_WEIGHT_METHODS, class_weights
from fasttricks._validate import check_choice, check_range, did_you_mean
from fasttricks.registry import Registry

__all__ = [
    "CLASS_WEIGHT_METHODS",
    "REDUCTIONS",
    "AsymmetricLoss",
    "AsymmetricLossSingleLabel",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LOSSES",
    "LossConfig",
    "MultiLabelFocalLoss",
    "class_weights",
    "get_loss",
    "list_losses",
    "register_loss",
    "weighted_cross_entropy",
]

REDUCTIONS = ("none", "mean", "sum")

WeightLike = Tensor | Sequence[float] | np.ndarray


# --------------------------------------------------------------------------------------------
# shared machinery


def _check_gamma(name: str, value: float) -> float:
    check_range(name, value, 0.0)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_smoothing(value: float) -> float:
    return float(check_range("label_smoothing", value, 0.0, 1.0, high_inclusive=False))


def _as_weight_tensor(name: str, value: WeightLike | None) -> Tensor | None:
    """Validate a per-class weight vector: 1-D, finite, >= 0, not all zero."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"{name}={value!r} names a class-weight method, which needs the training labels: "
            f"use get_loss(..., labels=train_labels, {name}={value!r}) or pass "
            f"class_weights(train_labels, {value!r})"
        )
    if isinstance(value, Tensor):
        tensor = value.detach().to(torch.float32).clone()
    else:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=torch.float32)
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise ValueError(f"{name} must be a 1-D per-class vector, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all() or (tensor < 0).any() or not (tensor > 0).any():
        raise ValueError(
            f"{name} must be finite, >= 0 and not all zero, got {tensor.tolist()[:20]}"
        )
    return tensor


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on `device` (a no-op where autocast is unknown)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()


def _upcast(x: Tensor) -> Tensor:
    """At least float32: half and bfloat16 logits are upcast, float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _plain(x: Any) -> Tensor:
    """A plain `torch.Tensor` view of fastai's tensor subclasses (keeps autograd)."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    return x if type(x) is Tensor else x.as_subclass(Tensor)


def _modulating_factor(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` for ``base`` in [0, 1], with finite gradients at ``base == 0``.

    The clamp keeps ``gamma < 1`` from producing ``0 ** (gamma - 1) = inf`` in the backward
    pass; it changes the value by at most ``tiny ** gamma``.
    """
    return base.clamp_min(torch.finfo(base.dtype).tiny).pow(gamma)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class _FlatLoss(nn.Module):
    """Base for every loss here: flattening, float32 compute, switchable reduction."""

    #: fastai's MixUp/CutMix stack integer targets when the loss says ``y_int``.
    y_int = False
    #: Whether targets are multi-hot (items x classes) rather than class indices.
    multilabel = False

    def __init__(self, *, reduction: str = "mean", axis: int = -1) -> None:
        super().__init__()
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise TypeError(f"axis must be an int, got {axis!r}")
        self.axis = axis
        self.reduction = reduction

    @property
    def reduction(self) -> str:
        """``"mean"``, ``"sum"`` or ``"none"``; can be switched at run time."""
        return self._reduction

    @reduction.setter
    def reduction(self, value: str) -> None:
        self._reduction = check_choice("reduction", value, REDUCTIONS)

    def _flatten(self, inp: Tensor, targ: Tensor) -> tuple[Tensor, Tensor]:
        inp, targ = _plain(inp), _plain(targ)
        if inp.ndim == 0:
            raise ValueError("logits must have a class dimension, got a 0-d tensor")
        if self.axis not in (-1, inp.ndim - 1):
            inp = inp.movedim(self.axis, -1)
            if self.multilabel:
                targ = targ.movedim(self.axis, -1)
        n_classes = inp.shape[-1]
        inp = inp.reshape(-1, n_classes)
        if self.multilabel:
            if targ.numel() != inp.numel():
                raise ValueError(
                    f"multi-hot targets of shape {tuple(targ.shape)} do not match logits of "
                    f"shape {tuple(inp.shape)} (items x classes)"
                )
            targ = targ.reshape(-1, n_classes)
        else:
            if targ.numel() != inp.shape[0]:
                raise ValueError(
                    f"expected one class index per item ({inp.shape[0]} items), got targets "
                    f"of shape {tuple(targ.shape)}"
                )
            targ = targ.reshape(-1).long()
        return inp, targ

    def forward(self, inp: Tensor, targ: Tensor) -> Tensor:
        inp, targ = self._flatten(inp, targ)
        with _autocast_off(inp.device):
            inp = _upcast(inp)
            if self.multilabel:
                targ = targ.to(inp.dtype)
            return self._loss(inp, targ)

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, axis={self.axis}"


class _SingleLabelLoss(_FlatLoss):
    """fastai hooks for losses over mutually exclusive classes."""

    y_int = True
    multilabel = False

    def activation(self, x: Tensor) -> Tensor:
        """Softmax over the class axis (what `get_preds` returns)."""
        return F.softmax(x, dim=self.axis)

    def decodes(self, x: Tensor) -> Tensor:
        """The predicted class index: argmax over the class axis."""
        return x.argmax(dim=self.axis)


class _MultiLabelLoss(_FlatLoss):
    """fastai hooks for losses over independent binary labels."""

    y_int = False
    multilabel = True

    def __init__(
        self,
        *,
        thresh: float = 0.5,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(reduction=reduction, axis=axis)
        self.thresh = _check_thresh(thresh)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def _smooth(self, targ: Tensor) -> Tensor:
        """Binary label smoothing: ``y * (1 - eps) + eps / 2`` pulls every target toward 0.5.

        Szegedy et al. 2016 ("Rethinking the Inception Architecture", Sec. 7) mix the one-hot
        target with the uniform distribution over the ``K`` classes; each binary label here is
        a two-class problem, so ``K = 2``: positives become ``1 - eps/2``, negatives ``eps/2``.
        """
        eps = self.label_smoothing
        return targ if eps == 0 else targ * (1.0 - eps) + eps / 2

    def activation(self, x: Tensor) -> Tensor:
        """Sigmoid of each logit (what `get_preds` returns)."""
        return torch.sigmoid(x)

    def decodes(self, x: Tensor, thresh: float | None = None) -> Tensor:
        """Labels whose probability exceeds ``thresh`` (default: the loss's ``thresh``)."""
        return x > (self.thresh if thresh is None else _check_thresh(thresh))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, thresh={self.thresh}, "
            f"label_smoothing={self.label_smoothing}"
        )


def _check_thresh(thresh: float) -> float:
    return float(check_range("thresh", thresh, 0.0, 1.0))


def _check_classes(name: str, vector: Tensor | None, n_classes: int) -> None:
    if vector is not None and vector.numel() != n_classes:
        raise ValueError(
            f"{name} has {vector.numel()} entries but the logits have {n_classes} classes"
        )


# --------------------------------------------------------------------------------------------
# single-label losses


class CrossEntropyLoss(_SingleLabelLoss):
    """Softmax cross-entropy (optionally class-weighted and label-smoothed) for fastai.

    The same value as `torch.nn.CrossEntropyLoss` with the same ``weight``,
    ``label_smoothing`` and ``ignore_index``; a weighted ``"mean"`` divides by the sum of the
    targets' weights, as torch does. Adds fastai's flattening, ``activation``/``decodes``,
    float32 compute under autocast and a validated, switchable ``reduction``.

    Args:
        weight: per-class weights (see `class_weights`), or None for the plain loss.
        label_smoothing: epsilon of label smoothing (Szegedy et al. 2016), in [0, 1).
        ignore_index: target value that contributes nothing (default -100, as torch).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        axis: the class axis of the logits (default -1).
    """

    def __init__(
        self,
        weight: WeightLike | None = None,
        *,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(reduction=reduction, axis=axis)
        self.label_smoothing = _check_smoothing(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.register_buffer("weight", _as_weight_tensor("weight", weight))

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:
        _check_classes("weight", self.weight, inp.shape[-1])
        weight = None if self.weight is None else self.weight.to(inp.dtype)
        return F.cross_entropy(
            inp,
            targ,
            weight=weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


def weighted_cross_entropy(
    labels: Any = None,
    weights: str | WeightLike = "sqrt_inv",
    *,
    vocab: Sequence | None = None,
    n_classes: int | None = None,
    beta: float = 0.999,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    axis: int = -1,
) -> CrossEntropyLoss:
    """Class-weighted cross-entropy as a fastai loss.

    ``weights`` is either a `class_weights` method name (default ``"sqrt_inv"``, the
    cheatsheet's rule: the rarest class gets 1, class ``c`` gets ``sqrt(n_min / n_c)``),
    computed from the training ``labels``, or an explicit per-class vector.

    Example::

        loss_func = weighted_cross_entropy(train_labels)              # sqrt_inv weights
        loss_func = weighted_cross_entropy(weights=[1.0, 4.0, 9.0])   # explicit

    Returns:
        A `CrossEntropyLoss` with ``weight`` set.
    """
    if isinstance(weights, str):
        if labels is None:
            raise ValueError(
                f"weights={weights!r} computes class weights from the training labels: pass "
                "labels=... (or an explicit per-class weight vector)"
            )
        weights = class_weights(labels, weights, vocab=vocab, beta=beta, n_classes=n_classes)
    elif labels is not None:
        raise ValueError("pass either labels (with a weight method name) or explicit weights")
    return CrossEntropyLoss(
        weights, label_smoothing=label_smoothing, reduction=reduction, axis=axis
    )


#: How a focal loss reads ``alpha`` (see `MultiLabelFocalLoss` for both, side by side).
ALPHA_MODES = ("balance", "scale")


def _check_alpha_mode(value: str) -> str:
    return check_choice("alpha_mode", value, ALPHA_MODES)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


class FocalLoss(_SingleLabelLoss):
    """Multi-class focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002).

    ``FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)`` with ``p_t`` the softmax probability of
    the target class. ``gamma`` down-weights easy, well-classified items; ``gamma=0`` is
    cross-entropy. ``alpha`` is None (no weighting), a float (one factor for every class) or a
    per-class vector (``alpha_t = alpha[target]``, e.g. `class_weights`).

    ``alpha_mode`` takes the same two names as `MultiLabelFocalLoss`: ``"scale"`` (the
    cheatsheet's scalar factor, the default here) and ``"balance"`` (Lin et al.'s weight
    ``alpha_t`` of the target, the "positive", against ``1 - alpha`` for negatives). The
    softmax loss has only the target's term, so there are no negative terms to weight and both
    modes give the same loss; ``alpha=1`` or None is unweighted either way.

    ``"mean"`` averages over items, as Lin et al. normalise by a count, not by the sum of the
    weights; so with a per-class ``alpha`` and ``gamma=0`` this equals
    ``nn.CrossEntropyLoss(weight=alpha)`` for ``"none"`` and ``"sum"`` but not for ``"mean"``.

    Args:
        gamma: focusing parameter, >= 0 (default 2, the paper's choice).
        alpha: None, a positive float, or a per-class weight vector.
        alpha_mode: ``"scale"`` (default) or ``"balance"``; the same loss here (see above).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        axis: the class axis of the logits (default -1).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | WeightLike | None = None,
        *,
        alpha_mode: str = "scale",
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(reduction=reduction, axis=axis)
        self.gamma = _check_gamma("gamma", gamma)
        self.alpha_mode = _check_alpha_mode(alpha_mode)
        if alpha is None or isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
                raise ValueError(f"alpha must be a positive number, got {alpha!r}")
            self.alpha_scale = None if alpha is None else float(alpha)
            self.register_buffer("alpha", None)
        else:
            self.alpha_scale = None
            self.register_buffer("alpha", _as_weight_tensor("alpha", alpha))

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:
        _check_classes("alpha", self.alpha, inp.shape[-1])
        log_pt = F.log_softmax(inp, dim=-1).gather(1, targ[:, None]).squeeze(1)
        loss = -log_pt
        if self.gamma > 0:
            loss = loss * _modulating_factor(-torch.expm1(log_pt), self.gamma)
        if self.alpha is not None:
            loss = loss * self.alpha.to(inp.dtype)[targ]
        elif self.alpha_scale is not None:
            loss = loss * self.alpha_scale
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        alpha = self.alpha_scale if self.alpha is None else "per-class"
        return (
            f"gamma={self.gamma}, alpha={alpha}, alpha_mode={self.alpha_mode!r}, "
            f"{super().extra_repr()}"
        )


class AsymmetricLossSingleLabel(_SingleLabelLoss):
    """Asymmetric loss for single-label classification (Ridnik et al. 2021).

    The single-label variant of ASL (https://arxiv.org/abs/2009.14119, Sec. 5 and the
    authors' reference code): softmax probabilities ``p``, one-hot targets smoothed to
    ``q = (1 - eps) * onehot + eps / C``, and asymmetric focusing weights
    ``w_y = (1 - p_y) ** gamma_pos`` for the target class and ``w_j = p_j ** gamma_neg`` for
    the others::

        loss = -sum_j q_j * w_j * log(p_j)

    Without smoothing only the target term is left, so ``label_smoothing=0`` gives focal loss
    with ``gamma=gamma_pos``; with both gammas 0 it is label-smoothed cross-entropy.

    Args:
        gamma_pos: focusing of the target class, >= 0 (default 0).
        gamma_neg: focusing of the other classes, >= 0 (default 4).
        label_smoothing: epsilon in [0, 1) (default 0.1, the reference code's value).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        axis: the class axis of the logits (default -1).
    """

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        label_smoothing: float = 0.1,
        *,
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(reduction=reduction, axis=axis)
        self.gamma_pos = _check_gamma("gamma_pos", gamma_pos)
        self.gamma_neg = _check_gamma("gamma_neg", gamma_neg)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:
        n_classes = inp.shape[-1]
        log_p = F.log_softmax(inp, dim=-1)
        is_target = F.one_hot(targ, n_classes).bool()
        weight = torch.ones_like(log_p)
        if self.gamma_pos > 0:
            weight = torch.where(
                is_target, _modulating_factor(-torch.expm1(log_p), self.gamma_pos), weight
            )
        if self.gamma_neg > 0:
            weight = torch.where(
                is_target, weight, _modulating_factor(log_p.exp(), self.gamma_neg)
            )
        eps = self.label_smoothing
        smoothed = is_target.to(log_p.dtype) * (1.0 - eps) + eps / n_classes
        loss = -(smoothed * weight * log_p).sum(dim=-1)
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, "
            f"label_smoothing={self.label_smoothing}, {super().extra_repr()}"
        )


# --------------------------------------------------------------------------------------------
# multi-label losses


class BCEWithLogitsLoss(_MultiLabelLoss):
    """Binary cross-entropy on logits for multi-label targets, as a fastai loss.

    The same value as `torch.nn.BCEWithLogitsLoss` (per-class ``weight`` and ``pos_weight``
    included), with fastai's flattening, sigmoid ``activation``, threshold ``decodes``,
    float32 compute under autocast and a validated, switchable ``reduction``. With
    ``label_smoothing=eps`` the targets are ``y * (1 - eps) + eps / 2`` (see `_smooth`).

    Args:
        weight: per-class rescaling of every term, or None.
        pos_weight: per-class weight of the positive terms (torch's ``pos_weight``), or None.
        label_smoothing: eps in [0, 1) pulling targets toward 0.5 (default 0).
        thresh: probability above which `decodes` predicts a label (default 0.5).
        reduction: ``"mean"`` over all item-class pairs (default), ``"sum"`` or ``"none"``.
        axis: the class axis of the logits (default -1).
    """

    def __init__(
        self,
        weight: WeightLike | None = None,
        pos_weight: WeightLike | None = None,
        *,
        label_smoothing: float = 0.0,
        thresh: float = 0.5,
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(
            thresh=thresh, label_smoothing=label_smoothing, reduction=reduction, axis=axis
        )
        self.register_buffer("weight", _as_weight_tensor("weight", weight))
        self.register_buffer("pos_weight", _as_weight_tensor("pos_weight", pos_weight))

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:
        _check_classes("weight", self.weight, inp.shape[-1])
        _check_classes("pos_weight", self.pos_weight, inp.shape[-1])
        return F.binary_cross_entropy_with_logits(
            inp,
            self._smooth(targ),
            weight=None if self.weight is None else self.weight.to(inp.dtype),
            pos_weight=None if self.pos_weight is None else self.pos_weight.to(inp.dtype),
            reduction=self.reduction,
        )


class MultiLabelFocalLoss(_MultiLabelLoss):
    """Binary focal loss for multi-label targets (Lin et al. 2017), on logits or probabilities.

    "Focal Loss for Dense Object Detection", https://arxiv.org/abs/1708.02002. For each
    item-class pair with ``p = sigmoid(logit)`` (or ``p`` itself with ``logits=False``) and
    target ``y``::

        FL = -(y * a_pos * (1 - p) ** gamma * log(p) + (1 - y) * a_neg * p ** gamma * log(1 - p))

    which for a hard target is Lin et al.'s ``-alpha_t * (1 - p_t) ** gamma * log(p_t)``, and
    stays linear in ``y`` for soft targets (label smoothing, MixUp). ``gamma`` down-weights easy
    pairs; ``gamma=0`` with no weighting is plain binary cross-entropy.

    The two conventions for ``alpha``, side by side:

    ==================  ======================================  =============================
    ``alpha_mode``      ``a_pos`` / ``a_neg``                   where it comes from
    ==================  ======================================  =============================
    ``"balance"``       ``alpha`` / ``1 - alpha``, alpha in     Lin et al.'s alpha-balancing
    (default)           (0, 1); the paper's best: 0.25          (Sec. 3.1); default 0.25
    ``"scale"``         ``alpha`` / ``alpha``, alpha > 0        the cheatsheet's scalar
                                                                factor ("alpha, gamma = 1, 1
                                                                for non weighted")
    ==================  ======================================  =============================

    ``alpha=1`` or ``alpha=None`` is the unweighted loss in both modes: the cheatsheet's
    ``MultiLabelFocalLoss(alpha=1, gamma=2)`` works as written. (Read literally as Lin et al.'s
    balance, ``alpha=1`` would give every negative label weight 0, which is never wanted.)
    ``alpha`` may also be a per-class vector: in ``"balance"`` mode entries in (0, 1) (class
    ``c``'s positives get ``alpha[c]``, its negatives ``1 - alpha[c]``); in ``"scale"`` mode
    entries >= 0 weight every term of class ``c``. `FocalLoss` takes the same ``alpha`` and
    ``alpha_mode``.

    With ``logits=False`` the inputs are probabilities in [0, 1] (checked; a value outside is a
    ``ValueError``); ``log(p)`` and ``log(1 - p)`` are clamped at -100 as in
    `torch.nn.BCELoss`, so ``p = 0`` or ``1`` gives a finite loss, and `activation` is the
    identity so ``get_preds`` returns the model's probabilities unchanged.

    Args:
        gamma: focusing parameter, >= 0 (default 2).
        alpha: None, a float or a per-class vector, read as ``alpha_mode`` says (default 0.25).
        alpha_mode: ``"balance"`` (default) or ``"scale"``, see the table.
        logits: whether the inputs are logits (default True) or probabilities (False).
        label_smoothing: eps in [0, 1): targets become ``y * (1 - eps) + eps / 2`` (default 0).
        thresh: probability above which `decodes` predicts a label (default 0.5).
        reduction: ``"mean"`` over all item-class pairs (default), ``"sum"`` or ``"none"``.
        axis: the class axis of the inputs (default -1).
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | WeightLike | None = 0.25,
        *,
        alpha_mode: str = "balance",
        logits: bool = True,
        label_smoothing: float = 0.0,
        thresh: float = 0.5,
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(
            thresh=thresh, label_smoothing=label_smoothing, reduction=reduction, axis=axis
        )
        self.gamma = _check_gamma("gamma", gamma)
        self.alpha_mode = _check_alpha_mode(alpha_mode)
        if not isinstance(logits, bool):
            raise TypeError(f"logits must be True or False, got {logits!r}")
        self.logits = logits
        self.alpha_scale: float | None = None
        vector = None
        if alpha is None or _is_number(alpha):
            if alpha is not None and float(alpha) != 1.0:
                self.alpha_scale = self._check_scalar_alpha(float(alpha))
        else:
            vector = _as_weight_tensor("alpha", alpha)
            if self.alpha_mode == "balance" and not ((vector > 0) & (vector < 1)).all():
                raise ValueError(
                    "a per-class alpha with alpha_mode='balance' must lie in (0, 1) (class c's "
                    f"positives get alpha[c], its negatives 1 - alpha[c]), got "
                    f"{vector.tolist()[:20]}; pass alpha_mode='scale' for per-class factors"
                )
        self.register_buffer("alpha", vector)

    def _check_scalar_alpha(self, alpha: float) -> float:
        if self.alpha_mode == "scale":
            if not (math.isfinite(alpha) and alpha > 0):
                raise ValueError(
                    f"alpha must be a positive number with alpha_mode='scale', got {alpha!r}"
                )
        elif not 0.0 < alpha < 1.0:
            raise ValueError(
                f"alpha must be in (0, 1] with alpha_mode='balance' (Lin et al.: positives get "
                f"alpha, negatives 1 - alpha; alpha=1 or None is unweighted), got {alpha!r}; for "
                "a scalar factor on every term pass alpha_mode='scale'"
            )
        return alpha

    def activation(self, x: Tensor) -> Tensor:
        """Sigmoid of each logit, or the probabilities unchanged with ``logits=False``."""
        return torch.sigmoid(x) if self.logits else x

    def _log_probs(self, inp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``log p, log(1 - p), p, 1 - p`` computed stably from logits or probabilities."""
        if self.logits:
            # log-sigmoid form: finite for any logit; sigmoid(-x) keeps 1 - p exact for large x
            return F.logsigmoid(inp), F.logsigmoid(-inp), torch.sigmoid(inp), torch.sigmoid(-inp)
        if inp.numel() and not ((inp >= 0) & (inp <= 1)).all():
            finite = inp[torch.isfinite(inp)]
            span = (
                f"[{finite.min().item():.4g}, {finite.max().item():.4g}]" if finite.numel()
                else "non-finite values only"
            )
            raise ValueError(
                f"logits=False expects probabilities in [0, 1], got values in {span}"
                f"{' and NaN/inf' if finite.numel() < inp.numel() else ''}; pass logits=True "
                "for raw scores"
            )
        # clamped at -100 like torch.nn.BCELoss, so p = 0 or 1 gives a finite loss; clamping the
        # input at `tiny` first keeps the gradient finite there (no 0 * inf in the backward)
        tiny = torch.finfo(inp.dtype).tiny
        one_minus_p = 1.0 - inp
        log_p = torch.log(inp.clamp_min(tiny)).clamp_min(-100.0)
        log_1mp = torch.log(one_minus_p.clamp_min(tiny)).clamp_min(-100.0)
        return log_p, log_1mp, inp, one_minus_p

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:
        _check_classes("alpha", self.alpha, inp.shape[-1])
        targ = self._smooth(targ)
        log_p, log_1mp, p, one_minus_p = self._log_probs(inp)
        if self.gamma > 0:
            log_p = log_p * _modulating_factor(one_minus_p, self.gamma)
            log_1mp = log_1mp * _modulating_factor(p, self.gamma)
        pos, neg = targ * log_p, (1.0 - targ) * log_1mp
        alpha = self.alpha.to(inp.dtype) if self.alpha is not None else self.alpha_scale
        if alpha is None:
            loss = -(pos + neg)
        elif self.alpha_mode == "balance":
            loss = -(alpha * pos + (1.0 - alpha) * neg)
        else:
            loss = -alpha * (pos + neg)
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        alpha = self.alpha_scale if self.alpha is None else "per-class"
        return (
            f"gamma={self.gamma}, alpha={alpha}, alpha_mode={self.alpha_mode!r}, "
            f"logits={self.logits}, {super().extra_repr()}"
        )


class AsymmetricLoss(_MultiLabelLoss):
    """Asymmetric loss (ASL) for multi-label classification (Ridnik et al. 2021).

    "Asymmetric Loss For Multi-Label Classification", https://arxiv.org/abs/2009.14119.
    With ``p = sigmoid(logit)`` and the shifted probability ``p_m = max(p - clip, 0)``::

        L+ = (1 - p) ** gamma_pos * log(p)               for positive labels
        L- = p_m ** gamma_neg * log(1 - p_m)             for negative labels
        loss = -(y * L+ + (1 - y) * L-)

    Asymmetric focusing (``gamma_neg > gamma_pos``) down-weights the many easy negatives;
    probability shifting (``clip``) discards very easy negatives entirely (``p < clip`` gives
    zero loss) and lowers the weight of possibly mislabelled ones. With
    ``label_smoothing=eps``, ``y`` is ``y * (1 - eps) + eps / 2`` in the last line.

    Defaults are the paper's recommended setting: ``gamma_neg=4``, ``gamma_pos=0`` (the paper
    keeps positives at plain cross-entropy so their gradients are not down-weighted; the
    authors' code defaults to ``gamma_pos=1``), ``clip=0.05``. With ``clip=0`` and equal
    gammas this is `MultiLabelFocalLoss` with ``alpha=None``.

    The focusing weights are differentiated like any other term (the exact gradient of the
    formula above). ``"mean"`` averages over all item-class pairs (the reference code sums;
    with Adam-style optimizers this only rescales the loss).

    Args:
        gamma_neg: focusing of negative labels, >= 0 (default 4).
        gamma_pos: focusing of positive labels, >= 0 (default 0).
        clip: probability margin ``m`` for negatives, in [0, 1) (default 0.05).
        label_smoothing: eps in [0, 1) pulling targets toward 0.5 (default 0).
        thresh: probability above which `decodes` predicts a label (default 0.5).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        axis: the class axis of the logits (default -1).
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        *,
        label_smoothing: float = 0.0,
        thresh: float = 0.5,
        reduction: str = "mean",
        axis: int = -1,
    ) -> None:
        super().__init__(
            thresh=thresh, label_smoothing=label_smoothing, reduction=reduction, axis=axis
        )
        self.gamma_neg = _check_gamma("gamma_neg", gamma_neg)
        self.gamma_pos = _check_gamma("gamma_pos", gamma_pos)
        self.clip = float(check_range("clip", clip, 0.0, 1.0, high_inclusive=False))

    def _loss(self, inp: Tensor, targ: Tensor) -> Tensor:
        targ = self._smooth(targ)
        loss_pos = F.logsigmoid(inp)
        if self.gamma_pos > 0:
            loss_pos = loss_pos * _modulating_factor(torch.sigmoid(-inp), self.gamma_pos)
        if self.clip > 0:
            # 1 - p_m = min(1 - p + clip, 1); 1 - p = sigmoid(-x) keeps precision for large x
            log_one_minus_pm = torch.log((torch.sigmoid(-inp) + self.clip).clamp(max=1.0))
            p_m = (torch.sigmoid(inp) - self.clip).clamp(min=0.0)
        else:
            log_one_minus_pm = F.logsigmoid(-inp)
            p_m = torch.sigmoid(inp)
        loss_neg = log_one_minus_pm
        if self.gamma_neg > 0:
            loss_neg = loss_neg * _modulating_factor(p_m, self.gamma_neg)
        loss = -(targ * loss_pos + (1.0 - targ) * loss_neg)
        return _reduce(loss, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
            f"{super().extra_repr()}"
        )


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class LossConfig:
    """One registry entry: how to build a loss by name.

    ``factory(**kwargs)`` builds the loss; ``weight_args`` names the keyword arguments that
    take a per-class vector and may instead be given as a `class_weights` method name
    (``"sqrt_inv"``, ...), resolved from the training labels by `get_loss`;
    ``multilabel`` says whether the loss expects multi-hot targets.
    """

    factory: Callable[..., nn.Module]
    multilabel: bool
    description: str
    weight_args: tuple[str, ...] = ()


LOSSES: Registry[LossConfig] = Registry("loss")


def register_loss(name: str, config: LossConfig, *, overwrite: bool = False) -> None:
    """Add a loss to the registry used by `get_loss` and recipes (names are lower-cased)."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"config must be a LossConfig, got {type(config).__name__}")
    LOSSES.register(name, config, overwrite=overwrite)


def list_losses(pattern: str | None = None) -> list[str]:
    """Registered loss names, sorted; ``pattern`` filters with shell-style globs (``"*focal"``)."""
    return LOSSES.names(pattern)


def _accepted_kwargs(factory: Callable[..., Any]) -> list[str] | None:
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def get_loss(
    name: str,
    *,
    labels: Any = None,
    n_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered loss by name, e.g. from a recipe's ``loss`` section.

    Names (see `list_losses`): ``cross_entropy``, ``weighted_cross_entropy``, ``focal``,
    ``bce``, ``multilabel_focal``, ``asl``, ``asl_single``.

    Args:
        name: registry name (case-insensitive).
        labels: the training labels (1-D class indices / names, or a 2-D multi-hot array);
            needed when a loss computes class weights, e.g. ``weighted_cross_entropy`` (whose
            ``weights`` default to ``"sqrt_inv"``) or ``focal`` with ``alpha="sqrt_inv"``.
        n_classes: number of classes, so class weights catch classes without samples.
        **kwargs: the loss's own arguments (``gamma``, ``alpha``, ``clip``, ``reduction``...);
            ``vocab`` and ``beta`` are passed on to `class_weights` when one is computed.

    Raises:
        KeyError: unknown name (the message lists the known ones and the closest match).
        TypeError: an argument the loss does not take (the message lists those it takes).
        ValueError: a class-weight method without ``labels``, or a bad value.

    Example::

        loss_func = get_loss("focal", labels=train_y, gamma=2.0, alpha="sqrt_inv")
    """
    key = LOSSES.key(name)
    config = LOSSES.get(key)
    kwargs = dict(kwargs)
    vocab = kwargs.pop("vocab", None)
    beta = kwargs.pop("beta", 0.999)
    for arg in config.weight_args:
        value = kwargs.get(arg)
        if isinstance(value, str):
            if labels is None:
                raise ValueError(
                    f"loss {key!r}: {arg}={value!r} computes class weights from the training "
                    "labels; pass labels=..."
                )
            kwargs[arg] = class_weights(labels, value, vocab=vocab, beta=beta, n_classes=n_classes)
    if key == "weighted_cross_entropy":
        kwargs.setdefault("weights", class_weights(
            _require_labels(key, labels), "sqrt_inv", vocab=vocab, beta=beta, n_classes=n_classes
        ))
    accepted = _accepted_kwargs(config.factory)
    if accepted is not None:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"loss {key!r} got unexpected argument(s) {unknown}"
                f"{did_you_mean(unknown[0], accepted)}; it takes {accepted}"
            )
    return config.factory(**kwargs)


def _require_labels(name: str, labels: Any) -> Any:
    if labels is None:
        raise ValueError(
            f"loss {name!r} computes class weights from the training labels: pass labels=... "
            "or explicit weights=[...]"
        )
    return labels


def _weighted_ce_factory(
    weights: WeightLike,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    axis: int = -1,
) -> CrossEntropyLoss:
    return weighted_cross_entropy(
        weights=weights, label_smoothing=label_smoothing, reduction=reduction, axis=axis
    )


def _register_builtin_losses() -> None:
    entries = {
        "cross_entropy": LossConfig(
            CrossEntropyLoss, False, "softmax cross-entropy", weight_args=("weight",)
        ),
        "weighted_cross_entropy": LossConfig(
            _weighted_ce_factory,
            False,
            "cross-entropy with class weights (default sqrt_inv from labels)",
            weight_args=("weights",),
        ),
        "focal": LossConfig(
            FocalLoss, False, "multi-class focal loss (Lin et al. 2017)", weight_args=("alpha",)
        ),
        "asl_single": LossConfig(
            AsymmetricLossSingleLabel, False, "single-label asymmetric loss (Ridnik et al. 2021)"
        ),
        "bce": LossConfig(
            BCEWithLogitsLoss,
            True,
            "multi-label binary cross-entropy on logits",
            weight_args=("weight", "pos_weight"),
        ),
        "multilabel_focal": LossConfig(
            MultiLabelFocalLoss, True, "multi-label binary focal loss (Lin et al. 2017)"
        ),
        "asl": LossConfig(AsymmetricLoss, True, "asymmetric loss, ASL (Ridnik et al. 2021)"),
    }
    for name, config in entries.items():
        register_loss(name, config)


_register_builtin_losses()
