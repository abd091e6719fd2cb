"""CPU steps of the physics DRR after the ray march, in numba and numpy, and their adjoints.

The numba backend of :class:`physics.PhysicsProjector` runs its march (:func:`_raymarch.march_pair`) in
numba's thread pool (:func:`_raymarch.over_rays`); the steps here (spectral sum, scatter fog, detector blur,
log, and the pose gradient's contraction) run in that same pool or on the calling thread, never in torch's:
on a loaded 2-core machine, torch's OpenMP threads spinning between small operations took the cores the
march needed (``benchmarks/results/physics_speed.md``). They compute the torch model of :mod:`.physics`
(step numbers of its docstring), which the tests compare them with.

The image operators are separable: each is a pair of 1D operators ``(rows, cols)`` applied as
``R x C^T`` to an image ``x [H, W]``. A 1D operator is stored padded per output sample
(``index [n_out, K]`` int64, ``weight [n_out, K]`` float64; unused slots have weight 0), built from its
dense matrix, so its transpose (the adjoint) is the same construction of the transposed matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from ._raymarch import over_rays

LOG_FLOOR = 1e-30
"""Smallest intensity passed to the log (the torch model's clamp)."""


@njit(fastmath=True, cache=True)
def _spectral_sum_part(start: int, stop: int, paths: np.ndarray, weights: np.ndarray, att: np.ndarray,
                       intensity: np.ndarray, d_intensity: np.ndarray,
                       with_derivative: bool) -> None:  # pragma: no cover - compiled
    """The rays ``[start, stop)`` (``idx = b R + r``) of :func:`spectral_sum`."""
    n_r = paths.shape[2]
    n_m = paths.shape[1]
    for idx in range(start, stop):
        b = idx // n_r
        r = idx - b * n_r
        total = 0.0
        if with_derivative:
            for m in range(n_m):
                d_intensity[b, m, r] = 0.0
        for k in range(weights.shape[0]):
            depth = 0.0
            for m in range(n_m):
                depth += att[k, m] * paths[b, m, r]
            e = weights[k] * math.exp(-depth)
            total += e
            if with_derivative:
                for m in range(n_m):
                    d_intensity[b, m, r] -= att[k, m] * e
        intensity[b, r] = total


def spectral_sum(paths: np.ndarray, weights: np.ndarray, att: np.ndarray, intensity: np.ndarray,
                 d_intensity: np.ndarray, with_derivative: bool) -> None:
    """Step 2 per ray: ``I = sum_n w_n exp(-sum_m a_nm p_m)`` and ``dI/dp_m = -sum_n a_nm w_n exp(...)``.

    The rays are split over threads as the march's are (:func:`_raymarch.over_rays`): bit-identical results
    for any thread count and whether the kernel was compiled or loaded from numba's cache.

    Args:
        paths: ``[B, M, R]`` float32, g/cm^3 * mm.
        weights: ``[n]`` bin weights (sum 1).
        att: ``[n, M]`` mass attenuation per bin times 0.1 (per g/cm^3 * mm).
        intensity: out ``[B, R]`` float64.
        d_intensity: out ``[B, M, R]`` float32, ``dI/dp`` (written when ``with_derivative``).
        with_derivative: whether to compute ``dI/dp``.
    """
    over_rays(_spectral_sum_part, paths.shape[0] * paths.shape[2], paths, weights, att, intensity, d_intensity,
              with_derivative)


@njit(cache=True)
def _apply_rows(x: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``y[i, :] = sum_k weight[i, k] x[index[i, k], :]`` for ``x [H, W]``; returns ``[n_out, W]``."""
    y = np.zeros((index.shape[0], x.shape[1]))
    for i in range(index.shape[0]):
        for k in range(index.shape[1]):
            w = weight[i, k]
            if w != 0.0:
                src = index[i, k]
                for j in range(x.shape[1]):
                    y[i, j] += w * x[src, j]
    return y


@njit(cache=True)
def _apply_cols(x: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``y[:, j] = sum_k weight[j, k] x[:, index[j, k]]`` for ``x [H, W]``; returns ``[H, n_out]``."""
    y = np.zeros((x.shape[0], index.shape[0]))
    for i in range(x.shape[0]):
        for j in range(index.shape[0]):
            acc = 0.0
            for k in range(index.shape[1]):
                acc += weight[j, k] * x[i, index[j, k]]
            y[i, j] = acc
    return y


@dataclass(frozen=True)
class Operator1D:
    """A 1D linear operator ``[n_out, n_in]`` stored per output sample (module docstring)."""

    index: np.ndarray
    weight: np.ndarray
    dense: np.ndarray

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> Operator1D:
        """The padded storage of a dense matrix ``[n_out, n_in]``."""
        dense = np.asarray(dense, dtype=np.float64)
        nz = dense != 0
        k = max(1, int(nz.sum(1).max()))
        index = np.zeros((dense.shape[0], k), dtype=np.int64)
        weight = np.zeros((dense.shape[0], k))
        for i in range(dense.shape[0]):
            cols = np.flatnonzero(nz[i])
            index[i, :cols.size] = cols
            weight[i, :cols.size] = dense[i, cols]
        return cls(index, weight, dense)

    def transpose(self) -> Operator1D:
        """The adjoint ``[n_in, n_out]``."""
        return Operator1D.from_dense(self.dense.T)


@dataclass(frozen=True)
class Separable:
    """An image operator ``x -> R x C^T`` (``R`` on the rows, ``C`` on the columns)."""

    rows: Operator1D
    cols: Operator1D

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The operator on one image ``[H, W]`` (float64)."""
        y = _apply_rows(x, self.rows.index, self.rows.weight)
        return _apply_cols(y, self.cols.index, self.cols.weight)

    def transpose(self) -> Separable:
        """The adjoint operator."""
        return Separable(self.rows.transpose(), self.cols.transpose())


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """:func:`filters.gaussian_blur` along one axis of length ``n`` with replicated borders, ``[n, n]``.

    Radius ``max(1, ceil(3 sigma))``, weights normalised to sum 1; identity for ``sigma <= 1e-3``.
    """
    if sigma <= 1e-3:
        return np.eye(n)
    radius = max(1, math.ceil(3 * sigma))
    r = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (r / sigma) ** 2)
    k /= k.sum()
    out = np.zeros((n, n))
    for i in range(n):
        np.add.at(out[i], np.clip(i + r, 0, n - 1), k)
    return out


def pool_matrix(n: int, k: int) -> np.ndarray:
    """Average pooling by ``k`` with a partial last window (``avg_pool2d(ceil_mode=True)``), ``[ceil(n/k), n]``."""
    m = -(-n // k)
    out = np.zeros((m, n))
    for i in range(m):
        lo, hi = i * k, min((i + 1) * k, n)
        out[i, lo:hi] = 1.0 / (hi - lo)
    return out


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear interpolation from ``n_in`` to ``n_out`` samples (``interpolate(bilinear, align_corners=False)``)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    out = np.zeros((n_out, n_in))
    np.add.at(out, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(out, (np.arange(n_out), i1), lam)
    return out


def lowpass_operators(rows: int, cols: int, sigma_px: float) -> list[Separable]:
    """:func:`physics.lowpass` as separable steps (pool by ``floor(sigma / 2)``, blur, interpolate back)."""
    k = max(1, int(sigma_px // 2))
    if k == 1:
        return [Separable(*(Operator1D.from_dense(gaussian_matrix(n, sigma_px)) for n in (rows, cols)))]
    small = (-(-rows // k), -(-cols // k))
    return [Separable(*(Operator1D.from_dense(pool_matrix(n, k)) for n in (rows, cols))),
            Separable(*(Operator1D.from_dense(gaussian_matrix(n, sigma_px / k)) for n in small)),
            Separable(*(Operator1D.from_dense(resize_matrix(s, n)) for s, n in zip(small, (rows, cols), strict=True)))]


@dataclass(frozen=True)
class DetectorOperators:
    """Steps 3-4 of :mod:`.physics` as separable operators: the fog's low-pass and the detector blur.

    ``detect(I_p) = B (I_p + f L I_p) / (1 + f)`` with ``L`` the low-pass (steps applied in order) and ``B``
    the blur (``None``: no blur).
    """

    lowpass: tuple[Separable, ...]
    lowpass_adjoint: tuple[Separable, ...]
    blur: Separable | None
    blur_adjoint: Separable | None

    @classmethod
    def build(cls, rows: int, cols: int, scatter_sigma_px: float, blur_px: float) -> DetectorOperators:
        """The operators of a ``rows x cols`` detector (sigmas in pixels)."""
        low = lowpass_operators(rows, cols, scatter_sigma_px)
        blur = (Separable(Operator1D.from_dense(gaussian_matrix(rows, blur_px)),
                          Operator1D.from_dense(gaussian_matrix(cols, blur_px))) if blur_px > 0 else None)
        return cls(tuple(low), tuple(s.transpose() for s in reversed(low)), blur,
                   None if blur is None else blur.transpose())

    def detect(self, primary: np.ndarray, fraction: float) -> np.ndarray:
        """``I / (1 + f)`` ``[H, W]`` float64 from the primary ``[H, W]``."""
        x = np.asarray(primary, dtype=np.float64)
        if fraction > 0:
            s = x
            for op in self.lowpass:
                s = op.apply(s)
            x = x + fraction * s
        if self.blur is not None:
            x = self.blur.apply(x)
        return x / (1.0 + fraction)

    def detect_adjoint(self, grad: np.ndarray, fraction: float) -> np.ndarray:
        """The gradient of the primary ``[H, W]`` from that of ``I / (1 + f)`` (the transposed steps)."""
        g = np.asarray(grad, dtype=np.float64) / (1.0 + fraction)
        if self.blur_adjoint is not None:
            g = self.blur_adjoint.apply(g)
        if fraction > 0:
            s = g
            for op in self.lowpass_adjoint:
                s = op.apply(s)
            g = g + fraction * s
        return g


@njit(cache=True)
def contract_pose(grad_paths: np.ndarray, jac: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """The gradient ``[B, 3, 4]`` with respect to ``ijk_from_camera = [A | b]`` from per-ray Jacobians.

    :func:`projector.pose_gradient` over the materials: ``grad_paths [B, M, R]``, ``jac [B, M, R, 6]``
    (``jb`` 0-2, ``jt`` 3-5 of the kernels), ``dirs [R, 3]`` pixel centres in the camera frame (mm).
    """
    n_b, n_m, n_r = grad_paths.shape
    out = np.zeros((n_b, 3, 4))
    g = np.zeros(6)
    for b in range(n_b):
        for r in range(n_r):
            g[:] = 0.0
            for m in range(n_m):
                gm = np.float64(grad_paths[b, m, r])
                for c in range(6):
                    g[c] += gm * jac[b, m, r, c]
            for i in range(3):
                out[b, i, 3] += g[i]
                for j in range(3):
                    out[b, i, j] += g[3 + i] * dirs[r, j]
    return out
