"""Compiled CPU kernels for the DRR ray march (numba; the rays split over threads, one ray per loop iteration).

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

Empty space: :func:`march` and :func:`march_with_jacobian` take a table of the volume's empty blocks
(:func:`block_table`, made once per volume with the padded copy) and drop the runs of samples at either
end of a ray whose trilinear cells read only zero voxels. Those samples add exactly zero to the integral
and to its gradient, so the result is that of the march over every sample (up to the order of float32
additions).

Pose gradient: for fixed ``t_near`` and ``t_far``, with ``g_i`` the gradient of the trilinear
interpolant at ``p_i`` (index space), ``dI/db = sum_i g_i step`` and ``dI/dA = (sum_i g_i t_i step) d^T``.
The gradient kernel stores these two 3-vectors per ray, with what the samples' slide with the entry and
exit points contributes added in the kernel (:func:`_slide`, in float64; :func:`projector.add_sample_slide`
is its reference), and the caller contracts the result with the incoming image gradient.

Threads and reproducibility: each kernel is compiled serially over a range of rays, and :func:`over_rays`
runs ``numba.get_num_threads()`` contiguous ranges in numba's thread pool, calling the kernel through a
function pointer. Every ray is computed by the same machine code, so the outputs are bit-identical across
runs, thread counts and processes, whether a process compiled the kernels or loaded them from numba's
on-disk cache. With the sums inside a ``parallel=True`` kernel they were not: numba optimises a ``prange``
body twice (as its own library, which the compiling process runs, and again once linked into the caller,
which is what the cache stores), and ``fastmath``'s reassociation let the two optimisations vectorise the
per-ray sums differently (last-bit differences that the registration's line searches amplified). A kernel
called through a pointer is not linked into its caller, so it is optimised once. ``fastmath`` is kept: it is
what vectorises the sums over samples. The last bits can still differ between CPUs of different vector
widths.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import njit, prange

__all__ = ["BLOCK", "RUN", "block_table", "march", "march_pair", "march_pair_with_jacobian",
           "march_with_jacobian", "over_rays", "pack_pair", "pad_volume"]

BLOCK = 8
"""Edge (voxels) of the blocks of :func:`block_table`, the unit of empty-space skipping."""

RUN = 16
"""Samples tested for empty space at once at either end of a ray (:func:`_span`)."""


class _Kernel:
    """A kernel compiled for one signature, passed to the launchers as a function pointer.

    numba types the object as ``FunctionType(sig)`` (its ``_numba_type_``) and takes the address of the
    kernel's compiled code from ``__wrapper_address__`` (numba's wrapper-address protocol), looked up once.
    The launchers so call the code of the kernel's own compilation, or of its own cache entry.
    """

    def __init__(self, dispatcher, sig) -> None:
        """``dispatcher``: the njit kernel; ``sig``: its signature ``void(int64, int64, *argument types)``."""
        self._numba_type_ = numba.types.FunctionType(sig)
        self._dispatcher = dispatcher
        self._sig = sig
        self._address = 0

    def __wrapper_address__(self) -> int:
        """Address of the kernel's C-callable wrapper for its signature (compiled or loaded on first use)."""
        if not self._address:
            cres = self._dispatcher.get_compile_result(self._sig)
            self._address = cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)
        return self._address


_kernels: dict[tuple, _Kernel] = {}
_kernels_lock = threading.Lock()


def _type_key(a) -> tuple:
    """What numba's type of argument ``a`` depends on, cheaper to find than ``numba.typeof``."""
    if isinstance(a, np.ndarray):
        f = a.flags
        return a.dtype, a.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned
    return (type(a),)


def _kernel(dispatcher, args: tuple) -> _Kernel:
    """The :class:`_Kernel` of ``dispatcher`` for the numba types of ``args``, made once per signature."""
    key = (dispatcher, *map(_type_key, args))
    kernel = _kernels.get(key)
    if kernel is None:
        sig = numba.types.void(numba.types.int64, numba.types.int64, *map(numba.typeof, args))
        with _kernels_lock:
            kernel = _kernels.setdefault(key, _Kernel(dispatcher, sig))
    return kernel


@njit(parallel=True, cache=True)
def _in_parts6(kernel, n_rays, parts, a0, a1, a2, a3, a4, a5):  # pragma: no cover - compiled
    """``kernel(start, stop, a0, ..., a5)`` over ``parts`` equal ranges of ``[0, n_rays)``, in parallel."""
    for p in prange(parts):
        kernel(n_rays * p // parts, n_rays * (p + 1) // parts, a0, a1, a2, a3, a4, a5)


@njit(parallel=True, cache=True)
def _in_parts8(kernel, n_rays, parts, a0, a1, a2, a3, a4, a5, a6, a7):  # pragma: no cover - compiled
    """``kernel(start, stop, a0, ..., a7)`` over ``parts`` equal ranges of ``[0, n_rays)``, in parallel."""
    for p in prange(parts):
        kernel(n_rays * p // parts, n_rays * (p + 1) // parts, a0, a1, a2, a3, a4, a5, a6, a7)


@njit(parallel=True, cache=True)
def _in_parts7(kernel, n_rays, parts, a0, a1, a2, a3, a4, a5, a6):  # pragma: no cover - compiled
    """``kernel(start, stop, a0, ..., a6)`` over ``parts`` equal ranges of ``[0, n_rays)``, in parallel."""
    for p in prange(parts):
        kernel(n_rays * p // parts, n_rays * (p + 1) // parts, a0, a1, a2, a3, a4, a5, a6)


@njit(parallel=True, cache=True)
def _in_parts9(kernel, n_rays, parts, a0, a1, a2, a3, a4, a5, a6, a7, a8):  # pragma: no cover - compiled
    """``kernel(start, stop, a0, ..., a8)`` over ``parts`` equal ranges of ``[0, n_rays)``, in parallel."""
    for p in prange(parts):
        kernel(n_rays * p // parts, n_rays * (p + 1) // parts, a0, a1, a2, a3, a4, a5, a6, a7, a8)


def over_rays(kernel, n_rays: int, *args) -> None:
    """Run the njit ``kernel(start, stop, *args)`` (6 to 9 ``args``) over the rays ``[0, n_rays)`` in parallel.

    The rays are cut into ``numba.get_num_threads()`` equal contiguous ranges, run in numba's thread pool by
    a ``prange`` launcher that calls the kernel through a function pointer (:class:`_Kernel`): every ray is
    computed by the same machine code, whatever the thread count and whether the kernel was compiled in this
    process or loaded from numba's cache (module docstring).
    """
    launch = {6: _in_parts6, 7: _in_parts7, 8: _in_parts8, 9: _in_parts9}[len(args)]
    parts = max(0, min(numba.get_num_threads(), n_rays))
    launch(_kernel(kernel, args), n_rays, parts, *args)


def pad_volume(data_kji: np.ndarray) -> np.ndarray:
    """Copy ``[K, J, I]`` into a C-contiguous float32 ``[K + 2, J + 2, I + 2]`` array, repeating the edge voxels."""
    return np.ascontiguousarray(np.pad(np.asarray(data_kji, dtype=np.float32), 1, mode="edge"))


def block_table(padded: np.ndarray) -> np.ndarray:
    """Counts of the non-empty blocks of an edge-padded volume (:func:`pad_volume`), summed over boxes of blocks.

    A trilinear sample whose cell has its lower corner at padded index ``c`` reads the voxels ``c`` and
    ``c + 1`` along each axis. Block ``b`` holds the cells with corners ``b BLOCK <= c < (b + 1) BLOCK``; it is
    empty when every voxel those cells read is exactly zero (the one-voxel margin included), so samples in an
    empty block add exactly zero to a line integral and to its gradient. Returns the 3D prefix sum ``S``
    ``[Kb + 1, Jb + 1, Ib + 1]`` int32 of the non-empty flags (``S[0] = S[:, 0] = S[:, :, 0] = 0``): the blocks
    ``a <= b < c`` hold ``S[c] - ...`` (inclusion-exclusion over the 8 corners) non-empty ones. A NaN voxel
    counts as non-empty.
    """
    vol = np.asarray(padded)
    nonzero = vol != 0
    # cells: corners 0 .. n - 2 of the padded grid (n - 1 of them per axis); a cell is non-empty when one of
    # the 8 voxels it reads is
    cells = nonzero[:-1] | nonzero[1:]
    cells = cells[:, :-1] | cells[:, 1:]
    cells = cells[:, :, :-1] | cells[:, :, 1:]
    nb = [-(-n // BLOCK) for n in cells.shape]
    grid = np.zeros([b * BLOCK for b in nb], dtype=bool)
    grid[:cells.shape[0], :cells.shape[1], :cells.shape[2]] = cells
    occupied = grid.reshape(nb[0], BLOCK, nb[1], BLOCK, nb[2], BLOCK).any(axis=(1, 3, 5))
    table = np.zeros([b + 1 for b in nb], dtype=np.int32)
    table[1:, 1:, 1:] = occupied.astype(np.int32).cumsum(0).cumsum(1).cumsum(2)
    return table


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


@njit(fastmath=True, cache=True, inline="always")
def _faces(o0, o1, o2, d0, d1, d2, n0, n1, n2):
    """Unclamped entry and exit ``t`` of ``o + t d`` through ``[-0.5, n - 0.5]^3`` and their axes and ``d``.

    Returns ``(t_in, d_in, axis_in, t_out, d_out, axis_out)``: the latest slab entry and the earliest slab
    exit (axes parallel to the ray are skipped; the first axis wins a tie) and the direction component
    along each face's axis (index space per unit t).
    """
    t_in = -math.inf
    t_out = math.inf
    d_in = 1.0
    d_out = 1.0
    a_in = -1
    a_out = -1
    for axis in range(3):
        if axis == 0:
            o, d, n = o0, d0, n0
        elif axis == 1:
            o, d, n = o1, d1, n1
        else:
            o, d, n = o2, d2, n2
        if abs(d) < 1e-12:
            continue
        ta = (-0.5 - o) / d
        tb = (n - 0.5 - o) / d
        if ta > tb:
            ta, tb = tb, ta
        if ta > t_in:
            t_in, d_in, a_in = ta, d, axis
        if tb < t_out:
            t_out, d_out, a_out = tb, d, axis
    return t_in, d_in, a_in, t_out, d_out, a_out


@njit(fastmath=True, cache=True, inline="always")
def _slide(o0, o1, o2, d0, d1, d2, n0, n1, n2, t0, t1, value, jb0, jb1, jb2, jt0, jt1, jt2):
    """``(jb, jt)`` (six float64) with the samples' slide with the ray's entry ``t0`` and exit ``t1`` added.

    The samples are spread between ``t0`` and ``t1``; when the pose moves the face a ray enters (leaves)
    by, they all slide along the ray and the step changes. With ``D = A d`` and ``I`` the line integral
    ``value``: ``dI/dt1 = D . (jt - t0 jb) / (t1 - t0) + I / (t1 - t0)``, ``dI/dt0 = D . jb - D . (jt - t0 jb)
    / (t1 - t0) - I / (t1 - t0)``; a face ``x_a = f`` is crossed at ``t = (f - b_a) / D_a``, so
    ``jb_a -= (dI/dt) / D_a`` and ``jt_a -= (dI/dt) t / D_a``. Ends inside the box (``t`` clamped to 0 or 1)
    do not move.
    """
    span = t1 - t0
    if span <= 1e-12:
        return jb0, jb1, jb2, jt0, jt1, jt2
    t_in, d_in, a_in, t_out, d_out, a_out = _faces(o0, o1, o2, d0, d1, d2, n0, n1, n2)
    g_end = (d0 * (jt0 - t0 * jb0) + d1 * (jt1 - t0 * jb1) + d2 * (jt2 - t0 * jb2)) / span
    g_start = d0 * jb0 + d1 * jb1 + d2 * jb2 - g_end
    for face in range(2):
        if face == 0:
            moves, axis, da, t = t_in > 0.0, a_in, d_in, t0
            di_dt = g_start - value / span
        else:
            moves, axis, da, t = t_out < 1.0, a_out, d_out, t1
            di_dt = g_end + value / span
        if not moves:
            continue
        if axis == 0:
            jb0 -= di_dt / da
            jt0 -= di_dt * t / da
        elif axis == 1:
            jb1 -= di_dt / da
            jt1 -= di_dt * t / da
        elif axis == 2:
            jb2 -= di_dt / da
            jt2 -= di_dt * t / da
    return jb0, jb1, jb2, jt0, jt1, jt2


@njit(fastmath=True, cache=True, inline="always")
def _ray(idx, ijk_from_cam, dirs, vol_shape, n_samples):
    """Set-up of ray ``idx`` (pose ``idx // R``, pixel ``idx % R``) through a padded volume of shape ``vol_shape``.

    Returns ``(bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, dt, step_mm, p0, p1, p2)``: the pose and pixel index,
    the pose ``m = [A | b]``, the unpadded volume's size, the direction ``A d`` (index space per unit ``t``,
    ``d`` the pixel centre in the camera frame, mm), the entry and exit ``t`` (:func:`_clip`), the sample
    spacing in ``t`` and in mm, and the first sample's position in the padded volume. ``t1 <= t0``: the ray
    misses the volume (the spacings and position are then 0).
    """
    nk, nj, ni = vol_shape[0] - 2, vol_shape[1] - 2, vol_shape[2] - 2
    nr = dirs.shape[0]
    bi = idx // nr
    r = idx - bi * nr
    m = ijk_from_cam[bi]
    x, y, z = dirs[r, 0], dirs[r, 1], dirs[r, 2]
    d0 = m[0, 0] * x + m[0, 1] * y + m[0, 2] * z
    d1 = m[1, 0] * x + m[1, 1] * y + m[1, 2] * z
    d2 = m[2, 0] * x + m[2, 1] * y + m[2, 2] * z
    t0, t1 = _clip(m[0, 3], m[1, 3], m[2, 3], d0, d1, d2, ni, nj, nk)
    if t1 <= t0:
        return bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, 0.0, 0.0, 0.0, 0.0, 0.0
    dt = (t1 - t0) / n_samples
    step_mm = dt * math.sqrt(x * x + y * y + z * z)
    # +1: index in the padded volume
    p0 = m[0, 3] + 1.0 + (t0 + 0.5 * dt) * d0
    p1 = m[1, 3] + 1.0 + (t0 + 0.5 * dt) * d1
    p2 = m[2, 3] + 1.0 + (t0 + 0.5 * dt) * d2
    return bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, dt, step_mm, p0, p1, p2


@njit(fastmath=True, cache=True, inline="always")
def _cell(fi, fj, fk, ni, nj, nk):
    """Lower corner ``(i0, j0, k0)`` of the padded volume's cell holding ``(fi, fj, fk)`` and the weights in it."""
    i0 = min(max(int(fi), 0), ni)
    j0 = min(max(int(fj), 0), nj)
    k0 = min(max(int(fk), 0), nk)
    return i0, j0, k0, np.float32(fi - i0), np.float32(fj - j0), np.float32(fk - k0)


@njit(fastmath=True, cache=True, inline="always")
def _trilinear(v000, v001, v010, v011, v100, v101, v110, v111, wi, wj, wk):
    """The trilinear interpolant of a cell's corners ``v_kji`` at weights ``(wi, wj, wk)``."""
    c00 = v000 + wi * (v001 - v000)
    c01 = v010 + wi * (v011 - v010)
    c10 = v100 + wi * (v101 - v100)
    c11 = v110 + wi * (v111 - v110)
    e0 = c00 + wj * (c01 - c00)
    e1 = c10 + wj * (c11 - c10)
    return e0 + wk * (e1 - e0)


@njit(fastmath=True, cache=True, inline="always")
def _trilinear_grad(v000, v001, v010, v011, v100, v101, v110, v111, wi, wj, wk):
    """The trilinear interpolant and its gradient ``(value, d/di, d/dj, d/dk)`` at weights ``(wi, wj, wk)``."""
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
    return e0 + wk * g2, g0, g1, g2


@njit(fastmath=True, cache=True, inline="always")
def _half(u, shift):
    """The 16-bit integer at bit ``shift`` (0 or 16) of a packed voxel ``u``, as float32 (see :func:`pack_pair`)."""
    return np.float32((u >> shift) & 0xFFFF)


@njit(fastmath=True, cache=True, inline="always")
def _store_jacobian(row, m, d0, d1, d2, ni, nj, nk, t0, t1, step_mm, value, gb0, gb1, gb2, gt0, gt1, gt2, slide):
    """Write a ray's ``(jb, jt)`` into ``row`` ``[6]``: the sample sums times ``step_mm``, slide added if asked."""
    jb0 = np.float64(gb0) * step_mm
    jb1 = np.float64(gb1) * step_mm
    jb2 = np.float64(gb2) * step_mm
    jt0 = np.float64(gt0) * step_mm
    jt1 = np.float64(gt1) * step_mm
    jt2 = np.float64(gt2) * step_mm
    if slide:
        jb0, jb1, jb2, jt0, jt1, jt2 = _slide(m[0, 3], m[1, 3], m[2, 3], d0, d1, d2, ni, nj, nk, t0, t1,
                                              np.float64(value), jb0, jb1, jb2, jt0, jt1, jt2)
    row[0] = jb0
    row[1] = jb1
    row[2] = jb2
    row[3] = jt0
    row[4] = jt1
    row[5] = jt2


@njit(fastmath=True, cache=True, inline="always")
def _corner(f, n):
    """Lower corner (padded index) of the cell holding coordinate ``f``, clamped to ``[0, n]``."""
    return min(max(int(f), 0), n)


@njit(fastmath=True, cache=True, inline="always")
def _run_empty(blocks, p0, p1, p2, q0, q1, q2, s0, s1, ni, nj, nk):
    """Whether the samples ``p + s q``, ``s0 <= s < s1``, read only zero voxels (see :func:`block_table`).

    The samples' cells lie in the box of the cells of the first and the last sample (positions are linear in
    ``s``), widened here by one voxel on every side so that rounding of the positions cannot matter.
    """
    f0, f1, f2 = p0 + s0 * q0, p1 + s0 * q1, p2 + s0 * q2
    g0, g1, g2 = p0 + (s1 - 1) * q0, p1 + (s1 - 1) * q1, p2 + (s1 - 1) * q2
    a0 = _corner(min(f0, g0) - 1.0, ni) // BLOCK
    a1 = _corner(min(f1, g1) - 1.0, nj) // BLOCK
    a2 = _corner(min(f2, g2) - 1.0, nk) // BLOCK
    b0 = _corner(max(f0, g0) + 1.0, ni) // BLOCK + 1
    b1 = _corner(max(f1, g1) + 1.0, nj) // BLOCK + 1
    b2 = _corner(max(f2, g2) + 1.0, nk) // BLOCK + 1
    occupied = (blocks[b2, b1, b0] - blocks[a2, b1, b0] - blocks[b2, a1, b0] - blocks[b2, b1, a0]
                + blocks[a2, a1, b0] + blocks[a2, b1, a0] + blocks[b2, a1, a0] - blocks[a2, a1, a0])
    return occupied == 0


@njit(fastmath=True, cache=True, inline="always")
def _span(blocks, p0, p1, p2, q0, q1, q2, n, ni, nj, nk):
    """The samples ``[s_first, s_last)`` of ``p + s q`` (``s < n``) left after dropping empty runs at both ends.

    Runs of ``RUN`` samples are dropped from the start and from the end while they read only zero voxels
    (:func:`_run_empty`): what they would add to the line integral and its gradient is exactly zero.
    """
    s_first = 0
    while s_first < n and _run_empty(blocks, p0, p1, p2, q0, q1, q2, s_first, min(s_first + RUN, n), ni, nj, nk):
        s_first += RUN
    s_last = n
    while s_last > s_first and _run_empty(blocks, p0, p1, p2, q0, q1, q2, max(s_last - RUN, s_first), s_last,
                                          ni, nj, nk):
        s_last -= RUN
    return min(s_first, n), max(s_last, min(s_first, n))


@njit(fastmath=True, cache=True)
def _march_part(start: int, stop: int, vol: np.ndarray, blocks: np.ndarray, ijk_from_cam: np.ndarray,
                dirs: np.ndarray, n_samples: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The rays ``[start, stop)`` (pose ``idx // R``, pixel ``idx % R``) of :func:`march`."""
    for idx in range(start, stop):
        bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, dt, step_mm, p0, p1, p2 = _ray(idx, ijk_from_cam, dirs, vol.shape,
                                                                              n_samples)
        q0, q1, q2 = dt * d0, dt * d1, dt * d2
        s_first, s_last = _span(blocks, p0, p1, p2, q0, q1, q2, n_samples if t1 > t0 else 0, ni, nj, nk)
        acc = np.float32(0.0)
        for s in range(s_first, s_last):
            i0, j0, k0, wi, wj, wk = _cell(p0 + s * q0, p1 + s * q1, p2 + s * q2, ni, nj, nk)
            acc += _trilinear(vol[k0, j0, i0], vol[k0, j0, i0 + 1], vol[k0, j0 + 1, i0], vol[k0, j0 + 1, i0 + 1],
                              vol[k0 + 1, j0, i0], vol[k0 + 1, j0, i0 + 1], vol[k0 + 1, j0 + 1, i0],
                              vol[k0 + 1, j0 + 1, i0 + 1], wi, wj, wk)
        out[bi, r] = acc * step_mm


def march(vol: np.ndarray, blocks: np.ndarray, ijk_from_cam: np.ndarray, dirs: np.ndarray, n_samples: int,
          out: np.ndarray) -> None:
    """Line integrals for every pose and ray.

    Args:
        vol: edge-padded attenuation ``[K + 2, J + 2, I + 2]`` float32, 1/mm (:func:`pad_volume`).
        blocks: the volume's block table (:func:`block_table`): runs of samples in empty space at either end
            of a ray are skipped (they add exactly zero).
        ijk_from_cam: ``[B, 3, 4]`` float64, ``[A | b]`` per pose.
        dirs: ``[R, 3]`` float64 pixel centres in the camera frame, mm.
        n_samples: samples per ray.
        out: ``[B, R]`` float32, written with the line integrals (mm * 1/mm).
    """
    over_rays(_march_part, ijk_from_cam.shape[0] * dirs.shape[0], vol, blocks, ijk_from_cam, dirs, n_samples, out)


@njit(fastmath=True, cache=True)
def _march_with_jacobian_part(start: int, stop: int, vol: np.ndarray, blocks: np.ndarray, ijk_from_cam: np.ndarray,
                              dirs: np.ndarray, n_samples: int, out: np.ndarray, jac: np.ndarray,
                              slide: bool) -> None:  # pragma: no cover - compiled
    """The rays ``[start, stop)`` (pose ``idx // R``, pixel ``idx % R``) of :func:`march_with_jacobian`."""
    for idx in range(start, stop):
        bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, dt, step_mm, p0, p1, p2 = _ray(idx, ijk_from_cam, dirs, vol.shape,
                                                                              n_samples)
        q0, q1, q2 = dt * d0, dt * d1, dt * d2
        s_first, s_last = _span(blocks, p0, p1, p2, q0, q1, q2, n_samples if t1 > t0 else 0, ni, nj, nk)
        acc = np.float32(0.0)
        gb0 = gb1 = gb2 = gt0 = gt1 = gt2 = np.float32(0.0)
        for s in range(s_first, s_last):
            i0, j0, k0, wi, wj, wk = _cell(p0 + s * q0, p1 + s * q1, p2 + s * q2, ni, nj, nk)
            t = np.float32(t0 + (s + 0.5) * dt)
            v, g0, g1, g2 = _trilinear_grad(vol[k0, j0, i0], vol[k0, j0, i0 + 1], vol[k0, j0 + 1, i0],
                                            vol[k0, j0 + 1, i0 + 1], vol[k0 + 1, j0, i0], vol[k0 + 1, j0, i0 + 1],
                                            vol[k0 + 1, j0 + 1, i0], vol[k0 + 1, j0 + 1, i0 + 1], wi, wj, wk)
            acc += v
            gb0 += g0
            gb1 += g1
            gb2 += g2
            gt0 += g0 * t
            gt1 += g1 * t
            gt2 += g2 * t
        value = acc * step_mm
        out[bi, r] = value
        _store_jacobian(jac[bi, r], m, d0, d1, d2, ni, nj, nk, t0, t1, step_mm, value,
                        gb0, gb1, gb2, gt0, gt1, gt2, slide and t1 > t0)


def march_with_jacobian(vol: np.ndarray, blocks: np.ndarray, ijk_from_cam: np.ndarray, dirs: np.ndarray,
                        n_samples: int, out: np.ndarray, jac: np.ndarray, slide: bool = True) -> None:
    """:func:`march` plus, per ray, the two 3-vectors of the pose gradient.

    Args:
        vol: edge-padded attenuation ``[K + 2, J + 2, I + 2]`` float32, 1/mm (:func:`pad_volume`).
        blocks: the volume's block table (:func:`block_table`), as for :func:`march`.
        ijk_from_cam: ``[B, 3, 4]`` float64, ``[A | b]`` per pose.
        dirs: ``[R, 3]`` float64 pixel centres in the camera frame, mm.
        n_samples: samples per ray.
        out: ``[B, R]`` float32, written with the line integrals.
        jac: ``[B, R, 6]`` float32, written with ``sum_i g_i step`` (entries 0-2, the gradient of the
            pixel with respect to ``b``) and ``sum_i g_i t_i step`` (entries 3-5; the gradient with
            respect to ``A`` is its outer product with the ray's pixel centre).
        slide: add the samples' slide with the ray's entry and exit (:func:`_slide`); False leaves the
            entry and exit fixed (what :func:`projector.add_sample_slide` takes, for tests).
    """
    over_rays(_march_with_jacobian_part, ijk_from_cam.shape[0] * dirs.shape[0], vol, blocks, ijk_from_cam, dirs,
              n_samples, out, jac, slide)


def pack_pair(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two non-negative volumes ``[K, J, I]`` as one edge-padded uint32 ``[K + 2, J + 2, I + 2]`` of 16-bit pairs.

    Each volume is quantised to ``round(v / scale)`` with ``scale = max(v) / 65535`` (the low 16 bits hold
    ``first``, the high 16 bits ``second``), so one voxel read gives both, with an error of at most
    ``scale / 2`` per voxel and so at most ``scale / 2`` times the path length on a line integral. Returns
    ``(packed, scales [2] float64)``; the pair kernels multiply their sums by the scales.
    """
    words, scales = [], []
    for v in (first, second):
        v = np.asarray(v, dtype=np.float32)
        top = float(v.max()) if v.size else 0.0
        if float(v.min()) < 0:
            raise ValueError("pack_pair: the volumes must be non-negative")
        scale = top / 65535.0 if top > 0 else 1.0
        padded = pad_volume(v)
        q = np.empty(padded.shape, dtype=np.uint32)
        for k in range(padded.shape[0]):  # float64 per slice: rounds to the nearest step
            q[k] = np.rint(padded[k].astype(np.float64) / scale)
        words.append(q)
        scales.append(scale)
    return np.ascontiguousarray(words[0] | (words[1] << np.uint32(16))), np.asarray(scales, dtype=np.float64)


@njit(fastmath=True, cache=True)
def _march_pair_part(start: int, stop: int, vol: np.ndarray, blocks: np.ndarray, scales: np.ndarray,
                     ijk_from_cam: np.ndarray, dirs: np.ndarray, n_samples: int,
                     out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The rays ``[start, stop)`` (pose ``idx // R``, pixel ``idx % R``) of :func:`march_pair`."""
    for idx in range(start, stop):
        bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, dt, step_mm, p0, p1, p2 = _ray(idx, ijk_from_cam, dirs, vol.shape,
                                                                              n_samples)
        q0, q1, q2 = dt * d0, dt * d1, dt * d2
        s_first, s_last = _span(blocks, p0, p1, p2, q0, q1, q2, n_samples if t1 > t0 else 0, ni, nj, nk)
        acc0 = np.float32(0.0)
        acc1 = np.float32(0.0)
        for s in range(s_first, s_last):
            i0, j0, k0, wi, wj, wk = _cell(p0 + s * q0, p1 + s * q1, p2 + s * q2, ni, nj, nk)
            u000, u001, u010, u011 = vol[k0, j0, i0], vol[k0, j0, i0 + 1], vol[k0, j0 + 1, i0], vol[k0, j0 + 1, i0 + 1]
            u100, u101 = vol[k0 + 1, j0, i0], vol[k0 + 1, j0, i0 + 1]
            u110, u111 = vol[k0 + 1, j0 + 1, i0], vol[k0 + 1, j0 + 1, i0 + 1]
            acc0 += _trilinear(_half(u000, 0), _half(u001, 0), _half(u010, 0), _half(u011, 0), _half(u100, 0),
                               _half(u101, 0), _half(u110, 0), _half(u111, 0), wi, wj, wk)
            acc1 += _trilinear(_half(u000, 16), _half(u001, 16), _half(u010, 16), _half(u011, 16), _half(u100, 16),
                               _half(u101, 16), _half(u110, 16), _half(u111, 16), wi, wj, wk)
        out[bi, 0, r] = acc0 * step_mm * scales[0]
        out[bi, 1, r] = acc1 * step_mm * scales[1]


def march_pair(vol: np.ndarray, blocks: np.ndarray, scales: np.ndarray, ijk_from_cam: np.ndarray, dirs: np.ndarray,
               n_samples: int, out: np.ndarray) -> None:
    """:func:`march` of both volumes of a pair (:func:`pack_pair`) in one pass.

    Args:
        vol: packed pair ``[K + 2, J + 2, I + 2]`` uint32.
        blocks: the packed volume's block table (:func:`block_table`; a block is empty where both volumes are):
            runs of samples in empty space at either end of a ray are skipped, as in :func:`march`.
        scales: ``[2]`` float64, the pair's quantisation steps (units of the volumes).
        ijk_from_cam: ``[B, 3, 4]`` float64, ``[A | b]`` per pose.
        dirs: ``[R, 3]`` float64 pixel centres in the camera frame, mm.
        n_samples: samples per ray.
        out: ``[B, 2, R]`` float32, written with each volume's line integrals.
    """
    over_rays(_march_pair_part, ijk_from_cam.shape[0] * dirs.shape[0], vol, blocks, scales, ijk_from_cam, dirs,
              n_samples, out)


@njit(fastmath=True, cache=True)
def _march_pair_with_jacobian_part(start: int, stop: int, vol: np.ndarray, blocks: np.ndarray, scales: np.ndarray,
                                   ijk_from_cam: np.ndarray, dirs: np.ndarray, n_samples: int, out: np.ndarray,
                                   jac: np.ndarray, slide: bool) -> None:  # pragma: no cover - compiled
    """The rays ``[start, stop)`` (pose ``idx // R``, pixel ``idx % R``) of :func:`march_pair_with_jacobian`."""
    for idx in range(start, stop):
        bi, r, m, ni, nj, nk, d0, d1, d2, t0, t1, dt, step_mm, p0, p1, p2 = _ray(idx, ijk_from_cam, dirs, vol.shape,
                                                                              n_samples)
        q0, q1, q2 = dt * d0, dt * d1, dt * d2
        s_first, s_last = _span(blocks, p0, p1, p2, q0, q1, q2, n_samples if t1 > t0 else 0, ni, nj, nk)
        a0 = b0 = c0 = e0 = f0 = g0 = h0 = np.float32(0.0)  # first volume: value, jb, jt
        a1 = b1 = c1 = e1 = f1 = g1 = h1 = np.float32(0.0)  # second volume
        for s in range(s_first, s_last):
            i0, j0, k0, wi, wj, wk = _cell(p0 + s * q0, p1 + s * q1, p2 + s * q2, ni, nj, nk)
            t = np.float32(t0 + (s + 0.5) * dt)
            u000, u001, u010, u011 = vol[k0, j0, i0], vol[k0, j0, i0 + 1], vol[k0, j0 + 1, i0], vol[k0, j0 + 1, i0 + 1]
            u100, u101 = vol[k0 + 1, j0, i0], vol[k0 + 1, j0, i0 + 1]
            u110, u111 = vol[k0 + 1, j0 + 1, i0], vol[k0 + 1, j0 + 1, i0 + 1]
            v, w0, w1, w2 = _trilinear_grad(_half(u000, 0), _half(u001, 0), _half(u010, 0), _half(u011, 0),
                                            _half(u100, 0), _half(u101, 0), _half(u110, 0), _half(u111, 0),
                                            wi, wj, wk)
            a0, b0, c0, e0, f0, g0, h0 = a0 + v, b0 + w0, c0 + w1, e0 + w2, f0 + w0 * t, g0 + w1 * t, h0 + w2 * t
            v, w0, w1, w2 = _trilinear_grad(_half(u000, 16), _half(u001, 16), _half(u010, 16), _half(u011, 16),
                                            _half(u100, 16), _half(u101, 16), _half(u110, 16), _half(u111, 16),
                                            wi, wj, wk)
            a1, b1, c1, e1, f1, g1, h1 = a1 + v, b1 + w0, c1 + w1, e1 + w2, f1 + w0 * t, g1 + w1 * t, h1 + w2 * t
        for c in range(2):
            sc = scales[c]
            sums = (a0, b0, c0, e0, f0, g0, h0) if c == 0 else (a1, b1, c1, e1, f1, g1, h1)
            value = sums[0] * step_mm * sc
            out[bi, c, r] = value
            _store_jacobian(jac[bi, c, r], m, d0, d1, d2, ni, nj, nk, t0, t1, step_mm * sc, value,
                            sums[1], sums[2], sums[3], sums[4], sums[5], sums[6], slide and t1 > t0)


def march_pair_with_jacobian(vol: np.ndarray, blocks: np.ndarray, scales: np.ndarray, ijk_from_cam: np.ndarray,
                             dirs: np.ndarray, n_samples: int, out: np.ndarray, jac: np.ndarray,
                             slide: bool = True) -> None:
    """:func:`march_with_jacobian` of both volumes of a pair (:func:`pack_pair`) in one pass.

    ``out`` ``[B, 2, R]`` and ``jac`` ``[B, 2, R, 6]`` (float32) per volume of the pair; the rest as for
    :func:`march_pair` and :func:`march_with_jacobian`.
    """
    over_rays(_march_pair_with_jacobian_part, ijk_from_cam.shape[0] * dirs.shape[0], vol, blocks, scales,
              ijk_from_cam, dirs, n_samples, out, jac, slide)
