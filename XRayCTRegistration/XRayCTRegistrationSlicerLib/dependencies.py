"""Install the library's Python dependencies inside Slicer, on first use and with the user's consent.

The packages and their version floors come from one list, ``Resources/requirements.txt``, which
``pyproject.toml`` also reads for pip. torch comes from the PyTorch extension (PyTorchUtils), asked for
the same floor; the others through ``slicer.util.pip_install``. A package is missing when it cannot be
imported or its installed version is below the floor.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

REQUIREMENTS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources",
                                 "requirements.txt")
"""The one list of the library's dependencies (``name>=floor`` lines)."""

IMPORT_NAMES = {"pillow": "PIL"}
"""Distribution name -> import name where they differ."""

TORCH = "torch"
"""Installed through the PyTorch extension, not pip."""


@dataclass(frozen=True)
class Requirement:
    """One line of the requirements list: ``name>=floor`` (floor "" when none)."""

    name: str
    floor: str = ""

    @property
    def importName(self) -> str:
        """The name ``import`` uses."""
        return IMPORT_NAMES.get(self.name, self.name)

    def __str__(self) -> str:
        return f"{self.name}>={self.floor}" if self.floor else self.name


def readRequirements(path: str = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements of the list (comments and blank lines skipped); only ``name`` and ``name>=floor`` lines."""
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9A-Za-z.]*))?", line)
            if match is None:
                raise ValueError(f"{path}: cannot read requirement {line!r} (expected 'name' or 'name>=version')")
            out.append(Requirement(match.group(1), match.group(2) or ""))
    return out


def versionAtLeast(version: str, floor: str) -> bool:
    """True when ``version`` is at least ``floor``, comparing the leading numbers (``2.13.0+cpu`` >= ``2.1``)."""
    def numbers(text: str) -> tuple[int, ...]:
        parts = []
        for part in re.split(r"[.+\-]", text):
            digits = re.match(r"\d+", part)
            if digits is None:
                break
            parts.append(int(digits.group()))
        return tuple(parts)

    a, b = numbers(version), numbers(floor)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def isSatisfied(requirement: Requirement, version: Callable[[str], str] = importlib.metadata.version) -> bool:
    """True when the package imports and its installed version reaches the floor."""
    if importlib.util.find_spec(requirement.importName) is None:
        return False
    if not requirement.floor:
        return True
    try:
        return versionAtLeast(version(requirement.name), requirement.floor)
    except importlib.metadata.PackageNotFoundError:
        return True  # importable but not installed as a distribution (e.g. bundled with Slicer): trusted


def missingPythonPackages(requirements: list[Requirement] | None = None,
                          version: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """Pip requirements (``name>=floor``) of the listed packages other than torch that are absent or too old."""
    requirements = readRequirements() if requirements is None else requirements
    return [str(r) for r in requirements if r.name != TORCH and not isSatisfied(r, version)]


def torchRequirement(requirements: list[Requirement] | None = None) -> Requirement:
    """Torch's line of the list."""
    requirements = readRequirements() if requirements is None else requirements
    return next((r for r in requirements if r.name == TORCH), Requirement(TORCH))


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install what the library needs, on first use and with the user's consent; True when all is there.

    torch comes from the PyTorch extension (PyTorchUtils) with the list's floor, the other packages through
    ``slicer.util.pip_install``. Never called at import or in a widget's ``setup()``.
    """
    import slicer
    from slicer.i18n import tr as _

    torch = torchRequirement()
    if not isSatisfied(torch):
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("This module needs the PyTorch extension: install 'PyTorch' from the "
                                 "Extensions Manager and restart Slicer.")) from None
        installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=askConfirmation, torchVersionRequirement=f">={torch.floor}" if torch.floor else None)
        if installed is None:
            return False
    missing = missingPythonPackages()
    if missing:
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("This module needs these Python packages, which will be downloaded and installed now:\n")
                + "\n".join(missing), windowTitle=_("Install Python packages")):
            return False
        slicer.util.pip_install(missing)
    return True
