"""3D Slicer module: register an X-ray to a CT, show the DRR fused over the X-ray.

Split of responsibilities:

- ``XRayCTRegistrationParameterNode``: the module's state in the scene (typed parameter node).
- ``XRayCTRegistrationWidget``: Qt only; reads the parameter node, calls the logic, shows progress.
- ``XRayCTRegistrationLogic``: MRML only (no Qt, no dialogs); nodes in, nodes out. It converts nodes
  to the library's arrays and camera, calls ``XRayCTRegistrationLib`` and writes the results back.
  Every method checks its inputs before touching the scene, so a failure leaves the scene as it was.
- ``XRayCTRegistrationTest``: the self-test for Slicer's test runner.

Frames and units follow ``CONVENTIONS.md``: world = RAS (mm), a pose is ``world_from_camera``,
pose parameters ``(rx, ry, rz, tx, ty, tz)`` are degrees and mm relative to the CT's AP reference view.

The output transform node holds ``world_from_camera`` as its matrix to parent: it maps the camera
frame (origin at the X-ray source, +z toward the detector, detector plane at z = sdd) to world RAS.
A model drawn in camera coordinates (e.g. a cone from the source to the detector) placed under it
shows the C-arm at the registered pose.

The library (and torch) is imported only when needed, so the module loads before torch is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

if TYPE_CHECKING:
    from XRayCTRegistrationLib.geometry import Camera, ReferenceView
    from XRayCTRegistrationLib.volume import Volume

POSE_PARAMETER_NAMES = ("rx", "ry", "rz", "tx", "ty", "tz")
"""Pose parameters, degrees (rx, ry, rz) and mm (tx, ty, tz); see CONVENTIONS.md."""

REGISTRATION_METHODS = ["opt-ncc", "opt-mncc", "opt-lncc", "opt-gc", "opt-ngi", "opt-gd"]
"""Registration methods offered in the GUI (names of the library's ``register(method=...)``)."""

XRAY_KINDS = ["auto", "attenuation", "intensity"]
"""What the X-ray's grey levels are (the library's ``xray.KINDS``): ``attenuation`` = bone bright, as a DRR,
used as they are; ``intensity`` = raw detector intensities (air bright), converted with ``-log(I / I0)``;
``auto`` = decided by the library's border-versus-centre test (``xray.air_is_bright``)."""

PREVIEW_SIZE = 128
"""Longest side, in pixels, of the DRR rendered while a pose slider moves."""

FINAL_SIZE = 512
"""Longest side, in pixels, of the DRR rendered after a registration (at most the X-ray's size)."""

PREVIEW_DELAY_MS = 40
"""Slider throttle: at most one preview render is started per this many milliseconds."""

DICOM_SDD_ATTRIBUTE = "DICOM.DistanceSourceToDetector"
"""Node attribute holding the DICOM tag DistanceSourceToDetector (0018,1110), mm."""

DICOM_SPACING_ATTRIBUTE = "DICOM.ImagerPixelSpacing"
"""Node attribute holding the DICOM tag ImagerPixelSpacing (0018,1164): "row\\column" spacing, mm."""

INITIALISER_METHODS = ["regressor", "rtpi"]
"""Learned initialisers offered in the GUI (``xrayctreg train --model``)."""

PYTHON_PACKAGES = {"numba": "numba>=0.59", "tqdm": "tqdm"}
"""Import name -> pip requirement of the packages installed on first use (torch comes from PyTorchUtils)."""

PROGRESS_PREFIX = "PROGRESS"
"""Start of the progress lines printed by ``xrayctreg train``: ``PROGRESS <fraction> <message>``."""


#
# XRayCTRegistration
#


class XRayCTRegistration(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("X-ray to CT Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["XRayCTRegistration contributors"]
        self.parent.helpText = _("""
Registers an intra-operative X-ray image to a pre-operative CT: finds the pose of the C-arm that sees
the CT as in the X-ray, renders the CT at that pose as a digitally reconstructed radiograph (DRR) and
shows the DRR fused over the X-ray, with the X-ray placed at its detector position in 3D.
Choose the CT and the X-ray (a single-slice volume) and what the X-ray's values are (raw intensities are
converted to attenuation), check the imaging geometry (filled in from DICOM tags when present), move
the pose sliders until the DRR roughly matches, then press Register. Or train a patient-specific
initialiser once for this CT and geometry (Train initialiser), then Register starts from its prediction.
""")
        self.parent.acknowledgementText = _("""
The methods follow: SOPI, a two-stage (initialisation, then fine) 2D/3D registration framework;
patient-specific self-supervised X-ray/CT registration, where a pose regressor is trained on DRRs of
the patient's own CT; and deep iterative 2D/3D registration with learned point-to-plane correspondences.
Intensity-based refinement optimises image similarity (NCC, gradient correlation, NGI) through a
differentiable DRR renderer.
""")


#
# Parameter node
#


@parameterNodeWrapper
class XRayCTRegistrationParameterNode:
    """The module's state.

    ctVolume: the CT, in Hounsfield units.
    xrayVolume: the X-ray, a single-slice scalar volume.
    xrayKind: what the X-ray's grey levels are (see XRAY_KINDS); raw images are converted to attenuation
        for the registration.
    sdd, rowSpacing, colSpacing: source-to-detector distance and detector pixel size (mm);
        0 means "take it from the X-ray's DICOM tags".
    rx, ry, rz, tx, ty, tz: pose parameters (degrees, mm) relative to the CT's AP reference view.
    method: registration method.
    outputTransform: receives world_from_camera (matrix to parent).
    outputDrr: receives the DRR at the current pose, placed on the detector.
    fusionOpacity: opacity of the DRR over the X-ray in the fusion view.
    initialiserModel: model file of the learned initialiser (written by Train initialiser, read by
        Initialise and Register); empty or "." means none.
    initialiserMethod: kind of initialiser trained (see INITIALISER_METHODS).
    trainingMinutes: training time budget, minutes.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    xrayKind: Annotated[str, Choice(XRAY_KINDS)] = "auto"
    sdd: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    rowSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    colSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    rx: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    ry: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    rz: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    tx: Annotated[float, WithinRange(-300.0, 300.0)] = 0.0
    ty: Annotated[float, WithinRange(-300.0, 300.0)] = 0.0
    tz: Annotated[float, WithinRange(-300.0, 300.0)] = 0.0
    method: Annotated[str, Choice(REGISTRATION_METHODS)] = "opt-lncc"
    outputTransform: vtkMRMLLinearTransformNode
    outputDrr: vtkMRMLScalarVolumeNode
    fusionOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    initialiserModel: pathlib.Path
    initialiserMethod: Annotated[str, Choice(INITIALISER_METHODS)] = "regressor"
    trainingMinutes: Annotated[float, WithinRange(0.1, 1440.0)] = 15.0


def modelPath(parameterNode: XRayCTRegistrationParameterNode) -> str:
    """The initialiser model file of a parameter node as a string, "" when none is set."""
    path = parameterNode.initialiserModel
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


def poseParameters(parameterNode: XRayCTRegistrationParameterNode) -> np.ndarray:
    """The six pose parameters ``(rx, ry, rz, tx, ty, tz)`` of a parameter node, degrees and mm."""
    return np.array([getattr(parameterNode, name) for name in POSE_PARAMETER_NAMES], dtype=np.float64)


#
# Dependencies
#


def missingPythonPackages() -> list[str]:
    """Pip requirements of the optional packages that cannot be imported."""
    return [req for name, req in PYTHON_PACKAGES.items() if importlib.util.find_spec(name) is None]


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install what the library needs, on first use and with the user's consent; True when all is there.

    torch comes from the PyTorch extension (PyTorchUtils), the other packages through
    ``slicer.util.pip_install``. Never called at import or in ``setup()``.
    """
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


#
# Widget
#


class XRayCTRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: node selectors, geometry, pose sliders with a live DRR, registration with progress and Cancel.

    Registration runs in Slicer's process: the logic calls back with progress, the callback updates
    the progress bar and calls ``slicer.app.processEvents()`` so the GUI stays responsive, and the
    Cancel button sets a flag that the library polls between iterations (it then stops and the scene
    is left as it was). Training runs out of process through the ``xrayctreg train`` command and a
    ``qt.QProcess`` that streams its progress lines; Cancel kills it and its last checkpoint stays, so
    pressing Train initialiser again continues it (``--resume``). Initialise sets the sliders to the
    model's prediction; Register initialises with the model (when one is set), then refines.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._busy = False
        self.previewTimer = None
        self._trainProcess = None
        self._trainOutput = ""
        self._trainLog: list[str] = []
        self._trainModelPath = ""
        self._trainCancelled = False

    def setup(self) -> None:
        """Build the GUI from the .ui file and connect it."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XRayCTRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XRayCTRegistrationLogic()

        self.previewTimer = qt.QTimer()
        self.previewTimer.setSingleShot(True)
        self.previewTimer.setInterval(PREVIEW_DELAY_MS)
        self.previewTimer.connect("timeout()", self.updatePreview)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for name in POSE_PARAMETER_NAMES:
            getattr(self.ui, f"{name}Slider").connect("valueChanged(double)", self.onPoseChanged)
        self.ui.xrayVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onXrayChanged)
        self.ui.fusionOpacitySlider.connect("valueChanged(double)", self.onFusionOpacityChanged)
        self.ui.resetPoseButton.connect("clicked(bool)", self.onResetPose)
        self.ui.initialiseButton.connect("clicked(bool)", self.onInitialise)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.trainButton.connect("clicked(bool)", self.onTrain)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showFusionButton.connect("clicked(bool)", self.onShowFusion)

        self.ui.initialiseButton.toolTip = _("Set the pose sliders to the pose predicted by the initialiser model.")
        self.ui.trainButton.toolTip = _("Train the initialiser on DRRs of this CT for this X-ray's geometry, in a "
                                        "separate process (continues a cancelled training of the same model file).")
        self.ui.registerButton.toolTip = _("Register: initialise with the model when one is set (else start from the "
                                           "sliders' pose), then refine.")
        self.ui.refineButton.toolTip = _("Refine the pose of the sliders by intensity-based optimisation.")
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setVisible(False)
        self.ui.resultLabel.text = ""

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Remove observers when the module is closed; stop a running training."""
        if self._trainProcess is not None:
            self._trainCancelled = True
            self._trainProcess.kill()
            self._trainProcess.waitForFinished(3000)
        self.removeObservers()

    def enter(self) -> None:
        """Make sure the parameter node exists and is shown when the module is opened."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Stop updating the GUI from the parameter node while the module is not shown."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        """Drop the parameter node before the scene is closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Make a new parameter node after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Get the parameter node and select a CT when none is chosen yet."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and self.logic.isVolume3D(firstVolume):
                self._parameterNode.ctVolume = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI to a parameter node (or disconnect with None)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        training = self._trainProcess is not None
        ready = bool(p and p.ctVolume and p.xrayVolume) and not self._busy and not training
        for button in (self.ui.refineButton, self.ui.registerButton, self.ui.trainButton):
            button.enabled = ready
        hasModel = bool(p and modelPath(p) and os.path.isfile(modelPath(p)))
        self.ui.initialiseButton.enabled = ready and hasModel
        self.ui.showFusionButton.enabled = bool(p and p.xrayVolume and p.outputDrr)
        self.ui.cancelButton.enabled = self._busy or training

    # -- live pose ------------------------------------------------------------------------------
    def onPoseChanged(self, value=None) -> None:
        """Throttle: a slider move starts the timer unless a render is already scheduled."""
        if not self.previewTimer.isActive():
            self.previewTimer.start()

    def updatePreview(self) -> None:
        """Render the DRR at preview resolution for the sliders' pose (errors go to the status bar)."""
        p = self._parameterNode
        if self._busy or not (p and p.ctVolume and p.xrayVolume):
            return
        if importlib.util.find_spec("torch") is None:
            return  # dependencies are installed on the first explicit action, not while sliding
        try:
            drr = self.logic.renderDrr(p.ctVolume, p.xrayVolume, poseParameters(p), drrNode=p.outputDrr,
                                       sdd=p.sdd, rowSpacing=p.rowSpacing, colSpacing=p.colSpacing,
                                       maxSize=PREVIEW_SIZE)
        except ValueError as e:
            slicer.util.showStatusMessage(str(e), 3000)
            return
        if p.outputDrr is None:
            p.outputDrr = drr
            self.logic.showFusion(p.xrayVolume, drr, p.fusionOpacity)

    def onResetPose(self) -> None:
        """Set all pose parameters back to the reference view."""
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            for name in POSE_PARAMETER_NAMES:
                setattr(self._parameterNode, name, 0.0)
        self.onPoseChanged()

    def onXrayChanged(self, node) -> None:
        """Fill the geometry fields that are still 0 from the X-ray's DICOM tags."""
        p = self._parameterNode
        if not (p and node):
            return
        tags = self.logic.geometryFromAttributes(node)
        for name in ("sdd", "rowSpacing", "colSpacing"):
            if getattr(p, name) == 0.0 and name in tags:
                setattr(p, name, tags[name])

    def onFusionOpacityChanged(self, value) -> None:
        """Change the DRR's opacity over the X-ray."""
        p = self._parameterNode
        if p and p.xrayVolume and p.outputDrr:
            self.logic.showFusion(p.xrayVolume, p.outputDrr, value)

    def onShowFusion(self) -> None:
        """Show the X-ray and DRR fused in the red slice view."""
        with slicer.util.tryWithErrorDisplay(_("Failed to show the fusion."), waitCursor=True):
            p = self._parameterNode
            self.logic.showFusion(p.xrayVolume, p.outputDrr, p.fusionOpacity)

    # -- registration ---------------------------------------------------------------------------
    def onInitialise(self) -> None:
        """Set the pose sliders to the pose predicted by the initialiser model."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Initialisation failed."), waitCursor=True):
            if not ensureDependencies(askConfirmation=True):
                return
            params = self.logic.initialise(p.ctVolume, p.xrayVolume, modelPath(p), xrayKind=p.xrayKind, sdd=p.sdd,
                                           rowSpacing=p.rowSpacing, colSpacing=p.colSpacing)
            self._setPose(params)
            self.ui.resultLabel.text = _("Initialised with {model}.").format(model=os.path.basename(modelPath(p)))
            self.onPoseChanged()

    def _setPose(self, params: Sequence[float]) -> None:
        p = self._parameterNode
        with slicer.util.NodeModify(p.parameterNode):
            for name, value in zip(POSE_PARAMETER_NAMES, params, strict=True):
                setattr(p, name, float(np.clip(value, *(self._parameterRange(name)))))

    def defaultModelPath(self) -> str:
        """Where a new model is written when none is chosen: Slicer's temporary folder, named after the CT."""
        p = self._parameterNode
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.ctVolume.GetName()) or "CT"
        return os.path.join(slicer.app.temporaryPath, "XRayCTRegistration", f"{name}-{p.initialiserMethod}.pt")

    def onTrain(self) -> None:
        """Train the initialiser out of process (``xrayctreg train``), streaming its progress into the bar."""
        p = self._parameterNode
        if self._trainProcess is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Training failed to start."), waitCursor=True):
            if not ensureDependencies(askConfirmation=True):
                return
            model = modelPath(p) or self.defaultModelPath()
            os.makedirs(os.path.dirname(os.path.abspath(model)), exist_ok=True)
            folder = os.path.join(slicer.app.temporaryPath, "XRayCTRegistration", "training")
            ctPath, geometryPath = self.logic.writeTrainingInputs(p.ctVolume, p.xrayVolume, folder, p.sdd,
                                                                  p.rowSpacing, p.colSpacing)
            command = self.logic.trainCommand(ctPath, geometryPath, model, method=p.initialiserMethod,
                                              timeBudgetS=60.0 * p.trainingMinutes, resume=os.path.isfile(model))
            logging.info(f"Training the initialiser: {self.logic.commandText(command)}")
            process = qt.QProcess()
            environment = qt.QProcessEnvironment.systemEnvironment()
            for key, value in self.logic.trainEnvironment().items():
                environment.insert(key, value)
            process.setProcessEnvironment(environment)
            process.setProcessChannelMode(qt.QProcess.MergedChannels)
            process.connect("readyReadStandardOutput()", self._onTrainOutput)
            process.connect("finished(int,QProcess::ExitStatus)", self._onTrainFinished)
            self._trainProcess, self._trainOutput, self._trainLog = process, "", []
            self._trainModelPath, self._trainCancelled = model, False
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = _("Training") + " %p%"
            self.ui.progressBar.setVisible(True)
            self.ui.resultLabel.text = _("Training the initialiser ({minutes:g} min)...").format(
                minutes=p.trainingMinutes)
            self._updateButtons()
            process.start(command[0], command[1:])
            if not process.waitForStarted(10000):
                self._trainProcess = None
                self.ui.progressBar.setVisible(False)
                self._updateButtons()
                raise RuntimeError(_("Could not start {program}: {error}").format(program=command[0],
                                                                                  error=process.errorString()))

    def _onTrainOutput(self) -> None:
        """Read the training's output as it comes; progress lines move the bar, others are kept for errors."""
        process = self._trainProcess
        if process is None:
            return
        self._trainOutput += process.readAllStandardOutput().data().decode("utf-8", errors="replace")
        *lines, self._trainOutput = self._trainOutput.split("\n")
        for line in lines:
            parsed = self.logic.parseProgressLine(line)
            if parsed is None:
                if line.strip():
                    self._trainLog = (self._trainLog + [line.rstrip()])[-20:]
                continue
            fraction, message = parsed
            self.ui.progressBar.value = int(round(100 * fraction))
            self.ui.progressBar.format = _("Training") + f" %p% {message}"

    def _onTrainFinished(self, exitCode: int, exitStatus) -> None:
        """The training process ended: use the model, or say why not."""
        self._onTrainOutput()
        if self._trainOutput.strip():
            self._trainLog.append(self._trainOutput.rstrip())
        self._trainProcess = None
        self.ui.progressBar.setVisible(False)
        self._updateButtons()
        model = self._trainModelPath
        if self._trainCancelled:
            if os.path.isfile(model):
                self.ui.resultLabel.text = _("Training cancelled; its last checkpoint {model} is kept: press Train "
                                             "initialiser again to continue it.").format(model=model)
            else:
                self.ui.resultLabel.text = _("Training cancelled before its first checkpoint.")
            return
        if exitCode != 0 or exitStatus != qt.QProcess.NormalExit:
            self.ui.resultLabel.text = _("Training failed.")
            slicer.util.errorDisplay(_("Training the initialiser failed (exit code {code}).").format(code=exitCode),
                                     detailedText="\n".join(self._trainLog))
            return
        self._parameterNode.initialiserModel = pathlib.Path(model)
        summary = next((line for line in reversed(self._trainLog) if line.startswith("trained ")), "")
        self.ui.resultLabel.text = _("Initialiser trained: {model}").format(model=model) + (
            f"\n{summary}" if summary else "")
        self._updateButtons()

    def onRefine(self) -> None:
        """Refine the sliders' pose."""
        self._runRegistration(_("Refining"))

    def onRegister(self) -> None:
        """Register: initialise with the model when one is set (else from the sliders' pose), then refine."""
        self._runRegistration(_("Registering"), initialiserModel=modelPath(self._parameterNode) or None)

    def onCancel(self) -> None:
        """Ask the running registration to stop, or kill the running training (its checkpoint stays)."""
        if self._trainProcess is not None:
            self._trainCancelled = True
            self.ui.resultLabel.text = _("Cancelling the training...")
            self._trainProcess.kill()
            return
        self._cancelRequested = True
        self.ui.resultLabel.text = _("Cancelling...")

    def _progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
        self.ui.progressBar.format = f"{message} %p%"
        slicer.app.processEvents()  # keeps the GUI responsive and lets Cancel be clicked

    def _runRegistration(self, what: str, initialiserModel: str | None = None) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=False):
            if not ensureDependencies(askConfirmation=True):
                return
            self._busy = True
            self._cancelRequested = False
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.resultLabel.text = what + "..."
            self._updateButtons()
            try:
                output = self.logic.register(
                    p.ctVolume, p.xrayVolume, poseParameters(p), method=p.method, xrayKind=p.xrayKind, sdd=p.sdd,
                    rowSpacing=p.rowSpacing, colSpacing=p.colSpacing, outputTransform=p.outputTransform,
                    outputDrr=p.outputDrr, progress=self._progress, shouldStop=lambda: self._cancelRequested,
                    initialiserModel=initialiserModel)
            finally:
                self._busy = False
                self.ui.progressBar.setVisible(False)
                self._updateButtons()
            if output.cancelled:
                self.ui.resultLabel.text = _("Cancelled: the scene was not changed.")
                return
            with slicer.util.NodeModify(p.parameterNode):
                p.outputTransform = output.transformNode
                p.outputDrr = output.drrNode
                self._setPose(output.params)
            self.logic.showFusion(p.xrayVolume, p.outputDrr, p.fusionOpacity)
            result = output.result
            text = _("Similarity {similarity:.4f}, {iterations} iterations, {time:.1f} s").format(
                similarity=result.similarity, iterations=result.iterations, time=result.wall_time_s)
            if getattr(result, "uncertainty", None) is not None:
                text += "\n" + result.uncertainty.summary()
            self.ui.resultLabel.text = text
            self.ui.resultLabel.toolTip = _("X-ray: {conversion}").format(conversion=output.xrayConversion)

    @staticmethod
    def _parameterRange(name: str) -> tuple[float, float]:
        return (-180.0, 180.0) if name.startswith("r") else (-300.0, 300.0)


#
# Logic
#


@dataclass
class RegistrationOutput:
    """What :meth:`XRayCTRegistrationLogic.register` returns.

    result: the library's RegistrationResult (world_from_camera, params, similarity, iterations,
        wall_time_s, method, success, message).
    params: pose parameters of the result (degrees, mm) relative to the AP reference view.
    transformNode, drrNode: the output nodes written (None when cancelled).
    cancelled: True when ``shouldStop`` asked to stop; then nothing in the scene was changed.
    xrayConversion: what was done to the X-ray's grey levels before registering (one sentence).
    initialParams: the pose parameters the refinement started from (the model's prediction when
        registering with an initialiser model, else the given initial parameters).
    """

    result: Any
    params: np.ndarray
    transformNode: vtkMRMLLinearTransformNode | None
    drrNode: vtkMRMLScalarVolumeNode | None
    cancelled: bool = False
    xrayConversion: str = ""
    initialParams: np.ndarray | None = None


class XRayCTRegistrationLogic(ScriptedLoadableModuleLogic):
    """Nodes in, nodes out; no Qt, no dialogs.

    Errors (bad input) are ``ValueError`` subclasses (the library's ``InputError``) with one line
    naming the node and the problem; they are raised before the scene is modified.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._projectorCache: dict = {}
        self._volumeCache: dict = {}
        self._initialiserCache: dict = {}

    def getParameterNode(self) -> XRayCTRegistrationParameterNode:
        """The module's parameter node, typed."""
        return XRayCTRegistrationParameterNode(super().getParameterNode())

    # -- nodes -> library ---------------------------------------------------------------------
    @staticmethod
    def _inputError(message: str) -> Exception:
        from XRayCTRegistrationLib.errors import InputError

        return InputError(message)

    @staticmethod
    def worldFromNode(node) -> np.ndarray:
        """4x4 matrix from the node's local (parent) frame to world RAS; raises for non-linear transforms."""
        parent = node.GetParentTransformNode()
        if parent is None:
            return np.eye(4)
        if not parent.IsTransformToWorldLinear():
            raise XRayCTRegistrationLogic._inputError(
                f"node '{node.GetName()}': it is under a non-linear transform; harden or remove it first")
        m = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(m)
        return slicer.util.arrayFromVTKMatrix(m)

    @staticmethod
    def ijkToWorld(node) -> np.ndarray:
        """4x4 matrix from voxel index (i, j, k) of a volume node to world RAS (parent transforms included)."""
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        return XRayCTRegistrationLogic.worldFromNode(node) @ slicer.util.arrayFromVTKMatrix(m)

    @staticmethod
    def isVolume3D(node) -> bool:
        """True when a volume node holds more than one slice."""
        image = node.GetImageData() if node is not None else None
        return bool(image) and image.GetDimensions()[2] > 1

    def volumeFromNode(self, ctNode) -> Volume:
        """The CT node as a library Volume in HU: data ``[k, j, i]`` float32, ijk_to_ras in world RAS."""
        from XRayCTRegistrationLib.volume import Volume

        if ctNode is None:
            raise self._inputError("CT volume: none selected")
        image = ctNode.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise self._inputError(f"CT volume '{ctNode.GetName()}': holds no image data")
        if image.GetNumberOfScalarComponents() != 1:
            raise self._inputError(f"CT volume '{ctNode.GetName()}': expected one scalar per voxel, got "
                                   f"{image.GetNumberOfScalarComponents()}")
        dims = image.GetDimensions()
        if min(dims) < 2:
            raise self._inputError(f"CT volume '{ctNode.GetName()}': expected a 3D volume, got {dims[0]}x{dims[1]}x"
                                   f"{dims[2]} voxels")
        data = np.array(slicer.util.arrayFromVolume(ctNode), dtype=np.float32)  # [k, j, i] copy
        if not np.all(np.isfinite(data)):
            raise self._inputError(f"CT volume '{ctNode.GetName()}': holds NaN or infinite values")
        return Volume(data, self.ijkToWorld(ctNode))

    def attenuationVolume(self, ctNode) -> Volume:
        """The CT as attenuation (1/mm); cached until the node's image or geometry changes."""
        from XRayCTRegistrationLib.volume import Volume, hu_to_mu

        if ctNode is None or ctNode.GetImageData() is None:
            self.volumeFromNode(ctNode)  # raises the error that says what is wrong
        key = (ctNode.GetID(), ctNode.GetMTime(), ctNode.GetImageData().GetMTime() if ctNode.GetImageData() else 0,
               self.worldFromNode(ctNode).tobytes() if ctNode.GetImageData() else b"")
        cached = self._volumeCache.get("volume")
        if cached is not None and cached[0] == key:
            return cached[1]
        hu = self.volumeFromNode(ctNode)
        volume = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
        self._volumeCache = {"volume": (key, volume)}
        return volume

    def xrayImageFromNode(self, xrayNode) -> np.ndarray:
        """The X-ray as a 2D float32 array ``[rows, cols]`` (Slicer's i = column, j = row)."""
        if xrayNode is None:
            raise self._inputError("X-ray volume: none selected")
        image = xrayNode.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise self._inputError(f"X-ray volume '{xrayNode.GetName()}': holds no image data")
        dims = image.GetDimensions()
        if dims[2] != 1:
            raise self._inputError(f"X-ray volume '{xrayNode.GetName()}': is a 3D volume with {dims[2]} slices; "
                                   "an X-ray must be a single-slice image")
        if image.GetNumberOfScalarComponents() != 1:
            raise self._inputError(f"X-ray volume '{xrayNode.GetName()}': expected a grey-level image, got "
                                   f"{image.GetNumberOfScalarComponents()} components per pixel")
        if min(dims[0], dims[1]) < 2:
            raise self._inputError(f"X-ray volume '{xrayNode.GetName()}': image is only {dims[0]}x{dims[1]} pixels")
        data = np.array(slicer.util.arrayFromVolume(xrayNode)[0], dtype=np.float32)  # [rows, cols]
        if not np.all(np.isfinite(data)):
            raise self._inputError(f"X-ray volume '{xrayNode.GetName()}': holds NaN or infinite values")
        return data

    def attenuationImageFromNode(self, xrayNode, kind: str = "auto") -> tuple[np.ndarray, str]:
        """The X-ray as the library's attenuation-bright image ``[rows, cols]`` (float32), and what was done.

        ``kind`` is one of :data:`XRAY_KINDS`. Raw intensities (air bright) are converted with the
        library's ``xray.intensity_to_attenuation``; ``auto`` decides with ``xray.air_is_bright``.
        The node itself is not changed.
        """
        from XRayCTRegistrationLib.errors import InputError
        from XRayCTRegistrationLib.xray import air_is_bright, intensity_to_attenuation

        if kind not in XRAY_KINDS:
            raise self._inputError(f"X-ray kind: {kind!r} is not one of {', '.join(XRAY_KINDS)}")
        image = self.xrayImageFromNode(xrayNode)
        if kind == "attenuation":
            return image, "used as attenuation (bone bright), as chosen"
        why = "raw intensities, as chosen"
        if kind == "auto":
            airBright, test = air_is_bright(image)
            if not airBright:
                return image, f"attenuation-bright ({test}): used as it is"
            why = f"air bright ({test})"
        try:
            attenuation, i0 = intensity_to_attenuation(image)
        except InputError as e:
            raise self._inputError(f"X-ray volume '{xrayNode.GetName()}': {e}") from None
        return attenuation, f"{why}: converted with -log(I/I0), I0={i0:.6g}"

    @staticmethod
    def geometryFromAttributes(xrayNode) -> dict[str, float]:
        """Geometry read from DICOM tags stored as node attributes: any of sdd, rowSpacing, colSpacing (mm)."""
        out: dict[str, float] = {}
        sdd = xrayNode.GetAttribute(DICOM_SDD_ATTRIBUTE)
        if sdd:
            try:
                out["sdd"] = float(sdd)
            except ValueError:
                raise XRayCTRegistrationLogic._inputError(
                    f"X-ray volume '{xrayNode.GetName()}': attribute {DICOM_SDD_ATTRIBUTE}={sdd!r} is not a number"
                ) from None
        spacing = xrayNode.GetAttribute(DICOM_SPACING_ATTRIBUTE)
        if spacing:
            parts = spacing.replace("\\", " ").replace(",", " ").split()
            try:
                values = [float(v) for v in parts]
            except ValueError:
                values = []
            if len(values) not in (1, 2):
                raise XRayCTRegistrationLogic._inputError(
                    f"X-ray volume '{xrayNode.GetName()}': attribute {DICOM_SPACING_ATTRIBUTE}={spacing!r} is not "
                    "'row\\column' spacing")
            out["rowSpacing"], out["colSpacing"] = values[0], values[-1]
        return out

    def cameraFromNode(self, xrayNode, sdd: float = 0.0, rowSpacing: float = 0.0, colSpacing: float = 0.0) -> Camera:
        """Camera of the X-ray: size from the image, geometry from the arguments (mm) or, where 0, from DICOM tags."""
        from XRayCTRegistrationLib.geometry import Camera

        image = self.xrayImageFromNode(xrayNode)
        tags = self.geometryFromAttributes(xrayNode)
        given = {"sdd": sdd, "rowSpacing": rowSpacing, "colSpacing": colSpacing}
        values = {name: float(v) if v else tags.get(name, 0.0) for name, v in given.items()}
        missing = [name for name, v in values.items() if not v]
        if missing:
            raise self._inputError(
                f"X-ray volume '{xrayNode.GetName()}': imaging geometry missing ({', '.join(missing)}); enter it or "
                f"load an X-ray with the DICOM tags DistanceSourceToDetector and ImagerPixelSpacing")
        return Camera(sdd=values["sdd"], rows=image.shape[0], cols=image.shape[1],
                      row_spacing=values["rowSpacing"], col_spacing=values["colSpacing"])

    @staticmethod
    def referenceView(volume: Volume, camera: Camera) -> ReferenceView:
        """The AP reference view of the CT that pose parameters are relative to."""
        from XRayCTRegistrationLib.geometry import ReferenceView

        return ReferenceView.ap(volume.center, camera.sdd)

    def poseFromParameters(self, ctNode, xrayNode, params: Sequence[float], sdd: float = 0.0,
                           rowSpacing: float = 0.0, colSpacing: float = 0.0) -> np.ndarray:
        """``world_from_camera`` (4x4) of pose parameters (degrees, mm) for this CT and X-ray."""
        volume = self.attenuationVolume(ctNode)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing)
        return self.referenceView(volume, camera).pose(self._checkParams(params))

    def _checkParams(self, params: Sequence[float]) -> np.ndarray:
        p = np.asarray(params, dtype=np.float64).reshape(-1)
        if p.shape != (6,) or not np.all(np.isfinite(p)):
            raise self._inputError(f"pose parameters: expected six finite numbers (rx, ry, rz, tx, ty, tz), got {p}")
        return p

    # -- detector placement -------------------------------------------------------------------
    @staticmethod
    def detectorIJKToWorld(camera: Camera, worldFromCamera: np.ndarray) -> np.ndarray:
        """IJKToRAS of a single-slice volume holding the detector image at a pose.

        Slicer's i is the image column and j the row, so the centre of pixel (row r, col c) = voxel
        (i=c, j=r, k=0) lands at ``world_from_camera @ (x(c), y(r), sdd)`` (CONVENTIONS.md). The k axis
        points along the principal ray (+z, away from the source) with 1 mm spacing.
        """
        cameraFromIJK = np.eye(4)
        cameraFromIJK[0, 0] = camera.col_spacing
        cameraFromIJK[1, 1] = camera.row_spacing
        cameraFromIJK[:3, 3] = [(0.5 - camera.cols / 2) * camera.col_spacing + camera.x0,
                                (0.5 - camera.rows / 2) * camera.row_spacing + camera.y0, camera.sdd]
        return np.asarray(worldFromCamera, dtype=np.float64) @ cameraFromIJK

    def placeOnDetector(self, volumeNode, camera: Camera, worldFromCamera: np.ndarray) -> None:
        """Set a single-slice volume node's geometry so it lies on the detector at the pose (world RAS)."""
        ijkToWorld = self.detectorIJKToWorld(camera, worldFromCamera)
        ijkToParent = np.linalg.inv(self.worldFromNode(volumeNode)) @ ijkToWorld
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToParent))

    # -- rendering ----------------------------------------------------------------------------
    @staticmethod
    def previewCamera(camera: Camera, maxSize: int | None) -> Camera:
        """The same detector area with at most ``maxSize`` pixels along its longest side."""
        if not maxSize or max(camera.rows, camera.cols) <= maxSize:
            return camera
        return camera.downsampled(max(camera.rows, camera.cols) / maxSize)

    @staticmethod
    def samplesPerRay(volume: Volume, maxSize: int | None) -> int:
        """Samples per ray: one per voxel along the longest chord, halved (and capped) for previews."""
        from XRayCTRegistrationLib.projector import samples_for

        if maxSize and maxSize <= PREVIEW_SIZE:
            return int(min(256, samples_for(volume, 2.0)))
        return int(min(1024, samples_for(volume, 1.0)))

    def renderArray(self, volume: Volume, camera: Camera, worldFromCamera: np.ndarray, nSamples: int) -> np.ndarray:
        """DRR ``[rows, cols]`` (float32) of an attenuation volume; the projector is reused while inputs stay."""
        import torch
        from XRayCTRegistrationLib.projector import Projector

        key = (id(volume), tuple(sorted(camera.to_dict().items())), nSamples)
        projector = self._projectorCache.get(key)
        if projector is None:
            projector = Projector(volume, camera, n_samples=nSamples)
            self._projectorCache = {key: projector}  # keep one: volumes are large
        with torch.no_grad():
            return projector(torch.as_tensor(worldFromCamera, dtype=torch.float32)).numpy()

    def renderDrr(self, ctNode, xrayNode, params: Sequence[float], drrNode=None, sdd: float = 0.0,
                  rowSpacing: float = 0.0, colSpacing: float = 0.0, maxSize: int | None = PREVIEW_SIZE,
                  placeXray: bool = True):
        """Render the DRR of the CT at pose parameters (degrees, mm) into ``drrNode`` (created when None).

        The DRR node is a single-slice volume on the detector plane (the X-ray's plane, with pixels
        ``maxSize`` times coarser when downsampled); with ``placeXray`` the X-ray node is moved there too.
        Returns the DRR node.
        """
        volume = self.attenuationVolume(ctNode)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing)
        pose = self.referenceView(volume, camera).pose(self._checkParams(params))
        return self._renderAtPose(volume, camera, pose, drrNode, xrayNode, maxSize, placeXray)

    def _renderAtPose(self, volume: Volume, camera: Camera, pose: np.ndarray, drrNode, xrayNode,
                      maxSize: int | None, placeXray: bool):
        """Render at a ``world_from_camera`` pose, then write the DRR node (and move the X-ray)."""
        if drrNode is not None and not isinstance(drrNode, slicer.vtkMRMLScalarVolumeNode):
            raise self._inputError(f"output DRR '{drrNode.GetName()}': must be a scalar volume")
        renderCamera = self.previewCamera(camera, maxSize)
        drr = self.renderArray(volume, renderCamera, pose, self.samplesPerRay(volume, maxSize))
        drrNode = self._writeDrr(drr, renderCamera, pose, drrNode, xrayNode)
        if placeXray:
            self.placeOnDetector(xrayNode, camera, pose)
        return drrNode

    def _writeDrr(self, drr: np.ndarray, camera: Camera, pose: np.ndarray, drrNode, xrayNode):
        scene = xrayNode.GetScene()
        if drrNode is None:
            drrNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                              scene.GenerateUniqueName(f"{xrayNode.GetName()} DRR"))
        with slicer.util.NodeModify(drrNode):
            slicer.util.updateVolumeFromArray(drrNode, drr[None].astype(np.float32))  # [1, rows, cols]
            self.placeOnDetector(drrNode, camera, pose)
        if drrNode.GetDisplayNode() is None:
            drrNode.CreateDefaultDisplayNodes()
        display = drrNode.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOn()
        return drrNode

    # -- pose output --------------------------------------------------------------------------
    @staticmethod
    def setTransformFromPose(transformNode, worldFromCamera: np.ndarray) -> None:
        """Store ``world_from_camera`` (camera frame -> world RAS) as the transform's matrix to parent."""
        transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(worldFromCamera)))

    def updateOutputs(self, ctNode, xrayNode, params: Sequence[float], outputTransform=None, outputDrr=None,
                      sdd: float = 0.0, rowSpacing: float = 0.0, colSpacing: float = 0.0,
                      maxSize: int | None = FINAL_SIZE):
        """Write the pose (transform), the DRR and the detector placement for pose parameters (degrees, mm).

        Returns ``(transformNode, drrNode)``; output nodes that are None are created.
        """
        volume = self.attenuationVolume(ctNode)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing)
        pose = self.referenceView(volume, camera).pose(self._checkParams(params))
        return self._writeOutputs(volume, camera, pose, xrayNode, outputTransform, outputDrr, maxSize)

    def _writeOutputs(self, volume: Volume, camera: Camera, pose: np.ndarray, xrayNode, outputTransform,
                      outputDrr, maxSize: int | None):
        if outputTransform is not None and not isinstance(outputTransform, slicer.vtkMRMLLinearTransformNode):
            raise self._inputError(f"output transform '{outputTransform.GetName()}': must be a linear transform")
        drrNode = self._renderAtPose(volume, camera, pose, outputDrr, xrayNode, maxSize, placeXray=True)
        if outputTransform is None:
            scene = xrayNode.GetScene()
            outputTransform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                                      scene.GenerateUniqueName("X-ray pose"))
        self.setTransformFromPose(outputTransform, pose)
        return outputTransform, drrNode

    # -- registration -------------------------------------------------------------------------
    def register(self, ctNode, xrayNode, initialParams: Sequence[float], method: str = "opt-lncc",
                 xrayKind: str = "auto", sdd: float = 0.0, rowSpacing: float = 0.0, colSpacing: float = 0.0,
                 outputTransform=None, outputDrr=None, progress: Callable[[float, str], None] | None = None,
                 shouldStop: Callable[[], bool] | None = None, initialiserModel: str | os.PathLike | None = None,
                 **options) -> RegistrationOutput:
        """Register the X-ray to the CT from initial pose parameters (degrees, mm) and write the outputs.

        With ``initialiserModel`` (a model file from ``xrayctreg train``), the initial pose is predicted by
        the model instead (``initialParams`` is then ignored, see :meth:`initialise`) and the refinement
        uses the library's ``refine_schedule`` (options given here override it).

        Runs the library's ``register`` in this process; ``progress(fraction, message)`` is called as
        it goes and ``shouldStop()`` is polled to cancel. ``xrayKind`` (:data:`XRAY_KINDS`) says how the
        X-ray's grey levels become attenuation (see :meth:`attenuationImageFromNode`; what was done is
        logged and returned). ``options`` go to the library unchanged. On
        success the output transform gets ``world_from_camera``, the DRR is rendered at the result
        (at most ``FINAL_SIZE`` pixels a side) and the X-ray and DRR are placed on the detector. When
        cancelled the scene is not changed; when the registration fails a RuntimeError is raised.
        """
        from XRayCTRegistrationLib.registration import register

        if method not in REGISTRATION_METHODS:
            raise self._inputError(f"method: {method!r} is not one of {', '.join(REGISTRATION_METHODS)}")
        volume = self.attenuationVolume(ctNode)
        image, conversion = self.attenuationImageFromNode(xrayNode, xrayKind)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing)
        reference = self.referenceView(volume, camera)
        if initialiserModel:
            from XRayCTRegistrationLib.training import refine_schedule

            startParams = self.initialise(ctNode, xrayNode, initialiserModel, xrayKind, sdd, rowSpacing, colSpacing)
            options = {**refine_schedule(camera), **options}
        else:
            startParams = self._checkParams(initialParams)
        init = reference.pose(startParams)
        logging.info(f"X-ray '{xrayNode.GetName()}': {conversion}")
        result = register(volume, image, camera, init, reference=reference, method=method, progress=progress,
                          should_stop=shouldStop, **options)
        params = reference.params(result.world_from_camera)
        if shouldStop is not None and shouldStop():
            return RegistrationOutput(result, params, None, None, cancelled=True, xrayConversion=conversion,
                                      initialParams=startParams)
        if not result.success:
            raise RuntimeError(_("Registration did not succeed: {message}").format(message=result.message))
        transformNode, drrNode = self._writeOutputs(volume, camera, np.asarray(result.world_from_camera), xrayNode,
                                                    outputTransform, outputDrr, FINAL_SIZE)
        return RegistrationOutput(result, params, transformNode, drrNode, xrayConversion=conversion,
                                  initialParams=startParams)

    # -- learned initialiser ------------------------------------------------------------------
    def loadInitialiser(self, modelPath: str | os.PathLike):
        """The library's ``Initialiser`` of a model file; cached until the file changes (path, mtime, size)."""
        from XRayCTRegistrationLib.training import load_initialiser

        text = str(modelPath) if modelPath is not None else ""
        if text in ("", "."):
            raise self._inputError("initialiser model: no model file chosen; train one first (Train initialiser)")
        path = os.path.abspath(text)
        if not os.path.isfile(path):
            raise self._inputError(f"{path}: model file not found")
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        cached = self._initialiserCache.get("model")
        if cached is not None and cached[0] == key:
            return cached[1]
        model = load_initialiser(path)
        self._initialiserCache = {"model": (key, model)}
        return model

    def initialise(self, ctNode, xrayNode, modelPath: str | os.PathLike, xrayKind: str = "auto", sdd: float = 0.0,
                   rowSpacing: float = 0.0, colSpacing: float = 0.0) -> np.ndarray:
        """Pose parameters ``[6]`` (degrees, mm, relative to this logic's AP reference view) predicted by a model.

        The model must have been trained on this CT (same HU voxels and geometry) and for this X-ray's
        detector geometry, else an ``InputError`` says so. Its prediction (``world_from_camera``) is
        converted to the parameters of :meth:`referenceView`, the view the sliders use, so the result
        is right even when the model was trained with another reference view. The scene is not changed.
        """
        from XRayCTRegistrationLib.training import initialise

        model = self.loadInitialiser(modelPath)
        model.check_ct(self.volumeFromNode(ctNode), f"CT volume '{ctNode.GetName()}'")
        image, conversion = self.attenuationImageFromNode(xrayNode, xrayKind)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing)
        worldFromCamera = initialise(model, image, camera)
        logging.info(f"X-ray '{xrayNode.GetName()}': {conversion}; initialised with {model.name} ({model.method})")
        return self.referenceView(self.attenuationVolume(ctNode), camera).params(worldFromCamera)

    def writeTrainingInputs(self, ctNode, xrayNode, folder: str | os.PathLike, sdd: float = 0.0,
                            rowSpacing: float = 0.0, colSpacing: float = 0.0) -> tuple[str, str]:
        """Write the CT (HU, ``ct.nrrd``) and the X-ray's detector geometry (``geometry.json``) for training.

        The folder is created when needed. Returns ``(ctPath, geometryPath)``. The CT on disk holds the
        node's voxels as float32 with its world geometry (parent transforms included), so a model trained
        on it matches the node (see :meth:`initialise`).
        """
        from XRayCTRegistrationLib.volume import write_volume

        volume = self.volumeFromNode(ctNode)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing)
        if not folder:
            raise self._inputError("training folder: empty path")
        os.makedirs(folder, exist_ok=True)
        ctPath = os.path.join(str(folder), "ct.nrrd")
        geometryPath = os.path.join(str(folder), "geometry.json")
        write_volume(volume, ctPath)
        camera.save(geometryPath)
        return ctPath, geometryPath

    # -- fusion -------------------------------------------------------------------------------
    @staticmethod
    def sliceToRASForImage(ijkToWorld: np.ndarray, dims: Sequence[int]) -> np.ndarray:
        """SliceToRAS of a slice view showing a single-slice image as a radiograph.

        Screen right follows increasing column (i), screen up is decreasing row (j, row 0 at the
        top), the normal is their cross product, and the view is centred on the image centre.
        """
        m = np.asarray(ijkToWorld, dtype=np.float64)
        right = m[:3, 0] / np.linalg.norm(m[:3, 0])
        up = -m[:3, 1] / np.linalg.norm(m[:3, 1])
        normal = np.cross(right, up)
        middle = np.array([(dims[0] - 1) / 2, (dims[1] - 1) / 2, 0.0])
        center = m[:3, :3] @ middle + m[:3, 3]
        out = np.eye(4)
        out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = right, up, normal, center
        return out

    @staticmethod
    def fieldOfViewForImage(ijkToWorld: np.ndarray, dims: Sequence[int], viewDims: Sequence[int]) -> tuple:
        """Slice field of view (mm) that shows the whole image in a view of ``viewDims`` pixels."""
        m = np.asarray(ijkToWorld, dtype=np.float64)
        width = dims[0] * np.linalg.norm(m[:3, 0])
        height = dims[1] * np.linalg.norm(m[:3, 1])
        aspect = viewDims[1] / viewDims[0] if viewDims[0] > 0 and viewDims[1] > 0 else height / width
        fovX = max(width, height / aspect)
        return fovX, fovX * aspect, float(np.linalg.norm(m[:3, 2]))

    @staticmethod
    def compositeNodeForSliceNode(sliceNode):
        """The slice composite node of a slice view (same layout name)."""
        scene = sliceNode.GetScene()
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            node = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            if node.GetLayoutName() == sliceNode.GetLayoutName():
                return node
        return None

    def showFusion(self, xrayNode, drrNode, opacity: float = 0.5, sliceNode=None) -> None:
        """Show the X-ray as background and the DRR as foreground (at ``opacity``) in a slice view (red).

        The slice plane is turned to the X-ray's plane and fitted to the image.
        """
        if xrayNode is None or drrNode is None:
            raise self._inputError("fusion: needs an X-ray and a DRR")
        if not 0.0 <= opacity <= 1.0:
            raise self._inputError(f"fusion opacity: must be within [0, 1], got {opacity}")
        dims = self.xrayImageFromNode(xrayNode).shape[::-1]  # (cols, rows)
        scene = xrayNode.GetScene()
        sliceNode = sliceNode or scene.GetNodeByID("vtkMRMLSliceNodeRed")
        if sliceNode is None:
            raise self._inputError("fusion: the scene has no red slice view")
        compositeNode = self.compositeNodeForSliceNode(sliceNode)
        if compositeNode is None:
            raise self._inputError(f"fusion: slice view '{sliceNode.GetLayoutName()}' has no composite node")
        ijkToWorld = self.ijkToWorld(xrayNode)
        for node in (xrayNode, drrNode):
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
                node.GetDisplayNode().AutoWindowLevelOn()
        with slicer.util.NodeModify(compositeNode):
            compositeNode.SetBackgroundVolumeID(xrayNode.GetID())
            compositeNode.SetForegroundVolumeID(drrNode.GetID())
            compositeNode.SetForegroundOpacity(float(opacity))
        with slicer.util.NodeModify(sliceNode):
            sliceNode.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(self.sliceToRASForImage(ijkToWorld,
                                                                                                        dims)))
            sliceNode.SetFieldOfView(*self.fieldOfViewForImage(ijkToWorld, dims, sliceNode.GetDimensions()))
            sliceNode.UpdateMatrices()

    # -- training out of process --------------------------------------------------------------
    @staticmethod
    def pythonExecutable() -> str:
        """Python that runs the training: PythonSlicer inside Slicer (found on PATH), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def trainCommand(ctPath: str, geometryPath: str, modelPath: str, method: str = "regressor",
                     timeBudgetS: float | None = None, iterations: int | None = None, resume: bool = False,
                     threads: int | None = None, python: str | None = None,
                     extraArgs: Sequence[str] = ()) -> list[str]:
        """Command line that trains the initialiser out of process: ``xrayctreg train ...`` run by Python.

        The program is ``python`` (default: :meth:`pythonExecutable`) running the library's CLI module, so
        no console script needs to be on PATH. The process prints ``PROGRESS <fraction> <message>`` lines
        on stdout (see :meth:`parseProgressLine`) and writes the model file ``modelPath`` (checkpoints
        while it runs, so a killed training can be continued with ``resume``). ``timeBudgetS`` is the
        total training time in seconds, ``iterations`` the total number of steps (either or both).
        """
        for name, value in (("ctPath", ctPath), ("geometryPath", geometryPath), ("modelPath", modelPath)):
            if not value:
                raise XRayCTRegistrationLogic._inputError(f"train: '{name}' is empty")
        if method not in INITIALISER_METHODS:
            raise XRayCTRegistrationLogic._inputError(
                f"train: method {method!r} is not one of {', '.join(INITIALISER_METHODS)}")
        if timeBudgetS is not None and not (np.isfinite(timeBudgetS) and timeBudgetS > 0):
            raise XRayCTRegistrationLogic._inputError(f"train: time budget must be > 0 s, got {timeBudgetS}")
        if iterations is not None and iterations < 1:
            raise XRayCTRegistrationLogic._inputError(f"train: iterations must be >= 1, got {iterations}")
        command = [python or XRayCTRegistrationLogic.pythonExecutable(), "-m", "XRayCTRegistrationLib.cli", "train",
                   "--ct", str(ctPath), "--geometry", str(geometryPath), "--model", method, "--out", str(modelPath),
                   "--progress-lines", "--quiet"]
        if timeBudgetS is not None:
            command += ["--time-budget", f"{float(timeBudgetS):g}"]
        if iterations is not None:
            command += ["--iterations", str(int(iterations))]
        if resume:
            command.append("--resume")
        if threads is not None:
            command += ["--threads", str(int(threads))]
        return command + [str(a) for a in extraArgs]

    @staticmethod
    def trainEnvironment() -> dict[str, str]:
        """Environment additions for the training process: the library's folder on PYTHONPATH."""
        here = os.path.dirname(os.path.abspath(__file__))
        current = os.environ.get("PYTHONPATH", "")
        return {"PYTHONPATH": here + (os.pathsep + current if current else "")}

    @staticmethod
    def commandText(command: Sequence[str]) -> str:
        """A command line as one shell-quoted string, for logs."""
        return " ".join(shlex.quote(c) for c in command)

    @staticmethod
    def parseProgressLine(line: str) -> tuple[float, str] | None:
        """``(fraction, message)`` of a ``PROGRESS <fraction> <message>`` line, None for any other line.

        The fraction is clamped to [0, 1]; the message may be empty.
        """
        parts = line.strip().split(maxsplit=2)
        if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
            return None
        try:
            fraction = float(parts[1])
        except ValueError:
            return None
        if not np.isfinite(fraction):
            return None
        return min(1.0, max(0.0, fraction)), parts[2] if len(parts) > 2 else ""


#
# Test
#


class XRayCTRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test: a full registration on a small chest phantom, run by Slicer's test runner."""

    def setUp(self) -> None:
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run all tests."""
        self.setUp()
        self.test_renderAndPlace()
        self.setUp()
        self.test_register()

    def _makeInputs(self, truth: Sequence[float]):
        """A CT phantom node and a single-slice X-ray node simulated at pose parameters ``truth``."""
        from XRayCTRegistrationLib.phantoms import chest_phantom

        volume = chest_phantom(shape_ijk=(48, 40, 40), spacing=(4.0, 4.0, 4.0))
        ctNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        slicer.util.updateVolumeFromArray(ctNode, volume.data)
        ctNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
        xrayNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
        slicer.util.updateVolumeFromArray(xrayNode, np.zeros((1, 48, 48), np.float32))
        xrayNode.SetAttribute(DICOM_SDD_ATTRIBUTE, "1000")
        xrayNode.SetAttribute(DICOM_SPACING_ATTRIBUTE, "6\\6")
        logic = XRayCTRegistrationLogic()
        drr = logic.renderDrr(ctNode, xrayNode, truth, maxSize=None)
        slicer.util.updateVolumeFromArray(xrayNode, slicer.util.arrayFromVolume(drr).copy())
        slicer.mrmlScene.RemoveNode(drr)
        return logic, ctNode, xrayNode

    def test_renderAndPlace(self) -> None:
        """A DRR is rendered at preview size and the X-ray is placed on the detector."""
        self.delayDisplay("Render a DRR and place it on the detector")
        logic, ctNode, xrayNode = self._makeInputs([0, 0, 0, 0, 0, 0])
        drrNode = logic.renderDrr(ctNode, xrayNode, [5, 0, 0, 0, 0, 0], maxSize=24)
        self.assertEqual(slicer.util.arrayFromVolume(drrNode).shape, (1, 24, 24))
        self.assertGreater(float(slicer.util.arrayFromVolume(drrNode).max()), 0.0)
        # the X-ray's centre lies on the principal ray, sdd from the source
        pose = logic.poseFromParameters(ctNode, xrayNode, [5, 0, 0, 0, 0, 0])
        ijkToWorld = logic.ijkToWorld(xrayNode)
        center = ijkToWorld @ np.array([23.5, 23.5, 0.0, 1.0])
        np.testing.assert_allclose(center[:3], pose[:3, 3] + 1000.0 * pose[:3, 2], atol=1e-6)
        self.delayDisplay("Test passed")

    def test_register(self) -> None:
        """A registration from the reference view recovers a simulated pose."""
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
