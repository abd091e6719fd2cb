import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.geometry import PARAM_NAMES, Camera, ReferenceView, load_pose, save_pose
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.volume import write_volume
from XRayCTRegistrationLib.xray import read_xray


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ct = chest_phantom((48, 40, 40), (4.0, 4.0, 4.0))
    write_volume(ct, d / "ct.nrrd")
    cam = Camera(1000.0, 64, 56, 4.0, 4.0)
    cam.save(d / "geom.json")
    ref = ReferenceView.ap(ct.center, cam.sdd)
    save_pose(d / "pose.json", ref.pose([5, -3, 10, 4, -6, 12]), ref)
    return d, ct, cam, ref


def run(*args):
    return main([str(a) for a in args])


def test_help_for_every_subcommand():
    for cmd in ["render", "simulate", "sample-data", "register", "evaluate", "demo"]:
        out = subprocess.run([sys.executable, "-m", "XRayCTRegistrationLib.cli", cmd, "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout, cmd


def test_render_writes_drr_and_png(case, tmp_path):
    d, ct, cam, ref = case
    assert run("render", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", d / "pose.json",
               "--out", tmp_path / "drr.nrrd", "--png", tmp_path / "drr.png") == 0
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "drr.nrrd")))
    assert img.squeeze().shape == (64, 56)
    assert img.max() > 0.5  # bone and body attenuate
    assert (tmp_path / "drr.png").stat().st_size > 100


def test_simulate_writes_xray_geometry_and_pose(case, tmp_path):
    d, ct, cam, ref = case
    out = tmp_path / "sim"
    assert run("simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--random-pose", "--seed", "3",
               "--out-dir", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pose.json", "xray.json", "xray.nrrd", "xray.png"]
    xr = read_xray(out / "xray.nrrd")
    assert xr.camera == cam  # the sidecar next to the image is picked up
    assert xr.image.shape == (64, 56)
    pose = json.loads((out / "pose.json").read_text(encoding="utf-8"))
    params = np.array([pose["params"][k] for k in ("rx", "ry", "rz", "tx", "ty", "tz")])
    assert np.all(np.abs(params[:3]) <= 10) and np.all(np.abs(params[3:]) <= 20)
    assert ReferenceView.from_dict(pose["reference"]).pose(params) == pytest.approx(load_pose(out / "pose.json"))
    # the same seed gives the same X-ray
    assert run("simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--seed", "3",
               "--out-dir", tmp_path / "sim2") == 0
    assert np.array_equal(read_xray(tmp_path / "sim2" / "xray.nrrd").image, xr.image)
    # on a GPU the DRR is rendered there and the noise drawn on the CPU: the same X-ray up to float32 rounding
    # (which may move a rare Poisson draw by one count)
    import torch

    if torch.cuda.is_available():
        assert run("simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--seed", "3",
                   "--out-dir", tmp_path / "sim3", "--device", "cuda") == 0
        gpu = read_xray(tmp_path / "sim3" / "xray.nrrd").image
        assert np.abs(gpu - xr.image).mean() <= 1e-3 * np.abs(xr.image).max()


def _bad(capsys, *args):
    code = run(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input_one_line_exit_2_no_output(case, tmp_path, capsys):
    d, ct, cam, ref = case
    out = tmp_path / "drr.nrrd"
    common = ["--geometry", d / "geom.json", "--pose", d / "pose.json", "--out", out]
    # a 2D image given as the CT
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 9), np.float32)), str(tmp_path / "flat.nrrd"))
    assert "flat.nrrd" in _bad(capsys, "render", "--ct", tmp_path / "flat.nrrd", *common)
    # unreadable file
    (tmp_path / "junk.nrrd").write_text("not an image")
    assert "junk.nrrd" in _bad(capsys, "render", "--ct", tmp_path / "junk.nrrd", *common)
    # NaN CT
    nan = ct.data.copy()
    nan[3, 3, 3] = np.nan
    write_volume(type(ct)(nan, ct.ijk_to_ras), tmp_path / "nan.nrrd")
    assert "nan.nrrd" in _bad(capsys, "render", "--ct", tmp_path / "nan.nrrd", *common)
    # missing geometry field
    (tmp_path / "g.json").write_text(json.dumps({"sdd": 1000, "rows": 4}))
    assert "g.json" in _bad(capsys, "render", "--ct", d / "ct.nrrd", "--geometry", tmp_path / "g.json",
                            "--pose", d / "pose.json", "--out", out)
    # a pose that is not rigid
    (tmp_path / "p.json").write_text(json.dumps({"world_from_camera": (2 * np.eye(4)).tolist()}))
    assert "p.json" in _bad(capsys, "render", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json",
                            "--pose", tmp_path / "p.json", "--out", out)
    # output folder missing
    assert "does not exist" in _bad(capsys, "render", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json",
                                    "--pose", d / "pose.json", "--out", tmp_path / "no" / "x.nrrd")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_simulate_failure_leaves_no_folder(case, tmp_path, capsys):
    d, ct, cam, ref = case
    (tmp_path / "p.json").write_text("{}")
    assert "p.json" in _bad(capsys, "simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json",
                            "--pose", tmp_path / "p.json", "--out-dir", tmp_path / "sim")
    assert not (tmp_path / "sim").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]
    assert "--device" in _bad(capsys, "simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json",
                              "--out-dir", tmp_path / "sim", "--device", "nosuch")
    assert not (tmp_path / "sim").exists()


def test_register_and_evaluate_round_trip(case, tmp_path, capsys):
    d, ct, cam, ref = case
    sim = tmp_path / "sim"
    assert run("simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", d / "pose.json",
               "--out-dir", sim, "--noise", "0") == 0
    gt_params = ref.params(load_pose(d / "pose.json"))
    save_pose(tmp_path / "init.json", ref.pose(gt_params + [3, -2, 2, 4, -3, 5]), ref)
    code = run("register", "--ct", d / "ct.nrrd", "--xray", sim / "xray.nrrd", "--init", tmp_path / "init.json",
               "--out", tmp_path / "r.json", "--fusion", tmp_path / "f.png", "--quiet",
               "--method", "opt-ncc")  # a 64-pixel detector: too small for local patches (opt-lncc)
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    for key in ("world_from_camera", "similarity", "iterations", "wall_time_s", "method", "success"):
        assert key in result
    assert result["method"] == "opt-ncc" and result["success"] is True
    assert result["uncertainty"]["depth_mm"] > 0 and set(result["uncertainty"]["std"]) == set(PARAM_NAMES)
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert "uncertainty: depth +-" in capsys.readouterr().out
    assert run("evaluate", "--gt", d / "pose.json", "--est", tmp_path / "r.json", "--ct", d / "ct.nrrd",
               "--geometry", d / "geom.json", "--out", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["mtre_mm"] < 2.0 and metrics["success_mtre_lt_2mm"] is True
    assert "mpd_mm" in metrics and "tz_error" in metrics
    assert "mtre_mm" in capsys.readouterr().out


def test_register_intensity_flags_change_the_result_and_are_refused_elsewhere(case, tmp_path, capsys):
    d, ct, cam, ref = case
    sim = tmp_path / "sim"
    assert run("simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", d / "pose.json",
               "--out-dir", sim, "--noise", "0") == 0
    save_pose(tmp_path / "init.json", ref.pose(ref.params(load_pose(d / "pose.json")) + [3, -2, 2, 4, -3, 5]), ref)
    common = ("--ct", d / "ct.nrrd", "--xray", sim / "xray.nrrd", "--init", tmp_path / "init.json", "--quiet",
              "--method", "opt-ncc")
    results = {}
    for name, extra in (("plain", ()), ("finish", ("--finish-fit",))):
        run("register", *common, *extra, "--out", tmp_path / f"{name}.json")
        results[name] = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
    assert results["finish"]["iterations"] > results["plain"]["iterations"]
    assert results["finish"]["success"] or "the pose is not determined" in results["finish"]["message"]
    for flag in ("--finish-fit", "--keep-background", "--single-start"):
        for bad in (("--method", "dppc"), ("--no-refine", "--init", "dicom")):
            assert f"{flag} changes an intensity registration" in _bad(
                capsys, "register", "--ct", d / "ct.nrrd", "--xray", sim / "xray.nrrd", flag,
                "--out", tmp_path / "bad.json", "--quiet", *bad)
    assert not (tmp_path / "bad.json").exists()
    poses = []
    # local NCC leaves the air around the phantom out unless kept; the coarsest level starts from five poses unless one
    for extra in ((), ("--keep-background",), ("--single-start",)):
        run("register", *common[:-1], "opt-lncc", *extra, "--out", tmp_path / "lncc.json")
        poses.append(json.loads((tmp_path / "lncc.json").read_text(encoding="utf-8"))["world_from_camera"])
    assert poses[0] != poses[1] and poses[0] != poses[2]


def test_register_failure_and_missing_geometry(case, tmp_path, capsys):
    d, ct, cam, ref = case
    sim = tmp_path / "sim"
    assert run("simulate", "--ct", d / "ct.nrrd", "--geometry", d / "geom.json", "--pose", d / "pose.json",
               "--out-dir", sim) == 0
    # a start where the CT projects outside the detector: a failed result, exit 1
    save_pose(tmp_path / "far.json", ref.pose([0, 0, 0, 400, 0, 0]), ref)
    code = run("register", "--ct", d / "ct.nrrd", "--xray", sim / "xray.nrrd", "--init", tmp_path / "far.json",
               "--out", tmp_path / "r.json", "--quiet")
    assert code == 1
    result = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert result["success"] is False and result["message"]
    # no geometry anywhere: exit 2, no result file
    (sim / "xray.json").unlink()
    assert "geometry" in _bad(capsys, "register", "--ct", d / "ct.nrrd", "--xray", sim / "xray.nrrd",
                              "--out", tmp_path / "r2.json", "--quiet")
    assert not (tmp_path / "r2.json").exists()
