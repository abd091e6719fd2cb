"""The simulated sample X-ray: made from the sha256-checked sample CT at its stated pose, deterministic, written with
its geometry sidecar and ground-truth pose, checked against its manifest (a damaged file is made again), offered by
``xrayctreg sample-data --simulated-xray``, and registrable back to its pose from a perturbed start.

The sample CT is a small phantom placed in a temporary cache as sample ``chest`` with its own sha256 as the recorded
one (no network), so the real recipe (pose, detector, noise) runs on it."""

import dataclasses
import json

import numpy as np
import pytest
from slicer_inputs import ct_phantom, write_volume
from XRayCTRegistrationLib import data, sample_xray
from XRayCTRegistrationLib.cli import main
from XRayCTRegistrationLib.geometry import Camera, ReferenceView, load_pose, save_pose
from XRayCTRegistrationLib.metrics import evaluate_pose
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, read_ct
from XRayCTRegistrationLib.xray import read_xray

RECIPE = sample_xray.SIMULATED_XRAYS["chest"]


def stand_in_chest(cache, monkeypatch) -> Volume:
    """Write a phantom CT into ``cache`` as sample 'chest' (its sha256 recorded) and return it (HU, as on disk)."""
    volume = ct_phantom()
    chest = data.SAMPLES["chest"]
    path = chest.paths(cache)["ct"]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(path, volume.data.astype(np.int16), volume.ijk_to_ras)
    monkeypatch.setitem(data.SAMPLES, "chest", dataclasses.replace(
        chest, members={"ct": (chest.members["ct"][0], data.sha256_of(path))}))
    monkeypatch.setattr(data, "PIP_COMMAND", ["false"])  # never fetched: the cached CT is used
    return read_ct(path)


@pytest.fixture
def chest(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    return cache, stand_in_chest(cache, monkeypatch)


def test_the_recipe_states_a_known_pose_and_is_named_simulated():
    assert RECIPE.sample == "chest" and RECIPE.stem == "chest_simulated_xray"
    assert RECIPE.camera == Camera(sdd=1020.0, rows=256, cols=256, row_spacing=2.0, col_spacing=2.0)
    assert RECIPE.params != (0.0,) * 6 and RECIPE.photons > 0 and RECIPE.blur_px > 0
    assert all("simulated" in str(p) for p in RECIPE.paths("/c").values())
    [line] = sample_xray.describe_simulated_xrays()
    assert "simulated X-ray" in line and "not an acquired radiograph" in line and "rx 4, ry -6, rz 3" in line


def test_made_once_at_the_stated_pose_with_geometry_and_ground_truth(chest, capsys):
    cache, ct = chest
    paths = sample_xray.simulated_xray_paths(cache)
    assert "making the simulated chest X-ray" in capsys.readouterr().err
    xray = read_xray(paths["xray"])  # finds its geometry sidecar
    assert xray.camera == RECIPE.camera and xray.image.shape == (256, 256)
    reference = ReferenceView.ap(ct.center, RECIPE.camera.sdd)
    np.testing.assert_allclose(load_pose(paths["pose"]), reference.pose(RECIPE.params), atol=1e-12)
    saved = json.loads(paths["pose"].read_text(encoding="utf-8"))
    np.testing.assert_allclose([saved["params"][k] for k in ("rx", "ry", "rz", "tx", "ty", "tz")], RECIPE.params,
                               atol=1e-9)
    # it is the CT seen at that pose: it matches the DRR there, and less the DRR 10 mm across the beam
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    drr = render(mu, RECIPE.camera, reference.pose(RECIPE.params))
    shifted = render(mu, RECIPE.camera, reference.pose(np.add(RECIPE.params, [0, 0, 0, 10.0, 0, 0])))
    ncc, ncc_shifted = (np.corrcoef(xray.image.ravel(), d.ravel())[0, 1] for d in (drr, shifted))
    assert ncc > 0.99 and ncc_shifted < ncc - 0.02, (ncc, ncc_shifted)
    assert not np.allclose(xray.image, drr, atol=1e-3)  # noise and blur were applied
    # deterministic: made again elsewhere from the same CT, the image is the same
    (cache / "again").mkdir()
    again, _pose = sample_xray.make_simulated_xray(RECIPE, data.sample_ct_path(cache), cache / "again")
    np.testing.assert_array_equal(again, xray.image)
    # the second call reuses the checked files
    stamp = paths["xray"].stat().st_mtime_ns
    assert sample_xray.simulated_xray_paths(cache) == paths
    assert paths["xray"].stat().st_mtime_ns == stamp and "making" not in capsys.readouterr().err


def test_damaged_or_outdated_files_are_made_again(chest, capsys, monkeypatch):
    cache, _ct = chest
    paths = sample_xray.simulated_xray_paths(cache)
    good = {role: paths[role].read_bytes() for role in sample_xray.FILE_ROLES}
    paths["xray"].write_bytes(good["xray"][:-100])  # truncated
    paths["geometry"].write_text(paths["geometry"].read_text(encoding="utf-8").replace("1020", "1000"))  # altered
    capsys.readouterr()
    sample_xray.simulated_xray_paths(cache)
    assert "incomplete or altered" in capsys.readouterr().err
    assert {role: paths[role].read_bytes() for role in sample_xray.FILE_ROLES} == good
    # another recipe (here another seed) makes another image
    monkeypatch.setitem(sample_xray.SIMULATED_XRAYS, "chest", dataclasses.replace(RECIPE, seed=RECIPE.seed + 1))
    sample_xray.simulated_xray_paths(cache)
    assert paths["xray"].read_bytes() != good["xray"]
    assert json.loads(paths["manifest"].read_text(encoding="utf-8"))["recipe"]["seed"] == RECIPE.seed + 1
    # a missing manifest too
    paths["manifest"].unlink()
    sample_xray.simulated_xray_paths(cache)
    assert paths["manifest"].is_file()


def test_cli_prints_it_and_registering_it_recovers_the_pose(chest, tmp_path, capsys):
    cache, ct = chest
    assert main(["sample-data", "--simulated-xray", "--cache-dir", str(cache)]) == 0
    out, err = capsys.readouterr()
    xray_path = out.strip()
    paths = sample_xray.simulated_xray_paths(cache)
    assert xray_path == str(paths["xray"]) and "simulated X-ray (not an acquired radiograph)" in err
    assert f"ground-truth pose: {paths['pose']}" in err and f"geometry: {paths['geometry']}" in err
    gt = load_pose(paths["pose"])
    reference = ReferenceView.ap(ct.center, RECIPE.camera.sdd)
    start = reference.pose(np.add(RECIPE.params, [2.0, -2.0, 1.5, 5.0, -4.0, 12.0]))
    save_pose(tmp_path / "start.json", start, reference)
    ct_path = data.sample_ct_path(cache)
    assert main(["register", "--ct", str(ct_path), "--xray", xray_path, "--init", str(tmp_path / "start.json"),
                 "--out", str(tmp_path / "result.json"), "--method", "opt-ncc", "--quiet"]) == 0
    result = json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))
    points = ct.center + np.random.default_rng(0).uniform(-60, 60, (20, 3))
    before = evaluate_pose(points, gt, start, RECIPE.camera, reference)
    after = evaluate_pose(points, gt, np.asarray(result["world_from_camera"]), RECIPE.camera, reference)
    # one view of a smooth phantom: the depth is the least sure (on the real chest CT opt-lncc reaches 0.5 mm)
    assert result["success"] and before["mtre_mm"] > 10.0 and after["mtre_mm"] < 2.0, (before, after)


def test_cli_lists_it_and_refuses_a_sample_without_one(capsys):
    assert main(["sample-data", "--list"]) == 0
    assert "chest simulated X-ray (--simulated-xray)" in capsys.readouterr().out
    assert main(["sample-data", "--name", "spine", "--simulated-xray"]) == 2
    assert capsys.readouterr().err.strip() == ("error: sample data 'spine' has no simulated X-ray "
                                               "(samples with one: chest)")
