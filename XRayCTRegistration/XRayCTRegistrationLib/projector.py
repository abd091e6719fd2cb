"""Differentiable DRR renderer (ray marching with trilinear interpolation).

A DRR pixel is the line integral of attenuation along the ray from the source to the pixel
centre: ``I = sum_i mu(p_i) * step``. Rays are clipped to the volume's box, so samples are spent
only where a ray crosses the volume; each ray takes ``n_samples`` equally spaced midpoint samples
between its entry and exit. Gradients flow to the pose (through ``world_from_camera``) and to
the volume.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Camera
from .volume import Volume

DEFAULT_SAMPLES = 256
"""Samples per ray when none are given."""


class Projector(torch.nn.Module):
    """Render DRRs of one volume through one camera at a batch of poses.

    Args:
        volume: attenuation volume (1/mm), see :func:`volume.hu_to_mu`.
        camera: detector intrinsics.
        n_samples: samples per ray (between the ray's entry into and exit from the volume).
        device: torch device for the volume and the rays.
        max_samples_per_chunk: bound on the samples held in memory at once (rays are chunked).
    """

    def __init__(self, volume: Volume, camera: Camera, n_samples: int = DEFAULT_SAMPLES,
                 device: str | torch.device = "cpu", max_samples_per_chunk: int = 1 << 23) -> None:
        """Upload the volume and precompute the ray directions."""
        super().__init__()
        self.camera = camera
        self.n_samples = int(n_samples)
        self.max_samples_per_chunk = int(max_samples_per_chunk)
        dev = torch.device(device)
        self.register_buffer("mu", torch.as_tensor(volume.data, device=dev)[None, None])  # [1, 1, K, J, I]
        self.register_buffer("ijk_from_world", torch.as_tensor(volume.ras_to_ijk, dtype=torch.float32, device=dev))
        dirs = camera.pixel_centers(np.float32).reshape(-1, 3)  # [R, 3] camera frame, mm
        self.register_buffer("dirs", torch.as_tensor(dirs, device=dev))
        self.register_buffer("shape_ijk", torch.tensor(volume.shape_ijk, dtype=torch.float32, device=dev))

    def forward(self, world_from_camera: torch.Tensor) -> torch.Tensor:
        """Render at poses ``[B, 4, 4]`` (or ``[4, 4]``); returns ``[B, rows, cols]`` (or ``[rows, cols]``)."""
        single = world_from_camera.dim() == 2
        w = world_from_camera[None] if single else world_from_camera
        w = w.to(self.mu.device, torch.float32)
        ijk_from_cam = self.ijk_from_world @ w  # [B, 4, 4]
        a, b = ijk_from_cam[:, :3, :3], ijk_from_cam[:, :3, 3]
        n_rays = self.dirs.shape[0]
        chunk = max(1, self.max_samples_per_chunk // self.n_samples)
        parts = [self._march(a, b, self.dirs[s:s + chunk]) for s in range(0, n_rays, chunk)]
        img = torch.cat(parts, dim=1).reshape(-1, self.camera.rows, self.camera.cols)
        return img[0] if single else img

    def _march(self, a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """Integrate along rays ``dirs`` [R, 3] for poses ``a`` [B, 3, 3], ``b`` [B, 3]; returns [B, R]."""
        d = torch.einsum("bij,rj->bri", a, dirs)  # [B, R, 3] ray direction in ijk per unit t
        o = b[:, None, :]  # [B, 1, 3] source in ijk
        t_near, t_far = clip_rays(o, d, self.shape_ijk)  # [B, R]
        t_near, t_far = t_near.detach(), t_far.detach()
        length = (t_far - t_near).clamp(min=0)  # fraction of source-pixel segment
        u = (torch.arange(self.n_samples, device=d.device, dtype=d.dtype) + 0.5) / self.n_samples  # [N]
        t = t_near[..., None] + length[..., None] * u  # [B, R, N]
        p = o[..., None, :] + t[..., None] * d[..., None, :]  # [B, R, N, 3] ijk
        grid = 2 * p / (self.shape_ijk - 1).clamp(min=1) - 1  # align_corners=True
        bsz, n_rays = p.shape[:2]
        vals = F.grid_sample(self.mu.expand(bsz, -1, -1, -1, -1), grid[:, None], mode="bilinear",
                             padding_mode="zeros", align_corners=True)  # [B, 1, 1, R, N]
        step_mm = length * dirs.norm(dim=-1) / self.n_samples  # [B, R]
        return vals[:, 0, 0].sum(-1) * step_mm


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
           n_samples: int = DEFAULT_SAMPLES) -> np.ndarray:
    """Render one DRR ``[rows, cols]`` (float32) at a 4x4 pose; no gradients."""
    proj = Projector(volume, camera, n_samples=n_samples)
    with torch.no_grad():
        return proj(torch.as_tensor(np.asarray(world_from_camera), dtype=torch.float32)).numpy()


def samples_for(volume: Volume, step_vox: float = 1.0) -> int:
    """Samples per ray so that the longest chord through ``volume`` is sampled every ``step_vox`` voxels."""
    return int(math.ceil(np.linalg.norm(volume.shape_ijk) / step_vox))
