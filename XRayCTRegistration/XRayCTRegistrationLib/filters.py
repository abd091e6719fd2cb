"""Image filters shared by the library: the one separable Gaussian blur, the detector's blur, the background weight.

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


def detector_blur(line: torch.Tensor, variance: torch.Tensor, passes: int = 4) -> torch.Tensor:
    """A detector's blur of a line-integral image ``[..., H, W]``, applied to the intensity ``exp(-line)``.

    The point spread acts on the photons, not on their logarithm: ``-log(K * exp(-line))``. ``K`` is
    ``passes`` passes per axis of the 3-tap kernel ``[a, 1 - 2a, a]`` with ``a = variance / (2 passes)``:
    its variance is exactly ``variance`` (pixels^2, per axis) and it is linear in ``variance`` near 0, so
    the blur can be fitted by gradient from no blur at all. ``variance`` (a 0-d tensor, differentiable) is
    used as ``|variance|`` and must stay at most ``passes`` pixels^2 (the kernel stays non-negative); a tensor ``[N]``
    gives each of the ``N`` images of a batch ``[N, H, W]`` its own.
    Borders are replicated.
    """
    v = variance.abs().to(line.dtype)
    a = (v / (2 * passes)).reshape(-1, 1, 1, 1)  # [1 or N, 1, 1, 1]
    shape = line.shape
    img = torch.exp(-line.clamp(max=80.0)).reshape(-1, 1, *shape[-2:])  # [N, 1, H, W]
    for _ in range(passes):  # replicated borders by padding (no index tensors: capturable in a CUDA graph)
        p = F.pad(img, (0, 0, 1, 1), mode="replicate")
        img = a * (p[..., :-2, :] + p[..., 2:, :]) + (1 - 2 * a) * p[..., 1:-1, :]
        p = F.pad(img, (1, 1, 0, 0), mode="replicate")
        img = a * (p[..., :-2] + p[..., 2:]) + (1 - 2 * a) * p[..., 1:-1]
    return -torch.log(img.clamp(min=1e-35)).reshape(shape)


BACKGROUND_FRACTION = 0.01
""":func:`background_weight` drops the pixels within this fraction of the X-ray's range of its background level."""

MIN_FOREGROUND = 0.05
"""Fewest fraction of pixels :func:`background_weight` keeps; below it the image is taken to have no background."""


def background_weight(image: np.ndarray, fraction: float = BACKGROUND_FRACTION) -> np.ndarray:
    """Similarity weight ``[rows, cols]`` (0 or 1) that leaves out an X-ray's empty detector.

    The background level is the image's 1st percentile and its range runs from there to the 99.5th
    percentile (an attenuation-bright X-ray: air is darkest). A pixel is background, weight 0, when its
    attenuation is within ``fraction`` of that range of the background level. When fewer than
    :data:`MIN_FOREGROUND` of the pixels would be kept, every weight is 1. The registration counts a
    background pixel again where the DRR is not background (``registration._update_weights``).
    """
    a = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(a, [1.0, 99.5])
    keep = a > lo + float(fraction) * (hi - lo)
    if hi <= lo or keep.mean() < MIN_FOREGROUND:
        return np.ones(a.shape, dtype=np.float32)
    return keep.astype(np.float32)
