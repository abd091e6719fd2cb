"""The physics DRR's CPU steps after the march (numba, numpy) against the torch model they replace."""

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib import _physics_cpu as pc
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.materials import MaterialVolumes, decompose
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.physics import PhysicsProjector
from XRayCTRegistrationLib.projector import pose_gradient
from XRayCTRegistrationLib.spectrum import TubeSpectrum
from XRayCTRegistrationLib.volume import Volume

ROWS, COLS = 30, 44


def _torch_projector(scatter_sigma_mm: float, blur_px: float, fraction: float = 0.3) -> PhysicsProjector:
    """A torch-backend projector whose detector steps are the reference (1 mm pixels: sigma in mm = pixels)."""
    mats = MaterialVolumes.from_volumes(("water", "bone"), [Volume(np.ones((4, 4, 4), np.float32), np.eye(4))] * 2)
    return PhysicsProjector(mats, Camera(1000.0, ROWS, COLS, 1.0, 1.0), scatter_fraction=fraction,
                            scatter_sigma_mm=scatter_sigma_mm, blur_px=blur_px, backend="torch")


@pytest.mark.parametrize(("sigma", "blur"), [(9.0, 1.0), (3.0, 0.7), (13.0, 0.0)])
def test_detector_operators_and_adjoint_equal_torch_detect(sigma, blur):
    proj = _torch_projector(sigma, blur)
    ops = pc.DetectorOperators.build(ROWS, COLS, sigma, blur)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, ROWS, COLS, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, ROWS, COLS, generator=gen, dtype=torch.float64)
    ref = proj.detect(x)
    assert ref.shape == (1, ROWS, COLS)
    got = ops.detect(x.detach()[0].numpy(), proj.scatter_fraction)
    np.testing.assert_allclose(got, ref[0].detach().numpy(), rtol=1e-12, atol=1e-13)
    (ref * g).sum().backward()  # the adjoint: the gradient of <detect(x), g> with respect to x
    adj = ops.detect_adjoint(g[0].numpy(), proj.scatter_fraction)
    assert np.abs(adj).max() > 0.1
    np.testing.assert_allclose(adj, x.grad[0].numpy(), rtol=1e-12, atol=1e-13)


def test_spectral_sum_and_derivative_equal_torch():
    gen = torch.Generator().manual_seed(1)
    paths = (200 * torch.rand(2, 3, 50, generator=gen)).float()
    weights = torch.rand(7, generator=gen, dtype=torch.float64)
    weights /= weights.sum()
    att = 0.01 * torch.rand(7, 3, generator=gen, dtype=torch.float64)
    p = paths.double().requires_grad_(True)
    ref = torch.matmul(weights, torch.exp(-torch.matmul(att, p)))  # [2, 50]
    ref.sum().backward()
    i_p, d_ip = np.empty((2, 50)), np.empty((2, 3, 50), np.float32)
    pc.spectral_sum(paths.numpy(), weights.numpy(), att.numpy(), i_p, d_ip, True)
    assert ref.min() < 0.5
    np.testing.assert_allclose(i_p, ref.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(d_ip, p.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_contract_pose_equals_pose_gradient():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(2, 3, 40, generator=gen, dtype=torch.float64)
    jac = torch.randn(2, 3, 40, 6, generator=gen).float()
    dirs = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    got = pc.contract_pose(g.numpy(), jac.numpy(), dirs.numpy())
    np.testing.assert_allclose(got, pose_gradient(g, jac, dirs).numpy(), rtol=1e-12, atol=1e-12)


def test_fused_numba_image_equals_torch_steps_on_the_same_paths():
    """The numba backend's image and pose gradient (steps after the march in numba) against the torch steps
    (with a kVp gradient the projector keeps them in torch) on the same material paths."""
    ct = chest_phantom((40, 32, 36), (4.0, 4.5, 5.0))
    cam = Camera(1000.0, 24, 28, 5.0, 5.0)
    ref = ReferenceView.ap(ct.center, cam.sdd)
    mats = decompose(ct)
    kw = dict(spectrum=TubeSpectrum(90.0), scatter_fraction=0.3, scatter_sigma_mm=30.0, blur_px=1.0, n_samples=96)
    fused, steps = PhysicsProjector(mats, cam, **kw), PhysicsProjector(mats, cam, **kw)
    steps.kvp.requires_grad_(True)
    weights = torch.linspace(0.0, 1.0, 24 * 28, dtype=torch.float32).reshape(1, 24, 28)
    out = {}
    for name, proj in (("fused", fused), ("steps", steps)):
        params = torch.tensor([[6.0, -4.0, 3.0, 5.0, -3.0, 12.0], [0.0] * 6], dtype=torch.float64,
                              requires_grad=True)
        img = proj(ref.pose_torch(params))
        (img * weights).sum().backward()
        with torch.no_grad():
            inten = proj.intensity(ref.pose_torch(params))
        out[name] = (img.detach(), params.grad, inten)
    (img_a, g_a, i_a), (img_b, g_b, i_b) = out["fused"], out["steps"]
    assert img_a.shape == (2, 24, 28) and float(img_b.max()) > 0.5
    assert torch.allclose(img_a, img_b, rtol=1e-5, atol=1e-6)
    assert torch.allclose(i_a, i_b, rtol=1e-5, atol=1e-7)
    assert float(g_b.abs().min()) > 1e-3
    assert torch.allclose(g_a, g_b, rtol=1e-4, atol=1e-5 * float(g_b.abs().max()))
