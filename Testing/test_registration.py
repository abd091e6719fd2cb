import json
import math

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.carm import CArmPosition, relative_carm_view
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.metrics import mtre, target_points
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import Projector, render
from XRayCTRegistrationLib.registration import UNDETERMINED_DEPTH_MM, RegistrationResult, register
from XRayCTRegistrationLib.volume import Volume, block_average, hu_to_mu, pad

SDD = 1000.0
CAM = Camera(SDD, 48, 48, 6.0, 6.0)
GT = np.array([2.0, -3.0, 4.0, 5.0, -6.0, 8.0])
START = GT + np.array([3.0, -2.0, 2.0, -6.0, 5.0, 4.0])  # ~4 deg, ~9 mm
FAST = dict(levels=(2, 1), max_iterations=(60, 30))


@pytest.fixture(scope="module")
def scene():
    hu = chest_phantom((48, 40, 40), (4.0, 4.0, 4.0))
    vol = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    ref = ReferenceView.ap(vol.center, SDD)
    xray = render(vol, CAM, ref.pose(GT), n_samples=160)
    return hu, vol, ref, xray, target_points(hu, 60)


@pytest.mark.parametrize("method", ["opt-ncc", "opt-gc"])
def test_recovers_known_pose(scene, method):
    hu, vol, ref, xray, pts = scene
    w_gt, w0 = ref.pose(GT), ref.pose(START)
    assert mtre(pts, w_gt, w0) > 8
    res = register(vol, xray, CAM, w0, reference=ref, method=method, **FAST)
    assert isinstance(res, RegistrationResult)
    assert res.success, res.message
    assert mtre(pts, w_gt, res.world_from_camera) < 2.0
    assert res.similarity > res.initial_similarity
    np.testing.assert_allclose(res.params, ref.params(res.world_from_camera), atol=1e-6)
    assert res.iterations == len(res.history) > 0
    assert {lv for lv, _, _ in res.history} == {0, 1}
    d = json.loads(json.dumps(res.to_dict()))
    for key in ("world_from_camera", "similarity", "iterations", "wall_time_s", "method", "params", "success",
                "message"):
        assert key in d
    assert d["method"] == method and set(d["params"]) == {"rx", "ry", "rz", "tx", "ty", "tz"}


@pytest.mark.parametrize("method", ["opt-mncc", "opt-ngi", "opt-gd"])
def test_other_methods_improve(scene, method):
    hu, vol, ref, xray, pts = scene
    w_gt, w0 = ref.pose(GT), ref.pose(START)
    res = register(vol, xray, CAM, w0, reference=ref, method=method, levels=(2, 1), max_iterations=(40, 30))
    # converged; on this 48-pixel phantom a method may leave the depth too uncertain to call it a success
    assert res.success or "the pose is not determined" in res.message, res.message
    assert mtre(pts, w_gt, res.world_from_camera) < 0.5 * mtre(pts, w_gt, w0)


def test_the_coarsest_level_goes_on_from_the_best_of_its_starts(scene, monkeypatch):
    from XRayCTRegistrationLib import registration

    hu, vol, ref, xray, pts = scene
    offsets = registration.start_offsets(7)
    assert offsets.shape == (5, 7) and not offsets[0].any()
    assert sorted(offsets[1:, :2].abs().sum(1).tolist()) == [registration.START_OFFSET_DEG] * 4
    assert not offsets[:, 2:].any()  # out-of-plane rotations only
    w_gt, far = ref.pose(GT), np.array([0.0, 90.0, 0.0, 0.0, 0.0, 0.0])  # turned a quarter turn about the detector's y
    w0 = ref.pose(GT + far)
    single = register(vol, xray, CAM, w0, reference=ref, multi_start=False, **FAST)
    assert mtre(pts, w_gt, single.world_from_camera) > 20  # a wrong basin
    # one more start at the truth: the batch of starts finds it and the registration goes on from it
    with_truth = torch.cat([offsets, -torch.as_tensor(np.r_[far, 0.0])[None]])
    monkeypatch.setattr(registration, "start_offsets", lambda n: with_truth[:, :n])
    multi = register(vol, xray, CAM, w0, reference=ref, **FAST)
    assert mtre(pts, w_gt, multi.world_from_camera) < 2.0
    assert multi.similarity > single.similarity + registration.START_MARGIN
    assert {lv for lv, _, _ in multi.history} == {0, 1}


def test_refines_on_a_finer_level_when_the_depth_is_undetermined(scene):
    hu, vol, ref, _, pts = scene
    cam = Camera(SDD, 64, 64, 4.5, 4.5)
    xray = render(vol, cam, ref.pose(GT), n_samples=160)
    start = ref.pose(GT + np.array([1.0, -1.0, 1.0, 3.0, -3.0, 10.0]))  # 10 mm off in depth
    kw = dict(reference=ref, levels=(4, 2), multi_start=False)  # one start: what is tested is the finer level
    coarse = register(vol, xray, cam, start, refine_undetermined=False, **kw)
    # a last level of 32 pixels of 9 mm leaves this phantom's depth undetermined: reported, not called a success
    assert not coarse.success and "the pose is not determined" in coarse.message, coarse.message
    assert {lv for lv, _, _ in coarse.history} == {0, 1}
    refined = register(vol, xray, cam, start, **kw)
    assert {lv for lv, _, _ in refined.history} == {0, 1, 2}  # the third level: 64 pixels of 4.5 mm
    # called a success only where its 2-sd depth interval is within the bound; otherwise the message says why
    determined = 2 * refined.uncertainty.depth_mm <= UNDETERMINED_DEPTH_MM
    assert refined.success == determined and (determined or "the pose is not determined" in refined.message)
    assert refined.uncertainty.depth_mm < coarse.uncertainty.depth_mm
    assert abs(refined.params[5] - GT[5]) < 0.5 * abs(coarse.params[5] - GT[5])
    assert mtre(pts, ref.pose(GT), refined.world_from_camera) < 1.0


def test_finish_fit_runs_a_last_full_resolution_level_on_local_ncc_plus_the_intensity_fit(scene, monkeypatch):
    from XRayCTRegistrationLib import similarity

    hu, vol, ref, xray, pts = scene
    w_gt, w0 = ref.pose(GT), ref.pose(START)
    plain = register(vol, xray, CAM, w0, reference=ref, method="opt-lncc", **FAST)
    seen = []
    measure = similarity.SIMILARITIES["lncc+fit"]
    monkeypatch.setitem(similarity.SIMILARITIES, "lncc+fit", lambda x, y, w=None: seen.append(1) or measure(x, y, w))
    finished = register(vol, xray, CAM, w0, reference=ref, method="opt-lncc", finish_fit=True, **FAST)
    assert seen and {lv for lv, _, _ in finished.history} == {0, 1, 3}  # the pyramid's two levels, then the finish
    # converged; on this 48-pixel phantom the depth may be left too uncertain to call it a success
    assert finished.success or "the pose is not determined" in finished.message, finished.message
    assert finished.method == "opt-lncc" and finished.iterations > plain.iterations
    assert mtre(pts, w_gt, finished.world_from_camera) < 1.5  # 48 pixels, below local NCC's sizes: 1.2 mm here
    x, y = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(measure(x, y), 0.5 * (similarity.local_ncc(x, y) + similarity.intensity_fit(x, y)))


def test_biplane(scene):
    hu, vol, ref, xray0, pts = scene
    # view 1: the camera turned 90 degrees about the isocentre around the patient's long axis
    sid = float(ref.isocenter_camera[2])
    rel1 = relative_carm_view(CArmPosition(0.0, 0.0, sid), CArmPosition(-90.0, 0.0, sid), CAM.sdd, CAM.sdd)
    w_gt = ref.pose(GT)
    xray1 = render(vol, CAM, w_gt @ rel1, n_samples=160)
    # global NCC: this noise-free 48-pixel phantom has too few pixels for local patches to carry information;
    # its similarity is flat in ry near the optimum, which takes more than FAST's budget to cross
    res = register(vol, [xray0, xray1], [CAM, CAM], ref.pose(START), reference=ref, method="opt-ncc",
                   relative_views=[np.eye(4), rel1], levels=(2, 1), max_iterations=(80, 80))
    assert res.success, res.message
    assert mtre(pts, w_gt, res.world_from_camera) < 1.5
    with pytest.raises(InputError):
        register(vol, [xray0, xray1], [CAM, CAM], ref.pose(START), reference=ref)


def test_label_mask_restricts_to_structures(scene):
    hu, vol, ref, xray, pts = scene
    labels = Volume((hu.data > 250).astype(np.float32), hu.ijk_to_ras)
    other = vol.data.copy()
    other[hu.data <= 250] *= 3.0  # change everything but the bone
    vol2 = Volume(other, vol.ijk_to_ras)
    kw = dict(reference=ref, labels=labels, label_ids=[1], levels=(2, 1), max_iterations=(15, 5))
    r1 = register(vol, xray, CAM, ref.pose(START), **kw)
    r2 = register(vol2, xray, CAM, ref.pose(START), **kw)
    np.testing.assert_allclose(r1.world_from_camera, r2.world_from_camera, atol=1e-9)
    assert r1.similarity == pytest.approx(r2.similarity, abs=1e-9)
    r3 = register(vol2, xray, CAM, ref.pose(START), reference=ref, levels=(2, 1), max_iterations=(15, 5))
    assert not np.allclose(r1.world_from_camera, r3.world_from_camera, atol=1e-6)
    with pytest.raises(InputError, match="no voxel"):
        register(vol, xray, CAM, ref.pose(START), reference=ref, labels=labels, label_ids=[7])
    with pytest.raises(InputError):
        register(vol, xray, CAM, ref.pose(START), reference=ref, labels=labels)


def test_image_mask(scene):
    hu, vol, ref, xray, pts = scene
    with pytest.raises(InputError, match="no pixels"):
        register(vol, xray, CAM, ref.pose(START), reference=ref, mask=np.zeros_like(xray))
    mask = np.zeros_like(xray)
    mask[8:40, 8:40] = 1
    res = register(vol, xray, CAM, ref.pose(START), reference=ref, mask=mask, **FAST)
    assert res.success, res.message
    assert mtre(pts, ref.pose(GT), res.world_from_camera) < 2.0


def test_non_overlapping_start_fails_with_message(scene):
    hu, vol, ref, xray, pts = scene
    far = ref.pose(GT + np.array([0, 0, 0, 600.0, 0, 0]))
    res = register(vol, xray, CAM, far, reference=ref, **FAST)
    assert not res.success
    assert "does not project" in res.message
    np.testing.assert_allclose(res.world_from_camera, far, atol=1e-9)
    assert res.iterations == 0


def test_bad_inputs(scene):
    hu, vol, ref, xray, pts = scene
    bad = xray.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        register(vol, bad, CAM, ref.pose(START), reference=ref)
    with pytest.raises(InputError, match="shape"):
        register(vol, xray[:-1], CAM, ref.pose(START), reference=ref)
    with pytest.raises(InputError, match="constant"):
        register(vol, np.ones_like(xray), CAM, ref.pose(START), reference=ref)
    with pytest.raises(InputError, match="method"):
        register(vol, xray, CAM, ref.pose(START), reference=ref, method="opt-xyz")
    with pytest.raises(InputError):
        register(vol, xray, CAM, np.eye(3), reference=ref)
    with pytest.raises(InputError):
        register(vol, xray, CAM, ref.pose(START), reference=ref, step_sizes=(1.0, -2.0))


def test_inputs_unchanged_and_callbacks(scene):
    hu, vol, ref, xray, pts = scene
    x0, v0, w0 = xray.copy(), vol.data.copy(), ref.pose(START)
    w0_copy = w0.copy()
    calls = []
    res = register(vol, xray, CAM, w0, reference=ref, levels=(2, 1), max_iterations=(5, 2),
                   progress=lambda f, m: calls.append((f, m)))
    np.testing.assert_array_equal(xray, x0)
    np.testing.assert_array_equal(vol.data, v0)
    np.testing.assert_array_equal(w0, w0_copy)
    assert calls and all(0.0 <= f <= 1.0 for f, _ in calls) and calls[-1][0] == 1.0
    assert res.iterations <= 7
    stopped = register(vol, xray, CAM, w0, reference=ref, should_stop=lambda: True, **FAST)
    assert not stopped.success and "stopped" in stopped.message and stopped.iterations == 0


def test_time_budget(scene):
    hu, vol, ref, xray, pts = scene
    res = register(vol, xray, CAM, ref.pose(START), reference=ref, time_budget_s=0.0, **FAST)
    assert res.iterations == 0 and "time budget" in res.message and not res.success


# -- honest success --------------------------------------------------------------------------------------
def test_source_inside_the_ct_at_the_start_fails_with_the_reason(scene):
    hu, vol, ref, xray, pts = scene
    # tz = -700 mm brings the CT's centre onto the source (the reference source-isocentre distance is 700 mm)
    inside = ref.pose(GT + np.array([0, 0, 0, 0, 0, -690.0]))
    res = register(vol, xray, CAM, inside, reference=ref, **FAST)
    assert not res.success and "source" in res.message and "inside the CT" in res.message
    assert res.iterations == 0
    np.testing.assert_allclose(res.world_from_camera, inside, atol=1e-9)


def test_no_iterations_is_not_success(scene):
    hu, vol, ref, xray, pts = scene
    res = register(vol, xray, CAM, ref.pose(START), reference=ref, levels=(2, 1), max_iterations=0)
    assert not res.success and res.iterations == 0 and "no iterations" in res.message


def test_iteration_cap_before_convergence_is_not_success(scene):
    hu, vol, ref, xray, pts = scene
    res = register(vol, xray, CAM, ref.pose(START), reference=ref, levels=(2, 1), max_iterations=(3, 4))
    assert 0 < res.iterations <= 7
    assert not res.success and "not converged" in res.message
    assert res.similarity > res.initial_similarity  # it improved, but did not finish


def test_converged_result_reports_its_uncertainty(scene):
    hu, vol, ref, xray, pts = scene
    res = register(vol, xray, CAM, ref.pose(START), reference=ref, method="opt-ncc", **FAST)
    assert res.success and res.message.startswith("converged"), res.message
    u = res.uncertainty
    assert u is not None and u.std.shape == (6,) and np.all(u.std > 0) and u.depth_mm > 0
    np.testing.assert_allclose(u.std, np.sqrt(np.diag(u.covariance)))
    # a single view sees depth least: the centre's depth is less certain than the in-plane shifts
    assert u.depth_mm > u.std[3] and u.depth_mm > u.std[4]
    d = json.loads(json.dumps(res.to_dict()))["uncertainty"]
    assert set(d["std"]) == {"rx", "ry", "rz", "tx", "ty", "tz"} and d["depth_mm"] == pytest.approx(u.depth_mm)
    assert "depth +-" in u.summary()


def test_undetermined_pose_is_not_success(scene, monkeypatch):
    """A converged registration whose 2-sigma depth interval exceeds the bound is refused, with the reason."""
    import XRayCTRegistrationLib.registration as registration

    hu, vol, ref, xray, pts = scene
    res = register(vol, xray, CAM, ref.pose(START), reference=ref, method="opt-ncc", **FAST)
    assert res.success and 0 < 2 * res.uncertainty.depth_mm < registration.UNDETERMINED_DEPTH_MM
    monkeypatch.setattr(registration, "UNDETERMINED_DEPTH_MM", res.uncertainty.depth_mm)
    res2 = register(vol, xray, CAM, ref.pose(START), reference=ref, method="opt-ncc", **FAST)
    assert not res2.success and "the pose is not determined" in res2.message
    np.testing.assert_allclose(res2.params, res.params)  # the same pose; only the verdict differs


def test_label_masked_registration_far_off_is_not_success(scene):
    """Restricted to a small dense structure, a far start can converge on a flat similarity far from the truth."""
    hu, vol, ref, xray, pts = scene
    labels = Volume((hu.data > 600).astype(np.float32), hu.ijk_to_ras)
    start = GT + np.array([-10.0, 8.0, -6.0, 25.0, -20.0, -40.0])
    res = register(vol, xray, CAM, ref.pose(start), reference=ref, labels=labels, label_ids=[1])
    error = mtre(pts, ref.pose(GT), res.world_from_camera)
    assert not (res.success and error >= 2.0), f"success at mTRE {error:.1f} mm: {res.message}"


def test_fits_the_detector_blur_that_would_bias_the_depth(scene):
    """An X-ray blurred on its photons looks smaller than a DRR: fitted, the blur no longer moves the depth."""
    from XRayCTRegistrationLib.simulate import NoiseModel, xray_from_drr

    hu, vol, ref, _, pts = scene
    drr = render(vol, CAM, ref.pose(GT), n_samples=160)
    xray = xray_from_drr(drr, NoiseModel(photons=1e12, blur_px=1.5), np.random.default_rng(0))
    budget = dict(levels=(2, 1), max_iterations=(60, 60))
    fitted = register(vol, xray, CAM, ref.pose(START), reference=ref, method="opt-ncc", **budget)
    assert fitted.success, fitted.message
    assert fitted.detector_blur_px == pytest.approx(1.5, abs=0.15)
    assert mtre(pts, ref.pose(GT), fitted.world_from_camera) < 1.0
    assert json.loads(json.dumps(fitted.to_dict()))["detector_blur_px"] == pytest.approx(fitted.detector_blur_px)
    plain = register(vol, xray, CAM, ref.pose(START), reference=ref, method="opt-ncc", fit_blur=False, **budget)
    assert plain.detector_blur_px is None
    assert abs(plain.params[5] - GT[5]) > 5.0  # millimetres off in depth, in-plane right


def test_leaves_the_empty_detector_out_of_the_depth(scene):
    """A noise-free X-ray blurred on its photons, air around the phantom: the faint tails of the blurred edges on the
    empty detector pull local NCC's depth millimetres off, unless the background is left out of the similarity."""
    from XRayCTRegistrationLib.simulate import NoiseModel, xray_from_drr

    hu, vol, ref, _, pts = scene
    cam = Camera(SDD, 64, 64, 6.0, 6.0)
    drr = render(vol, cam, ref.pose(GT), n_samples=160)
    xray = xray_from_drr(drr, NoiseModel(photons=0.0, blur_px=1.0), np.random.default_rng(0))
    left_out = register(vol, xray, cam, ref.pose(START), reference=ref, method="opt-lncc")
    assert abs(left_out.params[5] - GT[5]) < 1.0
    assert mtre(pts, ref.pose(GT), left_out.world_from_camera) < 1.0
    kept = register(vol, xray, cam, ref.pose(START), reference=ref, method="opt-lncc", ignore_background=False)
    assert abs(kept.params[5] - GT[5]) > 2.5
    # the reported spread is the whole image's either way: this small phantom does not determine its depth
    for res in (left_out, kept):
        assert res.uncertainty is not None and 2 * res.uncertainty.depth_mm > UNDETERMINED_DEPTH_MM
        assert not res.success and "not determined" in res.message


def test_block_average_geometry():
    data = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    m = np.eye(4)
    m[:3, :3] = np.diag([0.5, 1.0, 2.0])
    m[:3, 3] = [10.0, 20.0, 30.0]
    v = Volume(data, m)
    d = block_average(v, (2, 3, 2))
    assert d.shape_ijk == (4, 2, 2)
    assert d.data[0, 0, 0] == pytest.approx(data[:2, :3, :2].mean())
    # the first new voxel sits at the centre of its block
    np.testing.assert_allclose(d.ijk_to_ras[:3, 3], [10.25, 21.0, 31.0])
    np.testing.assert_allclose(d.spacing, [1.0, 3.0, 4.0])


def test_pad_keeps_world_geometry():
    data = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = np.diag([0.5, 1.0, 2.0])
    m[:3, 3] = [10.0, 20.0, 30.0]
    p = pad(Volume(data, m), 2)
    assert p.shape_ijk == (9, 8, 7)
    assert p.data[2:-2, 2:-2, 2:-2] == pytest.approx(data) and p.data[0].max() == 0
    # voxel (i, j, k) of the original is voxel (i + 2, j + 2, k + 2) of the padded one, at the same RAS point
    np.testing.assert_allclose(p.ijk_to_ras @ [3, 4, 5, 1], m @ [1, 2, 3, 1])
    np.testing.assert_allclose(p.center, Volume(data, m).center)


def test_derived_volumes_are_made_once_per_key():
    v = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    calls = []

    def make():
        calls.append(1)
        return pad(v)

    first = v.derived(("level", (2, 2, 2)), make)
    assert v.derived(("level", (2, 2, 2)), make) is first and len(calls) == 1
    assert v.derived(("level", (1, 1, 1)), make) is not first and len(calls) == 2


def test_value_and_grad_returns_value_aux_and_gradient_in_one_tensor():
    from XRayCTRegistrationLib.devices import ValueAndGrad

    c = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    vg = ValueAndGrad(lambda p: ((c * p * p).sum(), p.max()), 3, torch.device("cpu"))
    p = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    out = vg(p)
    assert out.shape == (5,) and out.device.type == "cpu"
    assert out[0].item() == pytest.approx(float((c * p * p).sum()))
    assert out[1].item() == 2.0
    torch.testing.assert_close(out[2:], 2 * c * p)
    no_grad = vg(p, grad=False)
    assert torch.equal(no_grad[2:], torch.zeros(3, dtype=torch.float64)) and no_grad[0] == out[0]
    assert vg.graph is None and vg.calls == 2  # never captured on the CPU


def test_level_similarity_and_its_gradient_match_the_eager_chain():
    """The level evaluation (value and gradient in one round trip) equals pose -> DRR -> blur -> mncc by autograd."""
    from XRayCTRegistrationLib import registration as R
    from XRayCTRegistrationLib.filters import detector_blur

    hu = chest_phantom((32, 32, 32), (4.0, 4.0, 4.0))
    vol = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    cam = Camera(sdd=1000.0, rows=48, cols=48, row_spacing=4.0, col_spacing=4.0)
    ref = ReferenceView.ap(vol.center, cam.sdd)
    xray = render(vol, cam, ref.pose([2.0, -1.0, 3.0, 4.0, -2.0, 6.0]))
    level = R._build_levels(vol, None, [xray], [cam], [None], [None], [np.eye(4)], None, 700.0, torch.ones(6), True,
                            Projector, torch.device("cpu"), [1.0], [10])[0]
    sim_fn = R.get_similarity("mncc")
    params = torch.tensor([1.0, 0.5, -1.0, 2.0, 1.0, -3.0, math.log(0.5)], dtype=torch.float64, requires_grad=True)
    value, cov = R._similarity(level, ref, params, sim_fn)
    (grad,) = torch.autograd.grad(value, params)
    p = params.detach().clone().requires_grad_(True)
    drr = level.views[0].projector(ref.pose_torch(p[:6]))
    drr = detector_blur(drr, p[6].exp(), R.BLUR_PASSES)
    expected = sim_fn(drr[None], level.views[0].image)[0].double()
    (expected_grad,) = torch.autograd.grad(expected, p)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-9)
    assert 0.5 < cov <= 1.0
    with torch.no_grad():  # no gradient asked: the same value
        assert R._similarity(level, ref, params, sim_fn)[0].item() == value.item()
