"""Registration error metrics and final-image quality (numpy).

Frames and units follow ``CONVENTIONS.md`` ("Metrics"): target points are in world RAS (mm),
poses are ``world_from_camera`` 4x4 matrices, lengths are mm and angles degrees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError
from .filters import blur_image
from .geometry import Camera, ReferenceView, check_rigid, invert_rigid, read_json, transform_points
from .volume import Volume

BONE_HU = 250.0
"""Voxels above this value (HU) count as bone for :func:`target_points`."""


def _points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if p.shape[0] == 0:
        raise InputError("points: no target points given")
    return p


def _camera_points(points_world: np.ndarray, world_from_camera: np.ndarray) -> np.ndarray:
    return transform_points(invert_rigid(check_rigid(world_from_camera)), _points(points_world))


# -- distances ----------------------------------------------------------------------------------------
def mtre(points_world: np.ndarray, world_from_camera_gt: np.ndarray, world_from_camera_est: np.ndarray) -> float:
    """Mean target registration error (mm): mean 3D distance between the points seen by the two cameras.

    ``mean_k || camera_from_world_gt P_k - camera_from_world_est P_k ||``.
    """
    a = _camera_points(points_world, world_from_camera_gt)
    b = _camera_points(points_world, world_from_camera_est)
    return float(np.linalg.norm(a - b, axis=-1).mean())


def mpd(points_world: np.ndarray, world_from_camera_gt: np.ndarray, world_from_camera_est: np.ndarray,
        camera: Camera) -> float:
    """Mean projection distance (mm on the detector plane ``z = sdd``) of the points under the two poses."""
    a = camera.detector_points(_camera_points(points_world, world_from_camera_gt))
    b = camera.detector_points(_camera_points(points_world, world_from_camera_est))
    return float(np.linalg.norm(a - b, axis=-1).mean())


def mrpd(points_world: np.ndarray, world_from_camera_gt: np.ndarray, world_from_camera_est: np.ndarray) -> float:
    """Mean re-projection distance (mm).

    Each point is placed by the true pose (``q = camera_from_world_gt P``); the estimated pose
    projects it along the ray from the source through ``camera_from_world_est P``; the distance is
    that from ``q`` to this ray (both in camera coordinates, where the source is the origin).
    """
    q = _camera_points(points_world, world_from_camera_gt)
    d = _camera_points(points_world, world_from_camera_est)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    perp = q - (q * d).sum(-1, keepdims=True) * d
    return float(np.linalg.norm(perp, axis=-1).mean())


def rotation_error_deg(world_from_camera_gt: np.ndarray, world_from_camera_est: np.ndarray) -> float:
    """Geodesic angle (degrees) of ``R_est^T R_gt``: the angle of the rotation between the two poses."""
    r_gt = check_rigid(world_from_camera_gt)[:3, :3]
    r_est = check_rigid(world_from_camera_est)[:3, :3]
    c = (np.trace(r_est.T @ r_gt) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def translation_error_mm(world_from_camera_gt: np.ndarray, world_from_camera_est: np.ndarray,
                         isocenter: np.ndarray) -> float:
    """Distance (mm) between the isocentre (world RAS, e.g. the CT centre) seen by the two cameras.

    ``|| camera_from_world_gt c - camera_from_world_est c ||``: the translation part of the error
    once rotation about ``c`` is set apart. With ``c`` the reference view's isocentre this is the
    norm of the difference of the translation parameters ``(tx, ty, tz)``.
    """
    return mtre(np.asarray(isocenter, dtype=np.float64).reshape(1, 3), world_from_camera_gt, world_from_camera_est)


def param_errors(reference: ReferenceView, world_from_camera_gt: np.ndarray,
                 world_from_camera_est: np.ndarray) -> np.ndarray:
    """Absolute per-parameter errors ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) relative to ``reference``.

    Angle differences are wrapped to [-180, 180) before the absolute value.
    """
    d = reference.params(world_from_camera_est) - reference.params(world_from_camera_gt)
    d[:3] = (d[:3] + 180.0) % 360.0 - 180.0
    return np.abs(d)


# -- rates ----------------------------------------------------------------------------------------------
def success(mtre_mm: np.ndarray | float | None = None, rotation_deg: np.ndarray | float | None = None,
            translation_mm: np.ndarray | float | None = None, *, mtre_threshold: float = 2.0,
            rotation_threshold: float = 3.0, translation_threshold: float = 3.0) -> np.ndarray:
    """Success flags ``[N]`` (or a 0-d array): every criterion given must hold, strictly below its threshold.

    - ``mtre_mm < mtre_threshold`` (default 2 mm), values ``[N]``;
    - ``rotation_deg < rotation_threshold`` (default 3 degrees) and ``translation_mm <
      translation_threshold`` (default 3 mm): SOPI's criterion. Give either one error per case
      ``[N]`` or per-parameter errors ``[N, 3]`` (then all three must be below).

    NaN errors fail.
    """
    flags = None
    for value, thr in ((mtre_mm, mtre_threshold), (rotation_deg, rotation_threshold),
                       (translation_mm, translation_threshold)):
        if value is None:
            continue
        v = np.asarray(value, dtype=np.float64)
        ok = np.isfinite(v) & (v < thr)
        if v.ndim == 2:
            ok = ok.all(-1)
        flags = ok if flags is None else flags & ok
    if flags is None:
        raise InputError("success: give at least one of mtre_mm, rotation_deg, translation_mm")
    return np.asarray(flags)


def capture_range(initial_mtre: Sequence[float] | np.ndarray, success_flags: Sequence[bool] | np.ndarray,
                  bin_mm: float = 5.0, rate: float = 0.95) -> float:
    """Capture range (mm): the upper edge of the last bin of a run from 0 in which every bin succeeds.

    Cases are binned by initial mTRE into ``[0, bin), [bin, 2 bin), ...``; walking up from the first
    bin, each non-empty bin must reach a success rate ``>= rate``; empty bins are passed over.
    Returns the upper edge of the last non-empty bin before the first failing one (0 if the first
    non-empty bin fails).
    """
    m = np.asarray(initial_mtre, dtype=np.float64).ravel()
    s = np.asarray(success_flags, dtype=bool).ravel()
    if m.shape != s.shape:
        raise InputError(f"capture_range: {m.size} initial errors but {s.size} success flags")
    if bin_mm <= 0:
        raise InputError(f"capture_range: bin_mm must be positive, got {bin_mm}")
    if m.size == 0:
        return 0.0
    idx = np.floor(m / bin_mm).astype(int)
    best = 0.0
    for b in range(int(idx.max()) + 1):
        sel = idx == b
        if not sel.any():
            continue
        if s[sel].mean() < rate:
            break
        best = (b + 1) * bin_mm
    return float(best)


# -- image quality -------------------------------------------------------------------------------------
def image_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images (over ``mask`` pixels when given), in [-1, 1]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"image_ncc: image shapes differ: {a.shape} vs {b.shape}")
    if mask is not None:
        sel = np.asarray(mask, dtype=bool)
        a, b = a[sel], b[sel]
    da, db = a - a.mean(), b - b.mean()
    den = np.sqrt((da * da).sum() * (db * db).sum())
    return float((da * db).sum() / den) if den > 0 else 0.0


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) with a gaussian window, averaged over the image.

    Window: gaussian of ``sigma`` pixels truncated at ``3.5 sigma``; constants ``K1 = 0.01``,
    ``K2 = 0.03``; population (co)variances; mirror borders, and the mean taken away from a border
    of the window's radius. ``data_range`` defaults to the joint range of both images.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"ssim: expected two 2D images of the same shape, got {a.shape} and {b.shape}")
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    if data_range <= 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    radius = int(3.5 * sigma + 0.5)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    def blur(img: np.ndarray) -> np.ndarray:
        return blur_image(img, sigma, radius, border="symmetric", dtype=np.float64)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a * mu_a
    sbb = blur(b * b) - mu_b * mu_b
    sab = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    inner = s[radius:s.shape[0] - radius, radius:s.shape[1] - radius]
    return float((inner if inner.size else s).mean())


# -- target points --------------------------------------------------------------------------------------
def target_points(volume_hu: Volume, n: int = 100, threshold_hu: float = BONE_HU) -> np.ndarray:
    """Deterministic target points (world RAS, ``[n, 3]``): centres of bone voxels (``HU > threshold_hu``).

    The bone voxels are taken in storage order and ``n`` of them picked at evenly spaced positions
    in that list (all of them when there are fewer). Without bone voxels, the eight corners of the
    volume's box of voxel centres are returned instead.
    """
    if n < 1:
        raise InputError(f"target_points: n must be at least 1, got {n}")
    kji = np.argwhere(volume_hu.data > threshold_hu)  # [M, 3] (k, j, i)
    if len(kji) == 0:
        ni, nj, nk = volume_hu.shape_ijk
        ijk = np.array([[i, j, k] for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)], dtype=np.float64)
    else:
        pick = np.unique(np.linspace(0, len(kji) - 1, min(n, len(kji))).round().astype(int))
        ijk = kji[pick][:, ::-1].astype(np.float64)
    return transform_points(volume_hu.ijk_to_ras, ijk)


# -- one pose against the ground truth ------------------------------------------------------------------
def evaluate_pose(points_world: np.ndarray, world_from_camera_gt: np.ndarray, world_from_camera_est: np.ndarray,
                  camera: Camera | None = None, reference: ReferenceView | None = None) -> dict[str, float]:
    """Every error of one estimated pose (mm, degrees) in a JSON-ready dictionary.

    Always: ``mtre_mm``, ``mrpd_mm``, ``rotation_error_deg``, success at mTRE < 2 mm. With a camera:
    ``mpd_mm``. With a reference view: ``translation_error_mm`` (isocentre distance), the
    per-parameter errors and SOPI's success (rotation < 3 degrees and translation < 3 mm).
    """
    out: dict[str, float] = {
        "mtre_mm": mtre(points_world, world_from_camera_gt, world_from_camera_est),
        "mrpd_mm": mrpd(points_world, world_from_camera_gt, world_from_camera_est),
        "rotation_error_deg": rotation_error_deg(world_from_camera_gt, world_from_camera_est),
    }
    if camera is not None:
        out["mpd_mm"] = mpd(points_world, world_from_camera_gt, world_from_camera_est, camera)
    out["success_mtre_lt_2mm"] = bool(success(mtre_mm=out["mtre_mm"]))
    if reference is not None:
        out["translation_error_mm"] = translation_error_mm(world_from_camera_gt, world_from_camera_est,
                                                           reference.isocenter)
        for name, err in zip(("rx", "ry", "rz", "tx", "ty", "tz"),
                             param_errors(reference, world_from_camera_gt, world_from_camera_est), strict=True):
            out[f"{name}_error"] = float(err)
        out["success_rot_lt_3deg_trans_lt_3mm"] = bool(
            success(rotation_deg=out["rotation_error_deg"], translation_mm=out["translation_error_mm"]))
    out["n_points"] = int(_points(points_world).shape[0])
    return out


def load_points(path: str) -> np.ndarray:
    """Target points ``[n, 3]`` (world RAS, mm) from a JSON file: a list of ``[x, y, z]`` or ``{"points": [...]}``."""
    d = read_json(path)
    pts = d.get("points") if isinstance(d, dict) else d
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: target points must be a list of [x, y, z]") from None
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0 or not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: target points must be a non-empty list of finite [x, y, z]")
    return arr
