"""ctest entry point: runs the module's own ScriptedLoadableModuleTest inside Slicer."""

import XRayCTRegistration


class XRayCTRegistrationSelfTest(XRayCTRegistration.XRayCTRegistrationTest):
    """The module's self-test (render, detector placement, a full registration on a small phantom)."""
