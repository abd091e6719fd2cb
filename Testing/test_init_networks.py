import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, euler_xyz
from XRayCTRegistrationLib.networks import RTPI, PoseRegressor, RegressorConfig, RTPIConfig
from XRayCTRegistrationLib.networks.blocks import EfficientBackbone, MBConv
from XRayCTRegistrationLib.networks.losses import gradient_difference_loss
from XRayCTRegistrationLib.networks.rotations import (
    euler_from_rotation,
    geodesic_deg,
    params_to_target,
    rotation_from_6d,
    sixd_from_rotation,
    target_to_params,
)
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.training_data import (
    Augmentation,
    DRRSource,
    PoseRange,
    RenderSettings,
    augment,
    prepare_image,
    to_input,
)


def test_mbconv_and_backbone_shapes():
    x = torch.randn(2, 8, 16, 16)
    assert MBConv(8, 8, 4, 3, 1)(x).shape == (2, 8, 16, 16)
    assert MBConv(8, 12, 4, 5, 2)(x).shape == (2, 12, 8, 8)
    bb = EfficientBackbone(1, width=0.25, depth=0.2, output_stride=8)
    assert bb(torch.randn(2, 1, 32, 32)).shape == (2, bb.out_channels, 4, 4)
    bb16 = EfficientBackbone(1, width=0.25, depth=0.2, output_stride=16)
    assert bb16(torch.randn(2, 1, 32, 32)).shape == (2, bb16.out_channels, 2, 2)


@pytest.mark.parametrize("ae,attn", [(True, True), (False, False), (True, False), (False, True)])
def test_regressor_output_shapes(ae, attn):
    net = PoseRegressor(RegressorConfig(input_size=32, width=0.25, depth=0.2, embed_dim=16, heads=2,
                                        autoencoder=ae, attention=attn))
    out = net(torch.randn(3, 1, 32, 32))
    assert out["rot6d"].shape == (3, 6) and out["trans"].shape == (3, 3)
    assert ("recon" in out) == ae and ("attention" in out) == attn
    if ae:
        assert out["recon"].shape == (3, 1, 16, 16)
    if attn:
        assert out["attention"].shape == (3, 16, 16)
        assert torch.allclose(out["attention"].sum(-1), torch.ones(3, 16), atol=1e-5)


def test_untrained_regressor_predicts_identity_pose():
    net = PoseRegressor(RegressorConfig(input_size=32, width=0.25, depth=0.2, embed_dim=16, heads=2)).eval()
    out = net(torch.randn(2, 1, 32, 32))
    params = target_to_params(out["rot6d"], out["trans"], torch.tensor([50.0, 50.0, 50.0]))
    assert params.abs().max() < 5.0  # small initial heads: near the reference view


def test_rtpi_shapes_and_volume_buffer():
    net = RTPI(RTPIConfig(input_size=32, volume_size=16, channels_3d=4, channels_2d=16, loc_channels=16))
    vol = torch.rand(20, 18, 22)
    net.set_volume(vol)
    assert net.volume.shape == (1, 1, 16, 16, 16)
    assert abs(float(net.volume.mean())) < 1e-5 and abs(float(net.volume.std()) - 1) < 1e-3
    assert net.volume_features(4, 4).shape == (1, 4 * 4, 4, 4)
    out = net(torch.randn(3, 1, 32, 32))
    assert out["params"].shape == (3, 6)
    assert "volume" in net.state_dict()


def test_6d_rotation_is_orthonormal():
    x = torch.randn(100, 6, dtype=torch.float64)
    r = rotation_from_6d(x)
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(r.transpose(-1, -2) @ r, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=torch.float64), atol=1e-12)
    # the 6D vector of a rotation gives back the same rotation
    assert torch.allclose(rotation_from_6d(sixd_from_rotation(r)), r, atol=1e-12)


def test_pose_params_target_round_trip():
    rng = np.random.default_rng(0)
    params = torch.as_tensor(PoseRange().sample(rng, 200), dtype=torch.float64)
    scale = torch.tensor([50.0, 50.0, 50.0], dtype=torch.float64)
    rot6d, trans = params_to_target(params, scale)
    assert trans.abs().max() <= 1.0
    back = target_to_params(rot6d, trans, scale)
    assert torch.allclose(back, params, atol=1e-9)
    r = euler_xyz(params[:, :3])
    assert torch.allclose(euler_from_rotation(r), params[:, :3], atol=1e-9)
    assert geodesic_deg(r, r).max() < 1e-4
    # matches the library's parameter convention exactly
    ref = ReferenceView.ap(np.array([1.0, 2.0, 3.0]), 1000.0)
    for p in back[:5].numpy():
        np.testing.assert_allclose(ref.params(ref.pose(p)), p, atol=1e-8)


def test_geodesic_angle_exact():
    r1 = euler_xyz(torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64))
    r2 = euler_xyz(torch.tensor([[0.0, 0.0, 37.0]], dtype=torch.float64))
    assert abs(float(geodesic_deg(r1, r2)[0]) - 37.0) < 1e-6


def test_gradient_difference_loss():
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(gradient_difference_loss(x, x), torch.zeros(2), atol=1e-7)
    y = torch.randn(2, 1, 16, 16)
    loss = gradient_difference_loss(x, y)
    assert (loss > 0.3).all() and (loss <= 1).all()


@pytest.fixture(scope="module")
def source():
    ct = chest_phantom((40, 32, 32), (5.0, 5.0, 5.0))
    cam = Camera(1000.0, 48, 40, 6.0, 6.0)
    ref = ReferenceView.ap(ct.center, cam.sdd)
    return DRRSource(ct, cam, ref, RenderSettings(ct_spacing_mm=5.0, detector_size=24, input_size=16, step_vox=1.0))


def test_drr_source_low_resolution_and_pose_dependence(source):
    assert (source.low_camera.rows, source.low_camera.cols) == (24, 20)
    params = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 20, 10, 0, 0]], dtype=float)
    drr = source.render(params)
    assert drr.shape == (2, 24, 20) and torch.isfinite(drr).all()
    assert float(drr[0].max()) > 0.5  # chest-thick line integrals
    assert float((drr[0] - drr[1]).abs().mean()) > 0.05


def test_pose_range_sampling_and_scale():
    rng = np.random.default_rng(1)
    pr = PoseRange(30.0, (50.0, 40.0, 20.0))
    p = pr.sample(rng, 5000, scale=0.5)
    assert p.shape == (5000, 6)
    np.testing.assert_allclose(np.abs(p).max(0), [15, 15, 15, 25, 20, 10], rtol=0.01)
    assert PoseRange.from_dict(pr.to_dict()) == pr


def test_augmentations_keep_shape_finite_and_change_image(source):
    drr = source.render(PoseRange().sample(np.random.default_rng(2), 6, 0.3))
    gen = torch.Generator().manual_seed(0)
    out = augment(drr, gen)
    assert out.shape == drr.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    clean = (drr - drr.amin((1, 2), keepdim=True)) / (drr.amax((1, 2), keepdim=True) - drr.amin((1, 2), keepdim=True))
    assert float((out - clean).abs().mean()) > 0.01
    # every step on its own changes the image
    off = Augmentation(p_noise=0, blur_px=0, gamma=(1, 1), p_invert=0, p_erase=0, p_collimate=0)
    assert torch.allclose(augment(drr, gen, off), clean, atol=1e-5)
    for change in [dict(p_noise=1), dict(blur_px=1.5), dict(gamma=(1.5, 1.5)), dict(p_invert=1), dict(p_erase=1),
                   dict(p_collimate=1, max_collimation=0.3)]:
        a = Augmentation(**{**off.__dict__, **change})
        y = augment(drr, gen, a)
        assert y.shape == drr.shape and torch.isfinite(y).all(), change
        assert float((y - clean).abs().max()) > 0.05, change
    inv = augment(drr, gen, Augmentation(**{**off.__dict__, "p_invert": 1}))
    assert torch.allclose(inv, 1 - clean, atol=1e-5)



def test_blur_on_photons_records_an_edge_as_a_detector_does():
    # a step from air (line integral 0) to 5: blurred as photons, the edge's transmission mixes in the bright air
    drr = torch.zeros(1, 1, 32)
    drr[..., 16:] = 5.0
    drr = drr.expand(1, 8, 32).contiguous()
    base = dict(p_noise=0, gamma=(1, 1), p_invert=0, p_erase=0, p_collimate=0, blur_px=1.5)
    log_blur = augment(drr, torch.Generator().manual_seed(3), Augmentation(**base))[0, 4]
    photons = augment(drr, torch.Generator().manual_seed(3), Augmentation(**base, blur_on_photons=True))[0, 4]
    assert float((log_blur - photons).abs().max()) > 0.1  # the same sigma drawn, a different edge
    # on the attenuating side of the edge the transmission is mostly the air's: it reads much lower as photons,
    # where the log-domain blur is symmetric about the edge
    assert float(photons[16]) < float(log_blur[16]) - 0.1
    assert float(log_blur[15] + log_blur[16]) == pytest.approx(1.0, abs=1e-4)
    assert float(photons[0]) == pytest.approx(0.0, abs=1e-6) and float(photons[-1]) == pytest.approx(1.0, abs=1e-5)

def test_inputs_normalised_per_image_and_xray_preparation(source):
    drr = source.render(np.zeros((3, 6)))
    x = to_input(drr * torch.tensor([1.0, 3.0, 10.0])[:, None, None], 16)
    assert x.shape == (3, 1, 16, 16)
    assert torch.allclose(x.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std((1, 2, 3)), torch.ones(3), atol=1e-4)
    assert torch.allclose(x[0], x[2], atol=1e-4)  # contrast-invariant
    full = np.random.default_rng(0).random((48, 40)).astype(np.float32)
    y = prepare_image(full, source.camera, source.settings)
    assert y.shape == (1, 1, 16, 16) and abs(float(y.mean())) < 1e-5
