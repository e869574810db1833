"""Optimizers by name for fastai and plain PyTorch, with fast fused Ranger/RangerAdaBelief.

``get_optimizer(name, **overrides)`` returns a fastai ``opt_func``;
``create_optimizer(model, name, lr, **overrides)`` a plain ``torch.optim.Optimizer``. Names
live in ``optimizer_config_mapping`` (read-only; each entry reads as attributes or as the
cheatsheet's ``cfg["optimizer"]``, ``cfg["hyperparameters"]``, ``cfg["wd"]["true_wd"]``,
``cfg["wd"]["bn_wd"]``, ``cfg.get("set_betas", True)``) and are added with ``register_optimizer``
(an ``OptimizerConfig`` or a plain torch optimizer class such as ``torch.optim.NAdam``).

Default hyperparameters (fastai's short names):

======================  =====  =======  =====  ====  =========================================
name                    mom    sqr_mom  eps    wd    notes
======================  =====  =======  =====  ====  =========================================
adamw                   0.9    0.99     1e-5   0.01  decoupled wd, also on 1-D params
ranger, ranger_nogc     0.95   0.99     1e-6   0.01  k=6, alpha=0.5, use_gc=True / False
rangeradabelief(_nogc)  0.95   0.999    1e-8   0.01  eps: 1e-8 vision, 1e-16 NLP, 1e-12 RL
sgd / sgd_momentum      0 / 0.9                0     sgd_nesterov: 0.9 + nesterov
rmsprop                 0.9    0.99     1e-8   0     torch's RMSprop
======================  =====  =======  =====  ====  =========================================

All but adamw use decoupled weight decay (``true_wd=True``) and no decay on 1-D parameters
(``bn_wd=False``). When sweeping an Adam-family eps, try 1.0, 0.1 and 0.01. Every optimizer
takes ``maximize``; none writes to ``p.grad`` (the reference Ranger centralizes it in place; here
gradient centralization works on a copy, or inside the kernel).

Kernels: adamw runs torch's fused AdamW kernel (CPU and CUDA) with its own rule
(``true_wd=True, bn_wd=True``); another rule is applied outside torch's step, which then uses
foreach kernels. On CPU the four Ranger names step through a C loop of their own (``_native``:
one pass per row that centralizes, updates both moments, steps and does the Lookahead sync,
within 1.25x of fused AdamW), compiled once per machine with the system C compiler in about a
second. Without a compiler, or for float16/bfloat16, non-contiguous tensors or CUDA, Ranger's
rectified steps run through torch's fused Adam kernel, RangerAdaBelief's through torch's fused
SGD and Adam kernels (CPU) or foreach launches; ``fused=False`` always takes the foreach path.
``get_optimizer(name, compile=True)`` runs each step as one ``torch.compile``d function instead
(useful on GPUs; slower than the C loop on CPU, after a compile of tens of seconds); it falls
back to the eager step, with one warning, where compiling fails.
``decay_share(model, name, loss_func, batch)`` shows, per parameter, what one step's weight
decay did (1 decoupled, 0 none, anything else L2).

Example::

    >>> from fasttricks.optim import get_optimizer
    >>> opt_func = get_optimizer("ranger", eps=1e-6, wd=1e-2)
    >>> # learn = Learner(dls, model, opt_func=opt_func); learn.fit_flat_cos(5, 3e-3)
"""

from __future__ import annotations

from ._config import (
    OptimizerConfig,
    config_from_torch_class,
    get_config,
    list_optimizers,
    optimizer_config_mapping,
    register_optimizer,
)
from ._decay import WeightDecayRules
from ._decay_share import decay_share
from ._factory import OptFunc, create_optimizer, get_optimizer
from ._ranger import Ranger, RangerAdaBelief
from ._torch_optims import SGD, AdamW, RMSprop

__all__ = [
    "SGD",
    "AdamW",
    "OptFunc",
    "OptimizerConfig",
    "RMSprop",
    "Ranger",
    "RangerAdaBelief",
    "WeightDecayRules",
    "config_from_torch_class",
    "create_optimizer",
    "decay_share",
    "get_config",
    "get_optimizer",
    "list_optimizers",
    "optimizer_config_mapping",
    "register_optimizer",
]
