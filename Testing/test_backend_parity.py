"""The numba and torch projector backends give the same pose gradients and the same registrations."""

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.metrics import mtre, target_points
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import Projector, render
from XRayCTRegistrationLib.registration import register
from XRayCTRegistrationLib.similarity import ncc
from XRayCTRegistrationLib.simulate import perturb_params, random_params
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, pad

SDD = 1000.0
CAM = Camera(SDD, 40, 40, 7.0, 7.0)


@pytest.fixture(scope="module")
def scene():
    hu = chest_phantom((40, 32, 36), (5.0, 5.0, 5.0))
    vol = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    return hu, vol, ReferenceView.ap(vol.center, SDD)


def _float64_render(vol: Volume, cam: Camera, reference: ReferenceView, params: np.ndarray) -> torch.Tensor:
    """The torch backend's ray march with the volume, rays and pose all in float64: a reference."""
    proj = Projector(vol, cam, n_samples=48, backend="torch")
    proj.mu = proj.mu.double()
    w = reference.pose_torch(torch.as_tensor(params, dtype=torch.float64))
    ijk = proj._ijk_from_world64 @ w
    return proj._march(ijk[None, :3, :3], ijk[None, :3, 3], proj._dirs64)[0].reshape(cam.rows, cam.cols)


def test_pose_gradient_is_the_derivative_of_the_render(scene):
    """Both backends' pose gradients equal central differences of the rendered similarity (float64).

    The samples are spread between each ray's entry and exit, so they slide along the ray as the pose
    moves the volume's faces; a gradient that held the entry and exit fixed missed that part (up to half of
    the depth component near an optimum) and the two backends then stopped at different poses.
    """
    _, vol, ref = scene
    vol = pad(vol)  # zero faces, as registration renders it
    rng = np.random.default_rng(3)
    gt = random_params(rng, 5.0, 10.0)
    target = render(vol, CAM, ref.pose(gt), n_samples=200)
    p0 = perturb_params(gt, rng, 2.0, 0.0, 4.0, 0.0)

    def sim64(p):
        return float(ncc(_float64_render(vol, CAM, ref, p)[None], torch.as_tensor(target, dtype=torch.float64))[0])

    h = 1e-4
    fd = np.array([(sim64(p0 + h * e) - sim64(p0 - h * e)) / (2 * h) for e in np.eye(6)])
    for backend in ("numba", "torch"):
        proj = Projector(vol, CAM, n_samples=48, backend=backend)
        p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
        ncc(proj(ref.pose_torch(p))[None], torch.as_tensor(target))[0].backward()
        np.testing.assert_allclose(p.grad.numpy(), fd, rtol=0, atol=2e-3 * np.abs(fd).max(), err_msg=backend)


def test_backends_register_to_the_same_pose(scene):
    """Registrations of a few cases with the numba and the torch backend end at the same pose."""
    hu, vol, ref = scene
    pts = target_points(hu, 50)
    rng = np.random.default_rng(11)
    for _ in range(3):
        gt = random_params(rng, 6.0, 10.0)
        start = perturb_params(gt, rng, 3.0, 1.0, 8.0, 3.0)
        xray = render(vol, CAM, ref.pose(gt), n_samples=200)
        res = {b: register(vol, xray, CAM, ref.pose(start), reference=ref, method="opt-ncc", levels=(2, 1),
                           max_iterations=(40, 30), backend=b) for b in ("numba", "torch")}
        for r in res.values():
            assert r.success, r.message
            assert mtre(pts, ref.pose(gt), r.world_from_camera) < 0.3 * mtre(pts, ref.pose(gt), ref.pose(start))
        d = np.abs(res["numba"].params - res["torch"].params)
        assert d[:3].max() < 0.02 and d[3:5].max() < 0.02 and d[5] < 0.1, d
