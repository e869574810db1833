"""Reading an ensemble job's member study back from its journal file, for the tests of members
trained in worker processes (tests/test_scale.py, tests/test_parallel_launcher.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from fasttricks.ensemble._parallel import JOURNAL_NAME, _member_of


def member_study(folder: Path):
    """The one study in ``folder``'s member journal."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / JOURNAL_NAME)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def trained_per_member(study) -> dict[int, int]:
    """member -> how many finished trials really trained it (not found already done)."""
    counts: dict[int, int] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("trained"):
            counts[_member_of(t)] = counts.get(_member_of(t), 0) + 1
    return counts
