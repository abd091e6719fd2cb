import numpy as np
import pytest
import torch
from scipy import ndimage
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.similarity import (
    SIMILARITIES,
    gradient_correlation,
    gradient_difference,
    mncc,
    ncc,
    ngi,
    patch_ncc,
)


def smooth_image(seed=0, shape=(32, 40)):
    rng = np.random.default_rng(seed)
    img = 100 * ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    return torch.tensor(img, dtype=torch.float64)


def test_ncc_exact_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 3.0], [2.0, 4.0]], dtype=torch.float64)
    assert ncc(x, y).item() == pytest.approx(0.8, abs=1e-12)  # cov 4 / var 5
    a = smooth_image()
    assert ncc(a, 3 * a + 2).item() == pytest.approx(1.0, abs=1e-9)
    assert ncc(a, -a).item() == pytest.approx(-1.0, abs=1e-9)
    assert ncc(a, -0.5 * a + 7).item() == pytest.approx(-1.0, abs=1e-9)


def test_ncc_matches_numpy_and_batches():
    a, b, c = smooth_image(1), smooth_image(2), smooth_image(3)
    out = ncc(torch.stack([a, b]), c)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(np.corrcoef(a.ravel(), c.ravel())[0, 1], abs=1e-10)
    assert out[1].item() == pytest.approx(np.corrcoef(b.ravel(), c.ravel())[0, 1], abs=1e-10)


def test_weighted_ncc_is_ncc_over_the_mask():
    a, b = smooth_image(1), smooth_image(2)
    mask = torch.zeros_like(a)
    mask[5:20, 8:30] = 1
    sel = mask.bool()
    expected = np.corrcoef(a[sel], b[sel])[0, 1]
    assert ncc(a, b, mask).item() == pytest.approx(expected, abs=1e-10)


def test_patch_ncc_values():
    a = smooth_image(shape=(16, 16))
    assert patch_ncc(a, a, patch_size=16).item() == pytest.approx(1.0, abs=1e-9)
    assert patch_ncc(a, 2 * a + 1, patch_size=4).item() == pytest.approx(1.0, abs=1e-9)
    # left half positively, right half negatively correlated: two 8x16 halves -> four 8x8 patches, mean 0
    y = a.clone()
    y[:, 8:] = -a[:, 8:]
    assert patch_ncc(a, y, patch_size=8).item() == pytest.approx(0.0, abs=1e-9)
    assert patch_ncc(a, y, patch_size=16).item() == pytest.approx(ncc(a, y).item(), abs=1e-12)
    # mask on the left half only: only positively correlated patches count
    m = torch.zeros_like(a)
    m[:, :8] = 1
    assert patch_ncc(a, y, m, patch_size=8).item() == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(InputError):
        patch_ncc(a, a, patch_size=32)


def test_mncc_identical_and_mean_of_terms():
    a, b = smooth_image(1), smooth_image(2)
    assert mncc(a, 5 * a - 1).item() == pytest.approx(1.0, abs=1e-9)
    expected = (ncc(a, b) + patch_ncc(a, b, patch_size=8) + patch_ncc(a, b, patch_size=4)) / 3
    assert mncc(a, b, patch_sizes=(8, 4)).item() == pytest.approx(expected.item(), abs=1e-12)


def test_gradient_correlation_values():
    a, b = smooth_image(1), smooth_image(2)
    assert gradient_correlation(a, a).item() == pytest.approx(1.0, abs=1e-9)
    assert gradient_correlation(a, 4 * a + 3).item() == pytest.approx(1.0, abs=1e-9)
    assert gradient_correlation(a, -a).item() == pytest.approx(-1.0, abs=1e-9)
    # independent reference: scipy's Sobel filters on the interior pixels
    def interior(img, axis):
        return ndimage.sobel(img.numpy(), axis=axis)[1:-1, 1:-1].ravel()
    expected = 0.5 * (np.corrcoef(interior(a, 1), interior(b, 1))[0, 1]
                      + np.corrcoef(interior(a, 0), interior(b, 0))[0, 1])
    assert gradient_correlation(a, b).item() == pytest.approx(expected, abs=1e-10)


def test_ngi_and_gd_identical_and_bounded():
    a, b = smooth_image(1), smooth_image(2)
    for f in (ngi, gradient_difference):
        assert f(a, a).item() == pytest.approx(1.0, abs=1e-6)
        assert f(a, 3 * a + 1).item() == pytest.approx(1.0, abs=1e-6)
        v = f(a, b).item()
        assert 0.0 < v < 0.9
    assert ngi(a, -2 * a).item() == pytest.approx(1.0, abs=1e-6)  # contrast inversion keeps edges


def test_gd_hand_computed():
    # moving image = fixed image + a ramp along rows: Sobel y-derivative of the ramp is 1 everywhere
    f = smooth_image(4, shape=(12, 12))
    m = f + torch.arange(12, dtype=torch.float64)[:, None]
    fx = ndimage.sobel(f.numpy(), axis=1)[1:-1, 1:-1] / 8
    fy = ndimage.sobel(f.numpy(), axis=0)[1:-1, 1:-1] / 8
    mx, my = fx, fy + 1
    s = (fx * mx + fy * my).sum() / (mx * mx + my * my).sum()
    ax, ay = fx.var(), fy.var()
    expected = 0.5 * (ax / (ax + (fx - s * mx) ** 2) + ay / (ay + (fy - s * my) ** 2)).mean()
    assert gradient_difference(m, f).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_mask_restricts(name):
    f = SIMILARITIES[name]
    a, b = smooth_image(1), smooth_image(2)
    mask = torch.zeros_like(a)
    mask[6:26, 6:34] = 1
    v0 = f(a, b, mask)
    a2, b2 = a.clone(), b.clone()
    a2[mask == 0] = 100 * torch.rand(int((mask == 0).sum()), dtype=torch.float64)
    b2[:3] = -50
    v1 = f(a2, b2, mask)
    assert torch.allclose(v0, v1, atol=1e-10), (v0, v1)
    assert not torch.allclose(f(a2, b2), v0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_gradients_finite_nonzero_and_batched(name):
    f = SIMILARITIES[name]
    x = torch.stack([smooth_image(1), smooth_image(3)]).float().requires_grad_(True)
    y = smooth_image(2).float()
    out = f(x, y)
    assert out.shape == (2,)
    out.sum().backward()
    assert torch.all(torch.isfinite(x.grad))
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0
    assert torch.allclose(out[1], f(x[1].detach(), y)[0], atol=1e-6)


def test_higher_is_better_near_the_match():
    a = smooth_image(5, shape=(40, 40))
    shifted = torch.roll(a, 2, dims=1)
    for name, f in SIMILARITIES.items():
        assert f(a, a).item() > f(shifted, a).item(), name


def test_bad_shapes():
    with pytest.raises(InputError):
        ncc(torch.zeros(4, 4), torch.zeros(5, 4))
    with pytest.raises(InputError):
        ncc(torch.zeros(4, 4), torch.zeros(4, 4), torch.ones(3, 3))
    with pytest.raises(InputError):
        ncc(torch.zeros(4), torch.zeros(4))


def test_local_ncc_is_one_for_affine_change_and_tolerates_gamma():
    from XRayCTRegistrationLib.similarity import local_ncc, ncc

    g = torch.Generator().manual_seed(3)
    base = torch.rand(64, 64, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(base[None, None], 5, 1, 2)[0, 0] + torch.linspace(0, 2, 64)[None, :]
    assert local_ncc(smooth, 3.0 * smooth + 1.0).item() == pytest.approx(1.0, abs=1e-9)
    assert local_ncc(smooth, -smooth).item() == pytest.approx(-1.0, abs=1e-9)
    # a non-linear (gamma) contrast change: affine within small patches, not across the image
    gamma = smooth ** 2.5
    assert 1 - local_ncc(smooth, gamma).item() < 0.5 * (1 - ncc(smooth, gamma).item())


def test_intensity_fit_absorbs_a_monotone_contrast_change_that_ncc_does_not():
    from XRayCTRegistrationLib.similarity import intensity_fit

    x = smooth_image(7, shape=(48, 48))
    x = (x - x.min()) / (x.max() - x.min())  # [0, 1]
    y = 0.8 * x ** 0.6 + 0.1  # a gamma, a gain and an offset
    assert intensity_fit(x, y).item() > 0.999
    assert 1 - intensity_fit(x, y).item() < 0.1 * (1 - ncc(x, y).item() ** 2)  # R^2 of the affine fit
    # a shift of the image is not a contrast change
    assert intensity_fit(torch.roll(x, 2, dims=1), y).item() < 0.95


def test_intensity_fit_gradient_matches_finite_differences_on_a_mostly_empty_image():
    from XRayCTRegistrationLib.similarity import intensity_fit

    x = smooth_image(8, shape=(24, 24)).abs()
    x[:, :14] = 0.0  # more than half of the detector outside the CT: the knots must not pile up on 0
    y = (x + 0.3 * smooth_image(9, shape=(24, 24))).clamp(min=0) ** 1.2
    value = intensity_fit(x, y)
    assert torch.isfinite(value) and 0.0 < value.item() < 1.0
    d = torch.zeros_like(x)
    d[5:20, 16:22] = smooth_image(10, shape=(15, 6)) / 100  # the knots (quantiles of the image) move with it
    xr = x.clone().requires_grad_(True)
    intensity_fit(xr, y).sum().backward()
    h = 1e-6
    numeric = (intensity_fit(x + h * d, y) - intensity_fit(x - h * d, y)).item() / (2 * h)
    assert (xr.grad * d).sum().item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_intensity_fit_needs_two_knots():
    from XRayCTRegistrationLib.similarity import intensity_fit

    with pytest.raises(InputError, match="knots"):
        intensity_fit(smooth_image(1), smooth_image(2), knots=1)
