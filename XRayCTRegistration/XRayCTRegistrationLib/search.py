"""A coarse global search of the start pose's in-plane rotation and shift, before the intensity registration.

The local optimiser of :func:`registration.register` finds the optimum of the basin it starts in. Far starts often
differ from the truth mostly in the X-ray's plane: the CT's image is shifted and turned. This search renders the
start's DRR at a few rotations about the camera's axis through the CT's centre at once (one batched call of the
projector on a coarse detector), cross-correlates the edges of each with the X-ray's (FFT, zero-padded, so every
shift is scored, not only the small ones) and keeps the rotation and shift of the highest correlation. The
registration then starts from there.

Registered as the refine method ``search-opt`` (the search, then the default intensity registration). Frames and
units as in CONVENTIONS.md: poses ``world_from_camera``, mm, degrees.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError
from .geometry import Camera, ReferenceView, check_rigid, invert_rigid, transform_points
from .names import DEFAULT_METHOD
from .projector import Projector
from .volume import Volume

SEARCH_ANGLES_DEG = tuple(float(a) for a in range(-20, 21, 5))
"""In-plane rotations tried (degrees about the camera's axis through the CT's centre)."""

SEARCH_PIXELS = 64
"""The coarse detector's shorter side, pixels."""

SEARCH_SAMPLES = 128
"""Samples per ray of the coarse DRRs, at least (one per voxel of the block-averaged CT)."""


@dataclass
class SearchResult:
    """The pose the search found.

    Attributes:
        world_from_camera: 4x4 pose: the start turned by ``angle_deg`` and shifted by ``shift_mm``.
        angle_deg: in-plane rotation of the CT about the camera's axis through its centre.
        shift_mm: the CT's shift in the camera's x and y at the depth of its centre, mm.
        score: the correlation at the best rotation and shift (about 1 for identical images).
        wall_time_s: seconds the search took.
    """

    world_from_camera: np.ndarray
    angle_deg: float
    shift_mm: tuple[float, float]
    score: float
    wall_time_s: float

    def summary(self) -> str:
        """One line for result messages."""
        return (f"in-plane search: turned {self.angle_deg:+.0f} deg, shifted ({self.shift_mm[0]:+.1f}, "
                f"{self.shift_mm[1]:+.1f}) mm, correlation {self.score:.3f}")


def turned_in_plane(world_from_camera: np.ndarray, centre_cam: np.ndarray, angle_deg: float) -> np.ndarray:
    """The pose at which the CT appears turned by ``angle_deg`` about the camera's axis through ``centre_cam``.

    The CT moves by ``T(c) Rz(angle) T(-c)`` in camera coordinates, so ``world_from_camera`` becomes
    ``world_from_camera @ T(c) Rz(-angle) T(-c)``.
    """
    a = math.radians(angle_deg)
    rz = np.eye(4)
    rz[:2, :2] = [[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]  # Rz(-angle)
    to_c, from_c = np.eye(4), np.eye(4)
    to_c[:3, 3], from_c[:3, 3] = centre_cam, -centre_cam
    return world_from_camera @ to_c @ rz @ from_c


def shifted_in_plane(world_from_camera: np.ndarray, shift_cam: np.ndarray) -> np.ndarray:
    """The pose at which the CT appears moved by ``shift_cam`` (camera frame, mm): ``world_from_camera @ T(-d)``."""
    out = np.array(world_from_camera, dtype=np.float64)
    out[:3, 3] -= out[:3, :3] @ np.asarray(shift_cam, dtype=np.float64)
    return out


def edges(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of ``[H, W]`` at unit norm: zero on a flat background, blind to an offset and a gain."""
    gy, gx = np.gradient(np.asarray(image, dtype=np.float64))
    mag = np.hypot(gx, gy)
    return mag / max(float(np.linalg.norm(mag)), 1e-300)


def correlation_peak(moving: np.ndarray, fixed: np.ndarray) -> tuple[float, int, int]:
    """The shift ``(rows, cols)`` of ``moving`` that best matches ``fixed`` and its correlation.

    The correlation of their :func:`edges`, zero-padded to ``[2H, 2W]`` (a flat background pads as zero, so no shift
    is favoured for the overlap it keeps): 1 for identical images at shift 0. Shifts range over ``-H..H-1`` and
    ``-W..W-1``.
    """
    a, b = edges(moving), edges(fixed)
    h, w = a.shape
    corr = np.fft.irfft2(np.fft.rfft2(b, s=(2 * h, 2 * w)) * np.conj(np.fft.rfft2(a, s=(2 * h, 2 * w))),
                         s=(2 * h, 2 * w))
    i, j = np.unravel_index(int(np.argmax(corr)), corr.shape)
    return float(corr[i, j]), int(i - 2 * h if i >= h else i), int(j - 2 * w if j >= w else j)


def in_plane_search(volume_mu: Volume, xray: np.ndarray, camera: Camera, init_world_from_camera: np.ndarray,
                    angles_deg: Sequence[float] = SEARCH_ANGLES_DEG, size: int = SEARCH_PIXELS,
                    device: str = "cpu") -> SearchResult:
    """The in-plane rotation and shift of the start pose whose DRR correlates best with the X-ray.

    Args:
        volume_mu: attenuation (1/mm), world RAS.
        xray: attenuation-bright X-ray ``[rows, cols]``.
        camera: its geometry.
        init_world_from_camera: 4x4 start pose.
        angles_deg: rotations tried, degrees (all rendered in one batch).
        size: the coarse detector's shorter side, pixels.
        device: torch device of the rendering.
    """
    from .registration import downsample_image, level_factors, level_volume

    t0 = time.perf_counter()
    init = check_rigid(init_world_from_camera, "init_world_from_camera")
    image = np.asarray(xray, dtype=np.float32)
    if image.shape != (camera.rows, camera.cols):
        raise InputError(f"xray: shape {image.shape} does not match the camera's {camera.rows} x {camera.cols}")
    if not angles_deg:
        raise InputError("angles_deg: give at least one angle")
    coarse = camera.downsampled(max(1.0, min(camera.rows, camera.cols) / size))
    fixed = downsample_image(torch.as_tensor(image), coarse.rows, coarse.cols).numpy()
    centre = transform_points(invert_rigid(init), volume_mu.center[None])[0]  # the CT's centre, camera frame
    poses = np.stack([turned_in_plane(init, centre, a) for a in angles_deg])  # [A, 4, 4]
    # the CT block-averaged to about a coarse pixel (made once per CT and size, shared with the registration's levels)
    coarse_ct = level_volume(volume_mu, level_factors(volume_mu, coarse, float(centre[2])))
    projector = Projector(coarse_ct, coarse, n_samples=max(SEARCH_SAMPLES, max(coarse_ct.shape_ijk)), device=device)
    with torch.no_grad():
        drrs = projector(torch.as_tensor(poses, device=device)).cpu().numpy()  # [A, rows, cols]
    peaks = [correlation_peak(d, fixed) for d in drrs]
    best = int(np.argmax([p[0] for p in peaks]))
    score, di, dj = peaks[best]
    # a shift of (di, dj) pixels at the detector is a shift of the CT's centre by that times depth / sdd
    shift = np.array([dj * coarse.col_spacing, di * coarse.row_spacing, 0.0]) * centre[2] / coarse.sdd
    pose = shifted_in_plane(poses[best], shift)
    return SearchResult(pose, float(angles_deg[best]), (float(shift[0]), float(shift[1])), score,
                        time.perf_counter() - t0)


def register_search(volume_mu: Volume, xray: np.ndarray, camera: Camera, init_world_from_camera: np.ndarray, *,
                    reference: ReferenceView | None = None, progress: Callable[[float, str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, device: str = "cpu",
                    angles_deg: Sequence[float] = SEARCH_ANGLES_DEG, method: str = DEFAULT_METHOD, **options):
    """The ``search-opt`` refine method: :func:`in_plane_search`, then :func:`registration.register` from its pose.

    ``method`` and ``options`` go to the registration. The result is the registration's, its message prefixed with
    the search's summary and its time including the search's; its initial similarity is that of the searched pose.
    """
    from .registration import register

    if progress is not None:
        progress(0.0, "in-plane search")
    found = in_plane_search(volume_mu, xray, camera, init_world_from_camera, angles_deg, device=device)
    result = register(volume_mu, xray, camera, found.world_from_camera, reference=reference, method=method,
                      progress=progress, should_stop=should_stop, device=device, **options)
    result.message = f"{found.summary()}; {result.message}"
    result.wall_time_s += found.wall_time_s
    return result
