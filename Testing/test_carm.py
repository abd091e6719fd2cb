"""C-arm angles (DICOM positioner attributes) as an initial pose: exact answers, tags, pipeline and CLI."""

import json
import math

import numpy as np
import pytest
from dicom_files import write_xa
from XRayCTRegistrationLib.carm import CArmPosition, carm_axes, world_from_carm
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.pipeline import register_xray
from XRayCTRegistrationLib.registry import method_names
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, write_volume
from XRayCTRegistrationLib.xray import read_dicom_tags

R, A, S = np.eye(3)
ISO = np.array([10.0, -20.0, 30.0])


def source_and_axes(primary, secondary, sid=700.0):
    pose = world_from_carm(CArmPosition(primary, secondary, sid), ISO, 1000.0)
    return pose[:3, 3], pose[:3, 0], pose[:3, 1], pose[:3, 2]


@pytest.mark.parametrize("primary, secondary, source_side, x, y, z", [
    # at 0, 0 the detector faces the chest: source posterior, beam anterior, rows to the feet, columns to the right
    (0.0, 0.0, -A, R, -S, A),
    # LAO 90: detector on the patient's left, so the source is on the patient's right and the beam runs to the left
    (90.0, 0.0, R, A, -S, -R),
    # RAO 90: the mirror case, source on the patient's left
    (-90.0, 0.0, -R, -A, -S, R),
    # LAO 180: detector posterior, source anterior (an AP beam)
    (180.0, 0.0, A, -R, -S, -A),
])
def test_primary_angle_exact(primary, secondary, source_side, x, y, z):
    source, ax, ay, az = source_and_axes(primary, secondary)
    np.testing.assert_allclose(source, ISO + 700.0 * source_side, atol=1e-9)
    for got, want in ((ax, x), (ay, y), (az, z)):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_secondary_and_combined_angles_exact():
    c30, s30 = math.cos(math.radians(30)), 0.5
    # CRA 30: the detector tilts toward the head, the source toward the feet; columns stay along R
    source, x, y, z = source_and_axes(0.0, 30.0)
    np.testing.assert_allclose(z, [0.0, c30, s30], atol=1e-12)
    np.testing.assert_allclose(y, [0.0, s30, -c30], atol=1e-12)
    np.testing.assert_allclose(x, R, atol=1e-12)
    np.testing.assert_allclose(source, ISO - 700.0 * np.array([0.0, c30, s30]), atol=1e-9)
    assert source[2] < ISO[2]  # caudal of the isocentre
    # CAU 90: the detector is at the feet, the beam points toward them
    np.testing.assert_allclose(carm_axes(0.0, -90.0)[:, 2], -S, atol=1e-12)
    # LAO 30, CRA 20: z = (-sin a cos b, cos a cos b, sin b) in RAS; the axes stay a right-handed frame
    a, b = math.radians(30.0), math.radians(20.0)
    axes = carm_axes(30.0, 20.0)
    np.testing.assert_allclose(axes[:, 2], [-math.sin(a) * math.cos(b), math.cos(a) * math.cos(b), math.sin(b)],
                               atol=1e-12)
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-12)
    assert np.linalg.det(axes) == pytest.approx(1.0)


def test_projection_at_lao_90_sees_front_on_the_left():
    """At LAO 90 the camera looks from the patient's right: columns run anterior, rows toward the feet."""
    pose = world_from_carm(CArmPosition(90.0, 0.0, 700.0), ISO, 1000.0)
    camera = Camera(1000.0, 100, 100, 1.0, 1.0)
    rc = camera.project(np.array([ISO + 50 * A, ISO + 50 * S, ISO]), pose)
    centre = 49.5
    np.testing.assert_allclose(rc[2], [centre, centre], atol=1e-9)
    assert rc[0, 1] > centre + 50 and abs(rc[0, 0] - centre) < 1e-9  # anterior: larger column (x = A)
    assert rc[1, 0] < centre - 50 and abs(rc[1, 1] - centre) < 1e-9  # head: smaller row (top of the image)


def test_missing_sid_defaults_to_reference_fraction():
    pose = world_from_carm(CArmPosition(0.0, 0.0), ISO, 1000.0)
    np.testing.assert_allclose(pose[:3, 3], ISO - 700.0 * A, atol=1e-9)


def test_positioner_tags_read_and_refused(tmp_path):
    path = tmp_path / "xa.dcm"
    write_xa(path, np.zeros((8, 10)), primary=-32.5, secondary=17.0, sid=760.0, sdd=1180.0)
    position = CArmPosition.from_tags(read_dicom_tags(path), str(path))
    assert position == CArmPosition(-32.5, 17.0, 760.0, 1180.0)
    assert position.describe() == "RAO 32.5, CRA 17.0"
    write_xa(tmp_path / "none.dcm", np.zeros((8, 10)), primary=None)
    with pytest.raises(InputError, match=r"none.dcm: no PositionerPrimaryAngle \(0018,1510\)"):
        CArmPosition.from_tags(read_dicom_tags(tmp_path / "none.dcm"), str(tmp_path / "none.dcm"))
    with pytest.raises(InputError, match="DistanceSourceToPatient must be positive"):
        CArmPosition.from_tags({"0018|1510": "0", "0018|1511": "0", "0018|1111": "-5"}, "x")
    with pytest.raises(InputError, match="'abc' is not a number"):
        CArmPosition.from_tags({"0018|1510": "abc", "0018|1511": "0"}, "x")


def test_dicom_init_in_pipeline_and_cli(tmp_path, capsys):
    assert "dicom" in method_names("init")
    ct = chest_phantom((32, 28, 24), (6.0, 6.0, 6.0))
    write_volume(ct, tmp_path / "ct.nrrd")
    camera = Camera(1000.0, 40, 48, 5.0, 5.0)
    path = tmp_path / "xa.dcm"
    write_xa(path, np.full((40, 48), 100.0) + np.arange(48)[None, :], sdd=1000.0, spacing=(5.0, 5.0),
             primary=25.0, secondary=-10.0, sid=720.0)
    expected = world_from_carm(CArmPosition(25.0, -10.0, 720.0), ct.center, 1000.0)
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    out = register_xray(ct, np.zeros((40, 48)), camera, str(path), refine=False, init_method="dicom", volume_mu=mu)
    np.testing.assert_allclose(out.world_from_camera, expected, atol=1e-12)
    assert "LAO 25.0, CAU 10.0" in out.initialisation.message
    rc = main(["register", "--ct", str(tmp_path / "ct.nrrd"), "--xray", str(path), "--init", "dicom", "--no-refine",
               "--out", str(tmp_path / "r.json"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert result["initialisation"]["method"] == "dicom"
    np.testing.assert_allclose(result["world_from_camera"], expected, atol=1e-9)
    # a DistanceSourceToDetector other than the geometry's is refused
    with pytest.raises(InputError, match="differs from the geometry's sdd"):
        register_xray(ct, np.zeros((40, 48)), Camera(900.0, 40, 48, 5.0, 5.0), str(path), refine=False,
                      init_method="dicom", volume_mu=mu, reference=ReferenceView.ap(ct.center, 900.0))
