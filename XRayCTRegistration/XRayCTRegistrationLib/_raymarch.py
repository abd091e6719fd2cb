"""Compiled CPU kernels for the DRR ray march (numba, one ray per parallel iteration).

Frames: the volume is indexed ``(i, j, k)`` (voxel centres at integers, stored ``[k, j, i]``). A
pose enters as ``ijk_from_camera = [A | b]``: the source sits at ``b`` and the ray to the pixel
centre ``d`` (camera frame, mm) runs along ``A d``, so sample points are ``p(t) = b + t A d`` with
``t = 0`` at the source and ``t = 1`` at the pixel. Each ray is clipped to the volume box
``[-0.5, n - 0.5]`` and takes ``n_samples`` midpoint samples between its entry and exit; the pixel
is ``sum_i mu(p_i) * step`` with ``step`` in mm, so the result is a line integral of attenuation.

The volume is the box ``[-0.5, n - 0.5]`` of its voxels: attenuation is zero outside it and trilinear
inside, clamped to the edge voxels in the outer half-voxel shell (the interpolant of
``grid_sample(..., padding_mode="border", align_corners=True)`` on points in the box). A ray through
the shell of a face that cuts through tissue so sees the edge voxel's value, as an exact (Siddon)
integral of the voxel boxes does, instead of a ramp down to zero. The kernels read a copy of the
volume padded by one voxel on every side with its edge values (see :func:`pad_volume`), so lookups
never test bounds.

Pose gradient: for fixed ``t_near`` and ``t_far``, with ``g_i`` the gradient of the trilinear
interpolant at ``p_i`` (index space), ``dI/db = sum_i g_i step`` and ``dI/dA = (sum_i g_i t_i step) d^T``.
The gradient kernel stores these two 3-vectors per ray; :func:`projector.add_sample_slide` then adds what
the samples' slide with the entry and exit points contributes, and the caller contracts the result with
the incoming image gradient.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["march", "march_with_jacobian", "pad_volume"]


def pad_volume(data_kji: np.ndarray) -> np.ndarray:
    """Copy ``[K, J, I]`` into a C-contiguous float32 ``[K + 2, J + 2, I + 2]`` array, repeating the edge voxels."""
    return np.ascontiguousarray(np.pad(np.asarray(data_kji, dtype=np.float32), 1, mode="edge"))


@njit(fastmath=True, cache=True, inline="always")
def _clip(o0, o1, o2, d0, d1, d2, n0, n1, n2):
    """Entry and exit ``t`` of the ray ``o + t d`` through the box ``[-0.5, n - 0.5]^3``, within ``[0, 1]``."""
    t_near = 0.0
    t_far = 1.0
    for axis in range(3):
        if axis == 0:
            o, d, n = o0, d0, n0
        elif axis == 1:
            o, d, n = o1, d1, n1
        else:
            o, d, n = o2, d2, n2
        lo = -0.5 - o
        hi = n - 0.5 - o
        if abs(d) < 1e-12:
            if lo > 0.0 or hi < 0.0:  # parallel to this slab and outside it
                return 0.0, 0.0
            continue
        ta = lo / d
        tb = hi / d
        if ta > tb:
            ta, tb = tb, ta
        t_near = max(t_near, ta)
        t_far = min(t_far, tb)
    if t_far < t_near:
        t_far = t_near
    return t_near, t_far


@njit(parallel=True, fastmath=True, cache=True)
def march(vol: np.ndarray, ijk_from_cam: np.ndarray, dirs: np.ndarray, n_samples: int,
          out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Line integrals for every pose and ray.

    Args:
        vol: edge-padded attenuation ``[K + 2, J + 2, I + 2]`` float32, 1/mm.
        ijk_from_cam: ``[B, 3, 4]`` float64, ``[A | b]`` per pose.
        dirs: ``[R, 3]`` float64 pixel centres in the camera frame, mm.
        n_samples: samples per ray.
        out: ``[B, R]`` float32, written with the line integrals (mm * 1/mm).
    """
    nk = vol.shape[0] - 2
    nj = vol.shape[1] - 2
    ni = vol.shape[2] - 2
    nb = ijk_from_cam.shape[0]
    nr = dirs.shape[0]
    for idx in prange(nb * nr):
        bi = idx // nr
        r = idx - bi * nr
        m = ijk_from_cam[bi]
        x, y, z = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        d0 = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z
        d1 = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z
        d2 = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z
        # +1: index in the padded volume
        o0 = m[0, 3]
        o1 = m[1, 3]
        o2 = m[2, 3]
        t0, t1 = _clip(o0, o1, o2, d0, d1, d2, ni, nj, nk)
        if t1 <= t0:
            out[bi, r] = 0.0
            continue
        dt = (t1 - t0) / n_samples
        step_mm = dt * math.sqrt(x * x + y * y + z * z)
        p0 = o0 + 1.0 + (t0 + 0.5 * dt) * d0
        p1 = o1 + 1.0 + (t0 + 0.5 * dt) * d1
        p2 = o2 + 1.0 + (t0 + 0.5 * dt) * d2
        s0 = dt * d0
        s1 = dt * d1
        s2 = dt * d2
        acc = np.float32(0.0)
        for s in range(n_samples):
            fi = p0 + s * s0
            fj = p1 + s * s1
            fk = p2 + s * s2
            i0 = min(max(int(fi), 0), ni)
            j0 = min(max(int(fj), 0), nj)
            k0 = min(max(int(fk), 0), nk)
            wi = np.float32(fi - i0)
            wj = np.float32(fj - j0)
            wk = np.float32(fk - k0)
            v000 = vol[k0, j0, i0]
            v001 = vol[k0, j0, i0 + 1]
            v010 = vol[k0, j0 + 1, i0]
            v011 = vol[k0, j0 + 1, i0 + 1]
            v100 = vol[k0 + 1, j0, i0]
            v101 = vol[k0 + 1, j0, i0 + 1]
            v110 = vol[k0 + 1, j0 + 1, i0]
            v111 = vol[k0 + 1, j0 + 1, i0 + 1]
            c00 = v000 + wi * (v001 - v000)
            c01 = v010 + wi * (v011 - v010)
            c10 = v100 + wi * (v101 - v100)
            c11 = v110 + wi * (v111 - v110)
            e0 = c00 + wj * (c01 - c00)
            e1 = c10 + wj * (c11 - c10)
            acc += e0 + wk * (e1 - e0)
        out[bi, r] = acc * step_mm


@njit(parallel=True, fastmath=True, cache=True)
def march_with_jacobian(vol: np.ndarray, ijk_from_cam: np.ndarray, dirs: np.ndarray, n_samples: int,
                        out: np.ndarray, jac: np.ndarray) -> None:  # pragma: no cover - compiled
    """:func:`march` plus, per ray, the two 3-vectors of the pose gradient.

    Args:
        vol: edge-padded attenuation ``[K + 2, J + 2, I + 2]`` float32, 1/mm.
        ijk_from_cam: ``[B, 3, 4]`` float64, ``[A | b]`` per pose.
        dirs: ``[R, 3]`` float64 pixel centres in the camera frame, mm.
        n_samples: samples per ray.
        out: ``[B, R]`` float32, written with the line integrals.
        jac: ``[B, R, 6]`` float32, written with ``sum_i g_i step`` (entries 0-2, the gradient of the
            pixel with respect to ``b``) and ``sum_i g_i t_i step`` (entries 3-5; the gradient with
            respect to ``A`` is its outer product with the ray's pixel centre).
    """
    nk = vol.shape[0] - 2
    nj = vol.shape[1] - 2
    ni = vol.shape[2] - 2
    nb = ijk_from_cam.shape[0]
    nr = dirs.shape[0]
    for idx in prange(nb * nr):
        bi = idx // nr
        r = idx - bi * nr
        m = ijk_from_cam[bi]
        x, y, z = dirs[r, 0], dirs[r, 1], dirs[r, 2]
        d0 = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z
        d1 = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z
        d2 = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z
        o0 = m[0, 3]
        o1 = m[1, 3]
        o2 = m[2, 3]
        t0, t1 = _clip(o0, o1, o2, d0, d1, d2, ni, nj, nk)
        if t1 <= t0:
            out[bi, r] = 0.0
            for c in range(6):
                jac[bi, r, c] = 0.0
            continue
        dt = (t1 - t0) / n_samples
        step_mm = dt * math.sqrt(x * x + y * y + z * z)
        p0 = o0 + 1.0 + (t0 + 0.5 * dt) * d0
        p1 = o1 + 1.0 + (t0 + 0.5 * dt) * d1
        p2 = o2 + 1.0 + (t0 + 0.5 * dt) * d2
        s0 = dt * d0
        s1 = dt * d1
        s2 = dt * d2
        acc = np.float32(0.0)
        gb0 = np.float32(0.0)
        gb1 = np.float32(0.0)
        gb2 = np.float32(0.0)
        gt0 = np.float32(0.0)
        gt1 = np.float32(0.0)
        gt2 = np.float32(0.0)
        for s in range(n_samples):
            fi = p0 + s * s0
            fj = p1 + s * s1
            fk = p2 + s * s2
            t = np.float32(t0 + (s + 0.5) * dt)
            i0 = min(max(int(fi), 0), ni)
            j0 = min(max(int(fj), 0), nj)
            k0 = min(max(int(fk), 0), nk)
            wi = np.float32(fi - i0)
            wj = np.float32(fj - j0)
            wk = np.float32(fk - k0)
            v000 = vol[k0, j0, i0]
            v001 = vol[k0, j0, i0 + 1]
            v010 = vol[k0, j0 + 1, i0]
            v011 = vol[k0, j0 + 1, i0 + 1]
            v100 = vol[k0 + 1, j0, i0]
            v101 = vol[k0 + 1, j0, i0 + 1]
            v110 = vol[k0 + 1, j0 + 1, i0]
            v111 = vol[k0 + 1, j0 + 1, i0 + 1]
            # differences along i, then their interpolation in j and k: d(value)/di
            x00 = v001 - v000
            x01 = v011 - v010
            x10 = v101 - v100
            x11 = v111 - v110
            c00 = v000 + wi * x00
            c01 = v010 + wi * x01
            c10 = v100 + wi * x10
            c11 = v110 + wi * x11
            y0 = x00 + wj * (x01 - x00)
            y1 = x10 + wj * (x11 - x10)
            g0 = y0 + wk * (y1 - y0)
            g1 = (c01 - c00) + wk * ((c11 - c10) - (c01 - c00))
            e0 = c00 + wj * (c01 - c00)
            e1 = c10 + wj * (c11 - c10)
            g2 = e1 - e0
            acc += e0 + wk * g2
            gb0 += g0
            gb1 += g1
            gb2 += g2
            gt0 += g0 * t
            gt1 += g1 * t
            gt2 += g2 * t
        out[bi, r] = acc * step_mm
        jac[bi, r, 0] = gb0 * step_mm
        jac[bi, r, 1] = gb1 * step_mm
        jac[bi, r, 2] = gb2 * step_mm
        jac[bi, r, 3] = gt0 * step_mm
        jac[bi, r, 4] = gt1 * step_mm
        jac[bi, r, 5] = gt2 * step_mm
