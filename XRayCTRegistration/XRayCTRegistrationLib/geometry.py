"""Camera intrinsics, pose parameters and point projection.

Frames (see ``CONVENTIONS.md``):

- world: the CT's patient frame in RAS, millimetres;
- camera: origin at the X-ray source, +z the principal ray toward the detector, +x along a
  detector row (increasing column), +y along a column (increasing row); the detector plane is
  ``z = sdd``.

A pose is the 4x4 rigid matrix ``world_from_camera``. Pose parameters ``(rx, ry, rz, tx, ty, tz)``
(degrees, mm) describe a rigid motion of the CT seen from a reference view: the rotation
``Rx(rx) @ Ry(ry) @ Rz(rz)`` about the isocentre, with the axes of the reference camera frame,
then the translation ``(tx, ty, tz)`` along those axes. In reference-camera coordinates the CT
moves by ``M = T(t) T(iso) R T(-iso)``; the same image is seen by the fixed CT and the camera
``world_from_camera = world_from_camera_ref @ inv(M)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .devices import host_to_device
from .errors import InputError
from .files import write_text_atomic
from .names import PARAM_NAMES

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Homogeneous 4x4 change of frame RAS <-> LPS (its own inverse)."""

AP_AXES_RAS = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T
"""Columns: the camera x, y, z axes of the AP reference view in world RAS."""

SID_FRACTION = 0.7
"""Default source-to-isocentre distance as a fraction of the source-to-detector distance."""

MAX_LENGTH_MM = 1e5
"""Largest distance (mm) a geometry field or a pose translation may hold: 100 m, far beyond any X-ray room."""

MAX_DETECTOR_SIDE = 16384
"""Largest number of detector rows or columns a geometry may hold (see ``projector.check_request``)."""


@dataclass
class Camera:
    """Intrinsics of one X-ray view.

    Attributes:
        sdd: source-to-detector distance, mm.
        rows, cols: detector size in pixels, as the image array ``[rows, cols]`` is stored.
        row_spacing, col_spacing: pixel size at the detector, mm (DICOM ImagerPixelSpacing order).
        x0, y0: offset (mm) of the detector centre from the foot of the perpendicular from the
            source, along camera +x and +y.
    """

    sdd: float
    rows: int
    cols: int
    row_spacing: float
    col_spacing: float
    x0: float = 0.0
    y0: float = 0.0

    def __post_init__(self) -> None:
        """Check that every field is a finite number in its range."""
        for name in ("sdd", "row_spacing", "col_spacing", "x0", "y0"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool)
                    or not math.isfinite(value)):
                raise InputError(f"geometry: '{name}' must be a finite number, got {value!r}")
            if abs(value) > MAX_LENGTH_MM:
                raise InputError(f"geometry: '{name}' = {value:g} mm is beyond {MAX_LENGTH_MM:g} mm")
            setattr(self, name, float(value))
        for name in ("sdd", "row_spacing", "col_spacing"):
            if getattr(self, name) <= 0:
                raise InputError(f"geometry: '{name}' must be positive, got {getattr(self, name)}")
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise InputError(f"geometry: '{name}' must be a positive integer, got {value!r}")
            if value > MAX_DETECTOR_SIDE:
                raise InputError(f"geometry: '{name}' = {value} pixels is more than {MAX_DETECTOR_SIDE}")
            setattr(self, name, int(value))

    # -- construction and files -------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "geometry") -> Camera:
        """Build from the sidecar dictionary of CONVENTIONS.md; ``source`` names it in errors."""
        if not isinstance(d, dict):
            raise InputError(f"{source}: expected a JSON object with sdd, rows, cols, row_spacing, col_spacing")
        missing = [k for k in ("sdd", "rows", "cols", "row_spacing", "col_spacing") if k not in d]
        if missing:
            raise InputError(f"{source}: missing geometry field(s): {', '.join(missing)}")
        try:
            return cls(**{k: d[k] for k in ("sdd", "rows", "cols", "row_spacing", "col_spacing")},
                       x0=d.get("x0", 0.0), y0=d.get("y0", 0.0))
        except InputError as e:
            raise InputError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Camera:
        """Read a geometry sidecar JSON file."""
        return cls.from_dict(read_json(path), source=str(path))

    def to_dict(self) -> dict:
        """The sidecar dictionary of CONVENTIONS.md."""
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the geometry sidecar JSON file."""
        write_text_atomic(json.dumps(self.to_dict(), indent=2) + "\n", path)

    # -- derived cameras ----------------------------------------------------------------------
    def downsampled(self, factor: float) -> Camera:
        """The same detector area seen with ``factor`` times fewer pixels along each side."""
        rows = max(1, int(round(self.rows / factor)))
        cols = max(1, int(round(self.cols / factor)))
        return Camera(self.sdd, rows, cols, self.row_spacing * self.rows / rows,
                      self.col_spacing * self.cols / cols, self.x0, self.y0)

    # -- pixels and projection ----------------------------------------------------------------
    def pixel_xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame ``x`` (from column indices) and ``y`` (from row indices) of pixel centres, mm.

        The pixel-centre formula of CONVENTIONS.md: ``x = (c + 0.5 - cols/2) * col_spacing + x0``,
        ``y = (r + 0.5 - rows/2) * row_spacing + y0``; the detector plane is ``z = sdd``.
        """
        x = (np.asarray(cols, dtype=np.float64) + 0.5 - self.cols / 2) * self.col_spacing + self.x0
        y = (np.asarray(rows, dtype=np.float64) + 0.5 - self.rows / 2) * self.row_spacing + self.y0
        return x, y

    def detector_ijk_to_camera(self) -> np.ndarray:
        """4x4 from detector voxel ``(i=col, j=row, k)`` to the camera frame, mm.

        Voxel ``(c, r, 0)`` maps to the centre of pixel ``(row r, col c)`` on the detector plane; ``k``
        runs along the principal ray (+z, away from the source) with 1 mm spacing. A single-slice
        volume holding the detector image at pose ``world_from_camera`` has IJK-to-world
        ``world_from_camera @ detector_ijk_to_camera()``.
        """
        x0, y0 = self.pixel_xy(0, 0)
        m = np.eye(4)
        m[0, 0], m[1, 1] = self.col_spacing, self.row_spacing
        m[:3, 3] = [float(x0), float(y0), self.sdd]
        return m

    def pixel_centers(self, dtype=np.float64) -> np.ndarray:
        """Detector pixel centres in the camera frame, mm. Shape ``[rows, cols, 3]``."""
        x, y = self.pixel_xy(np.arange(self.rows), np.arange(self.cols))
        out = np.empty((self.rows, self.cols, 3), dtype=dtype)
        out[..., 0] = x[None, :]
        out[..., 1] = y[:, None]
        out[..., 2] = self.sdd
        return out

    def project_camera_points(self, points_cam: np.ndarray) -> np.ndarray:
        """Project camera-frame points ``[..., 3]`` (mm) to continuous pixel ``(row, col)`` ``[..., 2]``.

        Pixel centres sit at integer ``(row, col)``; points behind the source give NaN.
        """
        p = np.asarray(points_cam, dtype=np.float64)
        z = np.where(p[..., 2] > 0, p[..., 2], np.nan)
        u = self.sdd * p[..., 0] / z
        v = self.sdd * p[..., 1] / z
        col = (u - self.x0) / self.col_spacing + self.cols / 2 - 0.5
        row = (v - self.y0) / self.row_spacing + self.rows / 2 - 0.5
        return np.stack([row, col], axis=-1)

    def detector_points(self, points_cam: np.ndarray) -> np.ndarray:
        """Intersection (x, y) in mm on the detector plane of the rays through camera points ``[..., 3]``."""
        p = np.asarray(points_cam, dtype=np.float64)
        z = np.where(p[..., 2] > 0, p[..., 2], np.nan)
        return np.stack([self.sdd * p[..., 0] / z, self.sdd * p[..., 1] / z], axis=-1)

    def project(self, points_world: np.ndarray, world_from_camera: np.ndarray) -> np.ndarray:
        """Project world RAS points ``[..., 3]`` to pixel ``(row, col)`` ``[..., 2]`` under a pose."""
        return self.project_camera_points(transform_points(invert_rigid(world_from_camera), points_world))


@dataclass
class ReferenceView:
    """The view that pose parameters are relative to.

    Attributes:
        world_from_camera: 4x4 pose of the reference camera (world RAS from camera).
        isocenter: rotation centre in world RAS, mm (the CT's centre for the AP view).
    """

    world_from_camera: np.ndarray
    isocenter: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        """Store as float64 arrays and check the pose is rigid."""
        self.world_from_camera = check_rigid(self.world_from_camera, "reference view")
        self.isocenter = np.asarray(self.isocenter, dtype=np.float64).reshape(3)

    @classmethod
    def ap(cls, isocenter: np.ndarray, sdd: float, sid: float | None = None) -> ReferenceView:
        """Antero-posterior view: source anterior of ``isocenter`` at ``sid`` (default ``0.7 * sdd``).

        Camera axes in RAS: x = (-1, 0, 0), y = (0, 0, -1), z = (0, -1, 0); the patient's right
        appears on the left of the image and the head at the top.
        """
        sid = SID_FRACTION * sdd if sid is None else float(sid)
        if not (math.isfinite(sid) and 0 < sid < sdd):
            raise InputError(f"--sid: the source-to-isocentre distance must be between 0 and the source-to-detector "
                             f"distance ({sdd:g} mm), got {sid:g}")
        iso = np.asarray(isocenter, dtype=np.float64).reshape(3)
        w = np.eye(4)
        w[:3, :3] = AP_AXES_RAS
        w[:3, 3] = iso - sid * AP_AXES_RAS[:, 2]
        return cls(w, iso)

    @property
    def isocenter_camera(self) -> np.ndarray:
        """The isocentre in reference-camera coordinates, mm."""
        return transform_points(invert_rigid(self.world_from_camera), self.isocenter)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"world_from_camera": self.world_from_camera.tolist(), "isocenter": self.isocenter.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ReferenceView:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(d["world_from_camera"], dtype=np.float64), np.asarray(d["isocenter"]))

    # -- parameters <-> pose ------------------------------------------------------------------
    def pose(self, params) -> np.ndarray:
        """``world_from_camera`` (4x4) for pose parameters ``(rx, ry, rz, tx, ty, tz)`` in degrees and mm."""
        p = torch.as_tensor(np.asarray(params, dtype=np.float64).reshape(6))
        return self.pose_torch(p).numpy()

    def pose_torch(self, params: torch.Tensor) -> torch.Tensor:
        """Differentiable :meth:`pose` for a tensor ``[..., 6]`` (degrees, mm); returns ``[..., 4, 4]``."""
        ref = host_to_device(self.world_from_camera, params.dtype, params.device)
        iso = host_to_device(self.isocenter_camera, params.dtype, params.device)
        return ref @ motion_inverse(params, iso)

    def params(self, world_from_camera: np.ndarray) -> np.ndarray:
        """Pose parameters ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) of a ``world_from_camera`` matrix."""
        w = check_rigid(world_from_camera, "pose")
        m = invert_rigid(w) @ self.world_from_camera  # motion of the CT in reference-camera coordinates
        r = m[:3, :3]
        ry = math.asin(max(-1.0, min(1.0, r[0, 2])))
        if abs(r[0, 2]) < 1 - 1e-12:
            rx = math.atan2(-r[1, 2], r[2, 2])
            rz = math.atan2(-r[0, 1], r[0, 0])
        else:  # gimbal lock: put the whole in-plane part into rx
            rx = math.atan2(r[2, 1], r[1, 1])
            rz = 0.0
        iso = self.isocenter_camera
        t = m[:3, 3] - iso + r @ iso
        return np.array([math.degrees(rx), math.degrees(ry), math.degrees(rz), *t])


# -- rotations ------------------------------------------------------------------------------------
def euler_xyz(angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotation ``Rx(a) @ Ry(b) @ Rz(c)`` for angles ``[..., 3]`` in degrees; returns ``[..., 3, 3]``."""
    a, b, c = torch.deg2rad(angles_deg).unbind(-1)
    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    row0 = torch.stack([cb * cc, -cb * sc, sb], -1)
    row1 = torch.stack([ca * sc + sa * sb * cc, ca * cc - sa * sb * sc, -sa * cb], -1)
    row2 = torch.stack([sa * sc - ca * sb * cc, sa * cc + ca * sb * sc, ca * cb], -1)
    return torch.stack([row0, row1, row2], -2)


def motion_inverse(params: torch.Tensor, iso_cam: torch.Tensor) -> torch.Tensor:
    """``inv(T(t) T(iso) R T(-iso))`` for parameters ``[..., 6]``; returns ``[..., 4, 4]``."""
    r = euler_xyz(params[..., :3])
    t = params[..., 3:]
    rt = r.transpose(-1, -2)
    # M x = R (x - iso) + iso + t  =>  M^-1 y = R^T (y - iso - t) + iso
    trans = iso_cam - (rt @ (iso_cam + t).unsqueeze(-1)).squeeze(-1)
    top = torch.cat([rt, trans.unsqueeze(-1)], -1)  # [..., 3, 4]
    # the row (0, 0, 0, 1) made on the device: no host-to-device copy (a CUDA graph can capture this function)
    bottom = torch.eye(4, dtype=params.dtype, device=params.device)[3:].expand(*top.shape[:-2], 1, 4)
    return torch.cat([top, bottom], -2)


# -- rigid matrices -------------------------------------------------------------------------------
def check_rigid(matrix, what: str = "pose", tol: float = 1e-4) -> np.ndarray:
    """Return ``matrix`` as a float64 4x4 array, or raise :class:`InputError` if it is not rigid."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what}: not a numeric 4x4 matrix") from None
    if m.shape != (4, 4):
        raise InputError(f"{what}: expected a 4x4 matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{what}: matrix holds NaN or infinite values")
    if np.abs(m[:3, 3]).max() > MAX_LENGTH_MM:
        raise InputError(f"{what}: translation {m[:3, 3].tolist()} mm is beyond {MAX_LENGTH_MM:g} mm")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=tol):
        raise InputError(f"{what}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=tol) or np.linalg.det(r) < 0:
        raise InputError(f"{what}: not a rigid transform (rotation part is not orthonormal with det +1)")
    return m


def source_inside_volume(volume, world_from_camera: np.ndarray) -> bool:
    """Whether the X-ray source of a pose (its translation, world RAS mm) lies inside a volume's box.

    The box is the one the voxels cover (voxel centres +- half a voxel). A DRR rendered from inside
    the CT is not an X-ray of it, so registration starting or ending there cannot be trusted.
    ``volume`` is a ``volume.Volume`` (anything with ``ras_to_ijk`` and ``shape_ijk``).
    """
    source = np.append(np.asarray(world_from_camera, dtype=np.float64)[:3, 3], 1.0)
    ijk = (np.asarray(volume.ras_to_ijk) @ source)[:3]
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= np.asarray(volume.shape_ijk) - 0.5))


def invert_rigid(m: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid matrix."""
    m = np.asarray(m, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points ``[..., 3]``."""
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def ras_to_lps(m: np.ndarray) -> np.ndarray:
    """Change a 4x4 matrix whose output frame is RAS into LPS (and back: the map is its own inverse)."""
    return LPS_FROM_RAS @ np.asarray(m, dtype=np.float64)


# -- pose files -----------------------------------------------------------------------------------
def read_json(path: str | Path) -> dict:
    """Read a JSON file, raising :class:`InputError` naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None


def load_pose(path: str | Path) -> np.ndarray:
    """Read ``world_from_camera`` from a pose JSON (or registration result) file."""
    d = read_json(path)
    if not isinstance(d, dict) or "world_from_camera" not in d:
        raise InputError(f"{path}: no 'world_from_camera' in pose file")
    return check_rigid(d["world_from_camera"], f"{path}")


RELATIVE_VIEW_KEY = "camera0_from_camera1"
"""The key of a relative-view JSON file (``register --relative-view``)."""


def load_relative_view(path: str | Path) -> np.ndarray:
    """Read ``camera0_from_camera1`` (4x4 rigid, mm) of a second view from a JSON or a text file.

    JSON: ``{"camera0_from_camera1": [[...], [...], [...], [0, 0, 0, 1]]}``. Text (any other suffix): the 16
    numbers of the matrix, row by row, separated by spaces, commas or newlines (lines from ``#`` are comments).
    The matrix maps the second X-ray's camera frame to the first's (CONVENTIONS.md "Several views").
    """
    p = Path(path)
    if p.suffix.lower() == ".json":
        d = read_json(p)
        if not isinstance(d, dict) or RELATIVE_VIEW_KEY not in d:
            raise InputError(f"{p}: no '{RELATIVE_VIEW_KEY}' in relative-view file")
        return check_rigid(d[RELATIVE_VIEW_KEY], str(p))
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot be read as text ({e})") from None
    words = " ".join(line.split("#")[0] for line in text.splitlines()).replace(",", " ").split()
    try:
        values = [float(w) for w in words]
    except ValueError:
        raise InputError(f"{p}: expected the 16 numbers of a 4x4 matrix (row by row)") from None
    if len(values) != 16:
        raise InputError(f"{p}: expected the 16 numbers of a 4x4 matrix (row by row), got {len(values)}")
    return check_rigid(np.reshape(values, (4, 4)), str(p))


def pose_dict(world_from_camera: np.ndarray, reference: ReferenceView | None = None) -> dict:
    """The pose JSON dictionary of CONVENTIONS.md, with parameters when a reference is given."""
    d: dict = {"world_from_camera": np.asarray(world_from_camera, dtype=float).tolist()}
    if reference is not None:
        d["params"] = dict(zip(PARAM_NAMES, (float(v) for v in reference.params(world_from_camera)), strict=True))
        d["reference"] = reference.to_dict()
    return d


def save_pose(path: str | Path, world_from_camera: np.ndarray, reference: ReferenceView | None = None) -> None:
    """Write a pose JSON file."""
    write_text_atomic(json.dumps(pose_dict(world_from_camera, reference), indent=2) + "\n", path)
