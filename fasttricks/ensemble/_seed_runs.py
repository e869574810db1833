"""The train command's ``--seeds N`` in worker processes: one whole run folder per seed.

``python -m fasttricks.train RECIPE --seeds N`` trains seeds ``seed .. seed + N - 1`` into run
folders ``<out>/<name>/seed_<s>/`` (:func:`fasttricks.recipes.run_seeds`). With ``--workers``
(or ``--storage``) the seeds are the members of a job
(:class:`~fasttricks.ensemble._members.MemberJob`) whose store is those run folders: each seed
is claimed once from the shared study (:mod:`fasttricks.ensemble._parallel`), trained with
:func:`fasttricks.recipes.run_recipe` and written with :func:`fasttricks.runs.write_run`,
exactly as the sequential loop would. A seed is
finished when its folder is a whole run of this recipe with that seed
(:func:`fasttricks.runs.finished_run`); :func:`~fasttricks.recipes.run_seeds` then runs
once, finds every seed finished, and writes ``seeds.csv`` / ``seeds.json`` and the lines as the
sequential run does.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from fasttricks.ensemble._members import MemberJob
from fasttricks.ensemble._parallel import JOB_KINDS, Workers
from fasttricks.ensemble._store import fingerprint

__all__ = ["RunFolders", "run_seeds_in_workers", "seed_runs_job"]


class RunFolders:
    """Members stored as whole run folders ``<folder>/<name>/`` (:mod:`fasttricks.runs`), with
    the interface of :class:`~fasttricks.ensemble._store.MemberStore` that the member loop and
    the workers use (``folder``, ``fingerprint``, ``load``, ``save``).

    ``recipes`` maps each member's name to the recipe its run folder must hold.
    """

    def __init__(self, folder: Path, fingerprint: str, recipes: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.recipes = recipes

    def load(self, name: str) -> dict | None:
        """The finished run's ``summary.json`` (with its training ``seconds``), or None."""
        from fasttricks.runs import finished_run

        summary = finished_run(self.folder / name, self.recipes[name])
        if summary is None:
            return None
        return {**summary, "seconds": float(summary.get("train_seconds") or 0.0)}

    def save(self, name: str, record: dict, model: Any) -> dict:
        """Write ``record["result"]`` (a :class:`~fasttricks.recipes.RunResult`) as the run
        folder ``<folder>/<name>`` and return its summary as :meth:`load` reads it."""
        from fasttricks.runs import write_run

        write_run(record["result"], self.folder / name)
        done = self.load(name)
        if done is None:
            raise RuntimeError(f"the run folder {self.folder / name} was written but does not "
                               "read back as a whole run of its recipe")
        return done


def seed_runs_job(recipe: Any, seeds: Sequence[int],
                  out_dir: str | PathLike = "runs") -> MemberJob:
    """The member job of ``--seeds``: member ``i`` is the run folder
    ``<out_dir>/<name>/seed_<seeds[i]>`` of ``recipe`` with ``seed`` set to ``seeds[i]``."""
    from fasttricks.recipes import load_recipe, recipe_to_dict, run_recipe, set_in_recipe

    recipe = load_recipe(recipe)
    seeds = [int(s) for s in seeds]
    names = [f"seed_{s}" for s in seeds]
    seeded = {name: set_in_recipe(recipe, "seed", s) for name, s in zip(names, seeds)}
    base = recipe_to_dict(recipe)
    base.pop("seed", None)
    store = RunFolders(Path(out_dir) / str(recipe["name"]),
                       fingerprint({"recipe": base, "seeds": seeds}), seeded)

    def train(i: int, name: str) -> tuple[dict, Any]:
        result = run_recipe(seeded[name], progress=False)
        return {"result": result}, result.learn

    return MemberJob(store=store, names=names, train=train)


def _job_from_spec(spec: dict) -> MemberJob:
    """The ``--seeds`` job of a worker's description
    (:func:`fasttricks.ensemble._parallel.build_job`)."""
    return seed_runs_job(spec["recipe"], out_dir=spec["out_dir"], **spec["kwargs"])


JOB_KINDS["seed_runs"] = _job_from_spec


def run_seeds_in_workers(
    recipe: Any,
    n_seeds: int,
    out_dir: str | PathLike | None = "runs",
    progress: bool = True,
    *,
    workers: int = 1,
    gpus: Sequence[str] | None = None,
    storage: str | None = None,
    threads: int | None = None,
) -> tuple[Any, dict]:
    """:func:`fasttricks.recipes.run_seeds` with the seeds trained in worker processes first.

    With ``workers > 1`` or a ``storage`` (as in :func:`~fasttricks.ensemble.kfold_fit`) each
    seed's run folder is claimed once and written by a worker; a rerun trains only the seeds
    not yet finished, and a killed worker's seed is retried. ``run_seeds`` then finds every
    seed finished and returns its table and summary, which are those of the sequential run
    with the same thread count. With one worker and no storage this is ``run_seeds`` itself.
    ``out_dir=None`` keeps nothing: the workers then write into a temporary folder.
    """
    import tempfile
    from contextlib import ExitStack

    from fasttricks.recipes import load_recipe, recipe_to_dict, run_seeds, seed_range

    where = Workers(workers, gpus, storage, threads)
    recipe = load_recipe(recipe)
    if not where.parallel:
        return run_seeds(recipe, n_seeds, out_dir=out_dir, progress=progress)
    seeds = list(seed_range(recipe, n_seeds))
    with ExitStack() as stack:
        if out_dir is None:
            out_dir = stack.enter_context(tempfile.TemporaryDirectory())
        job = seed_runs_job(recipe, seeds, out_dir)
        spec = {"kind": "seed_runs", "recipe": recipe_to_dict(recipe), "out_dir": str(out_dir),
                "kwargs": {"seeds": seeds}}
        where.run(spec, job, progress=progress)
        return run_seeds(recipe, n_seeds, out_dir=out_dir, progress=progress)
