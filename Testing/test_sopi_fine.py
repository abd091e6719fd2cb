"""SOPI stage 2: the composite encoder, the embedded-feature similarity, the double backward, the iteration."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, euler_xyz
from XRayCTRegistrationLib.networks.composite import CompositeConfig, CompositeEncoder, FineNet
from XRayCTRegistrationLib.networks.rotations import geodesic_deg
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.sopi_fine import (
    FineOffsets,
    FineScene,
    IterationSettings,
    direction_loss,
    embedded_distance,
    geodesic_gradient,
    iterate,
    pose_gradient,
)
from XRayCTRegistrationLib.training import Trainer, TrainOptions
from XRayCTRegistrationLib.training_data import PoseRange, RenderSettings
from XRayCTRegistrationLib.volume import Volume, hu_to_mu

CAM = Camera(1000.0, 32, 32, 8.0, 8.0)
RENDER = RenderSettings(ct_spacing_mm=5.0, detector_size=32, input_size=32, step_vox=1.5)
TINY = CompositeConfig(input_size=32, channels=4, embed_channels=8)


@pytest.fixture(scope="module")
def ct():
    return chest_phantom((32, 32, 32), (5.0, 5.0, 5.0))


@pytest.fixture(scope="module")
def scene(ct):
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    return FineScene.from_mu(mu, CAM, ReferenceView.ap(ct.center, CAM.sdd), RENDER)


def test_encoder_shapes_and_the_composite_connection():
    torch.manual_seed(0)
    enc = CompositeEncoder(TINY).eval()
    x = torch.randn(3, 1, 32, 32)
    e = enc(x)
    assert e.shape == (3, 8, 8, 8)  # C x S/4 x S/4
    # the leader concatenates its own features (2c) with the composite connections' output (c, then 2c)
    assert enc.leader[0].first.body[0][0].in_channels == 2 * 4 + 4
    assert enc.leader[1].first.body[0][0].in_channels == 2 * 4 + 2 * 4
    # the assistant's second block works at half the leader's resolution: its connection upsamples
    a1 = enc.assistant[0](enc.stem(x))
    assert enc.assistant[1](a1).shape[-1] == 4 and enc.connections[1](enc.assistant[1](a1), (8, 8)).shape[-1] == 8
    # the assistant reaches the embedding only through the composite connections
    with torch.no_grad():
        enc.connections[1].reduce[0].weight.mul_(3.0)
    assert not torch.allclose(enc(x), e)
    plain = CompositeEncoder(CompositeConfig(input_size=32, channels=4, embed_channels=8, composite=False))
    assert plain(x).shape == (3, 8, 8, 8) and not hasattr(plain, "assistant")
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in enc.parameters()) < 20_000
    net = FineNet(TINY)
    assert net.moving is not net.fixed and net.moving.embed.weight.data_ptr() != net.fixed.embed.weight.data_ptr()


def test_embedded_distance_is_masked():
    e_m = torch.zeros(1, 2, 2, 2)
    e_f = torch.zeros(1, 2, 2, 2)
    e_f[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 at pixel (0, 0), 0 elsewhere
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, :] = 1
    assert float(embedded_distance(e_m, e_f, mask)) == pytest.approx(2.5, abs=1e-4)
    assert float(embedded_distance(e_m, e_f, None)) == pytest.approx(1.25, abs=1e-4)


def test_geodesic_gradient_points_away_from_the_target():
    target = torch.tensor([[2.0, -1.0, 3.0, 5.0, -4.0, 10.0]], dtype=torch.float64)
    delta = torch.tensor([[1.0, -0.5, 0.2, 3.0, 1.0, -2.0]], dtype=torch.float64)
    g = geodesic_gradient(target + delta, target)
    assert torch.allclose(g[0, 3:], 2 * delta[0, 3:])
    assert F.cosine_similarity(g[:, :3], delta[:, :3]).item() > 0.99
    assert float(direction_loss(g, g)) == pytest.approx(0.0, abs=1e-6)
    assert float(direction_loss(-g, g)) == pytest.approx(4.0, abs=1e-6)



def test_training_starts_near_the_target_or_off_in_depth_in_the_shares_asked():
    rng = np.random.default_rng(0)
    far = FineOffsets().sample(rng, 4000)
    # the default draws as before the options: s uniform in 0.1-1.5 times N(0, sigma), one stream of draws
    ref = np.random.default_rng(0)
    scale = ref.uniform(0.1, 1.5, size=(4000, 1))
    assert np.array_equal(far, scale * ref.normal(size=(4000, 6)) * np.array([5.0] * 3 + [10.0] * 3))
    mixed = FineOffsets(near_fraction=0.3).sample(np.random.default_rng(1), 4000)
    sigma = np.array([5.0] * 3 + [10.0] * 3)

    def close(offsets):  # the share of starts whose every offset is under half a standard deviation
        return float((np.abs(offsets / sigma).max(1) < 0.5).mean())

    # 30 % near pairs (s <= 0.2: nearly all close) on top of the 70 % drawn as before (18 % of them close)
    assert close(mixed) == pytest.approx(0.3 + 0.7 * close(far), abs=0.04)
    assert close(far) < 0.25
    assert np.abs(FineOffsets(near_fraction=1.0).sample(rng, 500) / sigma).max() <= 0.2 * 6
    # depth pairs: off in tz, the other five offsets scaled by 0.05
    depth = FineOffsets(depth_fraction=1.0).sample(np.random.default_rng(2), 500) / sigma
    assert np.abs(depth[:, :5]).max() <= 0.05 * 1.5 * 6 and np.abs(depth[:, 5]).mean() > 0.3
    half = FineOffsets(depth_fraction=0.5).sample(np.random.default_rng(3), 4000) / sigma
    share = float((np.abs(half[:, :5]).max(1) < 0.05 * 1.5 * 6).mean())
    assert share == pytest.approx(0.5 + 0.5 * float((np.abs(far[:, :5] / sigma[:5]).max(1) < 0.45).mean()), abs=0.04)


def test_jacobian_path_equals_autograd_and_the_torch_double_backward(scene):
    torch.manual_seed(1)
    net = FineNet(TINY).eval()
    params = torch.tensor([[3.0, -2.0, 1.0, 6.0, -4.0, 8.0], [-2.0, 1.0, 2.0, -5.0, 3.0, -6.0]], dtype=torch.float64)
    fixed = scene.moving(torch.zeros(2, 6, dtype=torch.float64)).detach()
    e_f = net.encode_fixed(fixed).detach()
    _, g_auto = pose_gradient(net, scene, params, e_f)  # autograd through the numba projector
    grads = {}
    for path in ("jacobian", "torch"):
        net.zero_grad()
        _, g = pose_gradient(net, scene, params, e_f, create_graph=True, path=path)
        direction_loss(g, geodesic_gradient(params, torch.zeros_like(params))).sum().backward()
        grads[path] = (g.detach(), torch.cat([p.grad.flatten() for p in net.moving.parameters()]))
    assert torch.allclose(grads["jacobian"][0], g_auto, rtol=1e-4, atol=1e-7)
    # the torch backend renders the same interpolant: the pose gradients and the network gradients agree
    assert torch.allclose(grads["torch"][0], g_auto, rtol=2e-2, atol=1e-4 * float(g_auto.abs().max()))
    w_j, w_t = grads["jacobian"][1], grads["torch"][1]
    assert w_j.norm() > 0 and float((w_j / w_j.norm()) @ (w_t / w_t.norm())) > 0.99


def tiny_trainer(ct, **kw):
    base = dict(method="sopi-fine", batch_size=4, pool_size=8, fresh_per_step=2, val_size=4, val_every=5,
                render=RENDER, fine_channels=4, fine_embed=8, lr=3e-3, iterations=20, val_iterations=3,
                pose_range=PoseRange(10.0, 20.0), seed=0)
    base.update(kw)
    torch.manual_seed(0)
    return Trainer(ct, CAM, TrainOptions(**base))


def test_double_backward_trains_both_encoders_and_lowers_the_loss(ct):
    tr = tiny_trainer(ct, batch_size=8)
    rng, gen = np.random.default_rng(5), torch.Generator().manual_seed(5)
    x, params, drr = tr.batch(1.0, rng, gen)
    before = tr.fixed_batch_loss(x, params, drr)
    for k in range(12):
        loss, parts = tr.loss(x, params, drr, 1.0)  # same step number: the same start offsets
        tr.optimizer.zero_grad()
        loss.backward()
        if k == 0:
            for enc in (tr.net.moving, tr.net.fixed):
                assert sum(float(p.grad.abs().sum()) for p in enc.parameters() if p.grad is not None) > 0
            assert {"direction", "l_n", "cos_rot", "cos_trans"} <= set(parts)
        tr.optimizer.step()
    after = tr.fixed_batch_loss(x, params, drr)
    assert after < 0.85 * before, (before, after)


def test_shared_encoder_puts_the_distance_minimum_at_the_drr(scene):
    torch.manual_seed(2)
    net = FineNet(CompositeConfig(input_size=32, channels=4, embed_channels=8, shared=True)).eval()
    assert net.moving is net.fixed
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.moving.parameters())
    # one encoder: L_N is at its floor (sqrt of the distance's epsilon) where the DRR is the X-ray, larger elsewhere
    with torch.no_grad():
        net.moving.embed.weight.mul_(1000.0)  # untrained features are tiny: make distances measurable
    target = torch.tensor([[1.0, -2.0, 0.5, 3.0, -2.0, 4.0]], dtype=torch.float64)
    with torch.no_grad():
        e_f = net.encode_fixed(scene.moving(target))
    at, _ = pose_gradient(net, scene, target, e_f)
    off, _ = pose_gradient(net, scene, target + torch.tensor([[2.0, 0, 0, 6.0, 0, 0]], dtype=torch.float64), e_f)
    at, off = float(at.detach()), float(off.detach())
    assert at < 1.5e-4 and off > 10 * at, (at, off)
    # by default the walk moves the depth with one shared encoder and holds it with two
    fixed = scene.moving(target).detach()
    start = target + torch.tensor([[1.0, 0, 0, 3.0, 0, 8.0]], dtype=torch.float64)
    two = FineNet(CompositeConfig(input_size=32, channels=4, embed_channels=8)).eval()
    short = IterationSettings(max_iterations=2)
    assert float(iterate(net, scene, fixed, start, short).params[0, 5]) != 12.0
    assert float(iterate(two, scene, fixed, start, short).params[0, 5]) == 12.0


class ImageEmbedding(torch.nn.Module):
    """A hand-made 'encoder': the normalised image, block-averaged (L_N is then an image distance)."""

    def encode_moving(self, x):
        return F.avg_pool2d(x, 2)

    encode_fixed = encode_moving


def test_iteration_reduces_the_pose_error_and_stops_on_small_updates(scene):
    target = torch.tensor([[2.0, -3.0, 1.5, 5.0, -4.0, 6.0]], dtype=torch.float64)
    start = target + torch.tensor([[3.0, -2.5, 2.0, 10.0, 8.0, -5.0]], dtype=torch.float64)
    with torch.no_grad():
        fixed = scene.moving(target)

    def errors(p):
        rot = geodesic_deg(euler_xyz(p[:, :3]), euler_xyz(target[:, :3]))
        return float(rot[0]), float((p[0, 3:5] - target[0, 3:5]).norm())

    settings = IterationSettings(max_iterations=120, rot_step_deg=1.0, trans_step_mm=3.0)
    out = iterate(ImageEmbedding(), scene, fixed, start, settings, use_mask=False)
    rot0, trans0 = errors(start)
    rot1, trans1 = errors(out.params)
    assert rot1 < 0.5 * rot0 and trans1 < 0.1 * trans0, (rot0, rot1, trans0, trans1)
    assert float(out.loss[0]) < 0.5 * float(out.initial_loss[0])
    assert bool(out.converged[0]) and "converged" in out.message and out.iterations < 120
    # rotation frozen from the start: the rotation does not move at all
    frozen = iterate(ImageEmbedding(), scene, fixed, start, IterationSettings(max_iterations=5,
                                                                              freeze_rotation_after=0), use_mask=False)
    assert torch.equal(frozen.params[:, :3], start[:, :3]) and not torch.equal(frozen.params[:, 3:], start[:, 3:])
    with pytest.raises(ValueError, match="max_iterations"):
        iterate(ImageEmbedding(), scene, fixed, start, IterationSettings(max_iterations=0), use_mask=False)
    # the depth (tz) is held by default and moves towards the target when released
    assert float(out.params[0, 5]) == float(start[0, 5])
    free = iterate(ImageEmbedding(), scene, fixed, start, IterationSettings(max_iterations=120, rot_step_deg=1.0,
                                                                            trans_step_mm=3.0, hold_depth=False),
                   use_mask=False)
    assert abs(float(free.params[0, 5] - target[0, 5])) < abs(float(start[0, 5] - target[0, 5]))


@pytest.fixture(scope="module")
def files(tmp_path_factory, ct):
    from XRayCTRegistrationLib.projector import Projector
    from XRayCTRegistrationLib.volume import write_volume
    from XRayCTRegistrationLib.xray import write_image

    d = tmp_path_factory.mktemp("sopi_cli")
    write_volume(ct, d / "ct.nrrd")
    CAM.save(d / "geom.json")
    ref = ReferenceView.ap(ct.center, CAM.sdd)
    with torch.no_grad():
        drr = Projector(Volume(hu_to_mu(ct.data), ct.ijk_to_ras), CAM, n_samples=64)(
            torch.as_tensor(ref.pose([3, -2, 2, 4, -3, 6]))).numpy()
    write_image(drr, d / "xray.nrrd", CAM)
    CAM.save(d / "xray.json")
    start = {"world_from_camera": ref.pose([5, 0, 0, 10, 0, 0]).tolist()}
    (d / "start.json").write_text(__import__("json").dumps(start))
    return d


def test_cli_train_and_register_round_trip(files, tmp_path, capsys):
    import json

    from XRayCTRegistrationLib.cli import main
    from XRayCTRegistrationLib.registry import method_names
    from XRayCTRegistrationLib.training import read_model_file

    assert {"sopi-fine", "sopi-fine-opt"} <= set(method_names("refine"))
    d = files
    fine, rtpi = tmp_path / "fine.pt", tmp_path / "rtpi.pt"
    common = ["--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--quiet", "--batch-size", "2"]
    assert main(["train", *common, "--model", "sopi-fine", "--out", str(fine), "--iterations", "2",
                 "--progress-lines"]) == 0
    assert "PROGRESS 1.0000 step 2" in capsys.readouterr().out
    info = read_model_file(fine)
    assert info["method"] == "sopi-fine" and info["step"] == 2 and "mu_sha256" in info["ct"]
    assert main(["train", *common, "--model", "rtpi", "--out", str(rtpi), "--iterations", "1"]) == 0
    reg = ["register", "--ct", str(d / "ct.nrrd"), "--xray", str(d / "xray.nrrd"), "--quiet", "--time-budget", "0.5"]
    runs = {"alone": ["--init", str(d / "start.json"), "--method", "sopi-fine"],
            "after-rtpi": ["--init-model", str(rtpi), "--method", "sopi-fine"],
            "opt": ["--init", str(d / "start.json"), "--method", "sopi-fine-opt"]}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.json"
        assert main([*reg, *extra, "--model", str(fine), "--out", str(out)]) in (0, 1), name
        result = json.loads(out.read_text(encoding="utf-8"))
        assert result["method"] == ("sopi-fine+opt-lncc" if name == "opt" else "sopi-fine") and result["iterations"] > 0
        assert result["initialisation"]["method"] == ("init-model (rtpi.pt)" if name == "after-rtpi" else "pose")
        if name != "opt":  # the learned distance alone cannot verify its pose
            assert result["success"] is False and "sopi-fine alone cannot verify its pose" in result["message"]
    capsys.readouterr()
    # clear errors: no model, a model of the wrong kind on either side
    assert main([*reg, "--method", "sopi-fine", "--out", str(tmp_path / "x.json")]) == 2
    assert "needs a model file" in capsys.readouterr().err
    assert main([*reg, "--method", "sopi-fine", "--model", str(rtpi), "--out", str(tmp_path / "x.json")]) == 2
    assert "not a sopi-fine one" in capsys.readouterr().err
    assert main([*reg, "--init-model", str(fine), "--out", str(tmp_path / "x.json")]) == 2
    assert "refinement model, not an initialiser" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_training_defaults_and_old_files_read_as_two_encoders():
    options = TrainOptions(method="sopi-fine")
    assert options.fine_shared
    # finer training DRRs than the initialisers' (the depth is not seen at 48 pixels)
    assert options.render.input_size == 96 and TrainOptions(method="rtpi").render.input_size == 48
    d = options.to_dict()
    assert TrainOptions.from_dict(d).fine_shared
    del d["fine_shared"]  # a model file from before the option
    assert not TrainOptions.from_dict(d).fine_shared
    # the blur's domain is kept in the file; files from before the option blurred after the log
    d["augmentation"]["blur_on_photons"] = True
    assert TrainOptions.from_dict(d).augmentation.blur_on_photons
    del d["augmentation"]["blur_on_photons"]
    assert not TrainOptions.from_dict(d).augmentation.blur_on_photons
