"""The opt-in compiled step of Ranger and RangerAdaBelief: one ``torch.compile``d function.

Meant for GPUs: on CPU the default step, the C loop of ``_native.py``, is faster and needs no
compile of tens of seconds.

The whole elementwise part of a step (maximize, L2 or decoupled decay per parameter, the
centralized gradient, both moments, RAdam's rectified or momentum-SGD update) is one function
over the parameter and state lists, compiled by inductor into loops that read each buffer once
and write it once, like torch's fused AdamW kernel. What changes from step to step (learning rate,
betas, bias corrections, the rectification term, eps) reaches it as one small tensor, so
fastai's schedulers changing ``lr`` and ``mom`` every batch never recompile it; the graph is
specialised only on the parameter shapes and the per-parameter rules (which parameters decay,
which are centralized), which stay fixed during a fit.

Gradient centralization needs each row's mean before the update; the means are computed
eagerly (one read of the gradients) and passed in, and ``p.grad`` itself is left unchanged.
Fusing the reduction into the update's loops (inductor's outer-loop fusion, which torch 2.14
only compiles with a patch) and a compiled reduction were both measured slower on CPU. On every
``k``-th step the Lookahead sync is part of the update (a second graph): the slow weights are
read and written once and the new fast weights are the slow ones, instead of two more passes
over both after the update.

Compile cost: inductor caches compiled kernels on disk (``TORCHINDUCTOR_CACHE_DIR``, by default
under the system temp folder), so the first compile for a model's parameter shapes is paid once
per machine, and a fresh process pays the warm-cache cost (tracing plus cache look-up).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["compiled_update", "compile_unavailable_reason"]

# indices into the hyperparameter tensor handed to the compiled function
_DECAY, _L2, _BETA1, _BETA2, _A, _B, _EPS, _EPS_ADD, _ALPHA = range(9)

_COMPILED: Any = None
#: graphs kept for the compiled update (two per parameter layout and rule: with and without
#: the Lookahead sync)
RECOMPILE_LIMIT = 64


def compile_unavailable_reason() -> str | None:
    """Why ``torch.compile`` cannot be used here (None when it can be tried)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        from torch import _dynamo

        if not _dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python/platform"
    except Exception as err:  # noqa: BLE001  (any import problem means: no compiler)
        return f"torch._dynamo cannot be imported ({err})"
    return None


def _update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    means: list[Tensor | None],
    slows: list[Tensor],
    hyper: Tensor,
    decoupled: tuple[bool, ...],
    l2: tuple[bool, ...],
    adabelief: bool,
    maximize: bool,
    sync: bool,
) -> None:
    """One Ranger/RangerAdaBelief update, in place, written as plain tensor maths.

    ``hyper`` holds ``1 - lr*wd``, ``wd`` (L2), beta1, beta2, ``a``, ``b``, eps and the eps added
    to AdaBelief's second moment; the step is ``p -= m * (a / (sqrt(v) + eps) + b)``: ``a`` is
    RAdam's rectified step size (0 on un-rectified steps), ``b`` the bias-corrected momentum-SGD
    step size (0 on rectified steps). ``means[i]`` is the row mean of the effective gradient of
    a centralized parameter (None otherwise). With ``sync`` (every ``k``-th step) the Lookahead
    sync follows in the same loops: ``slow += alpha * (p_new - slow)`` and ``p = slow``.
    """
    decay, wd = hyper[_DECAY], hyper[_L2]
    beta1, beta2 = hyper[_BETA1], hyper[_BETA2]
    a, b, eps, eps_add = hyper[_A], hyper[_B], hyper[_EPS], hyper[_EPS_ADD]
    alpha = hyper[_ALPHA]
    for i, p in enumerate(params):
        g = grads[i]
        if maximize:
            g = -g
        if l2[i]:
            g = g + wd * p
        mean = means[i]
        if mean is not None:
            g = g - mean
        m, v = exp_avgs[i], exp_avg_sqs[i]
        m_new = torch.lerp(m, g, 1 - beta1)
        if adabelief:
            diff = g - m_new
            v_new = torch.lerp(v, diff * diff, 1 - beta2) + eps_add
        else:
            v_new = v * beta2 + (1 - beta2) * g * g
        base = p * decay if decoupled[i] else p
        p_new = base - m_new * (a / (v_new.sqrt() + eps) + b)
        m.copy_(m_new)
        v.copy_(v_new)
        if sync:
            slow_new = torch.lerp(slows[i], p_new, alpha)
            slows[i].copy_(slow_new)
            p.copy_(slow_new)
        else:
            p.copy_(p_new)


def _compiled() -> Any:
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_update, dynamic=False, fullgraph=True)
    return _COMPILED


def row_means(
    grads: list[Tensor], params: list[Tensor], centralize: tuple[bool, ...],
    l2: tuple[bool, ...], wd: float, maximize: bool,
) -> list[Tensor | None]:
    """Row means (over all dims but the first) of the effective gradient
    ``(-g if maximize else g) + wd*p`` (the L2 term only where ``l2``) for centralized tensors."""
    out: list[Tensor | None] = []
    for g, p, gc, decayed in zip(grads, params, centralize, l2):
        if not gc:
            out.append(None)
            continue
        shape = (g.shape[0],) + (1,) * (g.ndim - 1)
        mean = g.reshape(g.shape[0], -1).mean(1)
        if maximize:
            mean = mean.neg_()
        if decayed:
            mean = mean.add_(p.reshape(p.shape[0], -1).mean(1), alpha=wd)
        out.append(mean.view(shape))
    return out


def compiled_update(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    slows: list[Tensor], values: list[float], centralize: tuple[bool, ...],
    decoupled: tuple[bool, ...], l2: tuple[bool, ...], adabelief: bool, maximize: bool,
    sync: bool,
) -> None:
    """The row means (eager, where ``centralize``), then the compiled update (``values`` in the
    order of ``hyper``, see :func:`_update`; ``sync``: this step ends with the Lookahead sync).

    Raises whatever compilation raises; the caller falls back to the eager step.
    """
    means = row_means(grads, params, centralize, l2, values[_L2], maximize)
    p0 = params[0]
    dtype = torch.float64 if p0.dtype == torch.float64 else torch.float32
    hyper = torch.tensor(values, dtype=dtype, device=p0.device)
    from torch._dynamo import config as dynamo_config

    # two graphs per parameter layout (model, group, rule); torch's default limit of 8 graphs per
    # function would silently send a process with more optimizers back to uncompiled maths
    with warnings.catch_warnings(), dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
        warnings.simplefilter("ignore", UserWarning)
        _compiled()(params, grads, exp_avgs, exp_avg_sqs, means, slows, hyper, decoupled, l2,
                    adabelief, maximize, sync)
