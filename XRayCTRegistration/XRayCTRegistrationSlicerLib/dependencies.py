"""Install the library's Python dependencies inside Slicer, on first use and with the user's consent."""

from __future__ import annotations

import importlib.util

PYTHON_PACKAGES = {"numba": "numba>=0.59", "tqdm": "tqdm"}
"""Import name -> pip requirement of the packages installed on first use (torch comes from PyTorchUtils)."""


def missingPythonPackages() -> list[str]:
    """Pip requirements of the optional packages that cannot be imported."""
    return [req for name, req in PYTHON_PACKAGES.items() if importlib.util.find_spec(name) is None]


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install what the library needs, on first use and with the user's consent; True when all is there.

    torch comes from the PyTorch extension (PyTorchUtils), the other packages through
    ``slicer.util.pip_install``. Never called at import or in a widget's ``setup()``.
    """
    import slicer
    from slicer.i18n import tr as _

    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(_("This module needs the PyTorch extension: install 'PyTorch' from the "
                                 "Extensions Manager and restart Slicer.")) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation)
        if torch is None:
            return False
    missing = missingPythonPackages()
    if missing:
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("This module needs these Python packages, which will be downloaded and installed now:\n")
                + "\n".join(missing), windowTitle=_("Install Python packages")):
            return False
        slicer.util.pip_install(missing)
    return True
