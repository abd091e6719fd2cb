"""Image filters shared by the library: the one separable Gaussian blur.

Images are ``[B, 1, H, W]`` tensors (any float dtype, any device) or, through :func:`blur_image`, 2D
numpy arrays ``[rows, cols]``. Sigmas and radii are in pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BORDERS = ("reflect", "symmetric", "replicate")
"""Border modes: ``reflect`` mirrors about the edge pixel (``c b | a b c``), ``symmetric`` repeats it
(``b a | a b c``), ``replicate`` extends it (``a a | a b c``)."""


def border_index(n: int, radius: int, border: str) -> torch.Tensor:
    """Source index of each of the ``n + 2 radius`` samples of a padded axis of length ``n``."""
    p = torch.arange(-radius, n + radius)
    if border == "replicate" or n == 1:
        return p.clamp(0, n - 1)
    if border == "reflect":
        q = p.abs() % (2 * n - 2)
        return torch.where(q >= n, 2 * n - 2 - q, q)
    if border == "symmetric":
        q = p % (2 * n)
        return torch.where(q >= n, 2 * n - 1 - q, q)
    raise ValueError(f"border: expected one of {', '.join(BORDERS)}, got {border!r}")


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor, radius: int | None = None,
                  border: str = "reflect") -> torch.Tensor:
    """Blur images ``[B, 1, H, W]`` with a separable Gaussian, one sigma for all or one per image ``[B]``.

    The kernel is truncated at ``radius`` pixels (default ``max(1, ceil(3 sigma))`` of the largest sigma)
    and normalised to sum 1; a sigma below 1e-3 pixel leaves its image as it is.
    """
    b = x.shape[0]
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
    if radius is None:
        radius = max(1, int(math.ceil(3 * float(s.max()))))
    r = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (r[None] / s.clamp(min=1e-3)[:, None]) ** 2)  # [B, 2r+1]
    k = k / k.sum(1, keepdim=True)
    rows = border_index(x.shape[-2], radius, border).to(x.device)
    cols = border_index(x.shape[-1], radius, border).to(x.device)
    y = x[..., rows, :][..., cols].transpose(0, 1)  # [1, B, H+2r, W+2r]
    y = F.conv2d(y, k[:, None, None, :], groups=b)
    y = F.conv2d(y, k[:, None, :, None], groups=b)
    return torch.where((s > 1e-3)[:, None, None, None], y.transpose(0, 1), x)


def blur_image(image: np.ndarray, sigma: float, radius: int | None = None, border: str = "reflect",
               dtype: np.dtype = np.float32) -> np.ndarray:
    """:func:`gaussian_blur` of one 2D array ``[rows, cols]``, computed and returned in ``dtype``."""
    t = torch.as_tensor(np.asarray(image, dtype=dtype))[None, None]
    return gaussian_blur(t, float(sigma), radius, border)[0, 0].numpy()
