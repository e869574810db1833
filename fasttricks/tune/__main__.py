"""Entry point of ``python -m fasttricks.tune``."""

from __future__ import annotations

import sys

from fasttricks.tune._cli import main

if __name__ == "__main__":
    sys.exit(main())
