"""Showing the fusion in a slice view: the X-ray as background, the DRR as foreground, the plane fitted."""

from __future__ import annotations

import numpy as np
from XRayCTRegistrationLib.errors import InputError

from .images import fieldOfViewForImage, sliceToRASForImage

SECOND_VIEW_SLICE_NODE = "vtkMRMLSliceNodeYellow"
"""The slice view that shows the second view's fusion after a two-view registration (the first view's: red)."""


def compositeNodeForSliceNode(sliceNode):
    """The slice composite node of a slice view (same layout name), None when there is none."""
    scene = sliceNode.GetScene()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == sliceNode.GetLayoutName():
            return node
    return None


def showFusion(xrayNode, drrNode, ijkToWorld: np.ndarray, dims, opacity: float = 0.5, sliceNode=None) -> None:
    """Show ``xrayNode`` as background and ``drrNode`` as foreground (at ``opacity``) in a slice view (red).

    ``ijkToWorld`` (4x4, world RAS) and ``dims`` (cols, rows) are the X-ray's; the slice plane is turned
    to the X-ray's plane and fitted to the image.
    """
    import slicer

    scene = xrayNode.GetScene()
    sliceNode = sliceNode or scene.GetNodeByID("vtkMRMLSliceNodeRed")
    if sliceNode is None:
        raise InputError("fusion: the scene has no red slice view")
    compositeNode = compositeNodeForSliceNode(sliceNode)
    if compositeNode is None:
        raise InputError(f"fusion: slice view '{sliceNode.GetLayoutName()}' has no composite node")
    for node in (xrayNode, drrNode):
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().AutoWindowLevelOn()
    with slicer.util.NodeModify(compositeNode):
        compositeNode.SetBackgroundVolumeID(xrayNode.GetID())
        compositeNode.SetForegroundVolumeID(drrNode.GetID())
        compositeNode.SetForegroundOpacity(float(opacity))
    with slicer.util.NodeModify(sliceNode):
        sliceNode.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(sliceToRASForImage(ijkToWorld, dims)))
        sliceNode.SetFieldOfView(*fieldOfViewForImage(ijkToWorld, dims, sliceNode.GetDimensions()))
        sliceNode.UpdateMatrices()


def previewNodes(xrayNode, detectorIjkToCamera: np.ndarray, transformNode=None, previewNode=None) -> tuple:
    """The nodes that show the X-ray at a previewed pose without changing the X-ray node.

    ``previewNode`` is a scalar volume that shares the X-ray node's image data (no copy) with IJK-to-camera
    ``detectorIjkToCamera`` (4x4, the detector in the camera frame), placed under ``transformNode``, whose
    matrix to parent is then the pose ``world_from_camera``: a slider move changes that matrix only.
    Missing nodes are created. Returns ``(transformNode, previewNode)``.
    """
    import slicer

    scene = xrayNode.GetScene()
    if transformNode is None:
        transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                                scene.GenerateUniqueName(f"{xrayNode.GetName()} preview pose"))
    if previewNode is None:
        previewNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                              scene.GenerateUniqueName(f"{xrayNode.GetName()} preview"))
    with slicer.util.NodeModify(previewNode):
        if previewNode.GetImageData() is not xrayNode.GetImageData():
            previewNode.SetAndObserveImageData(xrayNode.GetImageData())
        previewNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(detectorIjkToCamera)))
        previewNode.SetAndObserveTransformNodeID(transformNode.GetID())
    return transformNode, previewNode


def shownXray(previewNodes: tuple, xrayNode):
    """The X-ray as the fusion shows it: the live preview's display volume while it is in the scene, else the node.

    ``previewNodes`` is the ``(transform, display volume)`` pair of :func:`previewNodes`.
    """
    preview = previewNodes[1]
    return preview if preview is not None and preview.GetScene() is not None else xrayNode


def showViewFusions(logic, parameterNode, previewNodes: tuple, opacity: float) -> None:
    """The Show fusion button: each view's X-ray under its DRR, as the module's parameter node holds them.

    The first view (``xrayVolume``, or its live-preview display volume, under ``outputDrr``) goes to the red slice
    view; after a two-view registration (``secondXrayVolume`` and ``secondOutputDrr`` set) the second view goes to
    the yellow one (:data:`SECOND_VIEW_SLICE_NODE`), when the layout has it. ``logic`` is the module's logic.
    """
    p = parameterNode
    logic.showFusion(shownXray(previewNodes, p.xrayVolume), p.outputDrr, opacity)
    yellow = p.xrayVolume.GetScene().GetNodeByID(SECOND_VIEW_SLICE_NODE)
    if p.secondXrayVolume and p.secondOutputDrr and yellow:
        logic.showFusion(p.secondXrayVolume, p.secondOutputDrr, opacity, yellow)
