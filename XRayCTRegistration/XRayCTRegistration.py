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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.names import DEFAULT_METHOD, INITIALISER_METHODS, XRAY_KINDS
from XRayCTRegistrationLib.names import PARAM_NAMES as POSE_PARAMETER_NAMES
from XRayCTRegistrationLib.registry import check_method_model
from XRayCTRegistrationSlicerLib import about, dicom, display, images, registration_options, training_process
from XRayCTRegistrationSlicerLib.dependencies import ensureDependencies
from XRayCTRegistrationSlicerLib.images import DICOM_SDD_ATTRIBUTE, DICOM_SPACING_ATTRIBUTE, GEOMETRY_ATTRIBUTE
from XRayCTRegistrationSlicerLib.parameters import RegisteredMethod, modelPath, poseParameters, registrationMethods
from XRayCTRegistrationSlicerLib.registration_options import RegistrationOutput, libraryInputs
from XRayCTRegistrationSlicerLib.rendering import DEVICES, DrrRenderer, resolveDevice, samplesPerRay
from XRayCTRegistrationSlicerLib.selftest import SelfTestMixin
from XRayCTRegistrationSlicerLib.training_process import InitialiserCache, TrainingOutcome, TrainingProcess

if TYPE_CHECKING:
    from XRayCTRegistrationLib.geometry import Camera, ReferenceView
    from XRayCTRegistrationLib.volume import Volume
    from XRayCTRegistrationSlicerLib.registration_options import RegistrationOptions


PREVIEW_SIZE = 128
"""Longest side, in pixels, of the DRR rendered while a pose slider moves."""

FINAL_SIZE = 512
"""Longest side, in pixels, of the DRR rendered after a registration (at most the X-ray's size)."""

PREVIEW_DELAY_MS = 40
"""Slider throttle: at most one preview render is started per this many milliseconds."""

PHYSICS_TRAINING_KVP = (80.0, 120.0)
"""Tube voltages (kV) of the physics X-rays a training draws from when "Train on physics X-rays" is checked."""


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
        self.parent.contributors = list(about.CONTRIBUTORS)
        about.checkSlicerVersion(slicer.app.majorVersion, slicer.app.minorVersion)
        from XRayCTRegistrationSlicerLib.sampledata import registerSampleData
        slicer.app.connect("startupCompleted()", registerSampleData)  # the sample CTs in the Sample Data module
        self.parent.helpText = _("""
Registers an intra-operative X-ray image to a pre-operative CT: finds the pose of the C-arm that sees
the CT as in the X-ray, renders the CT as a digitally reconstructed radiograph (DRR) and shows it fused
over the X-ray, placed at its detector position in 3D. Load the radiograph with the DICOM module (its
geometry and C-arm angles are read from the DICOM database), press Initialise from DICOM or move the
pose sliders until the DRR roughly matches, then press Register. Or train a patient-specific
initialiser once for this CT and geometry (Train initialiser); Register then starts from its prediction.
""") + f'<p>{_("Documentation")}: <a href="{about.DOCUMENTATION_URL}">{about.DOCUMENTATION_URL}</a></p>'
        self.parent.acknowledgementText = _("""
Intensity-based refinement optimises image similarity (NCC, gradient correlation, NGI) through a
differentiable DRR renderer. The learned initialisers and the two-stage design follow these papers:
""") + "<ul>" + "".join(f"<li>{paper}</li>" for paper in about.PAPERS) + "</ul>"


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
    x0, y0: principal point (mm): the detector centre's offset from the source's perpendicular (CONVENTIONS.md); 0 takes
        the X-ray's geometry attribute's value, if any.
    rx, ry, rz, tx, ty, tz: pose parameters (degrees, mm) relative to the CT's AP reference view.
    method: registration method (a name of :func:`registrationMethods`, checked by the logic); device: see DEVICES.
    finishFit: end an intensity method with a level on local NCC + intensity fit (``register(finish_fit=True)``).
    outputTransform: receives world_from_camera (matrix to parent).
    outputDrr: receives the DRR at the current pose, placed on the detector.
    fusionOpacity: opacity of the DRR over the X-ray in the fusion view.
    initialiserModel: model file of the learned initialiser (written by Train initialiser, read by
        Initialise and Register); empty or "." means none. refinementModel: model file of a learned refinement method.
    initialiserMethod: kind of initialiser trained (see INITIALISER_METHODS).
    trainingMinutes: training time budget, minutes.
    trainOnPhysicsXrays: train on physics X-rays (PHYSICS_TRAINING_KVP, ``xrayctreg train --physics-kvp``).
    secondXrayVolume, relativeTransform, secondSdd, secondRowSpacing, secondColSpacing, secondX0, secondY0,
    structureSegmentation, structureSegments, xrayMaskThreshold, xrayMaskLow, xrayMaskHigh, xrayCrop*, xrayMaskVolume:
    a second view, structures and the X-ray mask (see ``XRayCTRegistrationSlicerLib.registration_options``).
    secondOutputDrr: receives the second view's DRR after a two-view registration, placed on its detector.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    xrayKind: Annotated[str, Choice(list(XRAY_KINDS))] = "auto"
    sdd: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    rowSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    colSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    x0: Annotated[float, WithinRange(-500.0, 500.0)] = 0.0
    y0: Annotated[float, WithinRange(-500.0, 500.0)] = 0.0
    rx: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    ry: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    rz: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
    tx: Annotated[float, WithinRange(-300.0, 300.0)] = 0.0
    ty: Annotated[float, WithinRange(-300.0, 300.0)] = 0.0
    tz: Annotated[float, WithinRange(-300.0, 300.0)] = 0.0
    method: Annotated[str, RegisteredMethod()] = DEFAULT_METHOD
    finishFit: bool = False
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    outputTransform: vtkMRMLLinearTransformNode
    outputDrr: vtkMRMLScalarVolumeNode
    fusionOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    initialiserModel: pathlib.Path
    refinementModel: pathlib.Path
    initialiserMethod: Annotated[str, Choice(list(INITIALISER_METHODS))] = "regressor"
    trainingMinutes: Annotated[float, WithinRange(0.1, 1440.0)] = 15.0
    trainOnPhysicsXrays: bool = False
    secondXrayVolume: vtkMRMLScalarVolumeNode
    relativeTransform: vtkMRMLLinearTransformNode
    secondSdd: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    secondRowSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    secondColSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    secondX0: Annotated[float, WithinRange(-500.0, 500.0)] = 0.0
    secondY0: Annotated[float, WithinRange(-500.0, 500.0)] = 0.0
    secondOutputDrr: vtkMRMLScalarVolumeNode
    structureSegmentation: vtkMRMLSegmentationNode
    structureSegments: str = ""
    xrayMaskThreshold: bool = False
    xrayMaskLow: float = 0.0
    xrayMaskHigh: float = 0.0
    xrayCropTop: Annotated[int, WithinRange(0, 4096)] = 0
    xrayCropBottom: Annotated[int, WithinRange(0, 4096)] = 0
    xrayCropLeft: Annotated[int, WithinRange(0, 4096)] = 0
    xrayCropRight: Annotated[int, WithinRange(0, 4096)] = 0
    xrayMaskVolume: vtkMRMLScalarVolumeNode


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
        self._previewNodes = (None, None)  # (pose transform, X-ray display volume) of the live preview
        self._training = TrainingProcess(self._onTrainProgress, self._onTrainFinished)

    def setup(self) -> None:
        """Build the GUI from the .ui file and connect it."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XRayCTRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = XRayCTRegistrationLogic()
        self.ui.methodComboBox.clear()
        for name in registrationMethods():  # every registered method, also those added after the .ui was made
            self.ui.methodComboBox.addItem(name)

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
        self.ui.initialiseFromDicomButton.connect("clicked(bool)", self.onInitialiseFromDicom)
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
        self._training.stop()
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
        training = self._training.running
        ready = bool(p and p.ctVolume and p.xrayVolume) and not self._busy and not training
        for button in (self.ui.refineButton, self.ui.registerButton, self.ui.trainButton):
            button.enabled = ready
        hasModel = bool(p and modelPath(p) and os.path.isfile(modelPath(p)))
        self.ui.initialiseButton.enabled = ready and hasModel
        self.ui.initialiseFromDicomButton.enabled = ready
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
        known = self._previewNodes if self._previewNodes[1] and self._previewNodes[1].GetScene() else (None, None)
        try:
            drr, self._previewNodes = self.logic.updatePosePreview(
                p.ctVolume, p.xrayVolume, poseParameters(p), p.outputDrr, known, sdd=p.sdd, rowSpacing=p.rowSpacing,
                colSpacing=p.colSpacing, x0=p.x0, y0=p.y0)
        except ValueError as e:
            slicer.util.showStatusMessage(str(e), 3000)
            return
        if p.outputDrr is None or known[1] is None:
            p.outputDrr = drr
            self.logic.showFusion(self._previewNodes[1], drr, p.fusionOpacity)

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
        for name in ("sdd", "rowSpacing", "colSpacing", "x0", "y0"):
            if getattr(p, name) == 0.0 and name in tags:
                setattr(p, name, tags[name])

    def onFusionOpacityChanged(self, value) -> None:
        """Change the DRR's opacity over the X-ray."""
        p = self._parameterNode
        if p and p.xrayVolume and p.outputDrr:
            self._showFusions(value)

    def onShowFusion(self) -> None:
        """Show the X-ray and DRR fused in the red slice view (the second view's in the yellow one)."""
        with slicer.util.tryWithErrorDisplay(_("Failed to show the fusion."), waitCursor=True):
            self._showFusions(self._parameterNode.fusionOpacity)

    def _showFusions(self, opacity: float) -> None:
        """The first view's fusion in the red slice view; after a two-view registration the second's in yellow."""
        display.showViewFusions(self.logic, self._parameterNode, self._previewNodes, opacity)

    # -- registration ---------------------------------------------------------------------------
    def onInitialise(self) -> None:
        """Set the pose sliders to the pose predicted by the initialiser model."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Initialisation failed."), waitCursor=True):
            if not ensureDependencies(askConfirmation=True):
                return
            params = self.logic.initialise(p.ctVolume, p.xrayVolume, modelPath(p), xrayKind=p.xrayKind, sdd=p.sdd,
                                           rowSpacing=p.rowSpacing, colSpacing=p.colSpacing, x0=p.x0, y0=p.y0)
            self._setPose(params)
            self.ui.resultLabel.text = _("Initialised with {model}.").format(model=os.path.basename(modelPath(p)))
            self.onPoseChanged()

    def onInitialiseFromDicom(self) -> None:
        """Set the pose sliders to the C-arm angles of the X-ray's DICOM attributes."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Initialisation from DICOM failed."), waitCursor=True):
            if not ensureDependencies(askConfirmation=True):
                return
            self._setPose(self.logic.initialiseFromDicom(p.ctVolume, p.xrayVolume, p.sdd, p.rowSpacing,
                                                         p.colSpacing, x0=p.x0, y0=p.y0))
            self.ui.resultLabel.text = _("Initialised from the X-ray's C-arm angles.")
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
        if self._training.running:
            return
        with slicer.util.tryWithErrorDisplay(_("Training failed to start."), waitCursor=True):
            if not ensureDependencies(askConfirmation=True):
                return
            model = modelPath(p) or self.defaultModelPath()
            os.makedirs(os.path.dirname(os.path.abspath(model)), exist_ok=True)
            folder = os.path.join(slicer.app.temporaryPath, "XRayCTRegistration", "training")
            ctPath, geometryPath = self.logic.writeTrainingInputs(p.ctVolume, p.xrayVolume, folder, p.sdd,
                                                                  p.rowSpacing, p.colSpacing, x0=p.x0, y0=p.y0)
            command = self.logic.trainCommand(ctPath, geometryPath, model, method=p.initialiserMethod,
                                              timeBudgetS=60.0 * p.trainingMinutes, resume=os.path.isfile(model),
                                              physicsKvp=PHYSICS_TRAINING_KVP if p.trainOnPhysicsXrays else None)
            logging.info(f"Training the initialiser: {self.logic.commandText(command)}")
            self.ui.progressBar.value = 0
            self.ui.progressBar.format = _("Training") + " %p%"
            self.ui.progressBar.setVisible(True)
            self.ui.resultLabel.text = _("Training the initialiser ({minutes:g} min)...").format(
                minutes=p.trainingMinutes)
            try:
                self._training.start(command, self.logic.trainEnvironment(), model)
            finally:
                self.ui.progressBar.setVisible(self._training.running)
                self._updateButtons()

    def _onTrainProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.progressBar.format = _("Training") + f" %p% {message}"

    def _onTrainFinished(self, outcome: TrainingOutcome) -> None:
        """The training process ended: use the model, or say why not."""
        self.ui.progressBar.setVisible(False)
        self._updateButtons()
        model = outcome.modelPath
        if outcome.state == "cancelled":
            self.ui.resultLabel.text = (_("Training cancelled; its last checkpoint {model} is kept: press Train "
                                          "initialiser again to continue it.").format(model=model)
                                        if outcome.checkpointKept else _("Training cancelled before its first "
                                                                         "checkpoint."))
            return
        if outcome.state == "failed":
            self.ui.resultLabel.text = _("Training failed.")
            slicer.util.errorDisplay(_("Training the initialiser failed (exit code {code}).").format(
                code=outcome.exitCode), detailedText="\n".join(outcome.log))
            return
        self._parameterNode.initialiserModel = pathlib.Path(model)
        self.ui.resultLabel.text = _("Initialiser trained: {model}").format(model=model) + (
            f"\n{outcome.summary}" if outcome.summary else "")
        self._updateButtons()

    def onRefine(self) -> None:
        """Refine the sliders' pose."""
        self._runRegistration(_("Refining"))

    def onRegister(self) -> None:
        """Register: initialise with the model when one is set (else from the sliders' pose), then refine."""
        self._runRegistration(_("Registering"), initialiserModel=modelPath(self._parameterNode) or None)

    def onCancel(self) -> None:
        """Ask the running registration to stop, or kill the running training (its checkpoint stays)."""
        if self._training.running:
            self.ui.resultLabel.text = _("Cancelling the training...")
            self._training.cancel()
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
                    rowSpacing=p.rowSpacing, colSpacing=p.colSpacing, x0=p.x0, y0=p.y0,
                    outputTransform=p.outputTransform, device=resolveDevice(p.device),
                    outputDrr=p.outputDrr, progress=self._progress, shouldStop=lambda: self._cancelRequested,
                    initialiserModel=initialiserModel, refinementModel=modelPath(p, "refinementModel") or None,
                    registrationOptions=registration_options.optionsFromParameterNode(p),
                    **({"finish_fit": True} if p.finishFit else {}))
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
                if output.secondDrrNode is not None:
                    p.secondOutputDrr = output.secondDrrNode
                self._setPose(output.params)
            self._showFusions(p.fusionOpacity)
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


class XRayCTRegistrationLogic(ScriptedLoadableModuleLogic):
    """Nodes in, nodes out; no Qt, no dialogs.

    Errors (bad input) are ``ValueError`` subclasses (the library's ``InputError``) with one line
    naming the node and the problem; they are raised before the scene is modified.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._renderer = DrrRenderer()
        self._volumeCache: dict = {}
        self._initialisers = InitialiserCache()

    def getParameterNode(self) -> XRayCTRegistrationParameterNode:
        """The module's parameter node, typed."""
        return XRayCTRegistrationParameterNode(super().getParameterNode())

    # -- nodes -> library ---------------------------------------------------------------------
    @staticmethod
    def worldFromNode(node) -> np.ndarray:
        """4x4 matrix from the node's local (parent) frame to world RAS; raises for non-linear transforms."""
        parent = node.GetParentTransformNode()
        if parent is None:
            return np.eye(4)
        if not parent.IsTransformToWorldLinear():
            raise InputError(
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

        what = self._checkImageNode(ctNode, "CT volume", xray=False)
        return Volume(images.finiteFloat32(slicer.util.arrayFromVolume(ctNode), what), self.ijkToWorld(ctNode))

    @staticmethod
    def _checkImageNode(node, label: str, xray: bool) -> str:
        """Refuse a missing node or unusable image data (see ``images.checkImageData``).

        Returns how messages name the node, e.g. ``CT volume 'chest'``.
        """
        if node is None:
            raise InputError(f"{label}: none selected")
        what = f"{label} '{node.GetName()}'"
        image = node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise InputError(f"{what}: holds no image data")
        images.checkImageData(what, image.GetDimensions(), image.GetNumberOfScalarComponents(), xray)
        return what

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
        what = self._checkImageNode(xrayNode, "X-ray volume", xray=True)
        return images.finiteFloat32(slicer.util.arrayFromVolume(xrayNode)[0], what)  # [rows, cols]

    def attenuationImageFromNode(self, xrayNode, kind: str = "auto") -> tuple[np.ndarray, str]:
        """The X-ray as the library's attenuation-bright image ``[rows, cols]`` (float32), and what was done.

        ``kind`` is one of ``XRAY_KINDS`` (see ``XRayCTRegistrationSlicerLib.images.attenuationImage``).
        The node itself is not changed.
        """
        if kind not in XRAY_KINDS:
            raise InputError(f"X-ray kind: {kind!r} is not one of {', '.join(XRAY_KINDS)}")
        return images.attenuationImage(self.xrayImageFromNode(xrayNode), kind, xrayNode.GetName())

    @staticmethod
    def geometryFromAttributes(xrayNode) -> dict[str, float]:
        """Geometry from the X-ray's tags: any of sdd, rowSpacing, colSpacing (mm), and x0, y0, rows, cols.

        A geometry sidecar attribute (``images.GEOMETRY_ATTRIBUTE``) comes first, then the node attributes
        ``DICOM.DistanceSourceToDetector`` and ``DICOM.ImagerPixelSpacing``; what they lack is read from Slicer's
        DICOM database through the node's ``DICOM.instanceUIDs`` (a volume loaded with the DICOM module), with the
        rules of the library's X-ray reader.
        """
        values = images.geometryFromAttributeValues(xrayNode.GetAttribute(DICOM_SDD_ATTRIBUTE),
                                                    xrayNode.GetAttribute(DICOM_SPACING_ATTRIBUTE),
                                                    xrayNode.GetName())
        sidecar = images.geometryFromSidecarAttribute(xrayNode.GetAttribute(GEOMETRY_ATTRIBUTE), xrayNode.GetName())
        return {**dicom.geometryFromDatabase(xrayNode, log=True)[0], **values, **sidecar}

    def initialiseFromDicom(self, ctNode, xrayNode, sdd: float = 0.0, rowSpacing: float = 0.0,
                            colSpacing: float = 0.0, *, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
        """Pose parameters ``[6]`` (degrees, mm, relative to :meth:`referenceView`) of the X-ray's C-arm angles.

        The angles and DistanceSourceToPatient are read from Slicer's DICOM database (``dicom.carmPositionOfNode``)
        and placed about the CT's centre by ``carm.world_from_carm`` (CONVENTIONS.md). The scene is not changed.
        """
        from XRayCTRegistrationLib.carm import world_from_carm

        position = dicom.carmPositionOfNode(xrayNode)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing, x0=x0, y0=y0)
        reference = self.referenceView(self.attenuationVolume(ctNode), camera)
        return reference.params(world_from_carm(position, reference.isocenter, camera.sdd))

    def cameraFromNode(self, xrayNode, sdd: float = 0.0, rowSpacing: float = 0.0, colSpacing: float = 0.0, *,
                       x0: float = 0.0, y0: float = 0.0) -> Camera:
        """Camera of the X-ray: size from the image, geometry from the arguments (mm) or, where 0, from DICOM tags.

        ``x0``, ``y0``: the principal point (mm, CONVENTIONS.md), as given.
        """
        given = {"sdd": sdd, "rowSpacing": rowSpacing, "colSpacing": colSpacing, "x0": x0, "y0": y0}
        return images.cameraFromValues(self.xrayImageFromNode(xrayNode).shape, given,
                                       self.geometryFromAttributes(xrayNode), xrayNode.GetName())

    @staticmethod
    def referenceView(volume: Volume, camera: Camera) -> ReferenceView:
        """The AP reference view of the CT that pose parameters are relative to."""
        from XRayCTRegistrationLib.geometry import ReferenceView

        return ReferenceView.ap(volume.center, camera.sdd)

    def poseFromParameters(self, ctNode, xrayNode, params: Sequence[float], sdd: float = 0.0,
                           rowSpacing: float = 0.0, colSpacing: float = 0.0, *, x0: float = 0.0,
                           y0: float = 0.0) -> np.ndarray:
        """``world_from_camera`` (4x4) of pose parameters (degrees, mm) for this CT and X-ray."""
        return self._poseInputs(ctNode, xrayNode, params, sdd, rowSpacing, colSpacing, x0=x0, y0=y0)[2]

    def _poseInputs(self, ctNode, xrayNode, params: Sequence[float], sdd: float, rowSpacing: float,
                    colSpacing: float, *, x0: float = 0.0, y0: float = 0.0) -> tuple:
        """``(attenuation volume, camera, world_from_camera)`` of pose parameters (degrees, mm)."""
        volume = self.attenuationVolume(ctNode)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing, x0=x0, y0=y0)
        return volume, camera, self.referenceView(volume, camera).pose(self._checkParams(params))

    _checkParams = staticmethod(images.checkParams)

    # -- detector placement -------------------------------------------------------------------
    def placeOnDetector(self, volumeNode, camera: Camera, worldFromCamera: np.ndarray) -> None:
        """Set a single-slice volume node's geometry so it lies on the detector at the pose (world RAS)."""
        ijkToWorld = np.asarray(worldFromCamera, dtype=np.float64) @ camera.detector_ijk_to_camera()
        ijkToParent = np.linalg.inv(self.worldFromNode(volumeNode)) @ ijkToWorld
        volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToParent))

    # -- rendering ----------------------------------------------------------------------------
    previewCamera = staticmethod(images.previewCamera)

    def renderDrr(self, ctNode, xrayNode, params: Sequence[float], drrNode=None, sdd: float = 0.0,
                  rowSpacing: float = 0.0, colSpacing: float = 0.0, maxSize: int | None = PREVIEW_SIZE,
                  placeXray: bool = True, *, x0: float = 0.0, y0: float = 0.0):
        """Render the DRR of the CT at pose parameters (degrees, mm) into ``drrNode`` (created when None).

        The DRR node is a single-slice volume on the detector plane (the X-ray's plane, with pixels
        ``maxSize`` times coarser when downsampled); with ``placeXray`` the X-ray node is moved there too.
        Returns the DRR node.
        """
        volume, camera, pose = self._poseInputs(ctNode, xrayNode, params, sdd, rowSpacing, colSpacing, x0=x0, y0=y0)
        return self._renderAtPose(volume, camera, pose, drrNode, xrayNode, maxSize, placeXray)

    def updatePosePreview(self, ctNode, xrayNode, params: Sequence[float], drrNode=None, previewNodes=(None, None),
                          maxSize: int | None = PREVIEW_SIZE, **geometry) -> tuple:
        """Live preview: the DRR, and the X-ray shown under a pose transform (the X-ray node is not changed).

        ``previewNodes``: ``(transform, X-ray display volume)`` of a previous call (see ``display.previewNodes``);
        ``geometry``: sdd, rowSpacing, colSpacing, x0, y0 (mm). Returns ``(drrNode, previewNodes)``.
        """
        geometry = {"sdd": 0.0, "rowSpacing": 0.0, "colSpacing": 0.0, **geometry}
        volume, camera, pose = self._poseInputs(ctNode, xrayNode, params, **geometry)
        drrNode = self._renderAtPose(volume, camera, pose, drrNode, xrayNode, maxSize, placeXray=False)
        nodes = display.previewNodes(xrayNode, camera.detector_ijk_to_camera(), *previewNodes)
        self.setTransformFromPose(nodes[0], pose)
        return drrNode, nodes

    def _renderAtPose(self, volume: Volume, camera: Camera, pose: np.ndarray, drrNode, xrayNode,
                      maxSize: int | None, placeXray: bool):
        """Render at a ``world_from_camera`` pose, then write the DRR node (and move the X-ray)."""
        if drrNode is not None and not isinstance(drrNode, slicer.vtkMRMLScalarVolumeNode):
            raise InputError(f"output DRR '{drrNode.GetName()}': must be a scalar volume")
        renderCamera = self.previewCamera(camera, maxSize)
        drr = self._renderer.render(volume, renderCamera, pose, samplesPerRay(volume, maxSize, PREVIEW_SIZE))
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
                      maxSize: int | None = FINAL_SIZE, *, x0: float = 0.0, y0: float = 0.0):
        """Write the pose (transform), the DRR and the detector placement for pose parameters (degrees, mm).

        Returns ``(transformNode, drrNode)``; output nodes that are None are created.
        """
        self.checkOutputNodes(outputTransform, outputDrr)
        volume, camera, pose = self._poseInputs(ctNode, xrayNode, params, sdd, rowSpacing, colSpacing, x0=x0, y0=y0)
        return self._writeOutputs(volume, camera, pose, xrayNode, outputTransform, outputDrr, maxSize)

    @staticmethod
    def checkOutputNodes(outputTransform, outputDrr) -> None:
        """Refuse output nodes of the wrong kind before any work (the scene is not changed)."""
        if outputTransform is not None and not isinstance(outputTransform, slicer.vtkMRMLLinearTransformNode):
            raise InputError(f"output transform '{outputTransform.GetName()}': must be a linear transform")
        if outputDrr is not None and not isinstance(outputDrr, slicer.vtkMRMLScalarVolumeNode):
            raise InputError(f"output DRR '{outputDrr.GetName()}': must be a scalar volume")

    def _writeOutputs(self, volume: Volume, camera: Camera, pose: np.ndarray, xrayNode, outputTransform,
                      outputDrr, maxSize: int | None):
        self.checkOutputNodes(outputTransform, outputDrr)
        drrNode = self._renderAtPose(volume, camera, pose, outputDrr, xrayNode, maxSize, placeXray=True)
        if outputTransform is None:
            scene = xrayNode.GetScene()
            outputTransform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                                      scene.GenerateUniqueName("X-ray pose"))
        self.setTransformFromPose(outputTransform, pose)
        return outputTransform, drrNode

    # -- registration -------------------------------------------------------------------------
    def register(self, ctNode, xrayNode, initialParams: Sequence[float], method: str = DEFAULT_METHOD,
                 xrayKind: str = "auto", sdd: float = 0.0, rowSpacing: float = 0.0, colSpacing: float = 0.0,
                 outputTransform=None, outputDrr=None, progress: Callable[[float, str], None] | None = None,
                 shouldStop: Callable[[], bool] | None = None, initialiserModel: str | os.PathLike | None = None,
                 x0: float = 0.0, y0: float = 0.0, registrationOptions: RegistrationOptions | None = None,
                 refinementModel: str | os.PathLike | None = None, **options) -> RegistrationOutput:
        """Register the X-ray to the CT from initial pose parameters (degrees, mm) and write the outputs.

        Runs the library's ``pipeline.register_xray`` in this process: with ``initialiserModel`` (a model
        file from ``xrayctreg train``) the start is the model's prediction (``initialParams`` is then
        ignored, see :meth:`initialise`), else the given parameters; then ``method`` (any registered
        refinement method, :func:`registrationMethods`; one that needs a trained model reads ``refinementModel``,
        a model file from ``xrayctreg train``) refines it. ``progress(fraction, message)`` is
        called as it goes and ``shouldStop()`` is polled to cancel. ``xrayKind`` (``XRAY_KINDS``) says
        how the X-ray's grey levels become attenuation (see :meth:`attenuationImageFromNode`; what was
        done is logged and returned). ``registrationOptions`` add a second view, structures and an X-ray mask
        (``registration_options.RegistrationOptions``). ``options`` go to the refinement unchanged. On success the
        output transform gets ``world_from_camera``, the DRR is rendered at the result (at most ``FINAL_SIZE``
        pixels a side) and the X-ray and DRR are placed on the detector; with a second view, its DRR (at
        ``world_from_camera @ camera0_from_camera1``) goes into ``secondOutputDrr`` and it and the second X-ray are
        placed on the second detector. When cancelled the scene is not changed; when the registration fails a
        RuntimeError is raised.
        """
        from XRayCTRegistrationLib.geometry import source_inside_volume

        check_method_model(method, refinementModel, "refinement model")  # unknown method, missing model: no work
        options = {**options, "model": str(refinementModel)} if refinementModel else options
        self.checkOutputNodes(outputTransform, outputDrr)
        volume, image, camera, conversion = self._registrationInputs(ctNode, xrayNode, xrayKind, sdd, rowSpacing,
                                                                     colSpacing, x0=x0, y0=y0)
        views, extra = libraryInputs(self, ctNode, xrayNode, image, camera, xrayKind, registrationOptions)
        reference = self.referenceView(volume, camera)
        init = self.loadInitialiser(initialiserModel) if initialiserModel else reference.pose(
            self._checkParams(initialParams))
        if not initialiserModel and source_inside_volume(volume, init):
            raise InputError(f"initial pose: the X-ray source lies inside CT volume '{ctNode.GetName()}'; "
                             "move it out (tz, or the sliders) before registering")
        out = self._runPipeline(ctNode, volume, image, camera, init, reference, bool(initialiserModel), method=method,
                                progress=progress, should_stop=shouldStop, views=views, **{**extra, **options})
        result, params = out.result, reference.params(out.world_from_camera)
        startParams = reference.params(out.initialisation.world_from_camera)
        if shouldStop is not None and shouldStop():
            return RegistrationOutput(result, params, None, None, cancelled=True, xrayConversion=conversion,
                                      initialParams=startParams, pipeline=out)
        if not result.success:
            raise RuntimeError(_("Registration did not succeed: {message}").format(message=result.message))
        transformNode, drrNode = self._writeOutputs(volume, camera, out.world_from_camera, xrayNode,
                                                    outputTransform, outputDrr, FINAL_SIZE)
        secondDrr, view = None, views[0] if views else None
        if view is not None:  # the second view's DRR at its pose, and the second X-ray, placed on its detector
            secondDrr = self._renderAtPose(volume, view.camera, out.world_from_camera @ view.camera0_from_camera,
                                           registrationOptions.secondOutputDrr, registrationOptions.secondXray,
                                           FINAL_SIZE, placeXray=True)
        return RegistrationOutput(result, params, transformNode, drrNode, xrayConversion=conversion,
                                  initialParams=startParams, pipeline=out, secondDrrNode=secondDrr)

    def _registrationInputs(self, ctNode, xrayNode, xrayKind: str, sdd: float, rowSpacing: float,
                            colSpacing: float, *, x0: float = 0.0, y0: float = 0.0) -> tuple:
        """``(attenuation volume, attenuation-bright X-ray, camera, what was done to the X-ray)``, all checked."""
        volume = self.attenuationVolume(ctNode)
        image, conversion = self.attenuationImageFromNode(xrayNode, xrayKind)
        camera = self.cameraFromNode(xrayNode, sdd, rowSpacing, colSpacing, x0=x0, y0=y0)
        logging.info(f"X-ray '{xrayNode.GetName()}': {conversion}")
        return volume, image, camera, conversion

    def _runPipeline(self, ctNode, volume: Volume, image: np.ndarray, camera: Camera, init, reference: ReferenceView,
                     withModel: bool, **kwargs):
        """The library's ``pipeline.register_xray``; the CT in HU is read from the node only for a model's check."""
        from XRayCTRegistrationLib.pipeline import register_xray

        ct = self.volumeFromNode(ctNode) if withModel else None
        return register_xray(ct, image, camera, init, volume_mu=volume, reference=reference,
                             ct_name=f"CT volume '{ctNode.GetName()}'", **kwargs)

    # -- learned initialiser ------------------------------------------------------------------
    def loadInitialiser(self, modelPath: str | os.PathLike):
        """The library's ``Initialiser`` of a model file; cached until the file changes (path, mtime, size)."""
        return self._initialisers.load(modelPath)

    def initialise(self, ctNode, xrayNode, modelPath: str | os.PathLike, xrayKind: str = "auto", sdd: float = 0.0,
                   rowSpacing: float = 0.0, colSpacing: float = 0.0, *, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
        """Pose parameters ``[6]`` (degrees, mm, relative to this logic's AP reference view) predicted by a model.

        The model must have been trained on this CT (same HU voxels and geometry) and for this X-ray's
        detector geometry, else an ``InputError`` says so. Its prediction (``world_from_camera``) is
        converted to the parameters of :meth:`referenceView`, the view the sliders use, so the result
        is right even when the model was trained with another reference view. The scene is not changed.
        """
        model = self.loadInitialiser(modelPath)
        volume, image, camera, _conversion = self._registrationInputs(ctNode, xrayNode, xrayKind, sdd, rowSpacing,
                                                                      colSpacing, x0=x0, y0=y0)
        reference = self.referenceView(volume, camera)
        out = self._runPipeline(ctNode, volume, image, camera, model, reference, True, refine=False)
        logging.info(f"{out.initialisation.message}: NCC {out.initialisation.similarity:.4f}")
        return reference.params(out.world_from_camera)

    def writeTrainingInputs(self, ctNode, xrayNode, folder: str | os.PathLike, sdd: float = 0.0,
                            rowSpacing: float = 0.0, colSpacing: float = 0.0, *, x0: float = 0.0,
                            y0: float = 0.0) -> tuple[str, str]:
        """Write the CT (HU, ``ct.nrrd``) and the X-ray's detector geometry (``geometry.json``) for training.

        The folder is created when needed. Returns ``(ctPath, geometryPath)``. The CT on disk holds the
        node's voxels as float32 with its world geometry (parent transforms included), so a model trained
        on it matches the node (see :meth:`initialise`).
        """
        from XRayCTRegistrationLib.training import write_training_inputs

        if not folder:
            raise InputError("training folder: empty path")
        return write_training_inputs(self.volumeFromNode(ctNode), self.cameraFromNode(
            xrayNode, sdd, rowSpacing, colSpacing, x0=x0, y0=y0), folder)

    # -- fusion -------------------------------------------------------------------------------
    sliceToRASForImage = staticmethod(images.sliceToRASForImage)
    fieldOfViewForImage = staticmethod(images.fieldOfViewForImage)

    def showFusion(self, xrayNode, drrNode, opacity: float = 0.5, sliceNode=None) -> None:
        """Show the X-ray as background and the DRR as foreground (at ``opacity``) in a slice view (red).

        The slice plane is turned to the X-ray's plane and fitted to the image.
        """
        if xrayNode is None or drrNode is None:
            raise InputError("fusion: needs an X-ray and a DRR")
        if not 0.0 <= opacity <= 1.0:
            raise InputError(f"fusion opacity: must be within [0, 1], got {opacity}")
        dims = self.xrayImageFromNode(xrayNode).shape[::-1]  # (cols, rows)
        display.showFusion(xrayNode, drrNode, self.ijkToWorld(xrayNode), dims, opacity, sliceNode)

    # -- training out of process (XRayCTRegistrationSlicerLib.training_process) ----------------
    pythonExecutable = staticmethod(training_process.pythonExecutable)
    trainCommand = staticmethod(training_process.trainCommand)
    commandText = staticmethod(training_process.commandText)
    parseProgressLine = staticmethod(training_process.parseProgressLine)

    @staticmethod
    def trainEnvironment() -> dict[str, str]:
        """Environment additions for the training process: the library's folder on PYTHONPATH."""
        return training_process.trainEnvironment(os.path.dirname(os.path.abspath(__file__)))


#
# Test
#


class XRayCTRegistrationTest(SelfTestMixin, ScriptedLoadableModuleTest):
    """Self-test for Slicer's test runner (see ``XRayCTRegistrationSlicerLib.selftest``).

    A dependency-free part (module, GUI, refusals) runs everywhere; a render and a full registration run where
    torch and numba are installed.
    """

    logicClass = XRayCTRegistrationLogic
