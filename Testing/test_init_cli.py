import json

import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.cli import INTERPRETER_S, main
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import Projector
from XRayCTRegistrationLib.training import read_model_file
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, write_volume
from XRayCTRegistrationLib.xray import write_image


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("init_cli")
    ct = chest_phantom((40, 32, 32), (5.0, 5.0, 5.0))
    write_volume(ct, d / "ct.nrrd")
    cam = Camera(1000.0, 48, 40, 6.0, 6.0)
    cam.save(d / "geom.json")
    ref = ReferenceView.ap(ct.center, cam.sdd)
    with torch.no_grad():
        drr = Projector(Volume(hu_to_mu(ct.data), ct.ijk_to_ras), cam, n_samples=64)(
            torch.as_tensor(ref.pose([4, -3, 6, 5, -4, 10]))).numpy()
    write_image(drr, d / "xray.nrrd", cam)
    cam.save(d / "xray.json")
    return d


def test_train_end_to_end_with_progress_lines_and_resume(case, capsys):
    d = case
    model = d / "model.pt"
    rc = main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--model", "regressor",
               "--out", str(model), "--iterations", "3", "--batch-size", "8", "--progress-lines", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("PROGRESS ")]
    assert 2 <= len(lines) <= 3
    fractions = [float(ln.split()[1]) for ln in lines]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "val" in lines[-1] and "loss" in lines[-1]
    info = read_model_file(model)
    assert info["step"] == 3 and info["method"] == "regressor" and info["complete"]
    assert info["geometry"] == Camera.load(d / "geom.json").to_dict()
    assert info["ct"]["source"].endswith("ct.nrrd")
    rc = main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--out", str(model),
               "--iterations", "5", "--batch-size", "8", "--resume", "--quiet"])
    assert rc == 0 and read_model_file(model)["step"] == 5


def test_train_on_physics_x_rays_records_the_randomisation(case, tmp_path, capsys):
    from XRayCTRegistrationLib.training import TrainOptions

    d = case
    model = tmp_path / "phys.pt"
    common = ["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--out", str(model),
              "--iterations", "2", "--batch-size", "4", "--quiet"]
    assert main([*common, "--physics-kvp", "80", "120", "--physics-scatter", "0.1", "0.4"]) == 0
    render = TrainOptions.from_dict(read_model_file(model)["options"]).render
    assert render.physics_kvp == (80.0, 120.0) and render.physics_scatter == (0.1, 0.4)
    capsys.readouterr()
    bad = {("120", "80"): "--physics-kvp: LOW must not exceed HIGH", ("10", "80"): "--physics-kvp: both ends must be "
           "at least 20", ("80", "nan"): "--physics-kvp: both ends"}
    for (low, high), message in bad.items():
        model.unlink(missing_ok=True)
        assert main([*common, "--physics-kvp", low, high]) == 2
        assert message in capsys.readouterr().err and not model.exists()
    assert main([*common, "--physics-kvp", "80", "120", "--physics-scatter", "-1", "0.5"]) == 2
    assert "--physics-scatter: both ends must be at least 0" in capsys.readouterr().err


def test_register_with_init_model_no_refine(case, tmp_path, capsys):
    d = case
    model = tmp_path / "rtpi.pt"
    assert main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--model", "rtpi",
                 "--out", str(model), "--iterations", "2", "--batch-size", "4", "--quiet"]) == 0
    out = tmp_path / "result.json"
    rc = main(["register", "--ct", str(d / "ct.nrrd"), "--xray", str(d / "xray.nrrd"), "--init-model", str(model),
               "--no-refine", "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text(encoding="utf-8"))
    w = np.array(res["world_from_camera"])
    np.testing.assert_allclose(w[:3, :3].T @ w[:3, :3], np.eye(3), atol=1e-6)
    assert res["iterations"] == 0 and res["method"].startswith("init-model")
    assert -1 <= res["similarity"] <= 1
    assert res["success"] is False and "an initialisation alone is not verified" in res["message"]
    assert "initialised" in capsys.readouterr().out


def test_register_refuses_model_of_another_ct(case, tmp_path, capsys):
    d = case
    model = tmp_path / "m.pt"
    assert main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--out", str(model),
                 "--iterations", "1", "--batch-size", "4", "--quiet"]) == 0
    other = chest_phantom((40, 32, 32), (5.0, 5.0, 5.0), center=(0.0, 0.0, 10.0))
    write_volume(other, tmp_path / "other.nrrd")
    capsys.readouterr()
    out = tmp_path / "r.json"
    rc = main(["register", "--ct", str(tmp_path / "other.nrrd"), "--xray", str(d / "xray.nrrd"),
               "--init-model", str(model), "--no-refine", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "trained on another CT" in err and "m.pt" in err and "xrayctreg train" in err
    # another geometry is refused too
    Camera(1100.0, 48, 40, 6.0, 6.0).save(tmp_path / "g2.json")
    rc = main(["register", "--ct", str(d / "ct.nrrd"), "--xray", str(d / "xray.nrrd"), "--geometry",
               str(tmp_path / "g2.json"), "--init-model", str(model), "--no-refine", "--out", str(out), "--quiet"])
    assert rc == 2 and "another detector geometry" in capsys.readouterr().err


def test_bad_train_and_register_arguments(case, tmp_path, capsys):
    d = case
    rc = main(["register", "--ct", str(d / "ct.nrrd"), "--xray", str(d / "xray.nrrd"), "--no-refine",
               "--out", str(tmp_path / "r.json")])
    assert rc == 2 and "--no-refine needs --init-model" in capsys.readouterr().err
    rc = main(["register", "--ct", str(d / "ct.nrrd"), "--xray", str(d / "xray.nrrd"), "--init-model",
               str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r.json")])
    assert rc == 2 and "model file not found" in capsys.readouterr().err
    rc = main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--out",
               str(tmp_path / "m.pt"), "--iterations", "0"])
    assert rc == 2 and "--iterations" in capsys.readouterr().err


def test_register_with_init_model_then_refinement(case, tmp_path, capsys):
    d = case
    model = tmp_path / "m.pt"
    assert main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--out", str(model),
                 "--iterations", "1", "--batch-size", "4", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "r.json"
    rc = main(["register", "--ct", str(d / "ct.nrrd"), "--xray", str(d / "xray.nrrd"), "--init-model", str(model),
               "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc in (0, 1) and out.exists()  # an untrained model may leave the refinement unconverged
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["method"] == "opt-lncc" and res["iterations"] > 0
    assert "initialised with" in text and "refinement" in text


def test_train_time_budget_bounds_the_whole_command(tmp_path):
    import time

    ct = tmp_path / "ct.nrrd"
    write_volume(chest_phantom((40, 32, 32), (5.0, 5.0, 5.0)), ct)
    geometry = tmp_path / "g.json"
    geometry.write_text(json.dumps(Camera(1000.0, 48, 40, 6.0, 6.0).to_dict()))
    t0 = time.time()
    code = main(["train", "--ct", str(ct), "--geometry", str(geometry), "--model", "regressor", "--out",
                 str(tmp_path / "m.pt"), "--time-budget", "9", "--batch-size", "4", "--quiet"])
    wall = time.time() - t0
    assert code == 0
    model = read_model_file(tmp_path / "m.pt")
    # the model's training time is the command's wall time up to the model's last write (the CT's reading and
    # the preparation included); what follows the write (the summary, the progress bar) is not in it
    written = (tmp_path / "m.pt").stat().st_mtime - t0
    assert model["train_time_s"] == pytest.approx(written, abs=0.3) and written <= wall
    assert model["step"] >= 1
    # the interpreter's start-up and shutdown, outside the command's clock, are kept free within the budget
    history = [h[1] for h in model["history"]]
    slowest = max([b - a for a, b in zip(history, history[1:], strict=False)] + [history[0]])
    assert model["train_time_s"] <= 9 - INTERPRETER_S + slowest


def test_train_gives_up_after_repeated_collapses(case, tmp_path, capsys, monkeypatch):
    import torch
    from XRayCTRegistrationLib.training import MAX_COLLAPSES, Trainer

    # a network kind that finds its network collapsed at every validation (validations every 25 steps)
    monkeypatch.setattr(Trainer, "collapsed", lambda self, val: "outputs no longer depend on the input")
    d = case
    model = tmp_path / "m.pt"
    rc = main(["train", "--ct", str(d / "ct.nrrd"), "--geometry", str(d / "geom.json"), "--out", str(model),
               "--iterations", "200", "--batch-size", "4", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 1 and f"gave up after {MAX_COLLAPSES} collapses" in err
    assert out.count("warning: at step") == MAX_COLLAPSES and "outputs no longer depend on the input" in out
    saved = torch.load(model, weights_only=True)
    assert [s for s, _ in saved["collapses"]] == [25, 50, 75] and not saved["complete"]
