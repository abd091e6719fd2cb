"""Numpy-only helpers of the Slicer module: slice view geometry, preview sizes, DICOM geometry, X-ray values.

Frames follow CONVENTIONS.md: world RAS, mm. No MRML and no Qt here: the logic passes arrays,
matrices and attribute strings in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.names import XRAY_KINDS

DICOM_SDD_ATTRIBUTE = "DICOM.DistanceSourceToDetector"
"""Node attribute holding the DICOM tag DistanceSourceToDetector (0018,1110), mm."""

DICOM_SPACING_ATTRIBUTE = "DICOM.ImagerPixelSpacing"
"""Node attribute holding the DICOM tag ImagerPixelSpacing (0018,1164): "row\\column" spacing, mm."""

GEOMETRY_ATTRIBUTE = "XRayCTRegistration.Geometry"
"""Node attribute holding an X-ray's geometry sidecar (CONVENTIONS.md) as JSON text: set on an X-ray loaded with its
sidecar (e.g. the simulated sample X-ray, ``sampledata.loadSimulatedXray``)."""

SIDECAR_FIELDS = {"sdd": "sdd", "row_spacing": "rowSpacing", "col_spacing": "colSpacing", "x0": "x0", "y0": "y0",
                  "rows": "rows", "cols": "cols"}
"""Sidecar field -> the module's geometry name."""


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


def fieldOfViewForImage(ijkToWorld: np.ndarray, dims: Sequence[int], viewDims: Sequence[int]) -> tuple:
    """Slice field of view (mm) that shows the whole image in a view of ``viewDims`` pixels."""
    m = np.asarray(ijkToWorld, dtype=np.float64)
    width = dims[0] * np.linalg.norm(m[:3, 0])
    height = dims[1] * np.linalg.norm(m[:3, 1])
    aspect = viewDims[1] / viewDims[0] if viewDims[0] > 0 and viewDims[1] > 0 else height / width
    fovX = max(width, height / aspect)
    return fovX, fovX * aspect, float(np.linalg.norm(m[:3, 2]))


def previewCamera(camera, maxSize: int | None):
    """The same detector area with at most ``maxSize`` pixels along its longest side (a library ``Camera``)."""
    if not maxSize or max(camera.rows, camera.cols) <= maxSize:
        return camera
    return camera.downsampled(max(camera.rows, camera.cols) / maxSize)


def geometryFromAttributeValues(sdd: str | None, spacing: str | None, nodeName: str) -> dict[str, float]:
    """Geometry from the DICOM attribute strings of a node: any of ``sdd``, ``rowSpacing``, ``colSpacing`` (mm)."""
    out: dict[str, float] = {}
    if sdd:
        try:
            out["sdd"] = float(sdd)
        except ValueError:
            raise InputError(f"X-ray volume '{nodeName}': attribute {DICOM_SDD_ATTRIBUTE}={sdd!r} is not a number"
                             ) from None
    if spacing:
        parts = spacing.replace("\\", " ").replace(",", " ").split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            raise InputError(f"X-ray volume '{nodeName}': attribute {DICOM_SPACING_ATTRIBUTE}={spacing!r} is not "
                             "'row\\column' spacing")
        out["rowSpacing"], out["colSpacing"] = values[0], values[-1]
    return out


def geometryFromSidecarAttribute(text: str | None, nodeName: str) -> dict[str, float]:
    """Geometry from a node's :data:`GEOMETRY_ATTRIBUTE` (a geometry sidecar as JSON text).

    Returns sdd, rowSpacing, colSpacing, x0, y0 (mm), rows and cols, as far as given; ``{}`` without the
    attribute. Ranges are checked when the camera is made (``cameraFromValues``).
    """
    if not text:
        return {}
    what = f"X-ray volume '{nodeName}': attribute {GEOMETRY_ATTRIBUTE}"
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        raise InputError(f"{what} is not a geometry sidecar (a JSON object)")
    out: dict[str, float] = {}
    for key, name in SIDECAR_FIELDS.items():
        value = fields.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(f"{what}: {key}={value!r} is not a finite number")
        out[name] = float(value)
    return out


def attenuationImage(image: np.ndarray, kind: str, nodeName: str) -> tuple[np.ndarray, str]:
    """An X-ray ``[rows, cols]`` as the library's attenuation-bright image, and what was done (one sentence).

    ``kind`` is one of ``names.XRAY_KINDS``. Raw intensities (air bright) are converted with the
    library's ``xray.intensity_to_attenuation``; ``auto`` decides with ``xray.air_is_bright``.
    """
    from XRayCTRegistrationLib.xray import air_is_bright, intensity_to_attenuation

    if kind not in XRAY_KINDS:
        raise InputError(f"X-ray kind: {kind!r} is not one of {', '.join(XRAY_KINDS)}")
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
        raise InputError(f"X-ray volume '{nodeName}': {e}") from None
    return attenuation, f"{why}: converted with -log(I/I0), I0={i0:.6g}"


def checkParams(params: Sequence[float]) -> np.ndarray:
    """Six finite pose parameters ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) as a float64 array."""
    p = np.asarray(params, dtype=np.float64).reshape(-1)
    if p.shape != (6,) or not np.all(np.isfinite(p)):
        raise InputError(f"pose parameters: expected six finite numbers (rx, ry, rz, tx, ty, tz), got {p}")
    return p


def checkImageData(what: str, dims: Sequence[int], components: int, xray: bool) -> None:
    """Refuse image data that is not one scalar per voxel, a 3D volume (CT) or a single slice (X-ray).

    ``what`` names the node in the message, e.g. ``"CT volume 'chest'"``; ``dims`` is (i, j, k).
    """
    if xray and dims[2] != 1:
        raise InputError(f"{what}: is a 3D volume with {dims[2]} slices; an X-ray must be a single-slice image")
    if components != 1:
        kind = "a grey-level image, got {} components per pixel" if xray else "one scalar per voxel, got {}"
        raise InputError(f"{what}: expected {kind.format(components)}")
    if xray and min(dims[0], dims[1]) < 2:
        raise InputError(f"{what}: image is only {dims[0]}x{dims[1]} pixels")
    if not xray and min(dims) < 2:
        raise InputError(f"{what}: expected a 3D volume, got {dims[0]}x{dims[1]}x{dims[2]} voxels")


def finiteFloat32(data: np.ndarray, what: str) -> np.ndarray:
    """A float32 copy of ``data``; ``InputError`` naming ``what`` when it holds NaN or infinite values."""
    out = np.array(data, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{what}: holds NaN or infinite values")
    return out


def cameraFromValues(shape: Sequence[int], given: dict[str, float], tags: dict[str, float], nodeName: str):
    """The library ``Camera`` of an X-ray ``[rows, cols]``: geometry from ``given`` (mm) or, where 0, ``tags``.

    ``given`` and ``tags`` hold ``sdd``, ``rowSpacing`` and ``colSpacing`` (see
    :func:`geometryFromAttributeValues`); a value missing from both is an ``InputError``. Both may also hold the
    principal point ``x0``, ``y0`` (mm; 0 in ``given`` takes ``tags``', default 0), and ``tags`` the ``rows`` and
    ``cols`` its geometry is for (then they must be the image's).
    """
    from XRayCTRegistrationLib.geometry import Camera

    given = dict(given)
    x0, y0 = (float(given.pop(name, 0.0) or 0.0) or float(tags.get(name, 0.0)) for name in ("x0", "y0"))
    size, imageSize = (int(tags.get("rows", shape[0])), int(tags.get("cols", shape[1]))), (int(shape[0]), int(shape[1]))
    if size != imageSize:
        raise InputError(f"X-ray volume '{nodeName}': its geometry is for {size[0]}x{size[1]} pixels (rows x cols), "
                         f"the image has {imageSize[0]}x{imageSize[1]}")
    values = {name: float(v) if v else tags.get(name, 0.0) for name, v in given.items()}
    missing = [name for name in ("sdd", "rowSpacing", "colSpacing") if not values.get(name)]
    if missing:
        raise InputError(f"X-ray volume '{nodeName}': imaging geometry missing ({', '.join(missing)}); enter it or "
                         "load an X-ray with the DICOM tags DistanceSourceToDetector and ImagerPixelSpacing")
    return Camera(sdd=values["sdd"], rows=int(shape[0]), cols=int(shape[1]), row_spacing=values["rowSpacing"],
                  col_spacing=values["colSpacing"], x0=x0, y0=y0)
