"""The one separable Gaussian: exact impulse response, each border mode against an independent padding, and
per-image sigmas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from XRayCTRegistrationLib.filters import (
    MIN_FOREGROUND,
    background_weight,
    blur_image,
    border_index,
    detector_blur,
    gaussian_blur,
)


def kernel(sigma, radius):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def reference(img, sigma, radius, numpy_mode):
    """Pad with numpy's own border mode, then convolve rows and columns with the normalised kernel."""
    k = kernel(sigma, radius)
    out = np.pad(img.astype(np.float64), radius, mode=numpy_mode)
    for axis in (0, 1):
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, out)
    return out


def test_impulse_response_is_the_normalised_kernel():
    img = np.zeros((21, 21))
    img[10, 10] = 1.0
    out = blur_image(img, 1.5, radius=5, dtype=np.float64)
    np.testing.assert_allclose(out[5:16, 5:16], np.outer(kernel(1.5, 5), kernel(1.5, 5)), atol=1e-15)
    assert out.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("border,numpy_mode", [("reflect", "reflect"), ("symmetric", "symmetric"),
                                               ("replicate", "edge")])
def test_borders_match_numpy_padding(border, numpy_mode):
    img = np.random.default_rng(0).random((9, 13))
    np.testing.assert_allclose(blur_image(img, 1.2, radius=4, border=border, dtype=np.float64),
                               reference(img, 1.2, 4, numpy_mode), atol=1e-12)
    assert border_index(4, 3, border).tolist() == {
        "reflect": [3, 2, 1, 0, 1, 2, 3, 2, 1, 0], "symmetric": [2, 1, 0, 0, 1, 2, 3, 3, 2, 1],
        "replicate": [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]}[border]


def test_default_radius_and_reflect_match_torch_padding():
    img = torch.rand(1, 1, 16, 12)
    k = torch.tensor(kernel(0.8, 3), dtype=torch.float32)  # default radius: ceil(3 * 0.8) = 3
    ref = F.conv2d(F.conv2d(F.pad(img, (3, 3, 3, 3), mode="reflect"), k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    torch.testing.assert_close(gaussian_blur(img, 0.8), ref, atol=1e-6, rtol=0)


def test_per_image_sigmas_and_no_blur():
    x = torch.rand(3, 1, 10, 10, dtype=torch.float64)
    out = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), border="replicate")
    torch.testing.assert_close(out[0], x[0], atol=0, rtol=0)
    for i, s in ((1, 1.0), (2, 2.0)):
        torch.testing.assert_close(out[i, 0], torch.as_tensor(reference(x[i, 0].numpy(), s, 6, "edge")), atol=1e-12,
                                   rtol=0)
    with pytest.raises(ValueError, match="border"):
        gaussian_blur(x, 1.0, border="wrap")


def test_detector_blur_acts_on_the_intensity_with_the_exact_variance():
    """An impulse in the intensity spreads with exactly the stated variance, binomially for an integer pass count."""
    line = torch.zeros(1, 31, 31, dtype=torch.float64)
    line[0, 15, 15] = -np.log(2.0)  # intensity 2 at the centre, 1 elsewhere
    for var in (0.3, 1.0, 2.5):
        out = torch.exp(-detector_blur(line, torch.tensor(var, dtype=torch.float64)))[0] - 1.0
        w = out.numpy()
        assert w.sum() == pytest.approx(1.0, abs=1e-12)  # the photons are kept
        r = np.arange(31) - 15
        assert (w.sum(0) * r ** 2).sum() == pytest.approx(var, abs=1e-12)
        assert (w.sum(1) * r ** 2).sum() == pytest.approx(var, abs=1e-10)
    # 4 passes of [1/4, 1/2, 1/4] (variance 2) are the binomial kernel of 8 + 1 taps
    out = torch.exp(-detector_blur(line, torch.tensor(2.0, dtype=torch.float64)))[0, 15] - 1.0
    from math import comb
    binom = np.array([comb(8, k) for k in range(9)]) / 2 ** 8
    np.testing.assert_allclose(out.numpy()[11:20], binom * binom[4], atol=1e-12)


def test_detector_blur_is_not_a_blur_of_the_line_integrals():
    """At an edge the log of blurred photons differs from blurred line integrals: the dark side moves most."""
    line = torch.zeros(1, 1, 21, dtype=torch.float64)
    line[..., 10:] = 5.0  # a 5-mu step: intensity 1 -> e^-5
    v = torch.tensor(1.0, dtype=torch.float64)
    out = detector_blur(line, v)[0, 0]
    assert float(out[9]) == pytest.approx(-np.log(0.75 + 0.25 * np.exp(-5.0)), rel=0.2)
    assert float(out[10]) < 2.5  # blurring the line integrals would give about 3 here: the bright side dominates
    assert torch.equal(detector_blur(line, torch.tensor(0.0, dtype=torch.float64)), line)


def test_detector_blur_takes_one_variance_per_image_of_a_batch():
    line = 3.0 * torch.rand(3, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    out = detector_blur(line, v)  # [3, 12, 10]
    assert out.shape == line.shape
    for i in range(3):
        torch.testing.assert_close(out[i], detector_blur(line[i], v[i].detach()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0], line[0], rtol=0, atol=1e-12)  # no blur
    assert not torch.allclose(out[1], out[2])
    (g,) = torch.autograd.grad(out[2].sum(), v)
    assert g[0] == 0 and g[1] == 0 and g[2] != 0  # each image depends on its own variance only


def test_detector_blur_gradient_is_linear_in_the_variance_near_zero():
    line = 3.0 * torch.rand(1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for v0 in (1e-6, 1e-4):
        v = torch.tensor(v0, dtype=torch.float64, requires_grad=True)
        detector_blur(line, v).sum().backward()
        grads.append(float(v.grad))
    assert abs(grads[0]) > 0 and grads[0] == pytest.approx(grads[1], rel=1e-2)


def test_background_weight_leaves_out_the_empty_detector_and_keeps_the_edges():
    """A blurred, noise-free box on an empty detector: the far tails are background, the edge and box are kept."""
    line = np.zeros((64, 64))
    line[20:44, 16:48] = 2.0
    xray = -np.log(blur_image(np.exp(-line), 1.5, dtype=np.float64))  # blurred on the photons, as a detector does
    xray = 0.8 * xray + 0.3  # any gain and offset
    w = background_weight(xray)
    assert w.dtype == np.float32 and set(np.unique(w)) == {0.0, 1.0}
    assert w[20:44, 16:48].min() == 1.0  # the box
    assert w[19, 30] == 1.0 and w[44, 30] == 1.0 and w[30, 15] == 1.0  # the first pixel of each blurred edge
    assert w[:16].max() == 0.0 and w[:, :12].max() == 0.0  # the empty detector, far tails included
    assert xray[15:17, 30].min() > xray.min()  # ... which are not exactly empty


def test_background_weight_without_background_keeps_nearly_everything():
    ramp = np.tile(np.linspace(1.0, 3.0, 50), (40, 1))  # tissue everywhere: no air
    assert background_weight(ramp).mean() > 0.97
    speck = np.zeros((40, 40))
    speck[0, :20] = 1.0  # 20 of 1600 pixels: below MIN_FOREGROUND, the image is taken whole
    assert 20 / speck.size < MIN_FOREGROUND
    assert background_weight(speck).min() == 1.0
    assert background_weight(np.full((8, 8), 2.0)).min() == 1.0  # constant: nothing to tell apart
