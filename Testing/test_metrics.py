import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, invert_rigid
from XRayCTRegistrationLib.metrics import (
    capture_range,
    image_ncc,
    mpd,
    mrpd,
    mtre,
    param_errors,
    rotation_error_deg,
    ssim,
    success,
    target_points,
    translation_error_mm,
)
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.volume import Volume

CAM = Camera(1000.0, 64, 64, 2.0, 2.0)
REF = ReferenceView.ap(np.array([10.0, -5.0, 3.0]), 1000.0)


def camera_shift(world_from_camera, d):
    """Pose whose camera sees every point displaced by ``d`` (camera frame)."""
    m = np.eye(4)
    m[:3, 3] = d
    return invert_rigid(m @ invert_rigid(world_from_camera))


def rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = math.radians(deg)
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k
    return m


def world_points(cam_points, w):
    return cam_points @ w[:3, :3].T + w[:3, 3]


def test_mtre_of_translation():
    w = REF.world_from_camera
    pts = np.random.default_rng(0).normal(size=(20, 3)) * 50 + REF.isocenter
    assert mtre(pts, w, camera_shift(w, [3.0, 4.0, 0.0])) == pytest.approx(5.0, abs=1e-9)
    assert mtre(pts, w, w) == pytest.approx(0.0, abs=1e-12)


def test_mpd_known_shifts():
    w = REF.world_from_camera
    z0 = 700.0
    cam_pts = np.array([[30.0, 0.0, z0], [0.0, -40.0, z0], [20.0, 20.0, z0]])
    pts = world_points(cam_pts, w)
    # in-plane shift d at depth z0: every projection moves by sdd * |d| / z0
    assert mpd(pts, w, camera_shift(w, [6.0, 8.0, 0.0]), CAM) == pytest.approx(1000 * 10 / z0, abs=1e-9)
    # shift along the principal ray: radius r projects at sdd r / z
    dz = 50.0
    r = np.linalg.norm(cam_pts[:, :2], axis=1)
    expected = np.mean(1000 * r / z0 - 1000 * r / (z0 + dz))
    assert mpd(pts, w, camera_shift(w, [0.0, 0.0, dz]), CAM) == pytest.approx(expected, abs=1e-9)


def test_mrpd_zero_along_rays_and_known_value():
    w = REF.world_from_camera
    on_axis = world_points(np.array([[0.0, 0.0, 600.0], [0.0, 0.0, 750.0]]), w)
    moved = camera_shift(w, [0.0, 0.0, 40.0])  # every point moves along its own ray
    assert mrpd(on_axis, w, moved) == pytest.approx(0.0, abs=1e-9)
    assert mtre(on_axis, w, moved) == pytest.approx(40.0, abs=1e-9)
    assert mpd(on_axis, w, moved, CAM) == pytest.approx(0.0, abs=1e-9)
    # a point on the axis at depth z, estimate shifted sideways by d: distance z d / sqrt(d^2 + z^2)
    z, d = 700.0, 10.0
    p = world_points(np.array([[0.0, 0.0, z]]), w)
    assert mrpd(p, w, camera_shift(w, [d, 0.0, 0.0])) == pytest.approx(z * d / math.hypot(z, d), abs=1e-9)


def test_rotation_error_geodesic():
    w = REF.world_from_camera
    for axis, deg in (([1, 0, 0], 7.0), ([1, 2, -3], 33.0), ([0, 0, 1], 179.0)):
        assert rotation_error_deg(w, w @ rot(axis, deg)) == pytest.approx(deg, abs=1e-6)
        assert rotation_error_deg(w @ rot(axis, deg), w) == pytest.approx(deg, abs=1e-6)
    assert rotation_error_deg(w, w) == pytest.approx(0.0, abs=1e-6)


def test_translation_and_param_errors():
    p_gt = np.array([3.0, -2.0, 5.0, 10.0, -4.0, 20.0])
    p_est = np.array([4.0, -2.5, 4.0, 13.0, 0.0, 20.0])
    w_gt, w_est = REF.pose(p_gt), REF.pose(p_est)
    assert translation_error_mm(w_gt, w_est, REF.isocenter) == pytest.approx(5.0, abs=1e-9)
    np.testing.assert_allclose(param_errors(REF, w_gt, w_est), [1.0, 0.5, 1.0, 3.0, 4.0, 0.0], atol=1e-9)
    # a pure rotation about the isocentre has no translation error
    w_rot = REF.pose(p_gt + np.array([5.0, 0, 0, 0, 0, 0]))
    assert translation_error_mm(w_gt, w_rot, REF.isocenter) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(param_errors(REF, REF.pose([179.0, 0, 0, 0, 0, 0]),
                                            REF.pose([-179.0, 0, 0, 0, 0, 0])), [2, 0, 0, 0, 0, 0], atol=1e-9)


def test_success_thresholds():
    np.testing.assert_array_equal(success(mtre_mm=[0.5, 1.99, 2.0, np.nan]), [True, True, False, False])
    np.testing.assert_array_equal(success(rotation_deg=[1.0, 2.0, 4.0], translation_mm=[1.0, 3.5, 1.0]),
                                  [True, False, False])
    per_param = np.array([[1.0, 2.9, 0.1], [1.0, 3.1, 0.1]])
    np.testing.assert_array_equal(success(rotation_deg=per_param, translation_mm=per_param / 10), [True, False])
    np.testing.assert_array_equal(success(mtre_mm=[1.5, 1.5], mtre_threshold=1.0), [False, False])
    with pytest.raises(InputError):
        success()


def test_capture_range_table():
    init, ok = [], []
    for lo, n, n_ok in ((0, 20, 20), (5, 20, 19), (10, 20, 10), (15, 20, 20)):
        init += list(lo + np.linspace(0.1, 4.9, n))
        ok += [True] * n_ok + [False] * (n - n_ok)
    assert capture_range(init, ok) == 10.0  # 19/20 = 95 % passes, 50 % stops
    assert capture_range(init, ok, rate=0.96) == 5.0
    assert capture_range(init, ok, bin_mm=20) == 0.0  # one bin, 59/80 successes
    assert capture_range([1.0, 12.0], [True, True]) == 15.0  # empty bin [5, 10) passed over
    assert capture_range([1.0, 2.0], [False, True]) == 0.0
    with pytest.raises(InputError):
        capture_range([1.0], [True, False])


def test_ssim_matches_reference_and_limits():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 48)).cumsum(0)
    b = a + rng.normal(size=a.shape) * 2
    rngv = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    expected = structural_similarity(a, b, data_range=rngv, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b, data_range=5.0) == pytest.approx(
        structural_similarity(a, b, data_range=5.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
        abs=1e-10)


def test_image_ncc():
    a = np.random.default_rng(0).normal(size=(10, 12))
    assert image_ncc(a, 2 * a + 1) == pytest.approx(1.0)
    assert image_ncc(a, -a) == pytest.approx(-1.0)
    m = np.zeros_like(a, bool)
    m[2:6, 3:9] = True
    b = a.copy()
    b[~m] = 0
    assert image_ncc(a, b, m) == pytest.approx(1.0)


def test_target_points_bone_and_deterministic():
    vol = chest_phantom((32, 24, 24), (5.0, 5.0, 5.0))
    p = target_points(vol, 50)
    assert p.shape == (50, 3)
    np.testing.assert_array_equal(p, target_points(vol, 50))
    ijk = np.rint(p @ vol.ras_to_ijk[:3, :3].T + vol.ras_to_ijk[:3, 3]).astype(int)
    assert np.all(vol.data[ijk[:, 2], ijk[:, 1], ijk[:, 0]] > 250)
    assert len(np.unique(p, axis=0)) == 50
    soft = Volume(np.zeros((4, 5, 6), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    corners = target_points(soft, 10)
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.max(0), [10.0, 8.0, 6.0])
