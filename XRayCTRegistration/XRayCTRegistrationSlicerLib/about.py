"""What the module says about itself: documentation link, contributors, papers, the Slicer versions it runs on."""

from __future__ import annotations

import sys

DOCUMENTATION_URL = "https://github.com/xrayctregistration/SlicerXRayCTRegistration#3d-slicer-module"
"""The module's documentation (the README's Slicer section)."""

CONTRIBUTORS = ["XRayCTRegistration contributors (https://github.com/xrayctregistration/SlicerXRayCTRegistration)"]
"""Shown in Slicer's module panel (the extension's CMakeLists.txt says the same)."""

PAPERS = (
    "M. Chen, Z. Zhang, S. Gu, Y. Kong: Embedded feature similarity optimization with specific parameter "
    "initialization for 2D/3D medical image registration (SOPI); manuscript submitted to the IEEE, code at "
    "https://github.com/m1nhengChen/SOPI.",
    "B. Zhang, S. Faghihroohi, M. F. Azampour, S. Liu, R. Ghotbi, H. Schunkert, N. Navab: A patient-specific "
    "self-supervised model for automatic X-ray/CT registration (Technical University of Munich; poster).",
    "S. Jaganathan, J. Wang, A. Borsdorf, K. Shetty, A. Maier: Deep iterative 2D/3D registration, MICCAI 2021, "
    "Part IV, pp. 383-392.",
)
"""The methods the module implements. Venues as the papers' own texts state them: the SOPI paper says it "has
been submitted to the IEEE for possible publication" and gives its code's address; the patient-specific model's
text (a poster) names no venue; the deep iterative registration's venue (MICCAI 2021, Proceedings Part IV,
pp. 383-392) is how the SOPI paper cites it (its reference 12), its own text naming none."""

MINIMUM_SLICER_VERSION = (5, 8)
"""Slicer 5.8 is the first release with Python 3.12; the code needs Python 3.10 or newer."""

MINIMUM_PYTHON = (3, 10)
"""Python the code needs (``zip(strict=...)``, ``X | Y`` types at run time)."""


def checkSlicerVersion(major: int, minor: int, python: tuple[int, ...] = tuple(sys.version_info[:2])) -> None:
    """Raise RuntimeError, saying what is needed, when Slicer ``major.minor`` or its Python is too old."""
    if (int(major), int(minor)) < MINIMUM_SLICER_VERSION or tuple(python[:2]) < MINIMUM_PYTHON:
        need = ".".join(map(str, MINIMUM_SLICER_VERSION))
        raise RuntimeError(f"XRayCTRegistration needs 3D Slicer {need} or newer (Python "
                           f"{'.'.join(map(str, MINIMUM_PYTHON))}+); this is Slicer {major}.{minor} with Python "
                           f"{'.'.join(map(str, python[:2]))}")
