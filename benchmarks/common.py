"""What the benchmark scripts share: a one-line description of the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch


def machine_info() -> str:
    """Platform, CPU model, core count and the versions and thread counts of python, torch, numba and numpy."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba

    return (f"{platform.platform()}; CPU {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); numba {numba.__version__} "
            f"({numba.get_num_threads()} threads, layer {numba.threading_layer()}); numpy {np.__version__}")
