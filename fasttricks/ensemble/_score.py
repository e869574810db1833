"""Scoring stored predictions with a recipe's loss and metrics, exactly as fastai validates."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["score_predictions"]


def _inverse_activation(loss_func: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map probabilities back to logits for ``loss_func``'s activation (softmax -> log,
    sigmoid -> logit, none -> identity), so the loss and metrics see what a model would output.
    """
    act = getattr(loss_func, "activation", None)
    if act is None or not callable(act):
        return lambda p: p
    probe = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    out = act(probe)
    if torch.allclose(out, probe):
        return lambda p: p
    if torch.allclose(out, torch.softmax(probe, dim=-1), atol=1e-6):
        return lambda p: torch.log(p.float().clamp_min(1e-12))
    if torch.allclose(out, torch.sigmoid(probe), atol=1e-6):
        return lambda p: torch.logit(p.float().clamp(1e-7, 1 - 1e-7))
    raise ValueError(
        f"cannot score averaged predictions: the loss activation {act!r} is neither softmax, "
        "sigmoid nor the identity"
    )


class _Passthrough(nn.Module):
    """Returns its input; the unused parameter tells fastai which device batches go to."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def score_predictions(
    preds: torch.Tensor, targets: torch.Tensor, loss_func: Any, metrics: Sequence[Any] = ()
) -> dict[str, float]:
    """The loss and every fastai metric of stored predictions, as fastai's validation computes.

    ``preds`` are activated predictions (what ``learn.get_preds`` returns: probabilities for
    softmax/sigmoid losses); they are mapped back to logits and run through a fastai
    ``Learner`` with an identity model, so a metric means exactly what it means in training.

    Returns:
        ``{"loss": ..., <metric name>: ...}`` with fastai's metric names (e.g. ``accuracy``).
    """
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FastaiDataLoader
    from fastai.learner import Learner

    from fasttricks._io import quiet_fit

    logits = _inverse_activation(loss_func)(torch.as_tensor(preds))
    items = list(zip(logits, torch.as_tensor(targets)))
    dl = FastaiDataLoader(items, bs=1024)
    metrics = [copy.deepcopy(m) for m in metrics]
    learn = Learner(DataLoaders(dl, dl), _Passthrough(), loss_func=loss_func, metrics=metrics)
    with quiet_fit(learn):
        values = learn.validate(dl=dl)
    names = ["loss"] + [m.name for m in learn.metrics]
    return {n: float(v) for n, v in zip(names, values)}
