"""3x4 projection matrices: a camera and a pose as ``P = K [R | t]``, to and from other tools.

``P`` maps a homogeneous world point (RAS, mm) to homogeneous pixel coordinates ``(col, row, 1)`` with
pixel centres at integer ``(col, row)``, column first, as in most computer-vision code:

- ``[R | t]`` is ``camera_from_world`` (the inverse of the pose ``world_from_camera``), camera frame of
  CONVENTIONS.md (origin at the source, +z toward the detector, +x along increasing column);
- ``K = [[sdd / col_spacing, 0, cols/2 - 0.5 - x0 / col_spacing],
  [0, sdd / row_spacing, rows/2 - 0.5 - y0 / row_spacing], [0, 0, 1]]`` (the pixel-centre formula of
  :meth:`geometry.Camera.pixel_xy` solved for ``(col, row)``).

``K`` fixes ``sdd / spacing`` only: reading one back needs the pixel size (``row_spacing``,
``col_spacing``) or ``sdd`` as well, and the detector size (``rows``, ``cols``). The JSON file
(:func:`projection_dict`) holds ``P``, ``K``, ``R``, ``t``, those values and a note on the frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import write_text_atomic
from .geometry import Camera, check_rigid, invert_rigid, read_json

FRAMES_NOTE = ("P = K [R|t] maps world RAS mm (homogeneous) to pixel (col, row, 1), pixel centres at integers; "
               "[R|t] = camera_from_world (source at the origin, +z toward the detector)")
"""The ``frames`` entry of a projection file."""

REL_TOL = 1e-6
"""Relative tolerance of the checks on a read ``K`` (zero skew, unit last row, sdd consistent with the spacings)."""


def intrinsic_matrix(camera: Camera) -> np.ndarray:
    """``K`` (3x3) of a camera: camera-frame mm to homogeneous pixel ``(col, row, 1)``."""
    return np.array([[camera.sdd / camera.col_spacing, 0.0, camera.cols / 2 - 0.5 - camera.x0 / camera.col_spacing],
                     [0.0, camera.sdd / camera.row_spacing, camera.rows / 2 - 0.5 - camera.y0 / camera.row_spacing],
                     [0.0, 0.0, 1.0]])


def projection_matrix(camera: Camera, world_from_camera: np.ndarray) -> np.ndarray:
    """``P = K [R | t]`` (3x4) of a camera at a pose (world RAS from camera)."""
    camera_from_world = invert_rigid(check_rigid(world_from_camera, "pose"))
    return intrinsic_matrix(camera) @ camera_from_world[:3]


def projection_dict(camera: Camera, world_from_camera: np.ndarray) -> dict:
    """The projection JSON: ``P``, ``K``, ``R``, ``t``, the detector size and pixel size, ``sdd``, ``x0``, ``y0``."""
    camera_from_world = invert_rigid(check_rigid(world_from_camera, "pose"))
    return {"P": projection_matrix(camera, world_from_camera).tolist(), "K": intrinsic_matrix(camera).tolist(),
            "R": camera_from_world[:3, :3].tolist(), "t": camera_from_world[:3, 3].tolist(),
            "frames": FRAMES_NOTE, **camera.to_dict()}


def save_projection(path: str | Path, camera: Camera, world_from_camera: np.ndarray) -> None:
    """Write the projection JSON of :func:`projection_dict`."""
    write_text_atomic(json.dumps(projection_dict(camera, world_from_camera), indent=2) + "\n", path)


def _rq(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``m = K @ R`` with ``K`` upper triangular (positive diagonal) and ``R`` orthogonal."""
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ m).T)
    k, rot = flip @ r.T @ flip, flip @ q.T
    signs = np.diag(np.sign(np.diag(k)))
    return k @ signs, signs @ rot


def _matrix(d: dict, key: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    try:
        m = np.asarray(d[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: '{key}' is not a numeric matrix") from None
    if m.shape != shape or not np.all(np.isfinite(m)):
        raise InputError(f"{source}: '{key}' must be {'x'.join(map(str, shape))} finite numbers, got shape {m.shape}")
    return m


def _k_and_extrinsics(d: dict, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``K`` (3x3, K[2,2] = 1) and ``camera_from_world`` (4x4) from ``P`` or from ``K``, ``R``, ``t``."""
    if "K" in d and "R" in d and "t" in d:
        k, rot, t = _matrix(d, "K", (3, 3), source), _matrix(d, "R", (3, 3), source), _matrix(d, "t", (3,), source)
    elif "P" in d:
        p = _matrix(d, "P", (3, 4), source)
        k, rot = _rq(p[:, :3])
        if abs(np.linalg.det(rot)) < 0.5 or abs(k[2, 2]) < 1e-12:
            raise InputError(f"{source}: 'P' is not a finite camera (its left 3x3 block is singular)")
        t = np.linalg.solve(k, p[:, 3])
        if np.linalg.det(rot) < 0:  # P is defined up to scale: -P = K [-R | -t]
            rot, t = -rot, -t
        k = k / k[2, 2]
    else:
        raise InputError(f"{source}: give 'P' (3x4) or 'K', 'R' and 't'")
    scale = np.abs(k).max()
    if abs(k[2, 2] - 1.0) > REL_TOL or max(abs(k[2, 0]), abs(k[2, 1]), abs(k[1, 0])) > REL_TOL * scale:
        raise InputError(f"{source}: 'K' must be upper triangular with K[2][2] = 1")
    if abs(k[0, 1]) > REL_TOL * k[0, 0]:
        raise InputError(f"{source}: 'K' has skew {k[0, 1]:g}; detector rows and columns must be perpendicular")
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, t
    return k, check_rigid(m, f"{source}: [R|t]")


def camera_and_pose_from_dict(d: dict, source: str = "projection") -> tuple[Camera, np.ndarray]:
    """The :class:`Camera` and ``world_from_camera`` of a projection dictionary (see the module docstring).

    Needs ``rows``, ``cols`` and either ``row_spacing`` and ``col_spacing`` or ``sdd`` (all three are
    checked against each other when given).
    """
    if not isinstance(d, dict):
        raise InputError(f"{source}: expected a JSON object")
    k, camera_from_world = _k_and_extrinsics(d, source)
    fx, fy = k[0, 0], k[1, 1]
    missing = [name for name in ("rows", "cols") if name not in d]
    if missing or not (("row_spacing" in d and "col_spacing" in d) or "sdd" in d):
        raise InputError(f"{source}: needs rows, cols and the pixel size (row_spacing, col_spacing) or sdd")
    try:
        if "row_spacing" in d and "col_spacing" in d:
            col_spacing, row_spacing = float(d["col_spacing"]), float(d["row_spacing"])
            sdd = fx * col_spacing
        else:
            sdd = float(d["sdd"])
            col_spacing, row_spacing = sdd / fx, sdd / fy
    except (TypeError, ValueError):
        raise InputError(f"{source}: sdd and the pixel size must be numbers") from None
    for name, value in (("sdd", d.get("sdd", sdd)), ("sdd from the rows", fy * row_spacing)):
        if abs(float(value) - sdd) > REL_TOL * sdd:
            raise InputError(f"{source}: {name} {float(value):g} mm disagrees with K and the pixel size "
                             f"(sdd = {sdd:g} mm)")
    rows, cols = d["rows"], d["cols"]
    x0 = (cols / 2 - 0.5 - k[0, 2]) * col_spacing
    y0 = (rows / 2 - 0.5 - k[1, 2]) * row_spacing
    try:
        camera = Camera(sdd, rows, cols, row_spacing, col_spacing, x0, y0)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None
    return camera, invert_rigid(camera_from_world)


def load_projection(path: str | Path) -> tuple[Camera, np.ndarray]:
    """Read a projection JSON file: ``(camera, world_from_camera)``."""
    return camera_and_pose_from_dict(read_json(path), str(path))
