"""Pruners whose resource is the epoch: Hyperband (default), ASHA, median, none.

Every trial reports its validation metric once per epoch, at step ``epochs completed``
(1, 2, ..., ``E``), so a pruner's "resource" is a number of epochs and ``max_resource`` is the
recipe's ``schedule.epochs``.

- **hyperband** (Li et al. 2018, https://jmlr.org/papers/v18/16-558.html): several successive-
  halving brackets that trade many cheap trials against few long ones; Optuna's
  :class:`~optuna.pruners.HyperbandPruner`.
- **asha** (Li et al. 2020, https://arxiv.org/abs/1810.05934): one asynchronous
  successive-halving bracket; a trial continues past rung ``k`` (at ``r * eta**k`` epochs) only
  if it is in the top ``1/eta`` of the trials that reached that rung.
- **median** (Golovin et al. 2017, Google Vizier): prune a trial whose best value so far is
  worse than the median of earlier trials at the same epoch, never during the warm-up epochs.
- **none**: every trial trains all epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fasttricks._validate import check_choice, check_range

__all__ = ["PRUNERS", "make_pruner", "default_min_resource", "describe_pruner", "recipe_epochs"]

PRUNERS = ("hyperband", "asha", "median", "none")


def recipe_epochs(recipe: Mapping[str, Any]) -> int:
    """The number of epochs a full trial of ``recipe`` trains (``schedule.epochs``)."""
    try:
        epochs = recipe["schedule"]["epochs"]
    except (KeyError, TypeError):
        raise KeyError("the recipe has no schedule.epochs; pruners need the epoch budget") from None
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"schedule.epochs must be an integer >= 1, got {epochs!r}")
    return epochs


def default_min_resource(max_epochs: int, reduction_factor: int = 3) -> int:
    """Smallest epoch budget of a successive-halving rung: ``max(1, E // eta**3)``.

    This keeps at most four Hyperband brackets (``floor(log_eta(E / r)) + 1``), the range the
    Hyperband paper (section 3.6) recommends, while never stopping a trial before one epoch.
    """
    check_range("max_epochs", max_epochs, low=1)
    check_range("reduction_factor", reduction_factor, low=2)
    return max(1, max_epochs // reduction_factor**3)


def make_pruner(
    name: str = "hyperband",
    recipe: Mapping[str, Any] | None = None,
    *,
    max_epochs: int | None = None,
    min_resource: int | None = None,
    reduction_factor: int = 3,
    warmup_epochs: int | None = None,
    n_startup_trials: int = 5,
) -> Any:
    """Build an Optuna pruner whose resource is epochs.

    Args:
        name: ``"hyperband"`` (default), ``"asha"``, ``"median"`` or ``"none"``.
        recipe: the resolved recipe; its ``schedule.epochs`` is the maximum resource.
        max_epochs: the maximum resource when no recipe is given (overrides the recipe's).
        min_resource: epochs of the first rung (hyperband/asha); default
            :func:`default_min_resource` (``max(1, E // eta**3)``).
        reduction_factor: ``eta`` of successive halving, default 3 (keep the top third).
        warmup_epochs: median only; epochs never pruned, default ``max(1, E // 3)``.
        n_startup_trials: median only; trials that run to the end before pruning starts,
            default 5 (Optuna's default).

    Returns:
        An ``optuna.pruners.BasePruner``.

    Raises:
        KeyError: unknown ``name`` (lists the known pruners and the closest match).
        ValueError: a budget outside its range (echoing the value).

    Example::

        pruner = make_pruner("hyperband", {"schedule": {"epochs": 9}})
        print(describe_pruner(pruner))
    """
    import optuna

    check_choice("pruner", name, PRUNERS)
    if max_epochs is None:
        if recipe is None:
            raise ValueError("make_pruner needs a recipe or max_epochs to know the epoch budget")
        max_epochs = recipe_epochs(recipe)
    check_range("max_epochs", max_epochs, low=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        warmup = max(1, max_epochs // 3) if warmup_epochs is None else warmup_epochs
        check_range("warmup_epochs", warmup, low=0)
        check_range("n_startup_trials", n_startup_trials, low=0)
        # Steps are epochs completed (1-based): step <= warmup is never pruned.
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials, n_warmup_steps=warmup + 1, interval_steps=1
        )
        pruner._fasttricks_plan = {"warmup_epochs": warmup, "max_epochs": max_epochs}
        return pruner
    check_range("reduction_factor", reduction_factor, low=2)
    if not isinstance(reduction_factor, int):
        raise ValueError(f"reduction_factor must be an integer >= 2, got {reduction_factor!r}")
    if min_resource is None:
        min_resource = default_min_resource(max_epochs, reduction_factor)
    check_range("min_resource", min_resource, low=1, high=max_epochs)
    if name == "asha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=reduction_factor
        )
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=max_epochs, reduction_factor=reduction_factor
        )
    pruner._fasttricks_plan = {
        "min_resource": min_resource,
        "max_epochs": max_epochs,
        "reduction_factor": reduction_factor,
    }
    return pruner


def bracket_plan(min_resource: int, max_epochs: int, reduction_factor: int) -> list[list[int]]:
    """Rung epochs of each Hyperband bracket, as Optuna schedules them.

    Bracket ``s`` is successive halving with ``min_early_stopping_rate = s``: its rungs sit at
    ``r * eta**(s + k)`` epochs below the maximum; there are ``floor(log_eta(E / r)) + 1``
    brackets. The last bracket has no rung: its trials always train all ``E`` epochs.
    """
    n_brackets = math.floor(math.log(max_epochs / min_resource, reduction_factor)) + 1
    plan = []
    for s in range(n_brackets):
        rungs = []
        k = 0
        while min_resource * reduction_factor ** (s + k) < max_epochs:
            rungs.append(min_resource * reduction_factor ** (s + k))
            k += 1
        plan.append(rungs)
    return plan


def describe_pruner(pruner: Any) -> str:
    """One human-readable paragraph: the pruner, its resources in epochs and its brackets."""
    import optuna

    plan = getattr(pruner, "_fasttricks_plan", None)
    if isinstance(pruner, optuna.pruners.NopPruner):
        return "pruner: none (every trial trains all epochs)"
    if plan is None:
        return f"pruner: {type(pruner).__name__}"
    if isinstance(pruner, optuna.pruners.MedianPruner):
        return (
            f"pruner: median over earlier trials, never before epoch {plan['warmup_epochs'] + 1}"
            f" of {plan['max_epochs']}, after {pruner._n_startup_trials} complete trials"
        )
    r, big_e, eta = plan["min_resource"], plan["max_epochs"], plan["reduction_factor"]
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner):
        rungs = bracket_plan(r, big_e, eta)[0]
        return (
            f"pruner: asha, resources in epochs: min {r}, max {big_e}, reduction factor {eta}; "
            f"rungs at epochs {rungs or 'none'} (top 1/{eta} continue)"
        )
    brackets = bracket_plan(r, big_e, eta)
    lines = [
        f"pruner: hyperband, resources in epochs: min {r}, max {big_e}, reduction factor {eta}, "
        f"{len(brackets)} bracket{'s' if len(brackets) != 1 else ''}:"
    ]
    for s, rungs in enumerate(brackets):
        where = f"rungs at epochs {rungs}" if rungs else "no early stop (full epochs)"
        lines.append(f"  bracket {s}: {where}")
    return "\n".join(lines)
