"""How many loader worker processes to use: one small check, kept apart from the image pipeline
(:mod:`fasttricks.data.images`) so that array and table loaders do not import fastai's vision
stack (torchvision, and through it torch's compiler) just to read a number."""

from __future__ import annotations

import multiprocessing
import os
import sys

__all__ = ["resolve_num_workers"]


def resolve_num_workers(value: int | str = "auto") -> int:
    """Loader worker processes for ``value``: an int as is, ``"auto"`` the usable cores.

    ``auto`` is the number of cores this process may run on (``os.sched_getaffinity``, so a
    container's or ``taskset``'s limit counts), at most 16, and 0 where worker processes cannot
    start: inside a daemonic process (which may not have children) or where fastai turns them
    off (macOS).
    """
    if isinstance(value, bool) or not (value == "auto" or isinstance(value, int)):
        raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {value!r}")
        return value
    if multiprocessing.current_process().daemon or sys.platform == "darwin":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(cores, 16))
