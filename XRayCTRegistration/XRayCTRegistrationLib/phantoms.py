"""Synthetic CT volumes for tests, examples and the Slicer self-test.

All volumes are in Hounsfield units with an axis-aligned RAS ``ijk_to_ras`` centred on the
world origin unless an offset is given.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .volume import Volume


def _grid(shape_kji: tuple[int, int, int], spacing: tuple[float, float, float], origin: np.ndarray):
    """World RAS coordinates (x, y, z), each ``[k, j, i]``, of the voxel centres."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape_kji)
    x = origin[0] + spacing[0] * i
    y = origin[1] + spacing[1] * j
    z = origin[2] + spacing[2] * k
    return np.meshgrid(x, y, z, indexing="xy")  # each [j, i, k]


def chest_phantom(shape_ijk: tuple[int, int, int] = (64, 48, 48), spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
                  center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Volume:
    """A small chest-like CT in HU: body, lungs, heart, a segmented spine, ribs and a sternum.

    The structures are asymmetric (heart to the patient's left, a bead in the right lung), so
    poses of it are distinguishable. Axis i runs along +x (toward the patient's right), j along
    +y (anterior), k along +z (superior).

    Args:
        shape_ijk: voxels along i, j and k.
        spacing: voxel size in mm along i, j, k.
        center: world RAS position of the volume centre, mm.
    """
    ni, nj, nk = shape_ijk
    sp = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(center, dtype=np.float64) - sp * (np.array(shape_ijk) - 1) / 2
    x, y, z = _grid((nk, nj, ni), tuple(sp), origin)  # each [j, i, k]
    ext = sp * (np.array(shape_ijk) - 1) / 2  # half extents, mm
    c = np.asarray(center, dtype=np.float64)
    x, y, z = x - c[0], y - c[1], z - c[2]
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    ax, ay = 0.85 * ext[0], 0.75 * ext[1]
    body = (x / ax) ** 2 + (y / ay) ** 2 < 1
    hu[body] = 30.0
    for side in (-1, 1):  # lungs
        lung = ((x - side * 0.42 * ax) / (0.33 * ax)) ** 2 + ((y + 0.05 * ay) / (0.6 * ay)) ** 2 \
            + (z / (0.8 * ext[2])) ** 2 < 1
        hu[lung] = -820.0
    heart = ((x + 0.15 * ax) / (0.28 * ax)) ** 2 + ((y - 0.2 * ay) / (0.35 * ay)) ** 2 \
        + ((z + 0.25 * ext[2]) / (0.35 * ext[2])) ** 2 < 1
    hu[heart] = 45.0
    bead = (x - 0.45 * ax) ** 2 + (y - 0.1 * ay) ** 2 + (z - 0.3 * ext[2]) ** 2 < (2.5 * sp.max()) ** 2
    hu[bead] = 1500.0
    # spine: vertebral bodies with discs, posterior
    yv = -0.55 * ay
    pitch = max(6 * sp[2], 0.2 * ext[2])
    phase = np.mod(z + 0.5 * pitch, pitch) / pitch
    vert = ((x / (0.12 * ax)) ** 2 + ((y - yv) / (0.14 * ay)) ** 2 < 1) & (phase > 0.2)
    hu[vert] = 350.0
    shell = vert & ((x / (0.09 * ax)) ** 2 + ((y - yv) / (0.1 * ay)) ** 2 > 1)
    hu[shell] = 900.0
    spinous = (np.abs(x) < 0.03 * ax + sp[0] / 2) & (y < yv - 0.12 * ay) & (y > yv - 0.32 * ay) & (phase > 0.35)
    hu[spinous] = 800.0
    # ribs: elliptic rings at the vertebra levels, tilted down anteriorly
    r = np.sqrt((x / (0.92 * ax)) ** 2 + (y / (0.92 * ay)) ** 2)
    zr = z + 0.15 * (y + ay)
    rib_phase = np.mod(zr, pitch) / pitch
    ribs = (np.abs(r - 0.93) < 0.035) & (np.abs(rib_phase - 0.5) < 0.12) & (y > yv - 0.1 * ay) & body \
        & (np.abs(z) < 0.85 * ext[2])
    hu[ribs] = 750.0
    sternum = (np.abs(x) < 0.06 * ax) & (np.abs(y - 0.88 * ay) < 0.06 * ay) & (np.abs(z) < 0.6 * ext[2])
    hu[sternum] = 600.0
    data = np.transpose(hu, (2, 0, 1))  # [j, i, k] -> [k, j, i]
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag(sp)
    ijk_to_ras[:3, 3] = origin
    return Volume(data, ijk_to_ras)


# -- analytic phantoms: ellipsoids with exact line integrals ---------------------------------------
PROFILES = ("uniform", "smooth")
"""Ellipsoid attenuation profiles: ``uniform`` (mu0 inside) and ``smooth`` (mu0 * (1 - q) inside)."""


class Ellipsoid:
    """An attenuating ellipsoid in world RAS with exact DRR line integrals.

    Points ``x`` map to the unit ball by ``u = diag(1 / semi_axes) @ rotation.T @ (x - center)``; the
    normalised quadratic form is ``q = |u|^2`` (inside where ``q < 1``).

    Args:
        center: centre in world RAS, mm.
        semi_axes: semi-axis lengths along the columns of ``rotation``, mm.
        rotation: 3x3 rotation whose columns are the ellipsoid's axes in world RAS (default: identity).
        mu0: attenuation (1/mm): everywhere inside (``uniform``) or at the centre (``smooth``).
        profile: ``"uniform"`` (hard edge) or ``"smooth"`` (``mu = mu0 * (1 - q)``, continuous at the surface).
    """

    def __init__(self, center, semi_axes, rotation=None, mu0: float = 0.02, profile: str = "uniform") -> None:
        """Store the parameters as float64 arrays and check them."""
        if profile not in PROFILES:
            raise InputError(f"profile: expected one of {', '.join(PROFILES)}, got {profile!r}")
        self.center = np.asarray(center, dtype=np.float64).reshape(3)
        self.semi_axes = np.asarray(semi_axes, dtype=np.float64).reshape(3)
        if np.any(self.semi_axes <= 0):
            raise InputError(f"semi_axes: must be positive, got {self.semi_axes.tolist()}")
        self.rotation = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64).reshape(3, 3)
        self.mu0 = float(mu0)
        self.profile = profile

    def _unit_from_world(self) -> np.ndarray:
        """3x3 linear part of the map from world offsets (mm) to unit-ball coordinates."""
        return (self.rotation / self.semi_axes[None, :]).T

    def mu(self, points_world: np.ndarray) -> np.ndarray:
        """Attenuation (1/mm) at world points ``[..., 3]``."""
        u = (np.asarray(points_world, dtype=np.float64) - self.center) @ self._unit_from_world().T
        q = np.sum(u * u, axis=-1)
        if self.profile == "uniform":
            return np.where(q < 1.0, self.mu0, 0.0)
        return np.where(q < 1.0, self.mu0 * (1.0 - q), 0.0)

    def voxelise(self, shape_ijk: tuple[int, int, int], spacing: tuple[float, float, float],
                 volume_center=(0.0, 0.0, 0.0), supersample: int = 4) -> Volume:
        """Attenuation volume (1/mm) on an axis-aligned RAS grid centred on ``volume_center``.

        The uniform profile is partial-volume: each voxel holds the mean of ``supersample**3``
        point samples spread over it. The smooth profile is sampled at the voxel centres (its
        trilinear interpolant is then second-order accurate).
        """
        sp = np.asarray(spacing, dtype=np.float64).reshape(3)
        shape = np.asarray(shape_ijk, dtype=int).reshape(3)
        origin = np.asarray(volume_center, dtype=np.float64).reshape(3) - sp * (shape - 1) / 2
        ijk_to_ras = np.eye(4)
        ijk_to_ras[:3, :3] = np.diag(sp)
        ijk_to_ras[:3, 3] = origin
        n = 1 if self.profile == "smooth" else max(1, int(supersample))
        offsets = (np.arange(n) + 0.5) / n - 0.5  # sub-sample positions in voxel units
        k, j, i = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in shape[::-1]), indexing="ij")  # [K, J, I]
        data = np.zeros(k.shape, dtype=np.float64)
        for dk in offsets:
            for dj in offsets:
                for di in offsets:
                    pts = np.stack([(i + di) * sp[0] + origin[0], (j + dj) * sp[1] + origin[1],
                                    (k + dk) * sp[2] + origin[2]], axis=-1)
                    data += self.mu(pts)
        return Volume((data / n**3).astype(np.float32), ijk_to_ras)

    def _rays(self, camera, world_from_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel: the source and the ray to the pixel centre in unit-ball coordinates, and its length (mm)."""
        w = np.asarray(world_from_camera, dtype=np.float64)
        dirs_cam = camera.pixel_centers(np.float64)  # [rows, cols, 3]
        dirs_world = dirs_cam @ w[:3, :3].T  # [rows, cols, 3]
        m = self._unit_from_world()
        u0 = m @ (w[:3, 3] - self.center)  # [3] source, unit-ball coordinates
        v = dirs_world @ m.T  # [rows, cols, 3], so u(t) = u0 + t v, t in [0, 1] from source to pixel
        return u0, v, np.linalg.norm(dirs_cam, axis=-1)

    def closest_approach(self, camera, world_from_camera: np.ndarray) -> np.ndarray:
        """Per pixel ``[rows, cols]``: ``sqrt(min_t q)`` along the (infinite) ray; 1 means tangent to the surface."""
        u0, v, _ = self._rays(camera, world_from_camera)
        vv = np.sum(v * v, axis=-1)
        uv = v @ u0
        q_min = float(u0 @ u0) - uv * uv / vv
        return np.sqrt(np.maximum(q_min, 0.0))

    def line_integrals(self, camera, world_from_camera: np.ndarray) -> np.ndarray:
        """Exact DRR ``[rows, cols]``: the integral of mu (1/mm) along each source-to-pixel segment (mm).

        Along ``u(t) = u0 + t v`` the quadratic form is ``q(t) = |v|^2 (t - t_m)^2 + q_min``, inside
        for ``|t - t_m| < h = sqrt((1 - q_min) / |v|^2)``. The chord is ``L = 2 h |d|`` mm (``d`` the ray
        to the pixel); the uniform profile integrates to ``mu0 L`` and the smooth one to
        ``mu0 * integral (1 - q_min - |v|^2 s^2) ds |d| = mu0 * (2/3) * L * (1 - q_min)``. The object is
        assumed to lie between the source and the detector (checked).
        """
        u0, v, length = self._rays(camera, world_from_camera)
        vv = np.sum(v * v, axis=-1)
        t_m = -(v @ u0) / vv
        q_min = float(u0 @ u0) - vv * t_m * t_m
        inside = q_min < 1.0
        h = np.sqrt(np.where(inside, 1.0 - q_min, 0.0) / vv)
        hit = inside & (h > 0)
        if np.any(hit & ((t_m - h < 0) | (t_m + h > 1))):
            raise InputError("ellipsoid: not entirely between the source and the detector for this pose")
        chord = 2.0 * h * length  # mm
        if self.profile == "uniform":
            return np.where(hit, self.mu0 * chord, 0.0)
        return np.where(hit, self.mu0 * (2.0 / 3.0) * chord * (1.0 - q_min), 0.0)
