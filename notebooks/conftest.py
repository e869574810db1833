"""The test command executes every recipe notebook (nbmake) in quick mode.

``FASTTRICKS_QUICK=1`` makes each notebook shrink its epochs, trials and data; the committed
outputs come from a full run (``FASTTRICKS_QUICK=0``), and nbmake never writes them back.
Kernels inherit this process's environment, so setting it here reaches every notebook.
"""

import os

os.environ.setdefault("FASTTRICKS_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
