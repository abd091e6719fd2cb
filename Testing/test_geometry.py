import json

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import (
    Camera,
    ReferenceView,
    check_rigid,
    invert_rigid,
    load_pose,
    save_pose,
    transform_points,
)

CAM = Camera(sdd=1000.0, rows=200, cols=300, row_spacing=0.5, col_spacing=0.4, x0=3.0, y0=-2.0)


def test_pixel_centres_follow_conventions():
    p = CAM.pixel_centers()
    assert p.shape == (200, 300, 3)
    # centre of pixel (r, c): x = (c + 0.5 - cols/2) * col_spacing + x0
    assert p[0, 0].tolist() == pytest.approx([(0.5 - 150) * 0.4 + 3.0, (0.5 - 100) * 0.5 - 2.0, 1000.0])
    assert p[10, 20].tolist() == pytest.approx([(20.5 - 150) * 0.4 + 3.0, (10.5 - 100) * 0.5 - 2.0, 1000.0])


def test_projection_of_known_points():
    # a point halfway to the detector on the ray through pixel (r, c) projects to (r, c)
    centres = CAM.pixel_centers()
    for r, c in [(0, 0), (57, 201), (199, 299)]:
        pt = 0.5 * centres[r, c]
        assert CAM.project_camera_points(pt) == pytest.approx([r, c])
    # the foot of the perpendicular projects to the detector point (0, 0): pixel with x = x0 offset
    row, col = CAM.project_camera_points(np.array([0.0, 0.0, 700.0]))
    assert col == pytest.approx(150 - 0.5 - 3.0 / 0.4)
    assert row == pytest.approx(100 - 0.5 + 2.0 / 0.5)
    # behind the source: NaN
    assert np.isnan(CAM.project_camera_points(np.array([1.0, 1.0, -5.0]))).all()


def test_ap_reference_view_axes_and_source():
    iso = np.array([10.0, -20.0, 30.0])
    ref = ReferenceView.ap(iso, sdd=1000.0)
    w = ref.world_from_camera
    assert w[:3, 0].tolist() == [-1, 0, 0]  # +x toward patient's left (world -R)
    assert w[:3, 1].tolist() == [0, 0, -1]  # +y toward the feet
    assert w[:3, 2].tolist() == [0, -1, 0]  # principal ray points posterior
    assert w[:3, 3] == pytest.approx(iso + [0, 700.0, 0])  # source anterior at 0.7 * sdd
    assert np.linalg.det(w[:3, :3]) == pytest.approx(1.0)
    # a point on the patient's right appears on the left of the image; the head at the top
    cam = Camera(1000.0, 100, 100, 1.0, 1.0)
    right = cam.project(iso + [50, 0, 0], w)
    head = cam.project(iso + [0, 0, 50], w)
    assert right[1] < 49.5 and head[0] < 49.5


def test_zero_params_is_reference_and_round_trip():
    ref = ReferenceView.ap(np.array([1.0, 2.0, 3.0]), sdd=1020.0)
    assert ref.pose(np.zeros(6)) == pytest.approx(ref.world_from_camera)
    rng = np.random.default_rng(0)
    for _ in range(50):
        params = np.concatenate([rng.uniform(-170, 170, 3) * [1, 0.5, 1], rng.uniform(-200, 200, 3)])
        w = ref.pose(params)
        check_rigid(w)
        assert ref.params(w) == pytest.approx(params, abs=1e-8)
        assert ref.pose(ref.params(w)) == pytest.approx(w, abs=1e-9)


def test_param_meanings():
    ref = ReferenceView.ap(np.zeros(3), sdd=1000.0)
    cam = Camera(1000.0, 101, 101, 1.0, 1.0)
    iso = np.zeros(3)
    # tx shifts the CT along camera +x: the isocentre moves right in the image by tx * magnification
    col0 = cam.project(iso, ref.pose([0, 0, 0, 0, 0, 0]))[1]
    col1 = cam.project(iso, ref.pose([0, 0, 0, 7, 0, 0]))[1]
    assert col1 - col0 == pytest.approx(7 * 1000 / 700)
    # tz moves the CT away from the source: smaller magnification
    p = np.array([0.0, 0.0, 40.0])  # 40 mm superior of the isocentre
    r0 = cam.project(p, ref.pose([0] * 6))[0]
    r1 = cam.project(p, ref.pose([0, 0, 0, 0, 0, 100]))[0]
    assert abs(r1 - 50) < abs(r0 - 50)
    # rz is an in-plane rotation about the principal ray through the isocentre: the isocentre stays
    assert cam.project(iso, ref.pose([0, 0, 33, 0, 0, 0])) == pytest.approx([50, 50])
    # rotation about the isocentre keeps the source-isocentre distance
    for prm in ([30, 0, 0, 0, 0, 0], [0, -40, 0, 0, 0, 0]):
        w = ref.pose(prm)
        assert np.linalg.norm(w[:3, 3] - iso) == pytest.approx(700.0)
    # the moved CT seen by the reference camera: camera coords of a CT point = R (p - iso) + iso + t
    prm = np.array([10.0, -20.0, 30.0, 4.0, -5.0, 6.0])
    q = np.array([12.0, -7.0, 25.0])
    cam_from_world = invert_rigid(ref.pose(prm))
    ref_cam = transform_points(invert_rigid(ref.world_from_camera), q)
    iso_cam = np.array([0, 0, 700.0])
    a, b, c = np.deg2rad(prm[:3])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    expect = rx @ ry @ rz @ (ref_cam - iso_cam) + iso_cam + prm[3:]
    assert transform_points(cam_from_world, q) == pytest.approx(expect)


def test_pose_torch_is_differentiable_and_matches():
    ref = ReferenceView.ap(np.array([5.0, 0.0, -3.0]), sdd=1000.0)
    p = torch.tensor([5.0, -3.0, 12.0, 1.0, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    w = ref.pose_torch(p)
    assert w.detach().numpy() == pytest.approx(ref.pose(p.detach().numpy()))
    w[:3, 3].sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_rigid_checks():
    with pytest.raises(InputError, match="4x4"):
        check_rigid(np.eye(3))
    bad = np.eye(4)
    bad[0, 0] = 2
    with pytest.raises(InputError, match="rigid"):
        check_rigid(bad)
    refl = np.diag([-1.0, 1, 1, 1])
    with pytest.raises(InputError, match="rigid"):
        check_rigid(refl)
    nan = np.eye(4)
    nan[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_rigid(nan)


def test_camera_validation_and_files(tmp_path):
    with pytest.raises(InputError, match="missing geometry field"):
        Camera.from_dict({"sdd": 1000, "rows": 10})
    with pytest.raises(InputError, match="positive"):
        Camera.from_dict({"sdd": -1, "rows": 10, "cols": 10, "row_spacing": 1, "col_spacing": 1})
    with pytest.raises(InputError, match="integer"):
        Camera.from_dict({"sdd": 1000, "rows": 10.5, "cols": 10, "row_spacing": 1, "col_spacing": 1})
    path = tmp_path / "g.json"
    CAM.save(path)
    assert Camera.load(path) == CAM
    assert json.loads(path.read_text(encoding="utf-8"))["x0"] == 3.0
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json"):
        Camera.load(tmp_path / "broken.json")
    with pytest.raises(InputError, match="not found"):
        Camera.load(tmp_path / "none.json")


def test_pose_file_round_trip(tmp_path):
    ref = ReferenceView.ap(np.zeros(3), sdd=1000.0)
    w = ref.pose([1, 2, 3, 4, 5, 6])
    save_pose(tmp_path / "p.json", w, ref)
    d = json.loads((tmp_path / "p.json").read_text(encoding="utf-8"))
    assert d["params"]["rz"] == pytest.approx(3) and d["params"]["tz"] == pytest.approx(6)
    assert load_pose(tmp_path / "p.json") == pytest.approx(w)
    (tmp_path / "q.json").write_text(json.dumps({"world_from_camera": (2 * np.eye(4)).tolist()}))
    with pytest.raises(InputError, match="q.json"):
        load_pose(tmp_path / "q.json")


def test_downsampled_camera_keeps_detector_area():
    cam = CAM.downsampled(4)
    assert (cam.rows, cam.cols) == (50, 75)
    assert cam.rows * cam.row_spacing == pytest.approx(CAM.rows * CAM.row_spacing)
    assert cam.cols * cam.col_spacing == pytest.approx(CAM.cols * CAM.col_spacing)
