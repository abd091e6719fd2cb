"""Differentiable image similarities for intensity-based 2D/3D registration.

Every function compares a batch of moving images (DRRs) ``x`` ``[B, H, W]`` with a fixed image
(the X-ray) ``y`` ``[B, H, W]`` or ``[H, W]`` (broadcast over the batch), optionally weighted by
``weight`` ``[H, W]`` or ``[B, H, W]`` (non-negative; a binary mask restricts the comparison to
its pixels), and returns a similarity ``[B]`` where **higher is better**. A 2D ``x`` counts as
a batch of one. All are invariant to a positive affine change of intensity of either image
(gradient difference only to a scale of the moving image, which it fits in closed form).

Gradient-based measures use 3x3 Sobel derivatives on the interior pixels; there the weight of
a pixel is the minimum weight over its 3x3 neighbourhood, so pixels outside a binary mask never
influence the value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError

EPS = 1e-8
"""Guard added to variances and norms (images are compared after centring, so scale matters little)."""

Similarity = Callable[..., torch.Tensor]
"""``f(x [B,H,W], y [B,H,W] | [H,W], weight=None) -> [B]``."""


# -- helpers ----------------------------------------------------------------------------------------
def _prepare(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch, broadcast and check shapes; returns ``x, y, w`` each ``[B, H, W]``."""
    x = torch.as_tensor(x)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise InputError(f"similarity: moving image must be [B, H, W] or [H, W], got shape {tuple(x.shape)}")
    y = torch.as_tensor(y, dtype=x.dtype, device=x.device)
    if y.dim() == 2:
        y = y[None]
    if y.shape[-2:] != x.shape[-2:]:
        raise InputError(f"similarity: image shapes differ: {tuple(x.shape[-2:])} vs {tuple(y.shape[-2:])}")
    y = y.expand_as(x)
    if weight is None:
        w = torch.ones_like(x)
    else:
        w = torch.as_tensor(weight, dtype=x.dtype, device=x.device)
        if w.dim() == 2:
            w = w[None]
        if w.shape[-2:] != x.shape[-2:]:
            raise InputError(f"similarity: weight shape {tuple(w.shape)} does not match images {tuple(x.shape)}")
        w = w.expand_as(x)
    return x, y, w


def _weighted_ncc(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Weighted Pearson correlation over ``dims``."""
    sw = w.sum(dims, keepdim=True).clamp(min=EPS)
    mx = (w * x).sum(dims, keepdim=True) / sw
    my = (w * y).sum(dims, keepdim=True) / sw
    dx, dy = x - mx, y - my
    cov = (w * dx * dy).sum(dims)
    vx = (w * dx * dx).sum(dims)
    vy = (w * dy * dy).sum(dims)
    return cov / torch.sqrt(vx * vy + EPS * EPS)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
_SOBEL_Y = _SOBEL_X.T.contiguous()


def sobel(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives along columns (x) and rows (y) of ``img`` ``[B, H, W]`` -> two ``[B, H-2, W-2]``."""
    k = torch.stack([_SOBEL_X, _SOBEL_Y])[:, None].to(img.dtype).to(img.device)  # [2, 1, 3, 3]
    g = F.conv2d(img[:, None], k)  # [B, 2, H-2, W-2]
    return g[:, 0], g[:, 1]


def _interior_weight(w: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Weight of the Sobel outputs: the minimum of ``w`` over each ``size`` x ``size`` neighbourhood.

    ``[B, H-2, W-2]`` for the 3x3 Sobel derivatives, ``[B, H-1, W-1]`` for forward differences (``size=2``).
    """
    return -F.max_pool2d(-w[:, None], size, stride=1)[:, 0]


def forward_differences(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along columns (x) and rows (y) of ``img`` ``[B, H, W]`` -> two ``[B, H-1, W-1]``."""
    return img[:, :-1, 1:] - img[:, :-1, :-1], img[:, 1:, :-1] - img[:, :-1, :-1]


GRADIENTS = {"sobel": (sobel, 3), "forward": (forward_differences, 2)}
"""Image derivatives of the gradient measures: the function and the neighbourhood size it reads."""


# -- intensity measures ---------------------------------------------------------------------------------
def ncc(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised cross-correlation (weighted Pearson correlation) over the whole image, in [-1, 1]."""
    x, y, w = _prepare(x, y, weight)
    return _weighted_ncc(x, y, w, (-2, -1))


def patch_ncc(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
              patch_size: int = 8) -> torch.Tensor:
    """Mean NCC over non-overlapping ``patch_size`` x ``patch_size`` patches (the remainder at the edges is unused).

    Patches are averaged with the weight they hold, so a patch outside the mask counts for nothing.
    """
    x, y, w = _prepare(x, y, weight)
    p = int(patch_size)
    b, h, wd = x.shape
    if p < 2 or p > min(h, wd):
        raise InputError(f"patch_ncc: patch_size must be in [2, {min(h, wd)}], got {patch_size}")
    hh, ww = (h // p) * p, (wd // p) * p

    def blocks(t: torch.Tensor) -> torch.Tensor:  # [B, H, W] -> [B, nh, nw, p*p]
        t = t[:, :hh, :ww].reshape(b, hh // p, p, ww // p, p)
        return t.permute(0, 1, 3, 2, 4).reshape(b, hh // p, ww // p, p * p)

    xb, yb, wb = blocks(x), blocks(y), blocks(w)
    local = _weighted_ncc(xb, yb, wb, (-1,))  # [B, nh, nw]
    pw = wb.sum(-1)
    return (local * pw).sum((-2, -1)) / pw.sum((-2, -1)).clamp(min=EPS)


def default_patch_sizes(h: int, w: int) -> tuple[int, ...]:
    """Patch sizes used by :func:`mncc`: a quarter and an eighth of the shorter side (at least 3 pixels)."""
    n = min(h, w)
    return tuple(sorted({max(3, n // 4), max(3, n // 8)}, reverse=True))


def mncc(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
         patch_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Multiscale NCC: the mean of the global NCC and :func:`patch_ncc` at each of ``patch_sizes``.

    ``patch_sizes`` defaults to :func:`default_patch_sizes` of the image, so the measure means the
    same thing at every level of an image pyramid.
    """
    x, y, w = _prepare(x, y, weight)
    sizes = default_patch_sizes(*x.shape[-2:]) if patch_sizes is None else tuple(patch_sizes)
    terms = [_weighted_ncc(x, y, w, (-2, -1))] + [patch_ncc(x, y, w, s) for s in sizes]
    return torch.stack(terms).mean(0)


def local_patch_sizes(h: int, w: int) -> tuple[int, ...]:
    """Patch sizes used by :func:`local_ncc`: an eighth and a sixteenth of the shorter side (at least 3 pixels).

    On the chest CT benchmark (``benchmarks/results/registration.md``, 128 x 128 detector) these
    small patches gave a higher success rate than the quarter/eighth of :func:`default_patch_sizes`.
    Below about 128 pixels a side the coarse pyramid levels leave patches of 3-4 pixels, too few to
    carry information: use global NCC (``opt-ncc``) on such small images.
    """
    n = min(h, w)
    return tuple(sorted({max(3, n // 8), max(3, n // 16)}, reverse=True))


def local_ncc(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
              patch_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Local NCC: the mean of :func:`patch_ncc` at each of ``patch_sizes`` (no global term).

    NCC is invariant to an affine intensity change only; between an X-ray and a DRR the change is
    often non-linear (gamma, scatter, the detector's response), but close to affine within a patch,
    so this measure is less biased than :func:`ncc` and :func:`mncc`, above all in depth (the
    magnification). ``patch_sizes`` defaults to :func:`local_patch_sizes`.
    """
    x, y, w = _prepare(x, y, weight)
    sizes = local_patch_sizes(*x.shape[-2:]) if patch_sizes is None else tuple(patch_sizes)
    return torch.stack([patch_ncc(x, y, w, s) for s in sizes]).mean(0)


INTENSITY_FIT_KNOTS = 12
"""Knots of :func:`intensity_fit`'s piecewise-linear intensity mapping (at quantiles of the DRR, ends included)."""


def _knots(x: torch.Tensor, w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(low [1], span [1], inner knots [k - 2] in [0, 1])`` of one image ``x`` ``[N]`` over its pixels of weight > 0.

    The inner knots are quantiles of the selected pixels above their minimum (the CT's footprint, not the empty
    detector around it), the image mapped to [0, 1] by ``(x - low) / span``.
    """
    sel = x[w > 0]
    sel = sel if sel.numel() >= 2 else x
    lo, span = sel.min(), (sel.max() - sel.min()).clamp(min=EPS)
    inside = sel[sel > lo + 1e-6 * span]
    q = torch.linspace(0.0, 1.0, k, dtype=x.dtype, device=x.device)[1:-1]
    t = torch.quantile(inside if inside.numel() >= 2 else sel, q) if k > 2 else x.new_zeros(0)
    return lo[None], span[None], (t - lo) / span


def intensity_fit(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                  knots: int = INTENSITY_FIT_KNOTS, ridge: float = 1e-6) -> torch.Tensor:
    """Share of the fixed image's variance explained by a piecewise-linear function of the moving image, in [0, 1].

    The weighted least-squares fit ``y ~ f(x)``, ``f`` continuous and linear between ``knots`` knots placed at
    quantiles of ``x`` over the pixels the CT covers, is redone at every call (in closed form, differentiably),
    and the measure is its ``R^2 = 1 - SSR / SST``: a smooth form of the correlation ratio. It is invariant to
    any intensity mapping that ``f`` can follow (a gamma, a gain and offset, a detector's response curve), not
    only an affine one, and it keeps the image's large-scale intensities, which local patches (:func:`local_ncc`)
    normalise away; on a small field the depth (the magnification) lives there (``benchmarks/results/
    depth_bound.md``). Being global, it has local optima far from the truth: from the benchmarks' SOPI-like
    starts it fails where local NCC succeeds, so no registration method uses it by default.
    ``ridge`` (relative to the total weight) keeps the fit defined where knots coincide.
    """
    x, y, w = _prepare(x, y, weight)
    k = int(knots)
    if k < 2:
        raise InputError(f"intensity_fit: knots must be at least 2, got {knots}")
    b = x.shape[0]
    xf, yf, wf = x.reshape(b, -1), y.reshape(b, -1), w.reshape(b, -1)  # [B, N]
    # the knots follow the image (differentiably: quantiles are sorted pixel values), so the gradient is exact
    lo, span, t = (torch.stack(v) for v in zip(*(_knots(xf[i], wf[i], k) for i in range(b)), strict=True))
    u = (xf - lo) / span  # [B, N] in [0, 1]
    phi = torch.cat([torch.ones_like(u)[..., None], u[..., None], torch.relu(u[..., None] - t[:, None, :])], -1)
    pw = phi * wf[..., None]  # [B, N, K]
    sw = wf.sum(1).clamp(min=EPS)  # [B]
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    gram = pw.transpose(1, 2) @ phi + (ridge * sw)[:, None, None] * eye  # basis values are in [0, 1]
    beta = torch.linalg.solve(gram, pw.transpose(1, 2) @ yf[..., None])  # [B, K, 1]
    resid = yf - (phi @ beta)[..., 0]
    mean = (wf * yf).sum(1, keepdim=True) / sw[:, None]
    sst = (wf * (yf - mean) ** 2).sum(1).clamp(min=EPS)
    return 1.0 - (wf * resid * resid).sum(1) / sst


def local_ncc_fit(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of :func:`local_ncc` and :func:`intensity_fit`, in [-1, 1].

    Local patches keep the measure robust to the contrast change; the global fit adds the large-scale
    intensities that carry the depth (the magnification) where local NCC is flat along it. Scored on the full
    detector from local NCC's result (``registration.register(..., finish_fit=True)``): with a global term it has
    local optima far from the truth.
    """
    return 0.5 * (local_ncc(x, y, weight) + intensity_fit(x, y, weight))


# -- gradient measures ------------------------------------------------------------------------------------
def gradient_correlation(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient correlation (GC): the mean of the NCCs of the x- and y-Sobel derivatives, in [-1, 1]."""
    x, y, w = _prepare(x, y, weight)
    gxx, gxy = sobel(x)
    gyx, gyy = sobel(y)
    wi = _interior_weight(w)
    return 0.5 * (_weighted_ncc(gxx, gyx, wi, (-2, -1)) + _weighted_ncc(gxy, gyy, wi, (-2, -1)))


def ngi(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised gradient information, in [0, 1] (1 for images equal up to a positive scale and offset).

    Gradient information after Pluim et al.: each pixel contributes ``cos^2(a) * min(|gx|, |gy|)``
    where ``a`` is the angle between the two gradients (so opposite gradients count as aligned,
    as edges do in a DRR and an X-ray of different contrast). Both gradient fields are first divided
    by their weighted mean magnitude, and the sum is normalised by the geometric mean of the two
    total magnitudes: ``NGI = sum w cos^2 min(|gx|, |gy|) / sqrt(sum w |gx| * sum w |gy|)``.
    """
    x, y, w = _prepare(x, y, weight)
    ax, ay = sobel(x)
    bx, by = sobel(y)
    wi = _interior_weight(w)
    sw = wi.sum((-2, -1), keepdim=True).clamp(min=EPS)
    na = torch.sqrt(ax * ax + ay * ay + EPS * EPS)
    nb = torch.sqrt(bx * bx + by * by + EPS * EPS)
    sa = (wi * na).sum((-2, -1), keepdim=True) / sw + EPS
    sb = (wi * nb).sum((-2, -1), keepdim=True) / sw + EPS
    na, nb = na / sa, nb / sb
    cos2 = ((ax * bx + ay * by) / (sa * sb)) ** 2 / (na * na * nb * nb + 1e-12)
    gi = (wi * cos2 * torch.minimum(na, nb)).sum((-2, -1))
    norm = torch.sqrt((wi * na).sum((-2, -1)) * (wi * nb).sum((-2, -1))).clamp(min=EPS)
    return gi / norm


def gradient_difference(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *,
                        gradients: str = "sobel", fit_scale: bool = True) -> torch.Tensor:
    """Gradient difference (Penney et al.), normalised to a weighted mean in (0, 1] (1 = identical gradients).

    With the fixed image's derivatives ``fx, fy`` (:data:`GRADIENTS`: 3x3 Sobel by default, or forward
    differences), the moving image's ``mx, my`` and the scale ``s`` that best matches them in the
    least-squares sense (fitted in closed form, per batch item; 1 with ``fit_scale=False``), each pixel
    contributes ``Ax / (Ax + (fx - s mx)^2) + Ay / (Ay + (fy - s my)^2)``, halved, where ``Ax, Ay`` are
    the weighted variances of ``fx, fy``. The training loss of the initialisers is one minus it
    (forward differences, no scale: ``networks.losses.gradient_difference_loss``).
    """
    x, y, w = _prepare(x, y, weight)
    derivative, size = GRADIENTS[gradients]
    mx, my = derivative(x)
    fx, fy = derivative(y)
    wi = _interior_weight(w, size)
    dims = (-2, -1)
    sw = wi.sum(dims, keepdim=True).clamp(min=EPS)
    s = 1.0
    if fit_scale:
        s = (wi * (fx * mx + fy * my)).sum(dims, keepdim=True) / (
            (wi * (mx * mx + my * my)).sum(dims, keepdim=True) + EPS)

    def var(t: torch.Tensor) -> torch.Tensor:
        m = (wi * t).sum(dims, keepdim=True) / sw
        return (wi * (t - m) ** 2).sum(dims, keepdim=True) / sw + EPS

    ax, ay = var(fx), var(fy)
    term = ax / (ax + (fx - s * mx) ** 2) + ay / (ay + (fy - s * my) ** 2)
    return 0.5 * (wi * term).sum(dims) / sw[..., 0, 0]


SIMILARITIES: dict[str, Similarity] = {
    "ncc": ncc,
    "mncc": mncc,
    "patch_ncc": patch_ncc,
    "lncc": local_ncc,
    "gc": gradient_correlation,
    "ngi": ngi,
    "gd": gradient_difference,
    "fit": intensity_fit,
    "lncc+fit": local_ncc_fit,
}
"""Similarity functions by name; each ``f(x, y, weight=None) -> [B]``, higher is better."""


def get_similarity(name: str) -> Similarity:
    """The similarity called ``name`` (see :data:`SIMILARITIES`); ``KeyError`` names the choices."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise KeyError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}") from None
