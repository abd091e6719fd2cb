"""Image filters shared by the library: the one separable Gaussian blur.

Images are ``[B, 1, H, W]`` tensors (any float dtype, any device) or, through :func:`blur_image`, 2D
numpy arrays ``[rows, cols]``. Sigmas and radii are in pixels.
"""

from __future__ import annotations

import functools
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


MATRIX_BLUR_MAX = 256
"""Largest image side (pixels) at which :func:`detector_blur` applies its passes as one matrix per axis.

The same operator either way (to float32 rounding); the matrices make a handful of operations instead of about forty
(a CUDA graph of the registration replays fewer kernels) and were faster on the CPU up to 256 pixels (0.4-3.1 ms
against 0.9-4.1 ms, forward and backward); beyond, the dense product costs more than the passes. The matrices are
summed in float64: their terms ``C(passes, k) a^k L^k`` are large and cancel, and summed in float32 the derivative by
the variance lost enough precision to move the spine crop's registrations (`benchmarks/results/multict.md`)."""


@functools.lru_cache(maxsize=16)
def _blur_powers(n: int, passes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``C(passes, k) L^k`` for ``k = 0..passes``, ``[passes + 1, n, n]``, ``L`` the second difference.

    ``L`` has replicated borders: one pass of the 3-tap kernel is ``I + a L``, so ``passes`` passes are
    ``sum_k C(passes, k) a^k L^k``. The entries are integers (exact in float32).
    """
    off = torch.ones(n - 1, dtype=torch.float64)
    lap = torch.diag(torch.full((n,), -2.0, dtype=torch.float64)) + torch.diag(off, 1) + torch.diag(off, -1)
    lap[0, 0] += 1.0
    lap[-1, -1] += 1.0
    terms = [torch.eye(n, dtype=torch.float64)]
    for _ in range(passes):
        terms.append(terms[-1] @ lap)
    coef = torch.tensor([math.comb(passes, k) for k in range(passes + 1)], dtype=torch.float64)
    return (torch.stack(terms) * coef[:, None, None]).to(dtype).to(device)


def detector_blur(line: torch.Tensor, variance: torch.Tensor, passes: int = 4) -> torch.Tensor:
    """A detector's blur of a line-integral image ``[..., H, W]``, applied to the intensity ``exp(-line)``.

    The point spread acts on the photons, not on their logarithm: ``-log(K * exp(-line))``. ``K`` is
    ``passes`` passes per axis of the 3-tap kernel ``[a, 1 - 2a, a]`` with ``a = variance / (2 passes)``:
    its variance is exactly ``variance`` (pixels^2, per axis) and it is linear in ``variance`` near 0, so
    the blur can be fitted by gradient from no blur at all. ``variance`` (a 0-d tensor, differentiable) is
    used as ``|variance|`` and must stay at most ``passes`` pixels^2 (the kernel stays non-negative).
    Borders are replicated. Up to :data:`MATRIX_BLUR_MAX` pixels a side the passes are applied as one matrix per
    axis (:func:`_blur_powers`), beyond one by one; neither copies from the host once the matrices exist (a CUDA graph
    can capture it).
    """
    v = variance.abs().to(line.dtype)
    a = v / (2 * passes)
    shape = line.shape
    h, w = shape[-2:]
    img = torch.exp(-line.clamp(max=80.0)).reshape(-1, h, w)  # [N, H, W]
    if max(h, w) <= MATRIX_BLUR_MAX:
        f64 = torch.float64
        ak = (variance.abs().to(f64) / (2 * passes)) ** torch.arange(passes + 1, dtype=f64, device=line.device)
        rows = torch.tensordot(ak, _blur_powers(h, passes, f64, line.device), 1)  # [H, H]
        cols = rows if w == h else torch.tensordot(ak, _blur_powers(w, passes, f64, line.device), 1)
        img = rows.to(line.dtype) @ img @ cols.T.to(line.dtype)
    else:
        img = img[:, None]  # [N, 1, H, W]
        for _ in range(passes):
            p = F.pad(img, (0, 0, 1, 1), mode="replicate")
            img = a * (p[..., :-2, :] + p[..., 2:, :]) + (1 - 2 * a) * p[..., 1:-1, :]
            p = F.pad(img, (1, 1, 0, 0), mode="replicate")
            img = a * (p[..., :-2] + p[..., 2:]) + (1 - 2 * a) * p[..., 1:-1]
    return -torch.log(img.clamp(min=1e-35)).reshape(shape)
