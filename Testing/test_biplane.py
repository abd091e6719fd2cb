"""Two views (biplane) through the one pipeline and the CLI: the second view pins down the depth that one view
sees least; the relative geometry from a file or from the two X-rays' C-arm angles; refusals."""

import json

import numpy as np
import pytest
from dicom_files import write_xa
from XRayCTRegistrationLib.carm import CArmPosition, relative_carm_view
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import (
    Camera,
    ReferenceView,
    invert_rigid,
    load_pose,
    load_relative_view,
    save_pose,
    transform_points,
)
from XRayCTRegistrationLib.metrics import mtre, target_points
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.pipeline import View, register_xray
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, write_volume
from XRayCTRegistrationLib.xray import write_image

SDD = 1000.0
CAM = Camera(SDD, 48, 48, 6.0, 6.0)
GT = np.array([2.0, -3.0, 4.0, 5.0, -6.0, 8.0])
START = GT + np.array([1.0, -1.0, 1.0, 3.0, -3.0, 40.0])  # 40 mm off in depth (tz), a little elsewhere
FAST = dict(levels=(2, 1), max_iterations=(60, 30))
LAO90 = np.array([[0.0, 0.0, -1.0, 700.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 700.0], [0.0, 0.0, 0.0, 1.0]])
"""camera0_from_camera1 of LAO 0 then LAO 90, both 700 mm from the isocentre (worked out by hand: camera 1's
source lies 700 mm along camera 0's +x (the patient's right) and +z; its beam runs along camera 0's -x)."""


def noisy(image: np.ndarray, rng: np.random.Generator, level: float = 0.6) -> np.ndarray:
    """The image with Gaussian noise of ``level`` times its standard deviation (depth becomes hard to see)."""
    return (image + rng.normal(0.0, level * image.std(), image.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    hu = chest_phantom((48, 40, 40), (4.0, 4.0, 4.0))
    mu = Volume(hu_to_mu(hu.data), hu.ijk_to_ras)
    ref = ReferenceView.ap(mu.center, SDD)
    rel = relative_carm_view(CArmPosition(0.0, 0.0, 700.0, None), CArmPosition(90.0, 0.0, 700.0, None), SDD, SDD)
    pose = ref.pose(GT)
    rng = np.random.default_rng(0)
    xray0 = noisy(render(mu, CAM, pose, n_samples=160), rng)
    xray1 = noisy(render(mu, CAM, pose @ rel, n_samples=160), rng)
    return hu, mu, ref, rel, pose, xray0, xray1


def depth_error(mu: Volume, pose_gt: np.ndarray, pose: np.ndarray) -> float:
    """|error| (mm) of the CT centre's distance from the source along view 0's principal ray."""
    return abs(transform_points(invert_rigid(pose), mu.center)[2] - transform_points(invert_rigid(pose_gt),
                                                                                     mu.center)[2])


def test_relative_view_of_carm_angles_exact():
    rel = relative_carm_view(CArmPosition(0.0, 0.0, 700.0, None), CArmPosition(90.0, 0.0, 700.0, None), SDD, SDD)
    np.testing.assert_allclose(rel, LAO90, atol=1e-12)
    # the isocentre (the point both principal rays pass through) is where both cameras put it
    iso0 = np.array([0.0, 0.0, 700.0])
    np.testing.assert_allclose(transform_points(rel, [0.0, 0.0, 700.0]), iso0, atol=1e-9)
    # no DistanceSourceToPatient: 0.7 * sdd, as the 'dicom' initialisation
    np.testing.assert_allclose(relative_carm_view(CArmPosition(0.0, 0.0, None, None),
                                                  CArmPosition(90.0, 0.0, None, None), SDD, SDD), LAO90, atol=1e-12)


def test_two_views_recover_depth_better_than_one(scene):
    hu, mu, ref, rel, pose, xray0, xray1 = scene
    start = ref.pose(START)
    one = register_xray(hu, xray0, CAM, start, method="opt-ncc", volume_mu=mu, **FAST)
    two = register_xray(hu, xray0, CAM, start, method="opt-ncc", volume_mu=mu, views=[View(xray1, CAM, rel)], **FAST)
    assert two.success, two.result.message
    assert two.views == 2 and two.to_dict()["views"] == 2 and one.to_dict()["views"] == 1
    e1, e2 = depth_error(mu, pose, one.world_from_camera), depth_error(mu, pose, two.world_from_camera)
    assert e2 < 0.5 and e2 < 0.6 * e1, (e1, e2)
    pts = target_points(hu, 60)
    assert mtre(pts, pose, two.world_from_camera) < mtre(pts, pose, one.world_from_camera)
    # the reported depth uncertainty says the same: the second view pins the depth down
    assert two.result.uncertainty.depth_mm < 0.3 * one.result.uncertainty.depth_mm
    assert (one.result.uncertainty.views, two.result.uncertainty.views) == (1, 2)
    assert "add a second view" in one.result.uncertainty.summary()
    assert "add a second view" not in two.result.uncertainty.summary()  # (it names its two views when weak)


def test_pipeline_refuses_bad_views(scene):
    hu, mu, ref, rel, pose, xray0, xray1 = scene
    with pytest.raises(InputError, match="method: dppc registers one X-ray; for 2 views use one of opt-ncc"):
        register_xray(hu, xray0, CAM, pose, method="dppc", volume_mu=mu, views=[View(xray1, CAM, rel)])
    with pytest.raises(InputError, match="second: no geometry"):
        register_xray(hu, xray0, CAM, pose, volume_mu=mu, views=[View(xray1, None, rel, name="second")])
    with pytest.raises(InputError, match="second: camera0_from_camera: last row must be"):
        register_xray(hu, xray0, CAM, pose, volume_mu=mu, views=[View(xray1, CAM, 2 * np.eye(4), name="second")])
    with pytest.raises(InputError, match="mask\\[1\\]: mask selects no pixels"):
        register_xray(hu, xray0, CAM, pose, volume_mu=mu, views=[View(xray1, CAM, rel, np.zeros((48, 48)))])


def test_relative_view_files(tmp_path):
    (tmp_path / "rel.json").write_text(json.dumps({"camera0_from_camera1": LAO90.tolist()}))
    np.testing.assert_array_equal(load_relative_view(tmp_path / "rel.json"), LAO90)
    (tmp_path / "rel.txt").write_text("# camera0_from_camera1\n" + "\n".join(" ".join(map(str, r)) for r in LAO90))
    np.testing.assert_array_equal(load_relative_view(tmp_path / "rel.txt"), LAO90)
    (tmp_path / "short.txt").write_text("1 0 0 0\n0 1 0 0\n")
    with pytest.raises(InputError, match="short.txt: expected the 16 numbers of a 4x4 matrix .*got 8"):
        load_relative_view(tmp_path / "short.txt")
    (tmp_path / "other.json").write_text(json.dumps({"world_from_camera": LAO90.tolist()}))
    with pytest.raises(InputError, match="no 'camera0_from_camera1'"):
        load_relative_view(tmp_path / "other.json")


def _files(folder, scene, dicom: bool):
    hu, mu, ref, rel, pose, xray0, xray1 = scene
    write_volume(hu, folder / "ct.nrrd")
    save_pose(folder / "start.json", ref.pose(START))
    if not dicom:
        write_image(xray0, folder / "a.nrrd", CAM)
        write_image(xray1, folder / "b.nrrd", CAM)
        (folder / "rel.txt").write_text("\n".join(" ".join(map(str, r)) for r in rel))
        return folder / "a.nrrd", folder / "b.nrrd", folder / "rel.txt"
    scale = 1000.0 / max(xray0.max(), xray1.max())  # 12-bit attenuation-bright pixels, DICOM geometry and angles
    write_xa(folder / "a.dcm", 100 + scale * xray0, spacing=(6.0, 6.0), primary=0.0, sid=700.0)
    write_xa(folder / "b.dcm", 100 + scale * xray1, spacing=(6.0, 6.0), primary=90.0, sid=700.0)
    return folder / "a.dcm", folder / "b.dcm", "dicom"


@pytest.mark.parametrize("dicom", [False, True], ids=["relative-file", "relative-dicom"])
def test_cli_registers_two_views(scene, tmp_path, capsys, dicom):
    hu, mu, ref, rel, pose, xray0, xray1 = scene
    # white noise at 30 % of the image's sd, not the scene's 60 %: the reported uncertainty is calibrated on photon
    # noise and over-reports under strong white noise (registration.UNCERTAINTY_SCALE), which would fail the bound
    rng = np.random.default_rng(1)
    light = [noisy(render(mu, CAM, p, n_samples=160), rng, 0.3) for p in (pose, pose @ rel)]
    a, b, relative = _files(tmp_path, (hu, mu, ref, rel, pose, *light), dicom)
    out = tmp_path / "r.json"
    code = main(["register", "--ct", str(tmp_path / "ct.nrrd"), "--xray", str(a), "--xray2", str(b), "--relative-view",
                 str(relative), "--init", str(tmp_path / "start.json"), "--method", "opt-ncc", "--out", str(out),
                 "--crop", "1", "--quiet"])
    assert code == 0, capsys.readouterr()
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["views"] == 2 and result["success"]
    assert depth_error(mu, pose, load_pose(out)) < 1.0


@pytest.mark.parametrize("extra, message", [
    (["--xray2", "{b}"], "--xray2 and --relative-view go together"),
    (["--relative-view", "{rel}"], "--relative-view needs --xray2"),
    (["--xray2", "{b}", "--relative-view", "{rel}", "--method", "dppc"], "--xray2: --method dppc registers one"),
    (["--xray2", "{b}", "--relative-view", "{ct}"], "ct.nrrd: cannot be read as text"),
    (["--xray2", "{nogeo}", "--relative-view", "{rel}"], "nogeo.nrrd: no geometry: give --geometry2"),
])
def test_cli_refuses_bad_second_views(scene, tmp_path, capsys, extra, message):
    a, b, rel = _files(tmp_path, scene, False)
    write_image(scene[5], tmp_path / "nogeo.nrrd", None, sidecar=False)
    names = {"b": b, "rel": rel, "ct": tmp_path / "ct.nrrd", "nogeo": tmp_path / "nogeo.nrrd"}
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["register", "--ct", str(tmp_path / "ct.nrrd"), "--xray", str(a), "--out", str(tmp_path / "r.json"),
                 "--quiet"] + [e.format(**names) for e in extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
