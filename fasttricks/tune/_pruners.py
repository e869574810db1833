"""Pruners whose resource is the epoch: Hyperband (default), ASHA, median, none.

Every trial reports its validation metric once per epoch, at step ``epochs completed``
(1, 2, ..., ``E``), so a pruner's "resource" is a number of epochs and ``max_resource`` is the
recipe's ``schedule.epochs``.

- **hyperband** (Li et al. 2018, https://jmlr.org/papers/v18/16-558.html): several successive-
  halving brackets that trade many cheap trials against few long ones; Optuna's
  :class:`~optuna.pruners.HyperbandPruner`. With a known trial budget the number of brackets is
  sized to it (:func:`default_n_brackets`): the most exploratory brackets are kept, the
  conservative ones (the last of which never stops a trial) need more trials to pay off.
- **asha** (Li et al. 2020, https://arxiv.org/abs/1810.05934): one asynchronous
  successive-halving bracket; a trial continues past rung ``k`` (at ``r * eta**k`` epochs) only
  if it is in the top ``1/eta`` of the trials that reached that rung.
- **median** (Golovin et al. 2017, Google Vizier): prune a trial whose best value so far is
  worse than the median of earlier trials at the same epoch, never during the warm-up epochs.
- **none**: every trial trains all epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fasttricks._validate import check_range
from fasttricks.registry import Registry

__all__ = [
    "PRUNERS",
    "PRUNER_TYPES",
    "PrunerPlan",
    "PrunerType",
    "plan_pruner",
    "default_min_resource",
    "default_n_brackets",
    "describe_pruner",
    "hyperband_iteration_trials",
    "make_pruner",
    "max_brackets",
    "recipe_epochs",
]

PRUNERS = ("hyperband", "asha", "median", "none")  # the built-in pruners, default first


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


def max_brackets(min_resource: int, max_epochs: int, reduction_factor: int) -> int:
    """Brackets of full Hyperband: ``floor(log_eta(E / r)) + 1`` (Li et al. 2018, Algorithm 1).

    Computed with integer powers, so ``E / r`` an exact power of ``eta`` is never off by one.
    """
    check_range("min_resource", min_resource, low=1, high=max_epochs)
    check_range("reduction_factor", reduction_factor, low=2)
    count = 0
    while min_resource * reduction_factor**count <= max_epochs:
        count += 1
    return count


def hyperband_iteration_trials(n_brackets: int, reduction_factor: int) -> int:
    """Trials one full Hyperband iteration draws: ``sum_s ceil(B * eta**s / (s + 1))``.

    ``B = n_brackets``; bracket ``s`` (``s = B - 1`` most exploratory, ``s = 0`` most
    conservative) starts ``n_s = ceil(B * eta**s / (s + 1))`` configurations in Algorithm 1 of
    Li et al. (2018); Optuna assigns trials to brackets in the same proportions.
    """
    check_range("n_brackets", n_brackets, low=1)
    check_range("reduction_factor", reduction_factor, low=2)
    return sum(
        -(-n_brackets * reduction_factor**s // (s + 1)) for s in range(n_brackets)
    )


def default_n_brackets(
    min_resource: int, max_epochs: int, reduction_factor: int = 3, n_trials: int | None = None
) -> int:
    """Hyperband brackets for a budget of ``n_trials``: the most that fit ``eta`` iterations.

    Full Hyperband has :func:`max_brackets` brackets. Each is an asynchronous successive-halving
    run, and Optuna's promotes a rung's first trials unopposed (while fewer than ``eta`` trials
    have reached it, the best so far goes on), so a bracket only prunes once several trials
    reach each rung. The count is therefore the largest ``B`` with
    ``eta * hyperband_iteration_trials(B, eta) <= n_trials``: every bracket, even the smallest,
    gets at least ``eta`` times its Algorithm-1 quota. With ``eta = 3`` that is 1 bracket below
    15 trials, 2 up to 50, 3 up to 146 and 4 from 147 (capped at :func:`max_brackets`);
    ``n_trials=None`` (a time budget) keeps full Hyperband. Brackets are dropped from the
    conservative end, which in the experiments of Li et al. (2018) mattered least when early
    rankings are informative: their most exploratory bracket alone was often as good as or
    better than all of Hyperband, the observation ASHA (Li et al. 2020) builds on.
    """
    full = max_brackets(min_resource, max_epochs, reduction_factor)
    if n_trials is None:
        return full
    check_range("n_trials", n_trials, low=1)
    count = 1
    while (
        count < full
        and reduction_factor * hyperband_iteration_trials(count + 1, reduction_factor) <= n_trials
    ):
        count += 1
    return count


@dataclass(frozen=True)
class PrunerPlan:
    """What a pruner does, in epochs: our record of it, next to (never inside) Optuna's pruner.

    Attributes:
        name: ``"hyperband"``, ``"asha"``, ``"median"`` or ``"none"``.
        max_epochs: the full epoch budget ``E`` of a trial.
        min_resource, reduction_factor: ``r`` and ``eta`` of successive halving (hyperband,
            asha).
        n_brackets, max_brackets, n_trials: hyperband: brackets kept, brackets of full
            Hyperband, and the trial budget that sized them.
        max_resource: hyperband: the ``max_resource`` handed to Optuna so that it plans
            exactly ``n_brackets`` brackets.
        warmup_epochs, n_startup_trials: median: epochs never pruned, trials run in full first.
    """

    name: str
    max_epochs: int
    min_resource: int | None = None
    reduction_factor: int | None = None
    n_brackets: int | None = None
    max_brackets: int | None = None
    n_trials: int | None = None
    max_resource: int | None = None
    warmup_epochs: int | None = None
    n_startup_trials: int | None = None

    def build(self) -> Any:
        """A new Optuna pruner that follows this plan."""
        return PRUNER_TYPES.get(self.name).build(self)

    def describe(self) -> str:
        """One human-readable paragraph: the pruner, its resources in epochs, its brackets."""
        return PRUNER_TYPES.get(self.name).describe(self)


@dataclass(frozen=True)
class PrunerType:
    """A registered pruner: how to plan it from the options, build it, and describe it."""

    plan: Callable[..., PrunerPlan]
    build: Callable[[PrunerPlan], Any]
    describe: Callable[[PrunerPlan], str]


PRUNER_TYPES: Registry[PrunerType] = Registry("pruner")


def plan_pruner(
    name: str = "hyperband",
    recipe: Mapping[str, Any] | None = None,
    *,
    max_epochs: int | None = None,
    min_resource: int | None = None,
    reduction_factor: int = 3,
    warmup_epochs: int | None = None,
    n_startup_trials: int = 5,
    n_trials: int | None = None,
    n_brackets: int | None = None,
) -> PrunerPlan:
    """Check the options of a pruner whose resource is epochs and return its
    :class:`PrunerPlan` (``.build()`` makes the Optuna pruner, ``.describe()`` says what it
    does).

    Args:
        name: ``"hyperband"`` (default), ``"asha"``, ``"median"`` or ``"none"``.
        recipe: the resolved recipe; its ``schedule.epochs`` is the maximum resource.
        max_epochs: the maximum resource when no recipe is given (overrides the recipe's).
        min_resource: epochs of the first rung (hyperband/asha); default
            :func:`default_min_resource` (``max(1, E // eta**3)``).
        reduction_factor: ``eta`` of successive halving, default 3 (keep the top third; the
            Hyperband paper, section 3.6, recommends 3 or 4).
        warmup_epochs: median only; epochs never pruned, default ``max(1, E // 3)``.
        n_startup_trials: median only; trials that run to the end before pruning starts,
            default 5 (Optuna's default).
        n_trials: hyperband only; the study's trial budget, which sizes the number of brackets
            (:func:`default_n_brackets`). ``None``: full Hyperband.
        n_brackets: hyperband only; an explicit number of brackets, 1 to :func:`max_brackets`
            (the most exploratory ones are kept), overriding ``n_trials``.

    Optuna's ``bootstrap_count`` stays 0 for hyperband and asha: a positive value does not make
    a rung wait for competitors, it prunes the first ``bootstrap_count`` trials to reach every
    rung, the top rung included. With tens of trials that can discard the best candidate
    after ``min_resource`` epochs, or leave a study with no completed trial at all.

    Raises:
        KeyError: unknown ``name`` (lists the known pruners and the closest match).
        ValueError: a budget outside its range (echoing the value).

    Example::

        plan = plan_pruner("hyperband", {"schedule": {"epochs": 9}})
        pruner = plan.build()
        print(describe_pruner(plan))
    """
    kind = PRUNER_TYPES.get(name)  # unknown names list the known ones and the closest
    if max_epochs is None:
        if recipe is None:
            raise ValueError("a pruner needs a recipe or max_epochs to know the epoch budget")
        max_epochs = recipe_epochs(recipe)
    check_range("max_epochs", max_epochs, low=1)
    return kind.plan(
        max_epochs, min_resource=min_resource, reduction_factor=reduction_factor,
        warmup_epochs=warmup_epochs, n_startup_trials=n_startup_trials, n_trials=n_trials,
        n_brackets=n_brackets,
    )


def make_pruner(name: str = "hyperband", recipe: Mapping[str, Any] | None = None,
                **options: Any) -> Any:
    """Build an Optuna pruner whose resource is epochs: ``plan_pruner(...).build()``, with the
    arguments of :func:`plan_pruner`, which also gives the plan :func:`describe_pruner`
    prints.

    Returns:
        An ``optuna.pruners.BasePruner``.
    """
    return plan_pruner(name, recipe, **options).build()


# ---------------------------------------------------------------- none


def _plan_none(max_epochs: int, **_: Any) -> PrunerPlan:
    return PrunerPlan("none", max_epochs)


def _build_none(plan: PrunerPlan) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


def _describe_none(plan: PrunerPlan) -> str:
    return "pruner: none (every trial trains all epochs)"


# ---------------------------------------------------------------- median


def _plan_median(max_epochs: int, *, warmup_epochs: int | None, n_startup_trials: int,
                 **_: Any) -> PrunerPlan:
    warmup = max(1, max_epochs // 3) if warmup_epochs is None else warmup_epochs
    check_range("warmup_epochs", warmup, low=0)
    check_range("n_startup_trials", n_startup_trials, low=0)
    return PrunerPlan("median", max_epochs, warmup_epochs=warmup,
                      n_startup_trials=n_startup_trials)


def _build_median(plan: PrunerPlan) -> Any:
    import optuna

    # Steps are epochs completed (1-based): step <= warmup is never pruned.
    return optuna.pruners.MedianPruner(
        n_startup_trials=plan.n_startup_trials, n_warmup_steps=plan.warmup_epochs + 1,
        interval_steps=1,
    )


def _describe_median(plan: PrunerPlan) -> str:
    return (
        f"pruner: median over earlier trials, never before epoch {plan.warmup_epochs + 1}"
        f" of {plan.max_epochs}, after {plan.n_startup_trials} complete trials"
    )


# ---------------------------------------------------------------- successive halving


def _halving_resources(max_epochs: int, min_resource: int | None,
                       reduction_factor: int) -> tuple[int, int]:
    check_range("reduction_factor", reduction_factor, low=2)
    if not isinstance(reduction_factor, int):
        raise ValueError(f"reduction_factor must be an integer >= 2, got {reduction_factor!r}")
    if min_resource is None:
        min_resource = default_min_resource(max_epochs, reduction_factor)
    check_range("min_resource", min_resource, low=1, high=max_epochs)
    return min_resource, reduction_factor


def _plan_asha(max_epochs: int, *, min_resource: int | None, reduction_factor: int,
               **_: Any) -> PrunerPlan:
    r, eta = _halving_resources(max_epochs, min_resource, reduction_factor)
    return PrunerPlan("asha", max_epochs, min_resource=r, reduction_factor=eta)


def _build_asha(plan: PrunerPlan) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=plan.min_resource, reduction_factor=plan.reduction_factor
    )


def _describe_asha(plan: PrunerPlan) -> str:
    r, big_e, eta = plan.min_resource, plan.max_epochs, plan.reduction_factor
    rungs = bracket_plan(r, big_e, eta)[0]
    return (
        f"pruner: asha, resources in epochs: min {r}, max {big_e}, reduction factor {eta}; "
        f"rungs at epochs {rungs or 'none'} (top 1/{eta} continue)"
    )


# ---------------------------------------------------------------- hyperband


def _optuna_max_resource(min_resource: int, max_epochs: int, reduction_factor: int,
                         n_brackets: int, full: int) -> int:
    """The ``max_resource`` that makes Optuna plan exactly ``n_brackets`` brackets.

    Optuna derives the bracket count from max_resource as floor(log_eta(max / min)) + 1 (a
    float logarithm) and does not use max_resource otherwise: rungs go on up to the last
    epoch. Pass the recipe's epochs where that plans n_brackets, else the largest value below
    min * eta**n_brackets (fewer brackets, or an exact power the logarithm rounds down).
    """
    candidates = [max_epochs] if n_brackets == full else []
    candidates.append(min_resource * reduction_factor**n_brackets - 1)
    for candidate in candidates:
        if _optuna_brackets(min_resource, candidate, reduction_factor) == n_brackets:
            return candidate
    raise RuntimeError(f"Optuna cannot be made to plan {n_brackets} brackets from "
                       f"min_resource={min_resource}, reduction_factor={reduction_factor}")


def _plan_hyperband(max_epochs: int, *, min_resource: int | None, reduction_factor: int,
                    n_trials: int | None, n_brackets: int | None, **_: Any) -> PrunerPlan:
    r, eta = _halving_resources(max_epochs, min_resource, reduction_factor)
    full = max_brackets(r, max_epochs, eta)
    if n_brackets is None:
        n_brackets = default_n_brackets(r, max_epochs, eta, n_trials)
    elif isinstance(n_brackets, bool) or not isinstance(n_brackets, int):
        raise ValueError(f"n_brackets must be an integer >= 1, got {n_brackets!r}")
    check_range("n_brackets", n_brackets, low=1, high=full)
    resource = _optuna_max_resource(r, max_epochs, eta, n_brackets, full)
    return PrunerPlan("hyperband", max_epochs, min_resource=r, reduction_factor=eta,
                      n_brackets=n_brackets, max_brackets=full, n_trials=n_trials,
                      max_resource=resource)


def _build_hyperband(plan: PrunerPlan) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(
        min_resource=plan.min_resource, max_resource=plan.max_resource,
        reduction_factor=plan.reduction_factor,
    )


def _describe_hyperband(plan: PrunerPlan) -> str:
    r, big_e, eta = plan.min_resource, plan.max_epochs, plan.reduction_factor
    brackets = bracket_plan(r, big_e, eta, plan.n_brackets)
    full = plan.max_brackets or len(brackets)
    why = ""
    if len(brackets) < full:
        why = f" of {full}"
        if plan.n_trials:
            more = len(brackets) + 1
            need = eta * hyperband_iteration_trials(more, eta)
            why += (f", sized to {plan.n_trials} trials: {eta} Hyperband iterations of {more} "
                    f"brackets need {need}")
    lines = [
        f"pruner: hyperband, resources in epochs: min {r}, max {big_e}, reduction factor {eta}, "
        f"{len(brackets)} bracket{'s' if len(brackets) != 1 else ''}{why}:"
    ]
    for s, rungs in enumerate(brackets):
        where = f"rungs at epochs {rungs}" if rungs else "no early stop (full epochs)"
        lines.append(f"  bracket {s}: {where}")
    return "\n".join(lines)


PRUNER_TYPES.register("hyperband", PrunerType(_plan_hyperband, _build_hyperband,
                                              _describe_hyperband))
PRUNER_TYPES.register("asha", PrunerType(_plan_asha, _build_asha, _describe_asha))
PRUNER_TYPES.register("median", PrunerType(_plan_median, _build_median, _describe_median))
PRUNER_TYPES.register("none", PrunerType(_plan_none, _build_none, _describe_none))


def _optuna_brackets(min_resource: int, max_resource: int, reduction_factor: int) -> int:
    """The bracket count Optuna's HyperbandPruner computes (its own float formula)."""
    return math.floor(math.log(max_resource / min_resource, reduction_factor)) + 1


def bracket_plan(
    min_resource: int, max_epochs: int, reduction_factor: int, n_brackets: int | None = None
) -> list[list[int]]:
    """Rung epochs of each Hyperband bracket, as Optuna schedules them.

    Bracket ``s`` is successive halving with ``min_early_stopping_rate = s``: its rungs sit at
    ``r * eta**(s + k)`` epochs below the maximum. Full Hyperband has
    ``floor(log_eta(E / r)) + 1`` brackets (``n_brackets=None``), and its last bracket has no
    rung: its trials always train all ``E`` epochs. Fewer brackets keep the first ones.
    """
    if n_brackets is None:
        n_brackets = max_brackets(min_resource, max_epochs, reduction_factor)
    plan = []
    for s in range(n_brackets):
        rungs = []
        k = 0
        while min_resource * reduction_factor ** (s + k) < max_epochs:
            rungs.append(min_resource * reduction_factor ** (s + k))
            k += 1
        plan.append(rungs)
    return plan


def describe_pruner(plan: PrunerPlan) -> str:
    """One human-readable paragraph: the pruner, its resources in epochs and its brackets.

    Takes the :class:`PrunerPlan` of :func:`plan_pruner` (an Optuna pruner carries no plan).
    """
    if not isinstance(plan, PrunerPlan):
        raise TypeError(f"describe_pruner takes the PrunerPlan of plan_pruner(...), got "
                        f"{type(plan).__name__}")
    return plan.describe()
