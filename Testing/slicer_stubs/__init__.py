"""Small stand-ins for the Qt-only parts of 3D Slicer, so the module runs on slicer-core headless.

slicer-core (PyPI) gives the real MRML scene, nodes, storage and slice logic, but not ``qt``,
``ctk``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n`` or
``slicer.app``. :func:`install` registers minimal replacements written for these tests: they
provide only what the module's logic and self-test touch, and behave like Slicer in testing
mode (no dialogs; confirmations answer "OK").
"""

from __future__ import annotations

import sys

from . import app as _app
from . import i18n, parameter_node_wrapper, qt_stub, scripted_loadable_module


def install(scene=None):
    """Register the stand-ins in ``sys.modules`` and on the ``slicer`` package; set ``slicer.mrmlScene``.

    Returns the ``slicer`` module.
    """
    import slicer

    sys.modules.setdefault("qt", qt_stub.qt)
    sys.modules.setdefault("ctk", qt_stub.ctk)
    for name, mod in (("ScriptedLoadableModule", scripted_loadable_module),
                      ("parameterNodeWrapper", parameter_node_wrapper),
                      ("i18n", i18n)):
        sys.modules[f"slicer.{name}"] = mod
        setattr(slicer, name, mod)
    slicer.app = _app.app
    if scene is not None:
        slicer.mrmlScene = scene
    return slicer


__all__ = ["install"]
