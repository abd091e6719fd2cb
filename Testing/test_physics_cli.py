"""``xrayctreg simulate --physics``: files, and the bone contrast falling with the tube voltage."""

import numpy as np
import pytest
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, save_pose
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.volume import write_volume
from XRayCTRegistrationLib.xray import read_xray


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("physics_cli")
    ct = chest_phantom((48, 40, 40), (4.0, 4.0, 4.0))
    write_volume(ct, d / "ct.nrrd")
    cam = Camera(1000.0, 48, 40, 5.0, 5.0)
    cam.save(d / "geom.json")
    ref = ReferenceView.ap(ct.center, cam.sdd)
    save_pose(d / "pose.json", ref.pose([0, 0, 0, 0, 0, 0]), ref)
    return d, ct, cam, ref


def simulate(d, out, *extra):
    args = ["simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", d / "pose.json",
            "--out-dir", out, "--physics", "--noise", "0", "--blur", "0", *extra]
    assert main([str(a) for a in args]) == 0
    return read_xray(out / "xray.nrrd").image


def test_simulate_physics_bone_contrast_falls_with_kvp(case, tmp_path):
    d, ct, cam, ref = case
    images = {kv: simulate(d, tmp_path / f"kv{kv}", "--kvp", kv) for kv in (70, 120)}
    assert sorted(p.name for p in (tmp_path / "kv70").iterdir()) == ["pose.json", "xray.json", "xray.nrrd", "xray.png"]
    # the spine (bone) against the body beside it: the contrast ratio falls as the beam gets harder
    spine = images[70] > np.percentile(images[70], 99)
    body = (images[70] > np.percentile(images[70], 40)) & (images[70] < np.percentile(images[70], 60))
    ratio = {kv: img[spine].mean() / img[body].mean() for kv, img in images.items()}
    assert ratio[120] < ratio[70]
    assert images[120].mean() < images[70].mean()  # a harder beam is attenuated less
    fog = simulate(d, tmp_path / "fog", "--kvp", "120", "--scatter", "0.5")
    assert np.ptp(fog) < 0.9 * np.ptp(images[120])


def test_simulate_physics_noise_and_bad_kvp(case, tmp_path, capsys):
    d, *_ = case
    noisy = simulate(d, tmp_path / "n", "--noise", "1000", "--electronic-noise", "2")
    assert np.isfinite(noisy).all() and noisy.std() > 0
    args = ["simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--out-dir", tmp_path / "bad",
            "--physics", "--kvp", "400"]
    assert main([str(a) for a in args]) == 2
    assert "--kvp: must be at least 20 and at most 150" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_register_with_physics_renderer(case, tmp_path):
    import json

    from XRayCTRegistrationLib.geometry import load_pose
    from XRayCTRegistrationLib.metrics import mtre, target_points

    d, ct, cam, ref = case
    gt = ref.pose([2.0, -3.0, 4.0, 5.0, -6.0, 8.0])
    save_pose(tmp_path / "gt.json", gt, ref)
    save_pose(tmp_path / "init.json", ref.pose([5.0, -5.0, 6.0, -1.0, -1.0, 12.0]), ref)
    args = ["simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", tmp_path / "gt.json",
            "--out-dir", tmp_path / "sim", "--physics", "--kvp", "90", "--scatter", "0.2"]
    assert main([str(a) for a in args]) == 0
    args = ["register", "--ct", d / "ct.nrrd", "--xray", tmp_path / "sim" / "xray.nrrd", "--init",
            tmp_path / "init.json", "--out", tmp_path / "result.json", "--renderer", "physics", "--kvp", "90",
            "--scatter", "0.2", "--quiet"]
    main([str(a) for a in args])
    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    pts = target_points(ct, 60)
    before = mtre(pts, gt, load_pose(tmp_path / "init.json"))
    assert mtre(pts, gt, np.asarray(result["world_from_camera"])) < 0.5 * before


def test_register_fitting_the_scatter(case, tmp_path, capsys):
    """``--fit-scatter`` finds the X-ray's fog (simulated at 0.3) and registers with it; refused without physics."""
    import json
    import re

    from XRayCTRegistrationLib.geometry import load_pose
    from XRayCTRegistrationLib.metrics import mtre, target_points

    d, ct, cam, ref = case
    gt = ref.pose([2.0, -3.0, 4.0, 5.0, -6.0, 8.0])
    save_pose(tmp_path / "gt.json", gt, ref)
    save_pose(tmp_path / "init.json", ref.pose([4.0, -4.0, 5.0, 1.0, -3.0, 11.0]), ref)
    args = ["simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", tmp_path / "gt.json",
            "--out-dir", tmp_path / "sim", "--physics", "--kvp", "90", "--scatter", "0.3", "--noise", "0",
            "--blur", "0"]
    assert main([str(a) for a in args]) == 0
    base = ["register", "--ct", d / "ct.nrrd", "--xray", tmp_path / "sim" / "xray.nrrd", "--init",
            tmp_path / "init.json", "--out", tmp_path / "result.json", "--quiet"]
    capsys.readouterr()
    main([str(a) for a in base + ["--renderer", "physics", "--kvp", "90", "--fit-scatter"]])
    fitted = float(re.search(r"scatter fraction fitted to the X-ray: ([\d.]+)", capsys.readouterr().out).group(1))
    assert fitted == pytest.approx(0.3, abs=0.05)
    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    pts = target_points(ct, 60)
    before = mtre(pts, gt, load_pose(tmp_path / "init.json"))
    assert mtre(pts, gt, np.asarray(result["world_from_camera"])) < 0.5 * before
    (tmp_path / "result.json").unlink()
    assert main([str(a) for a in base + ["--fit-scatter"]]) == 2
    assert "--fit-scatter" in capsys.readouterr().err and not (tmp_path / "result.json").exists()
