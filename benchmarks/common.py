"""What the benchmark scripts share: a one-line description of the machine they ran on."""

from __future__ import annotations

import importlib
import os
import platform
import sys
import types
from pathlib import Path

import numpy as np
import torch


def stand_in(name: str, attrs: tuple[str, ...] = ()) -> None:
    """Install an empty module ``name`` when the real one does not import (e.g. SimpleITK on the GPU machine).

    Any public name of it (``attrs`` among them) is a class whose construction raises ``RuntimeError`` saying the
    module is missing, so code that only names it imports, and code that uses it fails clearly.
    """
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass

    def unavailable(*_args, **_kwargs):
        raise RuntimeError(f"{name} is not installed on this machine (a stand-in module was imported)")

    def placeholder(attr: str):  # PEP 562: any public name is a class that fails when used
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {"__init__": unavailable})

    mod = types.ModuleType(name)
    for a in attrs:
        setattr(mod, a, placeholder(a))
    mod.__getattr__ = placeholder
    sys.modules[name] = mod


def machine_info() -> str:
    """Platform, CPU model, core count and the versions and thread counts of python, torch, numba and numpy."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba

    return (f"{platform.platform()}; CPU {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); numba {numba.__version__} "
            f"({numba.get_num_threads()} threads, layer {numba.threading_layer()}); numpy {np.__version__}")
