"""Point-to-plane correspondence (PPC) registration: surface and contour points, the weighted PPC solver.

The geometry of the iterative PPC framework (Wang et al., IEEE TMI 2017), used by the classical
``dppc`` method (:mod:`dppc`) and the learned ``ppc`` method (:mod:`ppc_learned`):

1. **Surface points** (:func:`surface_points`): voxels of the CT on the bone boundary (attenuation
   crossing :data:`BONE_HU` in HU terms) with their 3D gradient directions (normals), world RAS, mm.
2. **Apparent contour** (:func:`contour_points`): at a pose, the surface points whose viewing ray from
   the source is tangent to the surface (``|n . d|`` small, ``d`` the unit ray direction), projected
   to the detector.
3. **PPC constraints** (:func:`ppc_system`): a contour point ``w`` (camera frame) whose projection is
   seen at the detector point ``q`` (camera frame, ``z = sdd``) must, after the small motion
   ``dw = omega x (w - c) + v``, lie in the plane through the source that contains ``q`` and the
   contour's tangent direction ``l = n x e_z``. Its normal is ``m = q x l / |q x l|``, and the
   constraint ``m . (w + dw) = 0`` is linear in ``x = (omega, v)``: ``[(w - c) x m, m] . x = -m . w``.
4. **Solver** (:func:`solve_motion`): the closed-form weighted least-squares ``x`` (a differentiable
   torch layer), damped by ``reg`` times the diagonal of the normal matrix.
5. **Update** (:func:`motion_matrix`, :func:`apply_motion`): ``x`` as a 4x4 rigid motion of the CT in the
   camera frame (rotation by ``exp([omega]x)`` about ``c``, then ``v``), and the new pose
   ``world_from_camera @ inv(M)``.

Frames: camera frame of CONVENTIONS.md (source at the origin, +z toward the detector, detector plane
``z = sdd``); ``omega`` in radians, ``v`` and all lengths in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .geometry import Camera, invert_rigid, transform_points
from .volume import Volume, block_average, hu_to_mu

BONE_HU = 250.0
"""Surface threshold in HU (the evaluation's bone level); the attenuation threshold is ``hu_to_mu(BONE_HU)``."""

SURFACE_SPACING_MM = 1.5
"""The CT is block-averaged to at least this voxel size before the surface is extracted."""

CONTOUR_COS = 0.15
"""A surface point is on the apparent contour when ``|n . d|`` is below this (about 81-99 degrees)."""


@dataclass
class SurfacePoints:
    """Points on the CT's bone surface.

    Attributes:
        points: ``[N, 3]`` world RAS positions, mm.
        normals: ``[N, 3]`` unit gradient directions of the attenuation at the points, world RAS
            (pointing into the bone).
    """

    points: np.ndarray
    normals: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def surface_points(volume_mu: Volume, n_points: int = 4000, threshold_mu: float | None = None,
                   seed: int = 0) -> SurfacePoints:
    """Bone-boundary voxels of an attenuation volume with their gradient normals (kept with the volume).

    A voxel is on the boundary when its attenuation is at least ``threshold_mu`` (default
    ``hu_to_mu(BONE_HU)``) and one of its 6 neighbours is below it. The volume is first block-averaged
    to :data:`SURFACE_SPACING_MM`; at most ``n_points`` boundary voxels are kept (a fixed random subset).

    Raises:
        InputError: the volume holds no bone boundary at this threshold.
    """
    thr = float(hu_to_mu(np.array(BONE_HU))) if threshold_mu is None else float(threshold_mu)
    key = ("ppc-surface", int(n_points), thr, int(seed))
    return volume_mu.derived(key, lambda: _extract_surface(volume_mu, n_points, thr, seed))


def _extract_surface(volume_mu: Volume, n_points: int, thr: float, seed: int) -> SurfacePoints:
    factors = [max(1, int(SURFACE_SPACING_MM // s)) for s in volume_mu.spacing]
    vol = block_average(volume_mu, factors)
    a = vol.data  # [k, j, i]
    inside = a >= thr
    below = np.zeros_like(inside)
    for axis in range(3):
        for shift in (1, -1):
            below |= ~np.roll(inside, shift, axis=axis)
    boundary = inside & below
    for axis in range(3):  # no wrap-around at the faces
        idx = [slice(None)] * 3
        for face in (0, -1):
            idx[axis] = face
            boundary[tuple(idx)] = False
    kji = np.argwhere(boundary)
    if len(kji) < 6:
        raise InputError(f"ppc: the CT has no bone surface at {BONE_HU:g} HU (threshold {thr:.4f}/mm); "
                         "the point-to-plane methods need bone")
    g_k, g_j, g_i = np.gradient(a)
    grad_ijk = np.stack([g_i[tuple(kji.T)], g_j[tuple(kji.T)], g_k[tuple(kji.T)]], axis=1)
    a3 = vol.ijk_to_ras[:3, :3]
    grad = grad_ijk @ np.linalg.inv(a3)  # gradient in world: A^-T g_ijk, as rows
    norm = np.linalg.norm(grad, axis=1)
    keep = norm > 1e-12
    kji, grad, norm = kji[keep], grad[keep], norm[keep]
    if len(kji) > n_points:
        sel = np.sort(np.random.default_rng(seed).choice(len(kji), n_points, replace=False))
        kji, grad, norm = kji[sel], grad[sel], norm[sel]
    pts = transform_points(vol.ijk_to_ras, kji[:, ::-1].astype(np.float64))
    return SurfacePoints(pts, grad / norm[:, None])


@dataclass
class Contour:
    """The apparent contour at one pose.

    Attributes:
        index: indices into the :class:`SurfacePoints`.
        points: ``[M, 3]`` camera-frame positions, mm.
        normals: ``[M, 3]`` camera-frame unit normals.
        pixels: ``[M, 2]`` projections, continuous pixel ``(row, col)`` (pixel centres at integers).
        cos: ``[M]`` ``|n . d|`` of each point.
    """

    index: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    pixels: np.ndarray
    cos: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


def contour_points(surface: SurfacePoints, camera: Camera, world_from_camera: np.ndarray,
                   max_cos: float = CONTOUR_COS, max_points: int = 600, margin_px: float = 2.0) -> Contour:
    """The apparent contour at a pose: surface points with ``|n . d| < max_cos`` projecting on the detector.

    ``d`` is the unit direction of the ray from the source through the point (camera frame). Points
    within ``margin_px`` pixels of the detector border are dropped; of the rest, the ``max_points``
    with the smallest ``|n . d|`` are kept.
    """
    cam_from_world = invert_rigid(world_from_camera)
    p = transform_points(cam_from_world, surface.points)
    n = surface.normals @ cam_from_world[:3, :3].T
    d = p / np.linalg.norm(p, axis=1, keepdims=True)
    cos = np.abs((n * d).sum(axis=1))
    rc = camera.project_camera_points(p)
    with np.errstate(invalid="ignore"):
        on = (cos < max_cos) & (p[:, 2] > 0) & (rc[:, 0] >= margin_px) & (rc[:, 1] >= margin_px) \
            & (rc[:, 0] <= camera.rows - 1 - margin_px) & (rc[:, 1] <= camera.cols - 1 - margin_px)
        on &= np.linalg.norm(n[:, :2], axis=1) > 0.5  # the contour's image direction is defined
    idx = np.flatnonzero(on)
    if len(idx) > max_points:
        idx = np.sort(idx[np.argsort(cos[idx], kind="stable")[:max_points]])
    return Contour(idx, p[idx], n[idx], rc[idx], cos[idx])


# -- detector points ------------------------------------------------------------------------------------------
def pixels_to_detector(rc: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Continuous pixel ``(row, col)`` ``[..., 2]`` -> camera-frame detector points ``[..., 3]`` (mm, ``z = sdd``).

    The pixel-centre formula of CONVENTIONS.md; differentiable.
    """
    x = (rc[..., 1] + 0.5 - camera.cols / 2) * camera.col_spacing + camera.x0
    y = (rc[..., 0] + 0.5 - camera.rows / 2) * camera.row_spacing + camera.y0
    return torch.stack([x, y, torch.full_like(x, camera.sdd)], dim=-1)


def project_torch(points_cam: torch.Tensor, camera: Camera) -> torch.Tensor:
    """Camera-frame points ``[..., 3]`` -> continuous pixel ``(row, col)`` ``[..., 2]``; differentiable."""
    z = points_cam[..., 2].clamp(min=1e-6)
    col = (camera.sdd * points_cam[..., 0] / z - camera.x0) / camera.col_spacing + camera.cols / 2 - 0.5
    row = (camera.sdd * points_cam[..., 1] / z - camera.y0) / camera.row_spacing + camera.rows / 2 - 0.5
    return torch.stack([row, col], dim=-1)


# -- the PPC model --------------------------------------------------------------------------------------------
def ppc_system(points: torch.Tensor, normals: torch.Tensor, targets: torch.Tensor, center: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPC constraints ``A x = b`` of contour points and their corresponding detector points.

    Args:
        points: ``[..., N, 3]`` contour points ``w``, camera frame, mm.
        normals: ``[..., N, 3]`` their surface normals ``n``, camera frame.
        targets: ``[..., N, 3]`` the detector points ``q`` (camera frame, ``z = sdd``) where each point is seen.
        center: ``[..., 3]`` rotation centre ``c`` of the motion, camera frame, mm.

    Returns:
        ``A`` ``[..., N, 6]`` and ``b`` ``[..., N]`` for ``x = (omega [rad], v [mm])``; each row is a signed
        distance in mm from the plane through the source, ``q`` and the contour tangent ``n x e_z``.
    """
    ez = torch.zeros_like(normals)
    ez[..., 2] = 1.0
    tangent = torch.linalg.cross(normals, ez, dim=-1)
    m = torch.linalg.cross(targets, tangent, dim=-1)
    m = m / m.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    a = torch.cat([torch.linalg.cross(points - center.unsqueeze(-2), m, dim=-1), m], dim=-1)
    b = -(m * points).sum(-1)
    return a, b


def solve_motion(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None, reg: float = 1e-3
                 ) -> torch.Tensor:
    """Closed-form weighted least squares ``x = (A^T W A + reg D)^-1 A^T W b``, differentiable.

    ``D`` is the diagonal of ``A^T W A`` (plus a tiny floor), so ``reg`` is scale-free; ``a`` ``[..., N, 6]``,
    ``b`` ``[..., N]``, ``weights`` ``[..., N]`` (default 1). Returns ``x`` ``[..., 6]`` = ``(omega [rad], v [mm])``.
    """
    w = torch.ones_like(b) if weights is None else weights
    aw = a * w.unsqueeze(-1)
    ata = aw.transpose(-1, -2) @ a
    diag = torch.diagonal(ata, dim1=-2, dim2=-1)
    damp = reg * diag + 1e-14 * diag.mean(-1, keepdim=True).clamp(min=1e-12)
    lhs = ata + torch.diag_embed(damp)
    rhs = (aw.transpose(-1, -2) @ b.unsqueeze(-1))
    return torch.linalg.solve(lhs, rhs).squeeze(-1)


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices ``[..., 3, 3]`` of vectors ``[..., 3]``."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack([torch.stack([z, -w, y], -1), torch.stack([w, z, -x], -1),
                        torch.stack([-y, x, z], -1)], -2)


def motion_matrix(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """4x4 rigid motion ``[..., 4, 4]``: rotation ``exp([omega]x)`` about ``center``, then translation ``v``.

    ``p -> R (p - c) + c + v``; ``x`` ``[..., 6]`` = ``(omega [rad], v [mm])``; differentiable.
    """
    r = torch.linalg.matrix_exp(skew(x[..., :3]))
    t = center - (r @ center.unsqueeze(-1)).squeeze(-1) + x[..., 3:]
    out = torch.zeros(x.shape[:-1] + (4, 4), dtype=x.dtype, device=x.device)
    out[..., :3, :3] = r
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def apply_motion(world_from_camera: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """The pose that sees the CT moved by ``motion`` (camera frame): ``world_from_camera @ inv(motion)``."""
    return np.asarray(world_from_camera, dtype=np.float64) @ invert_rigid(np.asarray(motion, dtype=np.float64))


def ppc_step(contour: Contour, targets_rc: np.ndarray, weights: np.ndarray, camera: Camera,
             world_from_camera: np.ndarray, reg: float = 1e-3, robust: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One PPC update: the new pose and the motion ``x`` from correspondences at pixel ``targets_rc`` ``[M, 2]``.

    The rotation centre is the weighted centroid of the contour points. ``robust`` > 0 re-solves that many
    times with the weights multiplied by Tukey's biweight of the residuals (scale: 4.685 x 1.4826 x their
    weighted median absolute value), which discounts wrong correspondences.
    """
    dt = torch.float64
    pts = torch.as_tensor(contour.points, dtype=dt)
    nrm = torch.as_tensor(contour.normals, dtype=dt)
    w = torch.as_tensor(weights, dtype=dt)
    center = (pts * w[:, None]).sum(0) / w.sum().clamp(min=1e-12)
    q = pixels_to_detector(torch.as_tensor(targets_rc, dtype=dt), camera)
    a, b = ppc_system(pts, nrm, q, center)
    x = solve_motion(a, b, w, reg)
    for _ in range(int(robust)):
        r = (a @ x - b).abs()
        scale = 4.685 * 1.4826 * r[w > 0].median().clamp(min=1e-6)
        x = solve_motion(a, b, w * (1 - (r / scale).clamp(max=1) ** 2) ** 2, reg)
    m = motion_matrix(x, center).numpy()
    return apply_motion(world_from_camera, m), x.numpy()
