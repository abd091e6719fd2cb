"""Fused GPU kernels for the DRR ray march (Triton): clipping, trilinear sampling and accumulation in one pass.

The volume model and the sampling are those of the numba kernels (:mod:`._raymarch`): a pose enters as
``ijk_from_camera = [A | b]`` (float32 ``[B, 3, 4]``), the ray to the pixel centre ``d`` (camera frame,
mm) is ``p(t) = b + t A d``, clipped to the box ``[-0.5, n - 0.5]`` of the voxels (``t`` within
``[0, 1]``), with ``n_samples`` midpoint samples between entry and exit; a pixel is
``sum_i mu(p_i) * step`` (``step`` in mm). Attenuation is trilinear between voxel centres and equal to
the edge voxels in the outer half-voxel shell; here the edge values come from clamped indices instead
of a padded copy, so the kernels read the volume as it is (any strides; float32, float16 or bfloat16,
accumulated in float32).

Kernels, one program per block of ``BLOCK`` rays of one pose and one channel (grid ``[ceil(R / BLOCK), B, C]``):
a volume of ``C`` channels (e.g. one per material or per structure, ``[C, K, J, I]``) is rendered in one launch.

- :func:`march`: the line integrals and, when asked, the per-ray Jacobian of the pose gradient, the
  same two 3-vectors as :func:`._raymarch.march_with_jacobian`: ``sum_i g_i step`` and
  ``sum_i g_i t_i step`` with ``g_i`` the gradient of the interpolant at ``p_i`` (index space), plus the
  samples' slide with the ray's entry and exit, added per ray in the kernel (:func:`_add_slide`; after
  the parts of a sample split are summed, by :func:`_sum_parts_kernel`). :class:`TritonMarch` contracts
  them with the incoming image gradient.
- the volume gradient (the transpose of the march): each sample adds its trilinear weights times the
  pixel's incoming gradient times ``step`` to its eight voxels (atomic adds).

Triton is imported by this module only; the library imports the module when the ``"triton"`` backend is
used. On a machine without a GPU the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1``
is set before this module is first imported (the tests do this), with CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["INTERPRETED", "TritonMarch", "march", "volume_gradient"]

INTERPRETED = (bool(triton.knobs.runtime.interpret) if hasattr(triton, "knobs")
               else os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))
"""Whether the kernels were compiled for Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""

BLOCK_RAYS = 1024 if INTERPRETED else 128
"""Rays per program (the interpreter runs a program's rays as one vector: fewer, larger programs are faster)."""


@triton.jit
def _slab(o, d, n):
    """Entry and exit ``t`` of rays ``o + t d`` through ``[-0.5, n - 0.5]`` along one axis.

    A ray parallel to the slab and outside it gets the empty interval ``[1e30, 1e30]``.
    """
    lo = -0.5 - o
    hi = n - 0.5 - o
    par = tl.abs(d) < 1e-12
    safe = tl.where(par, 1.0, d)
    ta = lo / safe
    tb = hi / safe
    outside = tl.where((lo > 0.0) | (hi < 0.0), 1e30, -1e30)
    t_in = tl.where(par, outside, tl.minimum(ta, tb))
    t_out = tl.where(par, 1e30, tl.maximum(ta, tb))
    return t_in, t_out


@triton.jit
def _ray_geometry(mat_ptr, dirs_ptr, b, r, live, ni, nj, nk):
    """Rays ``r`` of pose ``b``: pixel centre, source, direction and the slab entries and exits along i, j, k.

    Returns the camera-frame pixel centre (mm), the source and the direction in index space (per unit t), and the
    unclamped entries ``a`` and exits ``e`` of the slabs.
    """
    x = tl.load(dirs_ptr + r * 3 + 0, mask=live, other=0.0)
    y = tl.load(dirs_ptr + r * 3 + 1, mask=live, other=0.0)
    z = tl.load(dirs_ptr + r * 3 + 2, mask=live, other=0.0)
    m = mat_ptr + b * 12
    d0 = tl.load(m + 0) * x + tl.load(m + 1) * y + tl.load(m + 2) * z
    d1 = tl.load(m + 4) * x + tl.load(m + 5) * y + tl.load(m + 6) * z
    d2 = tl.load(m + 8) * x + tl.load(m + 9) * y + tl.load(m + 10) * z
    o0 = tl.load(m + 3)
    o1 = tl.load(m + 7)
    o2 = tl.load(m + 11)
    a0, e0 = _slab(o0, d0, ni)
    a1, e1 = _slab(o1, d1, nj)
    a2, e2 = _slab(o2, d2, nk)
    return x, y, z, o0, o1, o2, d0, d1, d2, a0, a1, a2, e0, e1, e2


@triton.jit
def _ray_setup(mat_ptr, dirs_ptr, b, r, live, n_rays, ni, nj, nk, n_samples):
    """Source, direction (index space per unit t), first t, t step, step in mm and validity of rays ``r``."""
    x, y, z, o0, o1, o2, d0, d1, d2, a0, a1, a2, e0, e1, e2 = _ray_geometry(mat_ptr, dirs_ptr, b, r, live,
                                                                         ni, nj, nk)
    t_near = tl.maximum(tl.maximum(tl.maximum(a0, a1), a2), 0.0)
    t_far = tl.minimum(tl.minimum(tl.minimum(e0, e1), e2), 1.0)
    valid = live & (t_far > t_near)
    dt = tl.where(valid, (t_far - t_near) / n_samples, 0.0)
    step = dt * tl.sqrt(x * x + y * y + z * z)
    return o0, o1, o2, d0, d1, d2, t_near, dt, step, valid


@triton.jit
def _corners(f, n, stride):
    """Offsets of the lower and upper neighbours along one axis and the weight of the upper one.

    The offsets are ``stride`` times the neighbours' indices clamped to ``[0, n - 1]`` (edge voxels repeat).
    """
    fl = tl.floor(f)
    w = f - fl
    lo = tl.minimum(tl.maximum(fl.to(tl.int32), 0), n - 1)
    hi = tl.minimum(tl.maximum(fl.to(tl.int32) + 1, 0), n - 1)
    return lo * stride, hi * stride, w


@triton.jit
def _tile_rays(tile, n_rays, width, BLOCK: tl.constexpr, TW: tl.constexpr):
    """Ray indices of tile ``tile`` and whether each exists.

    With ``TW > 0`` the rays are a ``(BLOCK // TW) x TW`` block of pixels of a row-major detector ``width``
    pixels wide (neighbouring rays meet neighbouring voxels: fewer cache lines per sample), else ``BLOCK``
    consecutive rays.
    """
    if TW > 0:
        TH: tl.constexpr = BLOCK // TW
        tiles_w = tl.cdiv(width, TW)
        row = (tile // tiles_w) * TH + tl.arange(0, BLOCK) // TW
        col = (tile % tiles_w) * TW + tl.arange(0, BLOCK) % TW
        r = row * width + col
        live = (col < width) & (r < n_rays)
    else:
        r = tile * BLOCK + tl.arange(0, BLOCK)
        live = r < n_rays
    return r, live


@triton.jit
def _face_axis(a0, a1, a2, d0, d1, d2, LATEST: tl.constexpr):
    """The ``t`` of the latest (``LATEST``) or earliest of three slab crossings and ``d`` along its axis.

    The first axis wins a tie.
    """
    if LATEST:
        t = tl.maximum(tl.maximum(a0, a1), a2)
    else:
        t = tl.minimum(tl.minimum(a0, a1), a2)
    da = tl.where(a0 == t, d0, tl.where(a1 == t, d1, d2))
    return t, da


@triton.jit
def _slide_one(jb, jt, da, on_axis, di_dt, t):
    """``jb`` and ``jt`` along one axis less ``di_dt / da`` and ``di_dt t / da`` where ``on_axis``."""
    return jb - tl.where(on_axis, di_dt / da, 0.0), jt - tl.where(on_axis, di_dt * t / da, 0.0)


@triton.jit
def _add_slide(mat_ptr, dirs_ptr, b, r, live, ni, nj, nk, value, jb0, jb1, jb2, jt0, jt1, jt2):
    """``(jb, jt)`` of rays ``r`` of pose ``b`` with the samples' slide with their entry and exit added.

    The formula of :func:`projector.add_sample_slide` (its reference, in float64), here in float32 per ray:
    with ``D = A d``, ``dI/dt1 = D . (jt - t0 jb) / (t1 - t0) + I / (t1 - t0)`` and ``dI/dt0 = D . jb - D . (jt
    - t0 jb) / (t1 - t0) - I / (t1 - t0)``; the face ``x_a = f`` crossed at ``t`` moves ``t`` by ``-1 / D_a``
    per unit of ``b_a`` (``jb_a -= dI/dt / D_a``, ``jt_a -= dI/dt t / D_a``). Ends inside the box (``t``
    clamped to 0 or 1) do not move.
    """
    _, _, _, _, _, _, d0, d1, d2, a0, a1, a2, e0, e1, e2 = _ray_geometry(mat_ptr, dirs_ptr, b, r, live, ni, nj, nk)
    t_in, d_in = _face_axis(a0, a1, a2, d0, d1, d2, True)
    t_out, d_out = _face_axis(e0, e1, e2, d0, d1, d2, False)
    t0 = tl.maximum(t_in, 0.0)
    t1 = tl.minimum(t_out, 1.0)
    ok = live & (t1 - t0 > 1e-12)
    span = tl.where(ok, t1 - t0, 1.0)
    g_end = (d0 * (jt0 - t0 * jb0) + d1 * (jt1 - t0 * jb1) + d2 * (jt2 - t0 * jb2)) / span
    g_start = d0 * jb0 + d1 * jb1 + d2 * jb2 - g_end
    enters = ok & (t_in > 0.0)
    leaves = ok & (t_out < 1.0)
    d_in = tl.where(enters, d_in, 1.0)
    d_out = tl.where(leaves, d_out, 1.0)
    di_in = g_start - value / span
    di_out = g_end + value / span
    jb0, jt0 = _slide_one(jb0, jt0, d_in, enters & (a0 == t_in), di_in, t0)
    jb1, jt1 = _slide_one(jb1, jt1, d_in, enters & (a0 != t_in) & (a1 == t_in), di_in, t0)
    jb2, jt2 = _slide_one(jb2, jt2, d_in, enters & (a0 != t_in) & (a1 != t_in), di_in, t0)
    jb0, jt0 = _slide_one(jb0, jt0, d_out, leaves & (e0 == t_out), di_out, t1)
    jb1, jt1 = _slide_one(jb1, jt1, d_out, leaves & (e0 != t_out) & (e1 == t_out), di_out, t1)
    jb2, jt2 = _slide_one(jb2, jt2, d_out, leaves & (e0 != t_out) & (e1 != t_out), di_out, t1)
    return jb0, jb1, jb2, jt0, jt1, jt2


@triton.jit
def _store_jac(jac_ptr, ray, live, jb0, jb1, jb2, jt0, jt1, jt2):
    """Write one Jacobian ``(jb, jt)`` per ray at ``jac_ptr + 6 ray``."""
    tl.store(jac_ptr + ray * 6 + 0, jb0, mask=live)
    tl.store(jac_ptr + ray * 6 + 1, jb1, mask=live)
    tl.store(jac_ptr + ray * 6 + 2, jb2, mask=live)
    tl.store(jac_ptr + ray * 6 + 3, jt0, mask=live)
    tl.store(jac_ptr + ray * 6 + 4, jt1, mask=live)
    tl.store(jac_ptr + ray * 6 + 5, jt2, mask=live)


@triton.jit
def _march_kernel(vol_ptr, sc, sk, sj, si, ni, nj, nk, mat_ptr, dirs_ptr, n_rays, n_samples, out_ptr, jac_ptr,
                  width, n_poses, WITH_JAC: tl.constexpr, BLOCK: tl.constexpr, TW: tl.constexpr,
                  SPLIT: tl.constexpr, POSE_FASTEST: tl.constexpr, SLIDE: tl.constexpr):
    """Line integrals of ``BLOCK`` rays of one pose in channel ``program_id(1)`` over one part of the samples.

    ``program_id(0)`` enumerates (tile, sample part, pose), with ``POSE_FASTEST`` the pose fastest: the
    programs running at one time render one region of the detector for every pose, which (for nearby
    poses) reads one region of the volume, kept in the L2 cache; else the tile fastest (pose by pose).
    Part ``k`` of ``SPLIT`` sums samples ``k, k + SPLIT, ...`` into slice ``k`` of ``out`` (and ``jac``);
    the caller adds the slices (a launch of few rays keeps more of the GPU busy that way). With ``SLIDE``
    (and ``SPLIT == 1``) the Jacobians include the samples' slide (:func:`_add_slide`); with ``SPLIT > 1``
    :func:`_sum_parts_kernel` adds it to the summed parts.
    """
    pid = tl.program_id(0)
    if POSE_FASTEST:
        b = pid % n_poses
        part = (pid // n_poses) % SPLIT
        tile = pid // (n_poses * SPLIT)
    else:
        n_tiles = tl.num_programs(0) // (n_poses * SPLIT)
        tile = pid % n_tiles
        part = (pid // n_tiles) % SPLIT
        b = pid // (n_tiles * SPLIT)
    c = tl.program_id(1)
    vol_ptr += c * sc
    r, live = _tile_rays(tile, n_rays, width, BLOCK, TW)
    o0, o1, o2, d0, d1, d2, t_near, dt, step, valid = _ray_setup(mat_ptr, dirs_ptr, b, r, live, n_rays,
                                                                   ni, nj, nk, n_samples)
    # rays that miss the box sample (clamped, in-bounds) voxels at t = 0 and are zeroed by step = 0;
    # a tile of such rays only does no samples
    t_near = tl.where(valid, t_near, 0.0)
    n_iter = tl.where(tl.max(valid.to(tl.int32), axis=0) > 0, n_samples, 0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    gb0 = tl.zeros((BLOCK,), dtype=tl.float32)
    gb1 = tl.zeros((BLOCK,), dtype=tl.float32)
    gb2 = tl.zeros((BLOCK,), dtype=tl.float32)
    gt0 = tl.zeros((BLOCK,), dtype=tl.float32)
    gt1 = tl.zeros((BLOCK,), dtype=tl.float32)
    gt2 = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(part, n_iter, SPLIT):
        t = t_near + (s + 0.5) * dt
        ia, ib, wi = _corners(o0 + t * d0, ni, si)
        ja, jb, wj = _corners(o1 + t * d1, nj, sj)
        ka, kb, wk = _corners(o2 + t * d2, nk, sk)
        v000 = tl.load(vol_ptr + ka + ja + ia).to(tl.float32)
        v001 = tl.load(vol_ptr + ka + ja + ib).to(tl.float32)
        v010 = tl.load(vol_ptr + ka + jb + ia).to(tl.float32)
        v011 = tl.load(vol_ptr + ka + jb + ib).to(tl.float32)
        v100 = tl.load(vol_ptr + kb + ja + ia).to(tl.float32)
        v101 = tl.load(vol_ptr + kb + ja + ib).to(tl.float32)
        v110 = tl.load(vol_ptr + kb + jb + ia).to(tl.float32)
        v111 = tl.load(vol_ptr + kb + jb + ib).to(tl.float32)
        x00 = v001 - v000
        x01 = v011 - v010
        x10 = v101 - v100
        x11 = v111 - v110
        c00 = v000 + wi * x00
        c01 = v010 + wi * x01
        c10 = v100 + wi * x10
        c11 = v110 + wi * x11
        e0 = c00 + wj * (c01 - c00)
        e1 = c10 + wj * (c11 - c10)
        g2 = e1 - e0
        acc += e0 + wk * g2
        if WITH_JAC:
            y0 = x00 + wj * (x01 - x00)
            y1 = x10 + wj * (x11 - x10)
            g0 = y0 + wk * (y1 - y0)
            g1 = (c01 - c00) + wk * ((c11 - c10) - (c01 - c00))
            gb0 += g0
            gb1 += g1
            gb2 += g2
            gt0 += g0 * t
            gt1 += g1 * t
            gt2 += g2 * t
    ray = ((part * n_poses + b) * tl.num_programs(1) + c) * n_rays + r
    tl.store(out_ptr + ray, acc * step, mask=live)
    if WITH_JAC:
        gb0, gb1, gb2, gt0, gt1, gt2 = gb0 * step, gb1 * step, gb2 * step, gt0 * step, gt1 * step, gt2 * step
        if SLIDE and SPLIT == 1:
            gb0, gb1, gb2, gt0, gt1, gt2 = _add_slide(mat_ptr, dirs_ptr, b, r, valid, ni, nj, nk, acc * step,
                                                      gb0, gb1, gb2, gt0, gt1, gt2)
        _store_jac(jac_ptr, ray, live, gb0, gb1, gb2, gt0, gt1, gt2)


@triton.jit
def _sum_parts_kernel(out_ptr, jac_ptr, mat_ptr, dirs_ptr, ni, nj, nk, n_rays, n_poses, n_channels,
                      sum_ptr, jac_sum_ptr, SPLIT: tl.constexpr, WITH_JAC: tl.constexpr, SLIDE: tl.constexpr,
                      BLOCK: tl.constexpr):
    """Add the ``SPLIT`` parts ``out`` [SPLIT, B, C, R] (``jac`` [SPLIT, B, C, R, 6]) of :func:`_march_kernel`.

    Writes the sums to ``sum`` [B, C, R] and ``jac_sum`` [B, C, R, 6], with ``SLIDE`` the Jacobians with the
    samples' slide (:func:`_add_slide`), which needs the whole line integral. Grid ``[ceil(R / BLOCK), B, C]``.
    """
    b = tl.program_id(1)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n_rays
    ray = (b * n_channels + tl.program_id(2)) * n_rays + r
    part = n_poses * n_channels * n_rays
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in tl.static_range(SPLIT):
        acc += tl.load(out_ptr + k * part + ray, mask=live, other=0.0)
    tl.store(sum_ptr + ray, acc, mask=live)
    if WITH_JAC:
        j0 = tl.zeros((BLOCK,), dtype=tl.float32)
        j1 = tl.zeros((BLOCK,), dtype=tl.float32)
        j2 = tl.zeros((BLOCK,), dtype=tl.float32)
        j3 = tl.zeros((BLOCK,), dtype=tl.float32)
        j4 = tl.zeros((BLOCK,), dtype=tl.float32)
        j5 = tl.zeros((BLOCK,), dtype=tl.float32)
        for k in tl.static_range(SPLIT):
            src = jac_ptr + (k * part + ray) * 6
            j0 += tl.load(src + 0, mask=live, other=0.0)
            j1 += tl.load(src + 1, mask=live, other=0.0)
            j2 += tl.load(src + 2, mask=live, other=0.0)
            j3 += tl.load(src + 3, mask=live, other=0.0)
            j4 += tl.load(src + 4, mask=live, other=0.0)
            j5 += tl.load(src + 5, mask=live, other=0.0)
        if SLIDE:
            j0, j1, j2, j3, j4, j5 = _add_slide(mat_ptr, dirs_ptr, b, r, live, ni, nj, nk, acc, j0, j1, j2, j3, j4, j5)
        _store_jac(jac_sum_ptr, ray, live, j0, j1, j2, j3, j4, j5)


@triton.jit
def _volume_grad_kernel(grad_ptr, ni, nj, nk, mat_ptr, dirs_ptr, n_rays, n_samples, gout_ptr,
                        BLOCK: tl.constexpr):
    """Add each sample's trilinear weights times its pixel's gradient times ``step`` into ``grad`` [C, K, J, I]."""
    b = tl.program_id(1)
    c = tl.program_id(2)
    grad_ptr += c * (ni * nj * nk)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n_rays
    o0, o1, o2, d0, d1, d2, t_near, dt, step, valid = _ray_setup(mat_ptr, dirs_ptr, b, r, live, n_rays,
                                                                   ni, nj, nk, n_samples)
    g = tl.load(gout_ptr + (b * tl.num_programs(2) + c) * n_rays + r, mask=live, other=0.0) * step
    valid = valid & (g != 0.0)
    for s in range(n_samples):
        t = t_near + (s + 0.5) * dt
        ia, ib, wi = _corners(o0 + t * d0, ni, 1)
        ja, jb, wj = _corners(o1 + t * d1, nj, ni)
        ka, kb, wk = _corners(o2 + t * d2, nk, ni * nj)
        lo_k = g * (1.0 - wk)
        hi_k = g * wk
        tl.atomic_add(grad_ptr + ka + ja + ia, lo_k * (1.0 - wj) * (1.0 - wi), mask=valid)
        tl.atomic_add(grad_ptr + ka + ja + ib, lo_k * (1.0 - wj) * wi, mask=valid)
        tl.atomic_add(grad_ptr + ka + jb + ia, lo_k * wj * (1.0 - wi), mask=valid)
        tl.atomic_add(grad_ptr + ka + jb + ib, lo_k * wj * wi, mask=valid)
        tl.atomic_add(grad_ptr + kb + ja + ia, hi_k * (1.0 - wj) * (1.0 - wi), mask=valid)
        tl.atomic_add(grad_ptr + kb + ja + ib, hi_k * (1.0 - wj) * wi, mask=valid)
        tl.atomic_add(grad_ptr + kb + jb + ia, hi_k * wj * (1.0 - wi), mask=valid)
        tl.atomic_add(grad_ptr + kb + jb + ib, hi_k * wj * wi, mask=valid)


def _check(mu: torch.Tensor, ijk_from_cam: torch.Tensor, dirs: torch.Tensor) -> None:
    """Raise ``ValueError`` on inputs the kernels cannot take (shapes, dtypes, devices)."""
    if mu.dim() not in (3, 4) or mu.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"mu: expected a [K, J, I] or [C, K, J, I] float32/float16/bfloat16 tensor, got "
                         f"{tuple(mu.shape)} {mu.dtype}")
    if ijk_from_cam.dim() != 3 or ijk_from_cam.shape[1:] != (3, 4) or ijk_from_cam.dtype != torch.float32:
        got = f"{tuple(ijk_from_cam.shape)} {ijk_from_cam.dtype}"
        raise ValueError(f"ijk_from_cam: expected [B, 3, 4] float32, got {got}")
    if dirs.dim() != 2 or dirs.shape[1] != 3 or dirs.dtype != torch.float32:
        raise ValueError(f"dirs: expected [R, 3] float32, got {tuple(dirs.shape)} {dirs.dtype}")
    if len({mu.device, ijk_from_cam.device, dirs.device}) != 1:
        raise ValueError("mu, ijk_from_cam and dirs must be on one device")
    if mu.numel() >= 2**31:
        raise ValueError("mu: more than 2^31 voxels")


TILE_WIDTH = 16
"""Pixels per row of a program's tile of a row-major detector (``BLOCK_RAYS // TILE_WIDTH`` rows)."""

_SM_COUNT: dict[int, int] = {}


def _busy_programs(device: torch.device) -> int:
    """Programs that keep ``device`` busy: eight per streaming multiprocessor (1 under the interpreter)."""
    if device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return 8 * _SM_COUNT[index]


def sample_split(n_programs: int, n_samples: int, device: torch.device) -> int:
    """Parts to split each ray's samples into, so that a launch of ``n_programs`` tiles fills ``device``.

    1 where the launch already fills it; at most 8, and at least 16 samples a part. A function of the
    sizes and the device only, so a render is the same from call to call.
    """
    want = -(-_busy_programs(device) // max(n_programs, 1))
    return max(1, min(want, 8, n_samples // 16))


def march(mu: torch.Tensor, ijk_from_cam: torch.Tensor, dirs: torch.Tensor, n_samples: int,
          with_jacobian: bool = False, width: int = 0, split: int | None = None,
          pose_fastest: bool = True, slide: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Line integrals ``[B, R]`` float32 and, with ``with_jacobian``, the per-ray Jacobians ``[B, R, 6]``.

    With a volume of ``C`` channels ``[C, K, J, I]`` they are ``[B, C, R]`` and ``[B, C, R, 6]``.

    Args:
        mu: attenuation ``[K, J, I]`` or ``[C, K, J, I]`` (1/mm), any strides.
        ijk_from_cam: ``[B, 3, 4]`` float32, ``[A | b]`` per pose.
        dirs: ``[R, 3]`` float32 pixel centres in the camera frame, mm.
        n_samples: samples per ray.
        with_jacobian: also return ``sum_i g_i step`` (entries 0-2) and ``sum_i g_i t_i step`` (3-5).
        width: pixels per detector row when ``dirs`` is a row-major detector (``R = rows * width``):
            programs then take square-ish tiles of pixels (faster); 0 for any list of rays.
        split: parts each ray's samples are summed in (partial sums added at the end); None chooses
            by :func:`sample_split`.
        pose_fastest: launch order, poses fastest (tiles of all poses at once) or tiles fastest (pose by pose);
            the result is the same (a knob for benchmarks).
        slide: with ``with_jacobian``, include the samples' slide with each ray's entry and exit
            (:func:`_add_slide`); False holds them fixed (what :func:`projector.add_sample_slide` takes, for tests).
    """
    _check(mu, ijk_from_cam, dirs)
    vol = mu if mu.dim() == 4 else mu[None]  # [C, K, J, I]
    mat = ijk_from_cam.contiguous()
    dirs = dirs.contiguous()
    nb, nr = mat.shape[0], dirs.shape[0]
    nc, nk, nj, ni = vol.shape
    tw = TILE_WIDTH if width > 0 and nr % width == 0 else 0
    if tw:
        n_tiles = triton.cdiv(width, tw) * triton.cdiv(nr // width, BLOCK_RAYS // tw)
    else:
        n_tiles, width = triton.cdiv(nr, BLOCK_RAYS), 0
    if split is None:
        split = sample_split(n_tiles * nb * nc, int(n_samples), mu.device)
    out = torch.empty((split, nb, nc, nr), dtype=torch.float32, device=mu.device)
    jac = torch.empty((split, nb, nc, nr, 6), dtype=torch.float32, device=mu.device) if with_jacobian else out
    _march_kernel[(n_tiles * split * nb, nc)](vol, *vol.stride(), ni, nj, nk, mat, dirs, nr, int(n_samples), out,
                                             jac, width, nb, WITH_JAC=bool(with_jacobian), BLOCK=BLOCK_RAYS,
                                             TW=tw, SPLIT=int(split), POSE_FASTEST=bool(pose_fastest),
                                             SLIDE=bool(slide), num_warps=4)
    if split == 1:
        out, jac = out[0], jac[0]
    else:
        total = torch.empty((nb, nc, nr), dtype=torch.float32, device=mu.device)
        jac_total = torch.empty((nb, nc, nr, 6), dtype=torch.float32, device=mu.device) if with_jacobian else total
        _sum_parts_kernel[(triton.cdiv(nr, BLOCK_RAYS), nb, nc)](out, jac, mat, dirs, ni, nj, nk, nr, nb, nc, total,
                                                                jac_total, SPLIT=int(split),
                                                                WITH_JAC=bool(with_jacobian), SLIDE=bool(slide),
                                                                BLOCK=BLOCK_RAYS)
        out, jac = total, jac_total
    if mu.dim() == 3:
        out, jac = out[:, 0], jac[:, 0]
    return out, (jac if with_jacobian else None)


def volume_gradient(shape: tuple[int, ...], ijk_from_cam: torch.Tensor, dirs: torch.Tensor,
                    n_samples: int, grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient (float32, of ``shape``: ``[K, J, I]`` or ``[C, K, J, I]``) of ``sum(grad_out * march(mu, ...))``.

    ``grad_out`` has the shape of the image: ``[B, R]`` or ``[B, C, R]``.
    """
    mat = ijk_from_cam.contiguous()
    dirs = dirs.contiguous()
    nc, nk, nj, ni = shape if len(shape) == 4 else (1, *shape)
    gout = grad_out.to(torch.float32).reshape(mat.shape[0], nc, dirs.shape[0]).contiguous()
    grad = torch.zeros((nc, nk, nj, ni), dtype=torch.float32, device=mat.device)
    grid = (triton.cdiv(dirs.shape[0], BLOCK_RAYS), mat.shape[0], nc)
    _volume_grad_kernel[grid](grad, ni, nj, nk, mat, dirs, dirs.shape[0], int(n_samples), gout, BLOCK=BLOCK_RAYS)
    return grad.reshape(shape)


class TritonMarch(torch.autograd.Function):
    """Line integrals by the Triton kernels, differentiable with respect to ``ijk_from_cam`` and ``mu``."""

    @staticmethod
    def forward(ctx, mu: torch.Tensor, ijk_from_cam: torch.Tensor, dirs: torch.Tensor,
                n_samples: int, width: int = 0) -> torch.Tensor:
        """Render ``mu`` [K, J, I] ([C, K, J, I]) at ``ijk_from_cam`` [B, 3, 4] along ``dirs`` [R, 3].

        ``width``: pixels per row when ``dirs`` is a row-major detector (see :func:`march`), else 0.
        Returns [B, R] ([B, C, R]) float32.
        """
        out, jac = march(mu.detach(), ijk_from_cam.detach(), dirs, n_samples, with_jacobian=ctx.needs_input_grad[1],
                         width=width)
        ctx.jac = jac
        ctx.shape = tuple(mu.shape)
        ctx.dtype = mu.dtype
        ctx.n_samples = n_samples
        ctx.save_for_backward(ijk_from_cam.detach(), dirs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        """Gradients for ``mu`` (second kernel) and ``ijk_from_cam`` (Jacobians contracted with ``grad_out``)."""
        mat, dirs = ctx.saved_tensors
        grad_mu = grad_mat = None
        if ctx.needs_input_grad[0]:
            grad_mu = volume_gradient(ctx.shape, mat, dirs, ctx.n_samples, grad_out).to(ctx.dtype)
        if ctx.needs_input_grad[1]:
            g = grad_out.to(torch.float32)[..., None] * ctx.jac  # [B, R, 6] or [B, C, R, 6]
            g = g.reshape(g.shape[0], -1, dirs.shape[0], 6).sum(1)  # [B, R, 6], channels summed
            grad_b = g[..., :3].sum(1)  # [B, 3]
            grad_a = torch.einsum("bri,rj->bij", g[..., 3:], dirs)  # [B, 3, 3]
            grad_mat = torch.cat([grad_a, grad_b[..., None]], dim=-1)
        return grad_mu, grad_mat, None, None, None
