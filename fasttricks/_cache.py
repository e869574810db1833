"""fasttricks' cache folder on this machine (generated datasets, the optimizers' built kernel)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """``$FASTTRICKS_CACHE_DIR`` if set, else the user cache folder that platformdirs names
    (``$XDG_CACHE_HOME/fasttricks`` or ``~/.cache/fasttricks`` on Linux)."""
    if os.environ.get("FASTTRICKS_CACHE_DIR"):
        return Path(os.environ["FASTTRICKS_CACHE_DIR"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("fasttricks"))
