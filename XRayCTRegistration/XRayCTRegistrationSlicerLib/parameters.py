"""Helpers of the module's parameter node: the method validator and the values read from the node.

Imported by the module (``XRayCTRegistration.py``), which re-exports them; Slicer's ``parameterNodeWrapper``
is needed only for :class:`RegisteredMethod`.
"""

from __future__ import annotations

import numpy as np
from slicer.parameterNodeWrapper import Validator
from XRayCTRegistrationLib.names import PARAM_NAMES
from XRayCTRegistrationLib.registry import method_names


def registrationMethods() -> list[str]:
    """Registration methods offered in the GUI: every refinement method of the library's registry."""
    return list(method_names("refine"))


class RegisteredMethod(Validator):
    """Parameter-node validator: the value must be a registered refinement method.

    The registry is read when the value is set, so methods registered after this module was imported
    are accepted.
    """

    def validate(self, value) -> None:
        """Raise ValueError unless ``value`` is a registered refinement method."""
        if value not in method_names("refine"):
            raise ValueError(f"method {value!r} is not one of {', '.join(registrationMethods())}")


def modelPath(parameterNode, name: str = "initialiserModel") -> str:
    """A model file parameter (``initialiserModel`` or ``refinementModel``) as a string, "" when none is set."""
    path = getattr(parameterNode, name)
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


def poseParameters(parameterNode) -> np.ndarray:
    """The six pose parameters ``(rx, ry, rz, tx, ty, tz)`` of a parameter node, degrees and mm."""
    return np.array([getattr(parameterNode, name) for name in PARAM_NAMES], dtype=np.float64)
