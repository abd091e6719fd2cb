"""A registration's optional inputs in the Slicer module (second view, structures, X-ray mask) and its output.

:class:`RegistrationOutput` is what the logic's ``register`` returns; the optional inputs are:

- **Second view (biplane)**: a second X-ray node, its geometry (as the first one's: values in mm, 0 = from its
  DICOM tags) and its pose relative to the first camera, ``camera0_from_camera1`` (CONVENTIONS.md "Several
  views"): the matrix to parent of a linear transform node, or, with no transform chosen, the two X-rays' C-arm
  angles read from Slicer's DICOM database (``carm.relative_carm_view``). It becomes a library ``pipeline.View``.
- **Structures**: segments of a segmentation node, turned into a label map on the CT's voxel grid (1 inside any
  chosen segment) through slicer-core's ``vtkSlicerSegmentationsModuleLogic`` (each segment's binary labelmap,
  parent transforms applied) and ``vtkOrientedImageDataResample`` (nearest neighbour onto the CT grid), read-only:
  no node is added or changed. It becomes the library's ``labels``/``label_ids``.
- **X-ray mask**: a threshold and a collimator crop (top, bottom, left, right pixels), made by the library's
  ``xray.xray_mask``, the function behind ``register --mask-range/--crop``, for every X-ray.

Every check raises the library's ``InputError`` (a ``ValueError``) naming the node, before the scene is changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from XRayCTRegistrationLib.errors import InputError

STRUCTURE_LABEL = 1
"""Label value of the chosen segments in the label map given to the library (0 elsewhere)."""


@dataclass
class RegistrationOptions:
    """The optional inputs of a registration (all off by default).

    secondXray: a second X-ray node (biplane), or None.
    secondGeometry: ``sdd``, ``rowSpacing``, ``colSpacing`` of the second X-ray (mm; 0 = from its DICOM tags or
        geometry attribute) and its principal point ``x0``, ``y0`` (mm, CONVENTIONS.md).
    relativeTransform: a linear transform node whose matrix to parent is ``camera0_from_camera1`` (mm), or None
        to take it from the two X-rays' C-arm angles (DICOM).
    segmentation: a segmentation node of the CT, or None; segments: the chosen segments' names, comma-separated
        ("" = every segment).
    maskRange: ``(low, high)`` of the X-ray values used (attenuation, as registered), or None.
    crop: collimator crop ``(top, bottom, left, right)`` in pixels, for every X-ray.
    drawnMask: a volume node on the first X-ray's pixel grid (same rows and columns, e.g. a labelmap painted on
        the X-ray), whose 0 pixels are ignored, or None; for the first X-ray, as ``register --mask``.
    secondOutputDrr: a scalar volume node that receives the second view's DRR after the registration, or None to
        create one.
    """

    secondXray: Any = None
    secondGeometry: dict = field(default_factory=dict)
    relativeTransform: Any = None
    segmentation: Any = None
    segments: str = ""
    maskRange: tuple[float, float] | None = None
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    drawnMask: Any = None
    secondOutputDrr: Any = None


@dataclass
class RegistrationOutput:
    """What :meth:`XRayCTRegistrationLogic.register` returns.

    result: the final result of the library's pipeline (world_from_camera, params, similarity,
        iterations, wall_time_s, method, success, message).
    params: pose parameters of the result (degrees, mm) relative to the AP reference view.
    transformNode, drrNode: the output nodes written (None when cancelled).
    cancelled: True when ``shouldStop`` asked to stop; then nothing in the scene was changed.
    xrayConversion: what was done to the X-ray's grey levels before registering (one sentence).
    initialParams: the pose parameters the refinement started from (the model's prediction when
        registering with an initialiser model, else the given initial parameters).
    pipeline: the library's ``pipeline.PipelineResult`` (initialisation, refinement, timings).
    secondDrrNode: after a two-view registration, the second view's DRR node (placed on its detector), else None.
    """

    result: Any
    params: np.ndarray
    transformNode: Any
    drrNode: Any
    cancelled: bool = False
    xrayConversion: str = ""
    initialParams: np.ndarray | None = None
    pipeline: Any = None
    secondDrrNode: Any = None


def optionsFromParameterNode(p) -> RegistrationOptions:
    """The :class:`RegistrationOptions` of the module's parameter node."""
    return RegistrationOptions(
        secondXray=p.secondXrayVolume, relativeTransform=p.relativeTransform,
        secondGeometry={"sdd": p.secondSdd, "rowSpacing": p.secondRowSpacing, "colSpacing": p.secondColSpacing,
                        "x0": p.secondX0, "y0": p.secondY0}, secondOutputDrr=p.secondOutputDrr,
        segmentation=p.structureSegmentation, segments=p.structureSegments,
        maskRange=(p.xrayMaskLow, p.xrayMaskHigh) if p.xrayMaskThreshold else None,
        crop=(p.xrayCropTop, p.xrayCropBottom, p.xrayCropLeft, p.xrayCropRight), drawnMask=p.xrayMaskVolume)


def xrayMask(image: np.ndarray, options: RegistrationOptions, nodeName: str,
             drawn: np.ndarray | None = None) -> np.ndarray | None:
    """Similarity weights ``[rows, cols]`` of one X-ray (``xray.xray_mask``); None when no mask is set.

    Threshold and crop come from ``options``; ``drawn`` is a drawn mask ``[rows, cols]`` (0 = ignored) or None.
    """
    from XRayCTRegistrationLib.xray import xray_mask

    if options.maskRange is None and not any(options.crop) and drawn is None:
        return None
    try:
        return xray_mask(image, options.maskRange, tuple(int(v) for v in options.crop), drawn)
    except InputError as e:
        raise InputError(f"X-ray volume '{nodeName}': {e}") from None


def drawnMaskArray(node) -> np.ndarray | None:
    """The pixels ``[rows, cols]`` (float32) of a drawn X-ray mask node (0 = ignored), None without one."""
    import slicer

    from .images import checkImageData, finiteFloat32

    if node is None:
        return None
    what = f"X-ray mask '{node.GetName()}'"
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"{what}: holds no image data")
    checkImageData(what, image.GetDimensions(), image.GetNumberOfScalarComponents(), xray=True)
    return finiteFloat32(slicer.util.arrayFromVolume(node)[0], what)


def segmentNames(segmentationNode) -> dict[str, str]:
    """``{name: segment ID}`` of a segmentation node's segments."""
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return {segmentation.GetSegment(i).GetName(): i for i in ids}


def chosenSegmentIds(segmentationNode, segments: str) -> list[str]:
    """IDs of the segments named in ``segments`` (comma-separated; "" = all); ``InputError`` naming what is missing."""
    what = f"segmentation '{segmentationNode.GetName()}'"
    byName = segmentNames(segmentationNode)
    if not byName:
        raise InputError(f"{what}: has no segments")
    wanted = [s.strip() for s in (segments or "").split(",") if s.strip()]
    missing = [s for s in wanted if s not in byName]
    if missing:
        raise InputError(f"{what}: no segment named {', '.join(repr(m) for m in missing)} "
                         f"(segments: {', '.join(byName)})")
    return [byName[s] for s in wanted] if wanted else list(byName.values())


def structureLabels(segmentationNode, segments: str, ctIjkToWorld: np.ndarray, ctShapeKji) -> np.ndarray:
    """Label map ``[k, j, i]`` (uint8) on the CT's voxel grid: :data:`STRUCTURE_LABEL` inside any chosen segment.

    Args:
        segmentationNode: a ``vtkMRMLSegmentationNode`` (its parent transforms are applied).
        segments: segment names, comma-separated ("" = every segment).
        ctIjkToWorld: the CT's voxel (i, j, k) -> world RAS matrix (4x4, mm, parent transforms included).
        ctShapeKji: the CT's array shape ``(k, j, i)``.

    Raises:
        InputError: no such segment, a segment that cannot be read as a labelmap, or chosen segments that cover
            no voxel of the CT.
    """
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    what = f"segmentation '{segmentationNode.GetName()}'"
    reference = slicer.vtkOrientedImageData()
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ctIjkToWorld, dtype=np.float64)))
    k, j, i = (int(n) for n in ctShapeKji)
    reference.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    out = np.zeros((k, j, i), dtype=np.uint8)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for segmentId in chosenSegmentIds(segmentationNode, segments):
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        labelmap, resampled = slicer.vtkOrientedImageData(), slicer.vtkOrientedImageData()
        if not logic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segmentId, labelmap, True):
            raise InputError(f"{what}: segment '{name}' has no binary labelmap")
        ext = labelmap.GetExtent()
        if ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4]:
            continue  # an empty segment
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, resampled, False, False):
            raise InputError(f"{what}: segment '{name}' cannot be resampled onto the CT's grid")
        values = vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(k, j, i)
        out[values != 0] = STRUCTURE_LABEL
    if not out.any():
        raise InputError(f"{what}: the chosen segments ({segments or 'all'}) cover no voxel of the CT")
    return out


def relativeView(xrayNode, secondNode, transformNode, sdd: float, secondSdd: float) -> np.ndarray:
    """``camera0_from_camera1`` (4x4, mm): the transform node's matrix to parent, or the X-rays' C-arm angles."""
    import slicer
    from XRayCTRegistrationLib.geometry import check_rigid

    if transformNode is not None:
        if not isinstance(transformNode, slicer.vtkMRMLLinearTransformNode):
            raise InputError(f"relative transform '{transformNode.GetName()}': must be a linear transform")
        matrix = slicer.util.arrayFromTransformMatrix(transformNode)
        return check_rigid(matrix, f"relative transform '{transformNode.GetName()}'")
    from XRayCTRegistrationLib.carm import relative_carm_view

    from . import dicom

    try:
        positions = [dicom.carmPositionOfNode(node) for node in (xrayNode, secondNode)]
    except InputError as e:
        raise InputError(f"second X-ray '{secondNode.GetName()}': no relative geometry: choose a relative transform "
                         f"(camera0_from_camera1) or load both X-rays with the DICOM module ({e})") from None
    return relative_carm_view(*positions, sdd, secondSdd)


def checkSecondOutput(node, inputs: tuple) -> None:
    """Refuse a second-view DRR output that is not a scalar volume or is one of the ``inputs`` (before any work)."""
    import slicer

    if node is None:
        return
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode):
        raise InputError(f"second view's output DRR '{node.GetName()}': must be a scalar volume")
    if any(node is other for other in inputs):
        raise InputError(f"second view's output DRR '{node.GetName()}': is an input (the CT or an X-ray); "
                         "choose another volume or none")


def libraryInputs(logic, ctNode, xrayNode, image: np.ndarray, camera, xrayKind: str,
                  options: RegistrationOptions | None) -> tuple[list, dict]:
    """``(views, options)`` for the library's ``pipeline.register_xray`` from the registration options.

    ``logic`` is the module's logic (its node readers); ``image`` and ``camera`` are the first X-ray's, as
    registered. The second X-ray's values are read as the first one's (``xrayKind``). Nothing is written.
    """
    from XRayCTRegistrationLib.pipeline import View
    from XRayCTRegistrationLib.volume import Volume

    if options is None:
        return [], {}
    out: dict = {}
    mask = xrayMask(image, options, xrayNode.GetName(), drawnMaskArray(options.drawnMask))
    if mask is not None:
        out["mask"] = mask
    if options.segmentation is not None:
        ijkToWorld = logic.ijkToWorld(ctNode)
        labels = structureLabels(options.segmentation, options.segments, ijkToWorld,
                                 logic.attenuationVolume(ctNode).data.shape)
        out.update(labels=Volume(labels, ijkToWorld), label_ids=[STRUCTURE_LABEL])
    second = options.secondXray
    if second is None:
        return [], out
    if second is xrayNode:
        raise InputError(f"second X-ray '{second.GetName()}': is the first X-ray; choose another image or none")
    checkSecondOutput(options.secondOutputDrr, (ctNode, xrayNode, second))
    secondImage, _conversion = logic.attenuationImageFromNode(second, xrayKind)
    secondCamera = logic.cameraFromNode(second, **{k: float(v) for k, v in options.secondGeometry.items()})
    relative = relativeView(xrayNode, second, options.relativeTransform, camera.sdd, secondCamera.sdd)
    view = View(secondImage, secondCamera, relative, xrayMask(secondImage, options, second.GetName()),
                f"second X-ray '{second.GetName()}'")
    return [view], out
