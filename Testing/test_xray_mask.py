"""X-ray masks (threshold, collimator crop, drawn mask): exact weights, refusals, and the register options."""

import numpy as np
import pytest
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, save_pose
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.volume import write_volume
from XRayCTRegistrationLib.xray import write_image, xray_mask


def test_mask_weights_exact():
    image = np.arange(30, dtype=np.float32).reshape(5, 6)
    np.testing.assert_array_equal(xray_mask(image, (4, 20)), ((image >= 4) & (image <= 20)).astype(np.float32))
    cropped = xray_mask(image, border_px=1)
    assert cropped.sum() == 3 * 4 and cropped[1:-1, 1:-1].all() and cropped[0].sum() == 0
    drawn = np.ones((5, 6))
    drawn[2, 3] = 0
    both = xray_mask(image, (0, 25), 1, drawn)
    expected = np.zeros((5, 6), np.float32)
    expected[1:-1, 1:-1] = 1
    expected[2, 3] = 0
    expected[image > 25] = 0
    np.testing.assert_array_equal(both, expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"value_range": (5, 1)}, "low <= high"),
    ({"border_px": 3}, "does not fit"),
    ({"mask": np.ones((2, 2))}, "does not match"),
    ({"value_range": (100, 200)}, "no pixel is left"),
])
def test_mask_refusals(kwargs, message):
    with pytest.raises(InputError, match=message):
        xray_mask(np.zeros((5, 6)), **kwargs)


def test_register_mask_options(tmp_path, capsys):
    ct = chest_phantom((32, 28, 24), (6.0, 6.0, 6.0))
    write_volume(ct, tmp_path / "ct.nrrd")
    camera = Camera(1000.0, 32, 32, 6.0, 6.0)
    reference = ReferenceView.ap(ct.center, camera.sdd)
    save_pose(tmp_path / "init.json", reference.pose(np.zeros(6)))
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    write_image(image, tmp_path / "xray.nrrd", camera)
    common = ["register", "--ct", str(tmp_path / "ct.nrrd"), "--xray", str(tmp_path / "xray.nrrd"), "--init",
              str(tmp_path / "init.json"), "--out", str(tmp_path / "r.json"), "--quiet", "--time-budget", "0.5"]
    assert main(common + ["--mask-range", "2", "3"]) == 2
    assert "xray.nrrd: X-ray mask: no pixel is left to register on" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    write_image(np.zeros((8, 8), np.float32), tmp_path / "small_mask.nrrd")
    assert main(common + ["--mask", str(tmp_path / "small_mask.nrrd")]) == 2
    assert "does not match the X-ray (32, 32)" in capsys.readouterr().err
    assert main(common + ["--crop", "2", "--mask-range", "0", "1"]) in (0, 1)
    assert (tmp_path / "r.json").exists()
