"""fastai integration: an ``OptimWrapper`` that speaks fastai's hyperparameter names."""

from __future__ import annotations

from typing import Any

from fastai.optimizer import OptimWrapper

from ._config import OptimizerConfig

__all__ = ["FastaiOptimWrapper"]


def fastai_hp_map(config: OptimizerConfig) -> dict[str, str]:
    """Parameter-group key -> fastai name, e.g. ``{"betas__0": "mom", "weight_decay": "wd"}``.

    With ``set_betas=False`` the momentum key keeps its torch name, so schedulers cannot set it.
    """
    hp_map = {}
    for short, key in config.optimizer.hyper_map.items():
        if short == "mom" and not config.set_betas:
            continue
        hp_map[key] = short
    return hp_map


class FastaiOptimWrapper(OptimWrapper):
    """fastai's ``OptimWrapper`` around a fasttricks optimizer built from ``config``.

    Hyperparameters appear under fastai's names (``lr``, ``mom``, ``sqr_mom``, ``eps``, ``wd``,
    ...). When ``config.set_betas`` is False, ``mom`` is an inert slot: ``fit_one_cycle`` may
    schedule it, but the optimizer's momentum is not touched.
    """

    def __init__(self, params: Any, config: OptimizerConfig, **kwargs: Any) -> None:
        super().__init__(params, opt=config.optimizer, hp_map=fastai_hp_map(config), **kwargs)
        self.inert = {} if config.set_betas else {"mom": [None] * len(self.opt.param_groups)}

    @property
    def hypers(self) -> list[dict[str, Any]]:
        hypers = super().hypers
        for name, values in self.inert.items():
            for hyper, value in zip(hypers, values):
                hyper[name] = value
        return hypers

    def _set_hyper(self, k: str, v: Any) -> None:
        if k in self.inert:
            self.inert[k] = list(v)
            return
        super()._set_hyper(k, v)
