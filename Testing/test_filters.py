"""The one separable Gaussian: exact impulse response, each border mode against an independent padding, and
per-image sigmas."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from XRayCTRegistrationLib.filters import blur_image, border_index, gaussian_blur


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
