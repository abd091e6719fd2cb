"""Showing the fusion in a slice view: the X-ray as background, the DRR as foreground, the plane fitted."""

from __future__ import annotations

import numpy as np
from XRayCTRegistrationLib.errors import InputError

from .images import fieldOfViewForImage, sliceToRASForImage


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
