"""The module's self-test for Slicer's test runner (CTest), gated for machines without torch and numba.

Slicer's build machines run the self-test of every extension but have neither torch nor numba. The test
is in two parts: one needs nothing beyond Slicer (the module is loaded, its GUI is built, the logic
refuses bad input before touching the scene), and runs everywhere; the other renders DRRs and runs a
registration, and is skipped with a message saying which packages are missing.

:class:`SelfTestMixin` holds the checks; the module's ``XRayCTRegistrationTest`` combines it with
``ScriptedLoadableModuleTest`` and names its logic class, so this file imports neither Slicer nor the module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
from XRayCTRegistrationLib.errors import InputError

HEAVY_PACKAGES = ("torch", "numba")
"""Packages the rendering and registration parts need; the self-test skips those parts without them."""


def missingPackages(names: Sequence[str] = HEAVY_PACKAGES) -> list[str]:
    """The packages of ``names`` that cannot be imported here."""
    return [name for name in names if importlib.util.find_spec(name) is None]


class SelfTestMixin:
    """Checks of the module's self-test; mixed into a ``ScriptedLoadableModuleTest`` that sets ``logicClass``."""

    logicClass: type = object
    moduleName = "XRayCTRegistration"
    heavyPackages: Sequence[str] = HEAVY_PACKAGES

    def setUp(self) -> None:
        """Start from an empty scene."""
        import slicer

        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """The dependency-free part always; the rest when torch and numba are installed."""
        self.setUp()
        self.test_moduleAndGui()
        self.setUp()
        self.test_logicRefusesBadInput()
        missing = missingPackages(self.heavyPackages)
        if missing:
            self.delayDisplay(f"Skipped the rendering and registration tests: {', '.join(missing)} not installed "
                              "(install the PyTorch extension, or let the module install them on first use)")
            return
        self.setUp()
        self.test_renderAndPlace()
        self.setUp()
        self.test_register()

    # -- needs nothing beyond Slicer --------------------------------------------------------------
    def test_moduleAndGui(self) -> None:
        """The module is loaded and, where Slicer has a GUI, its widget is built with its buttons."""
        import slicer

        self.delayDisplay("Module loads, GUI builds")
        modules = getattr(slicer, "modules", None)
        if modules is None or not hasattr(slicer.util, "getModuleWidget"):
            self.delayDisplay("No Slicer application here: GUI check left to the headless .ui tests")
            return
        self.assertTrue(hasattr(modules, self.moduleName.lower()), f"module {self.moduleName} is not loaded")
        widget = slicer.util.getModuleWidget(self.moduleName)
        for name in ("registerButton", "initialiseFromDicomButton", "cancelButton", "x0SpinBox"):
            self.assertTrue(hasattr(widget.ui, name), f"GUI lacks {name}")

    def test_logicRefusesBadInput(self) -> None:
        """Bad input is refused with an InputError before the scene changes (no torch needed)."""
        import slicer

        self.delayDisplay("Logic refuses bad input")
        logic = self.logicClass()
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "3D")
        slicer.util.updateVolumeFromArray(volume, np.zeros((3, 4, 5), np.float32))
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(InputError):
            logic.xrayImageFromNode(volume)  # a 3D volume is not an X-ray
        with self.assertRaises(InputError):
            logic.xrayImageFromNode(None)
        with self.assertRaises(InputError):
            logic.attenuationImageFromNode(volume, "bogus")
        with self.assertRaises(InputError):
            logic._checkParams([0, 0, float("nan"), 0, 0, 0])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)

    # -- needs torch and numba ----------------------------------------------------------------------
    def _makeInputs(self, truth: Sequence[float]):
        """A CT phantom node and a single-slice X-ray node simulated at pose parameters ``truth``."""
        import slicer
        from XRayCTRegistrationLib.phantoms import chest_phantom

        from .images import DICOM_SDD_ATTRIBUTE, DICOM_SPACING_ATTRIBUTE

        volume = chest_phantom(shape_ijk=(48, 40, 40), spacing=(4.0, 4.0, 4.0))
        ctNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        slicer.util.updateVolumeFromArray(ctNode, volume.data)
        ctNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
        xrayNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
        slicer.util.updateVolumeFromArray(xrayNode, np.zeros((1, 48, 48), np.float32))
        xrayNode.SetAttribute(DICOM_SDD_ATTRIBUTE, "1000")
        xrayNode.SetAttribute(DICOM_SPACING_ATTRIBUTE, "6\\6")
        logic = self.logicClass()
        drr = logic.renderDrr(ctNode, xrayNode, truth, maxSize=None)
        slicer.util.updateVolumeFromArray(xrayNode, slicer.util.arrayFromVolume(drr).copy())
        slicer.mrmlScene.RemoveNode(drr)
        return logic, ctNode, xrayNode

    def test_renderAndPlace(self) -> None:
        """A DRR is rendered at preview size and the X-ray is placed on the detector."""
        import slicer

        self.delayDisplay("Render a DRR and place it on the detector")
        logic, ctNode, xrayNode = self._makeInputs([0, 0, 0, 0, 0, 0])
        drrNode = logic.renderDrr(ctNode, xrayNode, [5, 0, 0, 0, 0, 0], maxSize=24)
        self.assertEqual(slicer.util.arrayFromVolume(drrNode).shape, (1, 24, 24))
        self.assertGreater(float(slicer.util.arrayFromVolume(drrNode).max()), 0.0)
        # the X-ray's centre lies on the principal ray, sdd from the source
        pose = logic.poseFromParameters(ctNode, xrayNode, [5, 0, 0, 0, 0, 0])
        center = logic.ijkToWorld(xrayNode) @ np.array([23.5, 23.5, 0.0, 1.0])
        np.testing.assert_allclose(center[:3], pose[:3, 3] + 1000.0 * pose[:3, 2], atol=1e-6)
        self.delayDisplay("Test passed")

    def test_register(self) -> None:
        """A registration from the reference view recovers a simulated pose."""
        import slicer

        self.delayDisplay("Register a simulated X-ray")
        truth = np.array([4.0, -3.0, 5.0, 6.0, -5.0, 10.0])
        logic, ctNode, xrayNode = self._makeInputs(truth)
        steps = []
        output = logic.register(ctNode, xrayNode, [0, 0, 0, 0, 0, 0], method="opt-ncc",
                                progress=lambda f, m: steps.append(f))
        self.assertFalse(output.cancelled)
        self.assertIsNotNone(output.transformNode)
        self.assertIsNotNone(output.drrNode)
        self.assertGreater(len(steps), 0)
        error = np.abs(output.params - truth)
        self.assertLess(error[:3].max(), 2.0, f"rotation error {error[:3]} deg")
        self.assertLess(error[3:5].max(), 2.0, f"in-plane translation error {error[3:5]} mm")
        matrix = slicer.util.arrayFromTransformMatrix(output.transformNode)
        np.testing.assert_allclose(matrix, output.result.world_from_camera, atol=1e-4)
        self.delayDisplay("Test passed")
