"""C-arm angles (DICOM XA/RF/DX positioner attributes) as an initial pose.

The convention (drawn in ``docs/carm_angles.png``, described in ``docs/CONVENTIONS.md``):

- The patient lies as in the CT: the angles are about the patient's own axes, so the world frame
  is the CT's RAS. The CT's centre is taken as the C-arm's isocentre (the table position is not
  used: nothing ties the table to the CT before the registration).
- ``PositionerPrimaryAngle`` (0018,1510) ``a`` and ``PositionerSecondaryAngle`` (0018,1511) ``b``
  give the direction from the isocentre to the **detector** (DICOM PS3.3 C.8.7.5.1.2): at 0, 0 the
  detector faces the patient's chest (anterior) and the source is posterior (a PA beam); positive
  ``a`` (LAO) turns the detector toward the patient's left, negative (RAO) toward the right;
  positive ``b`` (cranial) tilts it toward the head, negative (caudal) toward the feet. So at LAO 90
  the source is on the patient's right and the beam runs right to left.
- The principal ray (camera +z, source to detector) is ``Rs(a) @ Rr(b) @ A`` with ``Rs`` the
  rotation about the patient's S axis and ``Rr`` about the R axis, signs such that A turns toward L
  and toward S: ``z = (-sin a cos b, cos a cos b, sin b)`` in RAS.
- The image axes turn with it: at 0, 0 the rows run toward the feet (camera +y = -S) and the
  columns toward the patient's right (camera +x = +R): the image as seen from the source, head up
  (the heads-up display the XA object assumes). An image stored as a viewer shows it from the
  detector side (the patient's left on the right of a 0, 0 image) is the mirror of that view.
- The source lies ``DistanceSourceToPatient`` (0018,1111, the source-to-isocentre distance) from
  the isocentre, or ``0.7 * sdd`` when the tag is missing, as for the reference view.

``DetectorActiveOrigin`` and the table position are not read: the first does not give the
principal point without the physical detector's size, the second needs a table-to-CT calibration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import SID_FRACTION, invert_rigid

TAG_PRIMARY = "0018|1510"
"""PositionerPrimaryAngle, degrees, LAO positive, RAO negative."""

TAG_SECONDARY = "0018|1511"
"""PositionerSecondaryAngle, degrees, cranial positive, caudal negative."""

TAG_SOURCE_TO_PATIENT = "0018|1111"
"""DistanceSourceToPatient: source to isocentre, mm."""

TAG_SOURCE_TO_DETECTOR = "0018|1110"
"""DistanceSourceToDetector, mm."""

CARM_TAGS = (TAG_PRIMARY, TAG_SECONDARY, TAG_SOURCE_TO_PATIENT, TAG_SOURCE_TO_DETECTOR)
"""The DICOM tags :meth:`CArmPosition.from_tags` reads."""

AXES_AT_ZERO = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T
"""Columns: camera x, y, z in world RAS at primary 0, secondary 0 (x = R, y = -S, z = A)."""


@dataclass(frozen=True)
class CArmPosition:
    """Where a C-arm was: its two angles and distances.

    Attributes:
        primary_deg: PositionerPrimaryAngle, degrees (LAO +, RAO -).
        secondary_deg: PositionerSecondaryAngle, degrees (cranial +, caudal -).
        sid: DistanceSourceToPatient (source to isocentre), mm, or None when unknown.
        sdd: DistanceSourceToDetector, mm, or None when unknown.
    """

    primary_deg: float
    secondary_deg: float
    sid: float | None = None
    sdd: float | None = None

    @classmethod
    def from_tags(cls, meta: Mapping[str, str], source: str = "DICOM") -> CArmPosition:
        """Read the positioner attributes from ``{"gggg|eeee": value}`` (as ``xray.read_dicom_tags`` gives).

        Raises:
            InputError: naming ``source`` when an angle is missing or not a number, or a distance is not positive.
        """
        def number(tag: str, name: str, required: bool) -> float | None:
            text = str(meta.get(tag, meta.get(tag.upper(), ""))).split("\\")[0].strip()
            if not text:
                if required:
                    raise InputError(f"{source}: no {name} ({tag.replace('|', ',')}): the C-arm angles are unknown")
                return None
            try:
                value = float(text)
            except ValueError:
                raise InputError(f"{source}: {name} {text!r} is not a number") from None
            if not math.isfinite(value):
                raise InputError(f"{source}: {name} {text!r} is not finite")
            return value

        sid = number(TAG_SOURCE_TO_PATIENT, "DistanceSourceToPatient", False)
        sdd = number(TAG_SOURCE_TO_DETECTOR, "DistanceSourceToDetector", False)
        for name, value in (("DistanceSourceToPatient", sid), ("DistanceSourceToDetector", sdd)):
            if value is not None and value <= 0:
                raise InputError(f"{source}: {name} must be positive, got {value:g}")
        return cls(number(TAG_PRIMARY, "PositionerPrimaryAngle", True),
                   number(TAG_SECONDARY, "PositionerSecondaryAngle", True), sid, sdd)

    def describe(self) -> str:
        """E.g. ``LAO 30.0, CRA 15.0``."""
        side = "LAO" if self.primary_deg >= 0 else "RAO"
        tilt = "CRA" if self.secondary_deg >= 0 else "CAU"
        return f"{side} {abs(self.primary_deg):.1f}, {tilt} {abs(self.secondary_deg):.1f}"


def _rotation_about(axis: int, angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about world axis ``axis`` (0 = R, 1 = A, 2 = S)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    i, j = (axis + 1) % 3, (axis + 2) % 3
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def carm_axes(primary_deg: float, secondary_deg: float) -> np.ndarray:
    """Camera axes (columns x, y, z) in world RAS for C-arm angles in degrees (see the module docstring)."""
    # About S by +a takes A to (-sin a, cos a, 0): toward L for LAO. About R by +b takes A to (0, cos b, sin b).
    return _rotation_about(2, primary_deg) @ _rotation_about(0, secondary_deg) @ AXES_AT_ZERO


def world_from_carm(position: CArmPosition, isocenter: np.ndarray, sdd: float) -> np.ndarray:
    """``world_from_camera`` (4x4, world RAS) of a C-arm position about ``isocenter`` (mm).

    The source is ``position.sid`` (or ``0.7 * sdd``) from the isocentre, against the principal ray.
    """
    sid = position.sid if position.sid is not None else SID_FRACTION * float(sdd)
    axes = carm_axes(position.primary_deg, position.secondary_deg)
    out = np.eye(4)
    out[:3, :3] = axes
    out[:3, 3] = np.asarray(isocenter, dtype=np.float64).reshape(3) - sid * axes[:, 2]
    return out


def relative_carm_view(first: CArmPosition, second: CArmPosition, sdd_first: float,
                       sdd_second: float) -> np.ndarray:
    """``camera0_from_camera1`` (4x4, mm) of two exposures of one C-arm about the same isocentre.

    Each position is placed by :func:`world_from_carm` about a common isocentre; where that isocentre lies
    cancels out, so the result depends only on the two positions' angles and source distances (or
    ``0.7 * sdd`` when DistanceSourceToPatient is missing).
    """
    origin = np.zeros(3)
    return invert_rigid(world_from_carm(first, origin, sdd_first)) @ world_from_carm(second, origin, sdd_second)


def carm_position(source: object) -> tuple[CArmPosition, str]:
    """A :class:`CArmPosition` and how to name where it came from: a DICOM file, a tag mapping or a position."""
    if isinstance(source, CArmPosition):
        return source, "the given C-arm position"
    if isinstance(source, Mapping):
        return CArmPosition.from_tags(source, "DICOM attributes"), "the DICOM attributes"
    if isinstance(source, (str, Path)) and str(source):
        from .xray import read_dicom_tags

        return CArmPosition.from_tags(read_dicom_tags(source), str(source)), str(source)
    raise InputError("init: the 'dicom' initialisation needs a DICOM X-ray file (or its attributes)")


def init_dicom(inputs, source: object):
    """``init`` method ``dicom``: the pose of the C-arm angles of the X-ray's DICOM attributes.

    ``source`` is the DICOM file, a mapping ``{"gggg|eeee": value}`` or a :class:`CArmPosition`; the
    isocentre is the reference view's (the CT's centre), the detector distance the camera's.
    """
    from .pipeline import Initialisation

    position, where = carm_position(source)
    if position.sdd is not None and abs(position.sdd - inputs.camera.sdd) > 1e-3 * inputs.camera.sdd:
        raise InputError(f"{where}: DistanceSourceToDetector {position.sdd:g} mm differs from the geometry's sdd "
                         f"{inputs.camera.sdd:g} mm")
    pose = world_from_carm(position, inputs.reference.isocenter, inputs.camera.sdd)
    sid = f"{position.sid:g} mm" if position.sid is not None else f"{SID_FRACTION:g} * sdd (no DistanceSourceToPatient)"
    return Initialisation(pose, "dicom", f"started from the C-arm angles of {where}: {position.describe()}, "
                                         f"source to isocentre {sid}")
