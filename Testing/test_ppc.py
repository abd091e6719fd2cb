"""Point-to-plane correspondence geometry, solver and the DPPC method."""

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.dppc import MatchOptions, match_patches, register_dppc
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.metrics import mtre, target_points
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.ppc import (
    BONE_HU,
    CONTOUR_COS,
    contour_points,
    motion_matrix,
    pixels_to_detector,
    ppc_system,
    project_torch,
    solve_motion,
    surface_points,
)
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.registry import method_names
from XRayCTRegistrationLib.volume import Volume, hu_to_mu

SDD = 1000.0
CAM = Camera(SDD, 32, 32, 8.0, 8.0)


@pytest.fixture(scope="module")
def scene():
    hu = chest_phantom((32, 32, 32), (5.0, 5.0, 5.0))
    vol = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    ref = ReferenceView.ap(vol.center, SDD)
    return hu, vol, ref


def _tangent_points(rng, n=80):
    """Points around (0, 0, 700) mm with unit normals perpendicular to their viewing rays."""
    w = rng.normal(size=(n, 3)) * [60.0, 60.0, 40.0] + [0.0, 0.0, 700.0]
    d = w / np.linalg.norm(w, axis=1, keepdims=True)
    n_ = np.cross(d, rng.normal(size=(n, 3)))
    return torch.as_tensor(w), torch.as_tensor(n_ / np.linalg.norm(n_, axis=1, keepdims=True))


def test_solver_recovers_linear_motion_exactly():
    rng = np.random.default_rng(1)
    w, n = _tangent_points(rng)
    c = w.mean(0)
    x_true = torch.tensor([0.02, -0.015, 0.03, 2.0, -1.5, 6.0], dtype=torch.float64)
    moved = w + torch.linalg.cross(x_true[:3].expand_as(w), w - c, dim=-1) + x_true[3:]
    q = moved * (SDD / moved[:, 2:3])  # exact detector points of the moved contour
    a, b = ppc_system(w, n, q, c)
    x = solve_motion(a, b, torch.rand(len(w), dtype=torch.float64) + 0.5, reg=0.0)
    torch.testing.assert_close(x, x_true, atol=1e-8, rtol=1e-7)


def test_solver_iterates_to_a_rigid_motion():
    rng = np.random.default_rng(2)
    w, n = _tangent_points(rng, 200)
    c = w.mean(0)
    m_true = motion_matrix(torch.tensor([0.05, -0.04, 0.06, 5.0, -4.0, 10.0], dtype=torch.float64), c)
    target = w @ m_true[:3, :3].T + m_true[:3, 3]
    q = target * (SDD / target[:, 2:3])
    n_true = n @ m_true[:3, :3].T  # normals at the final pose keep the tangent planes exact
    cur = w.clone()
    total = torch.eye(4, dtype=torch.float64)
    for _ in range(6):
        m = motion_matrix(solve_motion(*ppc_system(cur, n_true, q, cur.mean(0)), reg=0.0), cur.mean(0))
        cur = cur @ m[:3, :3].T + m[:3, 3]
        total = m @ total
    torch.testing.assert_close(total, m_true, atol=1e-6, rtol=1e-6)


def test_solver_is_differentiable():
    rng = np.random.default_rng(3)
    w, n = _tangent_points(rng, 30)
    q = (w + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)) * SDD / w[:, 2:3]
    weights = torch.ones(len(w), dtype=torch.float64, requires_grad=True)
    x = solve_motion(*ppc_system(w, n, q, w.mean(0)), weights)
    x.pow(2).sum().backward()
    assert weights.grad is not None and torch.isfinite(weights.grad).all() and weights.grad.abs().sum() > 0


def test_pixels_and_projection_agree_with_camera():
    rc = torch.tensor([[0.0, 0.0], [31.0, 12.5], [7.25, 30.0]], dtype=torch.float64)
    det = pixels_to_detector(rc, CAM).numpy()
    x, y = CAM.pixel_xy(rc[:, 0].numpy(), rc[:, 1].numpy())
    np.testing.assert_allclose(det[:, 0], x)
    np.testing.assert_allclose(det[:, 1], y)
    pts = torch.tensor([[10.0, -20.0, 600.0], [-50.0, 40.0, 800.0]], dtype=torch.float64)
    np.testing.assert_allclose(project_torch(pts, CAM).numpy(), CAM.project_camera_points(pts.numpy()))


def test_contour_points_are_tangent_and_on_drr_edges(scene):
    _, vol, ref = scene
    surf = surface_points(vol, 3000)
    assert len(surf) > 100
    np.testing.assert_allclose(np.linalg.norm(surf.normals, axis=1), 1.0)
    pose = ref.pose([3.0, -2.0, 5.0, 4.0, -3.0, 2.0])
    cont = contour_points(surf, CAM, pose)
    assert len(cont) > 30
    d = cont.points / np.linalg.norm(cont.points, axis=1, keepdims=True)
    assert np.all(np.abs((cont.normals * d).sum(1)) < CONTOUR_COS)
    thr = hu_to_mu(np.array(BONE_HU))
    bone = Volume(np.where(vol.data >= thr, vol.data, 0.0), vol.ijk_to_ras)
    drr = render(bone, CAM, pose, n_samples=120)  # the bone's DRR: its edges are the contour's image
    gy, gx = np.gradient(drr)
    mag = np.hypot(gx, gy)
    r, c = np.rint(cont.pixels).astype(int).T
    assert np.median(mag[r, c]) > 1.5 * np.median(mag[drr > 0])


def test_match_patches_finds_a_shift():
    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.normal(size=(40, 40)).cumsum(0).cumsum(1))
    shifted = torch.roll(img, shifts=(3, -2), dims=(0, 1))
    rc = np.array([[15.0, 15.0], [20.0, 22.0], [25.0, 18.0]])
    pos, score = match_patches(img, 2.0 * shifted + 1.0, rc, MatchOptions(4, 5))
    np.testing.assert_allclose(pos - rc, [[3, -2]] * 3, atol=0.25)  # integer shift, sub-pixel parabola
    assert np.all(score > 0.99)


def test_dppc_reduces_pose_error(scene):
    hu, vol, ref = scene
    gt = np.array([2.0, -2.0, 3.0, 4.0, -5.0, 3.0])
    start = gt + np.array([2.0, -2.0, 3.0, 6.0, 5.0, -4.0])
    xray = render(vol, CAM, ref.pose(gt), n_samples=120)
    pts = target_points(hu, 60)
    before = mtre(pts, ref.pose(gt), ref.pose(start))
    res = register_dppc(vol, xray, CAM, ref.pose(start), reference=ref, levels=(2, 1), iterations=(4, 4),
                        half_patch=3, search=4)
    after = mtre(pts, ref.pose(gt), res.world_from_camera)
    assert not res.success and "dppc alone cannot verify its pose" in res.message, res.message
    assert after < 0.5 * before, (before, after)
    assert res.similarity > res.initial_similarity


def test_dppc_then_intensity_step(scene):
    hu, vol, ref = scene
    gt = np.array([1.0, -2.0, 2.0, 3.0, -4.0, 2.0])
    start = gt + np.array([2.0, 1.0, -2.0, 5.0, 4.0, -3.0])
    xray = render(vol, CAM, ref.pose(gt), n_samples=120)
    res = register_dppc(vol, xray, CAM, ref.pose(start), reference=ref, levels=(2, 1), iterations=(3, 2),
                        half_patch=3, search=4, final="opt-ncc", max_iterations=(20, 10))
    pts = target_points(hu, 60)
    assert res.method == "dppc+opt-ncc" and res.iterations > 5
    assert mtre(pts, ref.pose(gt), res.world_from_camera) < 0.5 * mtre(pts, ref.pose(gt), ref.pose(start))


def test_the_intensity_step_runs_where_the_ppc_iterations_stop_early(scene):
    """ppc-opt whose correspondences are all unusable still ends with the intensity registration and its verdict."""
    from XRayCTRegistrationLib.dppc import run_ppc_method

    hu, vol, ref = scene
    gt, start = ref.pose([1.0, -2.0, 2.0, 3.0, -4.0, 2.0]), ref.pose([2.0, -1.0, 1.0, 6.0, -1.0, 0.0])
    xray = render(vol, CAM, gt, n_samples=120)

    def unusable(level, drr, contour):
        return contour.pixels, np.zeros(len(contour))

    res = run_ppc_method(vol, xray, CAM, start, unusable, "ppc", reference=ref, progress=None, should_stop=None,
                         device="cpu", levels=(1.0,), iterations=(3,), final="opt-ncc", max_iterations=(30, 30))
    assert res.method == "ppc+opt-ncc" and res.message.startswith("only 0 usable correspondences; opt-ncc: ")
    pts = target_points(hu, 60)
    assert mtre(pts, gt, res.world_from_camera) < 0.5 * mtre(pts, gt, start)
    stopped = run_ppc_method(vol, xray, CAM, start, unusable, "ppc", reference=ref, progress=None,
                             should_stop=lambda: True, device="cpu", levels=(1.0,), iterations=(3,), final="opt-ncc")
    assert not stopped.success and stopped.message == "stopped by the caller" and stopped.method == "ppc"


def test_final_schedule_is_checked(scene):
    from XRayCTRegistrationLib.errors import InputError

    hu, vol, ref = scene
    xray = render(vol, CAM, ref.pose([0.0] * 6), n_samples=60)
    with pytest.raises(InputError, match="final_schedule must be one of"):
        register_dppc(vol, xray, CAM, ref.pose([1.0] * 6), reference=ref, final="opt-ncc", final_schedule="fine")


def test_registry_lists_ppc_methods():
    names = method_names("refine")
    assert {"dppc", "dppc-opt", "ppc", "ppc-opt"} <= set(names)


# -- the learned ppc method ----------------------------------------------------------------------------------
def _tiny_trainer(hu, iterations=8, physics_kvp=None):
    from XRayCTRegistrationLib.networks.flow import FlowConfig
    from XRayCTRegistrationLib.ppc_learned import PPCConfig, make_trainer
    from XRayCTRegistrationLib.training import TrainOptions
    from XRayCTRegistrationLib.training_data import PoseRange, RenderSettings

    opts = TrainOptions(method="ppc", iterations=iterations, batch_size=2, pose_range=PoseRange(4.0, 8.0),
                        val_size=2, gd_start=0.0, lr=3e-3, checkpoint_every_s=1e9,
                        render=RenderSettings(physics_kvp=physics_kvp))
    trainer = make_trainer(hu, CAM, opts)
    tiny = PPCConfig(size=32, max_points=64, flow=FlowConfig(features=8, hidden=8, radius=2, iterations=2))
    trainer.net = type(trainer.net)(tiny)
    trainer.optimizer = torch.optim.AdamW(trainer.net.parameters(), lr=opts.lr)
    return trainer


def test_ppc_networks_train_on_a_fixed_batch(scene):
    torch.manual_seed(0)
    hu, _, _ = scene
    trainer = _tiny_trainer(hu)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    batch = trainer.batch(1.0, rng, gen)
    assert batch[2].mask.sum() > 20
    first = trainer.fixed_batch_loss(*batch)
    for _ in range(15):
        loss, parts = trainer.loss(*batch, 1.0)
        assert set(parts) == {"flow", "reg"}
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    assert trainer.fixed_batch_loss(*batch) < 0.8 * first


def test_ppc_cli_round_trip(scene, tmp_path, capsys):
    import json

    from XRayCTRegistrationLib.cli import main
    from XRayCTRegistrationLib.volume import write_volume
    from XRayCTRegistrationLib.xray import write_image

    hu, vol, ref = scene
    ct, geom, xr, model, out = (str(tmp_path / n) for n in ("ct.nii.gz", "geom.json", "xray.nrrd", "ppc.pt", "r.json"))
    write_volume(hu, ct)
    CAM.save(geom)
    write_image(render(vol, CAM, ref.pose([1.0, 0.0, 2.0, 3.0, -2.0, 0.0]), n_samples=120), xr, CAM)
    assert main(["train", "--ct", ct, "--geometry", geom, "--model", "ppc", "--out", model, "--iterations", "1",
                 "--batch-size", "2", "--threads", "1", "--quiet"]) == 0
    common = ["register", "--ct", ct, "--xray", xr, "--geometry", geom, "--out", out, "--quiet"]
    assert main([*common, "--method", "ppc", "--model", model]) in (0, 1)  # 1: ran, reported no convergence
    res = json.loads(open(out).read())
    assert res["method"] == "ppc" and len(res["world_from_camera"]) == 4
    capsys.readouterr()
    assert main([*common, "--method", "ppc"]) == 2
    assert "needs a model file" in capsys.readouterr().err
    assert main([*common, "--method", "opt-lncc", "--model", model]) == 2  # refused before any work
    assert "--model: method opt-lncc takes no model file" in capsys.readouterr().err
    assert main([*common, "--method", "ppc-opt", "--model", model + ".missing"]) == 2
    assert "ppc.pt.missing: model file not found" in capsys.readouterr().err
    assert main([*common, "--init-model", model]) == 2
    assert "refinement model, not an initialiser" in capsys.readouterr().err
    # after a learned initialiser: the ppc methods keep their own levels (the initialiser's schedule is not theirs)
    init = str(tmp_path / "init.pt")
    assert main(["train", "--ct", ct, "--geometry", geom, "--out", init, "--iterations", "1", "--batch-size", "2",
                 "--threads", "1", "--quiet"]) == 0
    for method in ("ppc-opt", "dppc-opt"):
        extra = ["--model", model] if method == "ppc-opt" else []
        assert main([*common, "--init-model", init, "--method", method, *extra]) in (0, 1)
        res = json.loads(open(out).read())
        assert res["method"] == method.replace("-opt", "+opt-lncc") and res["initialisation"]["method"] != "reference"


# -- ground-truth correspondences through the learned method's pieces -----------------------------------------
def test_pipeline_with_true_correspondences_recovers_a_large_offset(scene):
    """iterate_ppc with each contour point's exact projection under the true pose converges to the true pose."""
    from XRayCTRegistrationLib.dppc import iterate_ppc
    from XRayCTRegistrationLib.geometry import invert_rigid, transform_points

    hu, vol, ref = scene
    surf = surface_points(vol, 4000)
    gt = ref.pose([2.0, -3.0, 4.0, 5.0, -4.0, 6.0])
    start = ref.pose([-6.0, 5.0, -6.0, -12.0, 10.0, -15.0])

    def correspond(level, drr, contour):
        p = transform_points(invert_rigid(gt), surf.points[contour.index])
        return level.camera.project_camera_points(p), np.ones(len(contour))

    pts = target_points(hu, 60)
    assert mtre(pts, gt, start) > 20.0
    pose, n, msg, ok, step = iterate_ppc(vol, np.zeros((32, 32)), CAM, start, correspond, levels=(1.0,),
                                         iterations=(8,))
    assert ok and n == 8, msg
    assert mtre(pts, gt, pose) < 1e-3
    assert step < 1e-3  # the last update barely moved the contour: converged


def test_ppc_alone_never_claims_success_and_says_how_it_ended(scene):
    """A PPC method without an intensity step cannot verify its pose: no success; converged or not, it says which."""
    from XRayCTRegistrationLib.dppc import STEP_TOLERANCE_PX, run_ppc_method
    from XRayCTRegistrationLib.geometry import invert_rigid, transform_points

    hu, vol, ref = scene
    surf = surface_points(vol, 4000)
    gt, start = ref.pose([2.0, -3.0, 4.0, 5.0, -4.0, 6.0]), ref.pose([-3.0, 2.0, -2.0, -8.0, 6.0, -5.0])
    xray = render(vol, CAM, gt, n_samples=120)
    rng = np.random.default_rng(0)

    def exact(level, drr, contour):
        p = transform_points(invert_rigid(gt), surf.points[contour.index])
        return level.camera.project_camera_points(p), np.ones(len(contour))

    def jittered(level, drr, contour):  # every iteration the whole contour is sent about a pixel off the truth
        rc, w = exact(level, drr, contour)
        return rc + rng.normal(scale=1.0, size=2), w

    common = dict(reference=ref, progress=None, should_stop=None, device="cpu", levels=(1.0,), iterations=(6,),
                  final=None)
    good = run_ppc_method(vol, xray, CAM, start, exact, "ppc", **common)
    assert not good.success and "; converged (last update 0.0" in good.message, good.message
    assert "ppc alone cannot verify its pose; ppc-opt ends with an intensity step" in good.message
    assert mtre(target_points(hu, 60), gt, good.world_from_camera) < 1e-3
    bad = run_ppc_method(vol, xray, CAM, start, jittered, "ppc", **common)
    assert not bad.success and "not converged" in bad.message and f"below {STEP_TOLERANCE_PX:g}" in bad.message
    assert mtre(target_points(hu, 60), gt, bad.world_from_camera) > 0.05  # it did stop short of the truth


def test_true_flow_solves_to_the_true_motion(scene):
    """The training batch's true flow, as targets of the batch solver, moves the contour onto its true positions."""
    from XRayCTRegistrationLib.ppc_learned import registration_loss, solve_batch, true_flow

    torch.manual_seed(0)
    trainer = _tiny_trainer(scene[0])
    (_, _), _, batch = trainer.batch(1.0, np.random.default_rng(1), torch.Generator().manual_seed(1))
    cam = trainer.source.low_camera
    flow = true_flow(batch, cam)
    # the flow is the displacement of each point's projection: pixels + flow = the true points' projections
    proj = torch.as_tensor(cam.project_camera_points(batch.true_points.numpy()))
    torch.testing.assert_close((batch.pixels + flow)[batch.mask], proj[batch.mask])
    x, c = solve_batch(batch, batch.pixels + flow, batch.mask.double(), cam, 0.0)
    before = registration_loss(batch, torch.zeros_like(x), c, 0.0)
    after = registration_loss(batch, x, c, 0.0)
    assert after < 0.3 * before, (float(before), float(after))


def test_ppc_net_samples_the_flow_at_the_contour_pixels():
    """PPCNet reads the flow field (channels d_col, d_row) at each point's (row, col): no axis swap, any size."""
    from XRayCTRegistrationLib.ppc_learned import Batch, PPCConfig, PPCNet

    class Field(torch.nn.Module):  # d_col = 0.1 * col + 1, d_row = -0.05 * row + 2 (pixels of the s-grid)
        def forward(self, img1, img2, iterations=None):
            b, _, h, w = img1.shape
            rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                        indexing="ij")
            return [torch.stack([0.1 * cols + 1, -0.05 * rows + 2])[None].expand(b, -1, -1, -1)]

    net = PPCNet(PPCConfig(size=32))
    net.flow = Field()
    rc = torch.tensor([[[3.0, 20.0], [17.5, 4.25], [30.0, 30.0]]], dtype=torch.float64)
    n = torch.tensor([[[1.0, 0.0, 0.0]] * 3], dtype=torch.float64)
    batch = Batch(rc, n * 500, n, n, torch.ones(1, 3, dtype=bool), torch.zeros(1, 3, dtype=torch.float64))
    img = torch.rand(1, 32, 32)
    flows, targets, _ = net(img, img, batch)
    want = torch.stack([-0.05 * rc[..., 0] + 2, 0.1 * rc[..., 1] + 1], -1).float()
    torch.testing.assert_close(flows[-1], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets, (rc + want).float(), atol=1e-5, rtol=1e-5)
    # a 64-pixel level on the 32-grid: level pixel p is grid point (p + 0.5) / 2 - 0.5, flows scale by 2
    big = Batch(2 * rc + 0.5, n * 500, n, n, torch.ones(1, 3, dtype=bool), torch.zeros(1, 3, dtype=torch.float64))
    flows, _, _ = net(torch.rand(1, 64, 64), torch.rand(1, 64, 64), big)
    torch.testing.assert_close(flows[-1], 2 * want, atol=1e-5, rtol=1e-5)


def test_patch_descriptors_give_the_patch_ncc():
    from XRayCTRegistrationLib.networks.flow import FlowConfig, FlowNet, patch_descriptors

    rng = np.random.default_rng(4)
    img = torch.as_tensor(rng.normal(size=(1, 1, 32, 32)), dtype=torch.float32)
    other = 3.0 * img + 1.0  # same patches up to gain and offset
    d1, d2 = patch_descriptors(img, 8), patch_descriptors(other, 8)
    assert d1.shape == (1, 64, 8, 8)
    torch.testing.assert_close((d1 * d2).sum(1), torch.ones(1, 8, 8), atol=1e-5, rtol=0)
    # cell (2, 3): the 8x8 patch starting at pixel (4 * 2 - 2, 4 * 3 - 2); against cell (5, 1) of the other image
    a = img[0, 0, 6:14, 10:18].flatten().double()
    b = img[0, 0, 18:26, 2:10].flatten().double()
    a, b = a - a.mean(), b - b.mean()
    assert float((d1[0, :, 2, 3] * d2[0, :, 5, 1]).sum()) == pytest.approx(float(a @ b / (a.norm() * b.norm())),
                                                                         abs=1e-5)
    flows = FlowNet(FlowConfig(features=8, hidden=8, radius=2, iterations=2, patch=8))(img, other)
    assert len(flows) == 2 and flows[-1].shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="patch"):
        FlowNet(FlowConfig(patch=5))


def test_correlation_lookup_peaks_at_the_true_shift():
    """The patch-NCC channels of the lookup at zero flow peak at the displacement of a shifted image (x, y order)."""
    from XRayCTRegistrationLib.networks.flow import FlowConfig, FlowNet, patch_descriptors

    rng = np.random.default_rng(0)
    img = torch.as_tensor(rng.normal(size=(64, 64)).cumsum(0).cumsum(1), dtype=torch.float32)[None, None]
    moved = torch.roll(img, shifts=(8, -4), dims=(2, 3))  # content 8 pixels down, 4 left: 2 cells in y, -1 in x
    net = FlowNet(FlowConfig(radius=3, levels=1, patch=8))
    f = torch.zeros(1, 4, 16, 16)
    pyramid = net._pyramid(f, f, patch_descriptors(img, 8), patch_descriptors(moved, 8))
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    win = net._lookup(pyramid, torch.stack([xs, ys])[None])  # [1, 2 * 49, 16, 16]: learned, then NCC
    ncc = win[0, 49:].reshape(7, 7, 16, 16)[:, :, 4:12, 4:12].mean((-1, -2))  # [dy, dx] window, inner cells
    assert np.unravel_index(int(ncc.argmax()), (7, 7)) == (3 + 2, 3 - 1)
    assert float(ncc.max()) == pytest.approx(1.0, abs=1e-4)
    # the untrained network (update operator initialised to zero) returns that patch-matching flow, input pixels
    flow = net(img, moved, iterations=2)[-1][0, :, 16:48, 16:48].mean((1, 2))
    torch.testing.assert_close(flow, torch.tensor([-4.0, 8.0]), atol=0.1, rtol=0)


def test_ppc_training_pool_refreshes_its_oldest_pairs(scene):
    torch.manual_seed(0)
    trainer = _tiny_trainer(scene[0])
    rng, gen = np.random.default_rng(2), torch.Generator().manual_seed(2)
    (drr, xray), params, batch = trainer.batch(1.0, rng, gen)
    n_pool = len(trainer.ppc_pool[0])
    assert drr.shape == xray.shape == (2, 32, 32) and params.shape == (2, 12) and n_pool == 8
    before = trainer.ppc_pool[2].clone()
    trainer.batch(1.0, rng, gen)  # fresh_per_step 4: two new pairs replace pairs 0 and 1
    changed = (trainer.ppc_pool[2] != before).any(1)
    assert changed.tolist() == [True, True] + [False] * (n_pool - 2) and trainer.ppc_next == 2
    # each stored pair keeps its own contour: the points of a new pair project to its stored pixels
    cam = trainer.source.low_camera
    new = trainer.ppc_pool[3].select(torch.tensor([0]))
    proj = cam.project_camera_points(new.points[0][new.mask[0]].numpy())
    np.testing.assert_allclose(proj, new.pixels[0][new.mask[0]].numpy(), atol=1e-9)


def test_ppc_training_pairs_with_physics_x_rays(scene):
    """Domain randomisation: the X-ray of a pair is a physics image, its start DRR the monochromatic one."""
    from XRayCTRegistrationLib.ppc_learned import RENDER

    trainer = _tiny_trainer(scene[0], physics_kvp=(80.0, 120.0))
    assert trainer.options.render.detector_size == RENDER.detector_size and trainer.source.physics is not None
    drr, xray, params, _ = trainer._pairs(np.random.default_rng(3), 3, 1.0)
    mono_start = trainer.source.render(params[:, :6], physics=False)
    mono_truth = trainer.source.render(params[:, 6:], physics=False)
    torch.testing.assert_close(drr, mono_start)  # what the registration renders
    assert not torch.allclose(xray, mono_truth, rtol=1e-2, atol=1e-3)  # another contrast: spectrum and scatter
    for k in range(3):  # the same anatomy at the same pose
        corr = np.corrcoef(xray[k].flatten().numpy(), mono_truth[k].flatten().numpy())[0, 1]
        assert corr > 0.9


# -- the weighting network's collapse: prevented by centred logits, caught by the training ---------------------
def test_centred_weights_ignore_a_common_logit_shift():
    from XRayCTRegistrationLib.networks.pointnet import WeightConfig, WeightNet

    torch.manual_seed(0)
    feats, mask = torch.randn(2, 40, 9), torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    for centred in (True, False):
        net = WeightNet(WeightConfig(features=9, centred=centred))
        with torch.no_grad():
            before = net(feats, mask)
            net.out[-1].bias -= 500.0  # the shift the point-to-plane solve cannot see
            after = net(feats, mask)
        assert (before[~mask] == 0).all() and (after[~mask] == 0).all()
        if centred:
            torch.testing.assert_close(after, before)
            assert (after.amax(1) >= 0.5).all()
        else:  # the collapse: every weight underflows to exactly 0
            assert (before[mask] > 0).all() and (after == 0).all()


def test_ppc_model_files_from_before_centring_read_uncentred():
    from XRayCTRegistrationLib.ppc_learned import PPCConfig

    d = PPCConfig().to_dict()
    assert d["weight"]["centred"] is True and PPCConfig.from_dict(d).weight.centred is True
    del d["weight"]["centred"]
    assert PPCConfig.from_dict(d).weight.centred is False


@pytest.mark.parametrize("every_step", [False, True])
def test_ppc_training_goes_back_to_healthy_weights_when_the_weights_collapse(scene, tmp_path, every_step):
    from XRayCTRegistrationLib.networks.pointnet import WeightConfig
    from XRayCTRegistrationLib.training import MAX_COLLAPSES, read_model_file

    torch.manual_seed(0)
    hu, _, _ = scene
    trainer = _tiny_trainer(hu, iterations=8)
    trainer.options.val_every = 2
    old = trainer.net.config
    trainer.net = type(trainer.net)(type(old)(old.size, old.max_points, old.flow,
                                              WeightConfig(features=old.weight.features, centred=False)))
    trainer.optimizer = torch.optim.AdamW(trainer.net.parameters(), lr=trainer.options.lr)
    step = trainer.step
    bias = trainer.net.weight.out[-1].bias

    def collapsing_step(rng, gen):
        out = step(rng, gen)
        if trainer.state.step == 4 or every_step:
            with torch.no_grad():
                bias.fill_(-1e4)  # every sigmoid underflows to 0
        return out

    trainer.step = collapsing_step
    messages = []
    summary = trainer.run(tmp_path / "m.pt", progress=lambda f, m: messages.append(m))
    saved = read_model_file(tmp_path / "m.pt")
    assert saved["collapses"] == summary["collapses"]
    assert saved["state_dict"]["weight.out.4.bias"].item() > -100
    assert trainer.collapsed(trainer.validate()) is None  # what was written is healthy
    assert any("collapsed" in m and "back to the weights of step" in m for m in messages)
    if every_step:
        assert [s for s, _ in summary["collapses"]] == [2, 4, 6][:MAX_COLLAPSES]
        assert summary["stopped"] and not saved["complete"]
    else:
        assert [s for s, _ in summary["collapses"]] == [4]
        assert "fewer than 12 correspondences" in summary["collapses"][0][1]
        assert summary["steps"] == 8 and not summary["stopped"] and saved["complete"]
