"""What the benchmark scripts record about the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``; else ``platform.processor()``, which is
    often empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(**extra: Any) -> dict[str, Any]:
    """Where a benchmark's numbers came from: CPU, core count, torch and Python versions, the
    torch device and threads, and ``FASTTRICKS_BENCH_NOTE`` (the conditions of the run, e.g. other
    load on the machine). ``extra`` adds or overrides fields."""
    import torch

    info: dict[str, Any] = {
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "note": os.environ.get("FASTTRICKS_BENCH_NOTE", ""),
    }
    info.update(extra)
    return info
