"""A batch-size finder from the gradient noise scale (McCandlish et al. 2018).

McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch Training" (2018),
https://arxiv.org/abs/1812.06162. With ``G`` the true gradient and ``Σ`` the per-example
gradient covariance, a batch of ``B`` examples gives ``E|G_B|² = |G|² + tr(Σ) / B``. The
*simple noise scale* ``B_simple = tr(Σ) / |G|²`` is where the noise in a batch gradient is as
large as the gradient itself: batches well below ``B_simple`` scale almost perfectly (twice the
batch, half the steps), batches well above it waste compute. The paper's Appendix A estimates
both terms without bias from gradient norms at two batch sizes ``B_small < B_big``::

    |G|²  ≈ (B_big |G_big|² - B_small |G_small|²) / (B_big - B_small)
    tr(Σ) ≈ (|G_small|² - |G_big|²) / (1 / B_small - 1 / B_big)

and, as the paper does, averages each over many steps before taking the ratio (the ratio of
two noisy means, not the mean of noisy ratios).

Here each step draws one batch of ``B_big`` items, splits it into ``B_big / B_small``
micro-batches, and uses the mean of their squared gradient norms for ``|G_small|²`` and the
norm of their mean for ``|G_big|²``: the cost of one ``B_big`` forward-backward per step.

Caveat (the cheatsheet's): the noise scale answers "how large can the batch be before more
data per step stops buying fewer steps", i.e. speed. Small batches (32 or 64) often
*generalize* best; choose larger ones to train faster, and check the validation metric.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BatchSizeSuggestion", "NoiseScale", "gradient_noise_scale", "suggest_bs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoiseScale:
    """Estimates of the gradient noise scale from ``steps`` batches.

    Attributes:
        noise_scale: ``B_simple = trace_sigma / grad_sq`` (``inf`` when ``grad_sq <= 0``: the
            gradient is lost in the noise, e.g. at a minimum).
        trace_sigma: estimate of ``tr(Σ)``, the summed per-example gradient variance.
        grad_sq: estimate of ``|G|²``, the squared norm of the true gradient.
        b_small, b_big: the two batch sizes.
        steps: batches of ``b_big`` items used.
    """

    noise_scale: float
    trace_sigma: float
    grad_sq: float
    b_small: int
    b_big: int
    steps: int


@dataclass(frozen=True)
class BatchSizeSuggestion:
    """What :func:`suggest_bs` found: the suggested batch size and the estimate behind it.

    Attributes:
        batch_size: ``noise_scale`` rounded to a power of two, clipped to
            ``[min_bs, max_bs]``.
        estimate: the :class:`NoiseScale` measurement.
    """

    batch_size: int
    estimate: NoiseScale

    @property
    def noise_scale(self) -> float:
        """The estimated ``B_simple``."""
        return self.estimate.noise_scale


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _chunk(batch: Sequence[Tensor], start: int, stop: int) -> list[Tensor]:
    return [t[start:stop] for t in batch]


def _flat_grad(params: list[Tensor]) -> Tensor:
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).double()
        for p in params
    ])


def gradient_noise_scale(
    model: nn.Module,
    loss_func: Any,
    batches: Iterable[Sequence[Tensor]],
    b_small: int,
    *,
    n_inp: int = 1,
    steps: int | None = None,
) -> NoiseScale:
    """Estimate ``B_simple = tr(Σ) / |G|²`` at the model's current weights (no training).

    Every batch (a tuple of ``n_inp`` inputs followed by the targets, all with the same first
    dimension ``B_big``) is split into ``B_big // b_small`` micro-batches of ``b_small`` items;
    the gradient of ``loss_func`` (a mean over the micro-batch) is taken for each. Gradients
    are accumulated in float64. The model's weights are not changed; its ``.grad`` fields are
    cleared.

    Args:
        model: the network, in the mode it should be measured in (usually ``train()``).
        loss_func: ``loss_func(pred, *targets)``, averaging over items.
        batches: an iterable of batches of equal size ``B_big``.
        b_small: micro-batch size, at least 1 and at most ``B_big / 2``, dividing ``B_big``.
        n_inp: how many leading batch elements are model inputs (default 1).
        steps: stop after this many batches (default: all of ``batches``).

    Raises:
        ValueError: bad sizes, or no batch to measure on.
    """
    _check_int("b_small", b_small, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    sum_small = sum_big = 0.0
    done = 0
    b_big = None
    for batch in batches:
        if steps is not None and done >= steps:
            break
        batch = list(batch) if isinstance(batch, (tuple, list)) else [batch]
        size = len(batch[0])
        if b_big is None:
            b_big = size
            if b_big < 2 * b_small or b_big % b_small:
                raise ValueError(
                    f"the batch size B_big={b_big} must be a multiple of b_small={b_small} and "
                    "at least twice it (two batch sizes are needed)"
                )
        elif size != b_big:
            continue  # a short last batch: skip it, the estimator needs one B_big
        n_chunks = b_big // b_small
        grads = []
        for i in range(n_chunks):
            part = _chunk(batch, i * b_small, (i + 1) * b_small)
            model.zero_grad(set_to_none=True)
            loss = loss_func(model(*part[:n_inp]), *part[n_inp:])
            loss.backward()
            grads.append(_flat_grad(params))
        stacked = torch.stack(grads)
        sum_small += stacked.pow(2).sum(1).mean().item()
        sum_big += stacked.mean(0).pow(2).sum().item()
        done += 1
    model.zero_grad(set_to_none=True)
    if done == 0 or b_big is None:
        raise ValueError("no full batch to measure the gradient noise scale on")
    small, big = sum_small / done, sum_big / done
    grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace_sigma = (small - big) / (1.0 / b_small - 1.0 / b_big)
    noise = trace_sigma / grad_sq if grad_sq > 0 else math.inf
    return NoiseScale(noise, trace_sigma, grad_sq, b_small, b_big, done)


def _power_of_two(value: float, low: int, high: int) -> int:
    if not math.isfinite(value):
        return high
    rounded = 2 ** round(math.log2(max(value, 1.0)))
    return int(min(max(rounded, low), high))


def suggest_bs(
    learn: Any,
    steps: int = 200,
    b_small: int | None = None,
    b_big: int | None = None,
    *,
    max_passes: int = 3,
    min_bs: int = 8,
    max_bs: int | None = None,
    show_progress: bool = True,
) -> BatchSizeSuggestion:
    """Suggest a batch size from the gradient noise scale of a fastai ``Learner``.

    Measures ``B_simple = tr(Σ) / |G|²`` (McCandlish et al. 2018, Appendix A; see the module
    docstring) over ``steps`` training batches at the learner's current weights, and suggests
    it rounded to a power of two. Nothing is trained: the weights (and batch-norm statistics)
    are restored afterwards. The noise scale grows as the loss falls (the paper's Fig. 5), so
    measure on a partly trained model to size the batches for the rest of training.

    Caveat (the cheatsheet's): batch sizes of 32 or 64 often generalize best; a batch near
    ``B_simple`` is the largest that still trains about as sample-efficiently, so it is the
    *fast* choice. Compare both on the validation metric.

    Args:
        learn: a fastai ``Learner`` (its ``model``, ``loss_func`` and ``dls.train``).
        steps: batches to average over (default 200); fewer when the data is small, at most
            ``max_passes`` passes over the training set.
        b_small: the small batch size (default ``b_big // 8``, at least 1).
        b_big: the large batch size (default the training loader's ``bs``).
        max_passes: cap on passes over the training data (default 3).
        min_bs, max_bs: clip the suggestion (default 8 and the training-set size).
        show_progress: show a progress bar (default True).

    Returns:
        A :class:`BatchSizeSuggestion` with ``batch_size`` and the ``estimate``.

    Example::

        found = suggest_bs(learn)
        print(found.batch_size, found.noise_scale)
        dls = dls.new(bs=found.batch_size)   # or keep 32/64 if they validate better
    """
    _check_int("steps", steps, 1)
    _check_int("max_passes", max_passes, 1)
    _check_int("min_bs", min_bs, 1)
    train_dl = learn.dls.train
    n_items = len(train_dl.dataset)
    b_big = train_dl.bs if b_big is None else _check_int("b_big", b_big, 2)
    if b_big > n_items:
        raise ValueError(f"b_big={b_big} is more than the {n_items} training items")
    b_small = max(1, b_big // 8) if b_small is None else _check_int("b_small", b_small, 1)
    if b_big < 2 * b_small or b_big % b_small:
        raise ValueError(
            f"b_big={b_big} must be a multiple of b_small={b_small} and at least twice it"
        )
    max_bs = n_items if max_bs is None else _check_int("max_bs", max_bs, min_bs)
    dl = train_dl.new(bs=b_big, shuffle=True, drop_last=True)
    steps = min(steps, max_passes * max(1, n_items // b_big))

    def batches() -> Iterable[Sequence[Tensor]]:
        produced = 0
        while True:
            for batch in dl:
                yield batch
                produced += 1
                if produced >= steps:
                    return

    model = learn.model
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.train()
    try:
        source: Iterable[Sequence[Tensor]] = batches()
        if show_progress:
            from fastprogress.fastprogress import progress_bar

            source = progress_bar(source, total=steps, leave=False)
        estimate = gradient_noise_scale(
            model, learn.loss_func, source, b_small, n_inp=getattr(learn.dls, "n_inp", 1),
            steps=steps,
        )
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    if estimate.grad_sq <= 0:
        logger.warning(
            "the gradient is lost in the noise (|G|^2 estimate %.3g <= 0, e.g. at a minimum); "
            "suggesting max_bs=%d", estimate.grad_sq, max_bs
        )
    suggestion = _power_of_two(estimate.noise_scale, min_bs, max_bs)
    logger.info(
        "gradient noise scale B_simple=%.4g (tr(Sigma)=%.4g, |G|^2=%.4g, B_small=%d, B_big=%d, "
        "%d steps): suggested batch size %d", estimate.noise_scale, estimate.trace_sigma,
        estimate.grad_sq, b_small, b_big, estimate.steps, suggestion,
    )
    return BatchSizeSuggestion(suggestion, estimate)
