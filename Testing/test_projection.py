"""3x4 projection matrices: exact round trips, agreement with Camera.project, refusals, CLI export and import."""

import json

import numpy as np
import pytest
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, save_pose
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projection import (
    camera_and_pose_from_dict,
    intrinsic_matrix,
    load_projection,
    projection_dict,
    projection_matrix,
)
from XRayCTRegistrationLib.volume import write_volume

CAMERA = Camera(1020.0, 48, 40, 1.5, 2.0, x0=12.5, y0=-7.25)
POSE = ReferenceView.ap(np.array([10.0, -20.0, 30.0]), 1020.0).pose([12.0, -25.0, 40.0, 7.0, -9.0, 30.0])


def test_intrinsics_exact():
    k = intrinsic_matrix(CAMERA)
    # fx = 1020 / 2.0, cx = 40/2 - 0.5 - 12.5/2.0; fy = 1020 / 1.5, cy = 48/2 - 0.5 + 7.25/1.5
    np.testing.assert_allclose(k, [[510.0, 0, 13.25], [0, 680.0, 23.5 + 7.25 / 1.5], [0, 0, 1]], rtol=0, atol=1e-12)


def test_projection_agrees_with_camera_project():
    points = np.array([[10.0, -20.0, 30.0], [60.0, 5.0, -40.0], [-35.0, -60.0, 90.0]])
    uvw = projection_matrix(CAMERA, POSE) @ np.c_[points, np.ones(3)].T
    col_row = (uvw[:2] / uvw[2]).T
    np.testing.assert_allclose(col_row[:, ::-1], CAMERA.project(points, POSE), atol=1e-9)


@pytest.mark.parametrize("form", ["P", "P scaled", "K R t", "P with sdd only"])
def test_round_trip_exact(form):
    d = projection_dict(CAMERA, POSE)
    if form == "P scaled":
        d = {k: v for k, v in d.items() if k not in ("K", "R", "t")}
        d["P"] = (-3.7 * np.asarray(d["P"])).tolist()  # P is defined up to a scale, a negative one too
    elif form == "P":
        d = {k: v for k, v in d.items() if k not in ("K", "R", "t")}
    elif form == "P with sdd only":
        d = {k: v for k, v in d.items() if k in ("P", "rows", "cols", "sdd")}
    else:
        del d["P"]
    camera, pose = camera_and_pose_from_dict(d)
    for name in ("sdd", "row_spacing", "col_spacing", "x0", "y0"):
        assert getattr(camera, name) == pytest.approx(getattr(CAMERA, name), rel=1e-12, abs=1e-9), name
    assert (camera.rows, camera.cols) == (CAMERA.rows, CAMERA.cols)
    np.testing.assert_allclose(pose, POSE, atol=1e-9)


def test_refusals():
    d = projection_dict(CAMERA, POSE)
    with pytest.raises(InputError, match="give 'P'"):
        camera_and_pose_from_dict({"rows": 4, "cols": 4, "sdd": 100.0}, "p.json")
    with pytest.raises(InputError, match="p.json: needs rows, cols"):
        camera_and_pose_from_dict({"P": d["P"]}, "p.json")
    skewed = np.asarray(d["K"])
    skewed[0, 1] = 5.0
    with pytest.raises(InputError, match="skew"):
        camera_and_pose_from_dict({**d, "K": skewed.tolist(), "P": None}, "p.json")
    with pytest.raises(InputError, match="disagrees with K"):
        camera_and_pose_from_dict({**d, "sdd": 900.0}, "p.json")
    with pytest.raises(InputError, match="'P' must be 3x4"):
        camera_and_pose_from_dict({"P": [[1, 2, 3]], "rows": 4, "cols": 4, "sdd": 1.0}, "p.json")


def test_cli_export_then_register_from_projection(tmp_path, capsys):
    ct = chest_phantom((32, 28, 24), (6.0, 6.0, 6.0))
    write_volume(ct, tmp_path / "ct.nrrd")
    camera = Camera(1000.0, 40, 48, 5.0, 5.0, x0=6.0, y0=-4.0)
    camera.save(tmp_path / "geom.json")
    pose = ReferenceView.ap(ct.center, 1000.0).pose([3.0, -2.0, 5.0, 4.0, -3.0, 10.0])
    save_pose(tmp_path / "pose.json", pose)
    assert main(["render", "--ct", str(tmp_path / "ct.nrrd"), "--geometry", str(tmp_path / "geom.json"), "--pose",
                 str(tmp_path / "pose.json"), "--out", str(tmp_path / "drr.nrrd"), "--export-projection",
                 str(tmp_path / "P.json"), "--samples", "32"]) == 0
    read_camera, read_pose = load_projection(tmp_path / "P.json")
    assert read_camera.to_dict() == pytest.approx(camera.to_dict())
    np.testing.assert_allclose(read_pose, pose, atol=1e-9)
    assert Camera.load(tmp_path / "drr.json") == camera  # the DRR's sidecar, under its own name
    assert not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "drr.json").unlink()  # the geometry must come from the projection
    rc = main(["register", "--ct", str(tmp_path / "ct.nrrd"), "--xray", str(tmp_path / "drr.nrrd"), "--projection",
               str(tmp_path / "P.json"), "--no-refine", "--out", str(tmp_path / "r.json"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    np.testing.assert_allclose(result["world_from_camera"], pose, atol=1e-9)
    assert result["initialisation"]["similarity"] > 0.99  # the DRR seen again at its own pose
    rc = main(["register", "--ct", str(tmp_path / "ct.nrrd"), "--xray", str(tmp_path / "drr.nrrd"), "--projection",
               str(tmp_path / "P.json"), "--geometry", str(tmp_path / "geom.json"), "--out", str(tmp_path / "x.json")])
    assert rc == 2 and "--projection gives the geometry" in capsys.readouterr().err
