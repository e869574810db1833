"""Entry point of ``python -m fasttricks.diagnose``."""

from __future__ import annotations

import sys

from fasttricks.diagnose._cli import main

if __name__ == "__main__":
    sys.exit(main())
