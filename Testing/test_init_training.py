import numpy as np
import pytest
import torch
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import Projector
from XRayCTRegistrationLib.training import (
    Trainer,
    TrainOptions,
    initialise,
    load_initialiser,
    read_model_file,
    train,
)
from XRayCTRegistrationLib.training_data import PoseRange, RenderSettings
from XRayCTRegistrationLib.volume import Volume, hu_to_mu

CAM = Camera(1000.0, 48, 40, 6.0, 6.0)
RENDER = RenderSettings(ct_spacing_mm=5.0, detector_size=24, input_size=16, step_vox=1.5)


def tiny(method="regressor", **kw):
    base = dict(method=method, batch_size=8, pool_size=16, fresh_per_step=4, val_size=8, val_every=2,
                render=RENDER, width=0.25, depth=0.2, lr=3e-3, seed=0)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="module")
def ct():
    return chest_phantom((40, 32, 32), (5.0, 5.0, 5.0))


@pytest.mark.parametrize("method", ["regressor", "rtpi"])
def test_training_reduces_loss_on_a_fixed_batch(ct, method):
    torch.manual_seed(0)
    tr = Trainer(ct, CAM, tiny(method, iterations=30, alpha=0.5, gd_start=0.0, pose_range=PoseRange(10.0, 20.0)))
    rng = np.random.default_rng(5)
    gen = torch.Generator().manual_seed(5)
    x, params, drr = tr.batch(1.0, rng, gen)
    before = tr.fixed_batch_loss(x, params, drr)
    for _ in range(12):
        tr.net.train()
        loss, parts = tr.loss(x, params, drr, 1.0)
        tr.optimizer.zero_grad()
        loss.backward()
        tr.optimizer.step()
    if method == "rtpi":
        assert "gd" in parts and "l2" in parts and "mse" in parts
    else:
        assert {"rot", "trans", "ae"} <= set(parts)
    after = tr.fixed_batch_loss(x, params, drr)
    assert after < 0.7 * before, (before, after)


def test_curriculum_and_learning_rate_schedule(ct):
    tr = Trainer(ct, CAM, tiny(iterations=100, curriculum_start=0.2, curriculum_end=0.5))
    assert tr.range_scale(0.0) == pytest.approx(0.2)
    assert tr.range_scale(0.25) == pytest.approx(0.6)
    assert tr.range_scale(0.5) == 1.0 and tr.range_scale(0.9) == 1.0
    assert tr.learning_rate(0.3) == pytest.approx(tr.options.lr)
    assert tr.learning_rate(1.0) == pytest.approx(0.05 * tr.options.lr)
    flat = Trainer(ct, CAM, tiny(iterations=100, incremental=False))
    assert flat.range_scale(0.0) == 1.0
    tr.state.step = 40
    assert tr.fraction() == pytest.approx(0.4)


def test_checkpoint_resume_continues_step_counter_and_weights(ct, tmp_path):
    out = tmp_path / "m.pt"
    s1 = train(ct, CAM, out, tiny(iterations=3))
    assert s1["steps"] == 3
    d1 = read_model_file(out)
    assert d1["step"] == 3 and d1["complete"] and len(d1["history"]) >= 1
    # resuming with a larger total continues from step 3 with the saved weights
    tr = Trainer(ct, CAM, tiny(iterations=5))
    tr.restore(d1)
    for k, v in d1["state_dict"].items():
        assert torch.equal(tr.net.state_dict()[k], v), k
    s2 = train(ct, CAM, out, tiny(iterations=5), resume=True)
    assert s2["steps"] == 5
    d2 = read_model_file(out)
    assert d2["step"] == 5 and d2["train_time_s"] > d1["train_time_s"]
    changed = [k for k in d1["state_dict"] if d1["state_dict"][k].dtype.is_floating_point
               and not torch.equal(d1["state_dict"][k], d2["state_dict"][k])]
    assert changed
    # resuming a finished run with the same total does no more steps
    assert train(ct, CAM, out, tiny(iterations=5), resume=True)["steps"] == 5
    # without resume the run starts over
    assert train(ct, CAM, out, tiny(iterations=2))["steps"] == 2


def test_stop_request_saves_incomplete_checkpoint(ct, tmp_path):
    out = tmp_path / "m.pt"
    calls, asked = [], []

    def stop():
        asked.append(1)
        return len(asked) > 2

    s = train(ct, CAM, out, tiny(iterations=50), should_stop=stop, progress=lambda f, m: calls.append((f, m)))
    assert s["stopped"] and s["steps"] == 2
    d = read_model_file(out)
    assert not d["complete"] and d["step"] == 2
    assert 0 < calls[-1][0] < 1 and "val" in calls[-1][1]


def test_model_file_records_ct_geometry_range_and_refuses_others(ct, tmp_path):
    out = tmp_path / "m.pt"
    train(ct, CAM, out, tiny("rtpi", iterations=2), ct_source="ct.nrrd")
    model = load_initialiser(out)
    info = model.info
    assert info["method"] == "rtpi" and info["library_version"]
    assert info["geometry"] == CAM.to_dict()
    assert info["pose_range"] == PoseRange().to_dict()
    assert info["ct"]["source"] == "ct.nrrd" and len(info["ct"]["sha256"]) == 64
    model.check_ct(ct)
    other = Volume(ct.data.copy(), ct.ijk_to_ras.copy())
    other.data[0, 0, 0] += 1.0
    with pytest.raises(InputError, match="trained on another CT"):
        model.check_ct(other, "other.nrrd")
    moved = Volume(ct.data.copy(), ct.ijk_to_ras @ np.diag([1.0, 1.0, 1.0, 1.0]) + np.array(
        [[0, 0, 0, 2.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(InputError, match="trained on another CT"):
        model.check_ct(moved)
    model.check_camera(CAM)
    with pytest.raises(InputError, match="another detector geometry"):
        model.check_camera(Camera(1100.0, 48, 40, 6.0, 6.0))
    with pytest.raises(InputError, match="another detector geometry"):
        initialise(model, np.zeros((48, 48), np.float32), Camera(1000.0, 48, 48, 6.0, 6.0))


def test_initialise_returns_rigid_pose_near_range(ct, tmp_path):
    out = tmp_path / "m.pt"
    train(ct, CAM, out, tiny(iterations=2))
    model = load_initialiser(out)
    ref = ReferenceView.ap(ct.center, CAM.sdd)
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    with torch.no_grad():
        xray = Projector(mu, CAM, n_samples=64)(torch.as_tensor(ref.pose([5, 0, 0, 0, 0, 0]))).numpy()
    pose = initialise(model, xray, CAM)
    assert pose.shape == (4, 4)
    np.testing.assert_allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-6)
    params = model.reference.params(pose)
    assert np.all(np.abs(params) <= 1.5 * PoseRange().half_widths)
    with pytest.raises(InputError, match="pixels"):
        model.predict_params(xray[:, :-1])


def test_bad_model_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_initialiser(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not an initialiser model file"):
        load_initialiser(bad)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="format tag"):
        load_initialiser(tmp_path / "other.pt")


def test_options_validation():
    with pytest.raises(InputError, match="--model"):
        TrainOptions(method="unet")
    with pytest.raises(InputError, match="--iterations"):
        TrainOptions(iterations=0)
    o = tiny(iterations=4)
    assert TrainOptions.from_dict(o.to_dict()) == o


def test_refine_schedule_adds_a_finer_level():
    from XRayCTRegistrationLib.registration import refine_schedule

    assert refine_schedule(Camera(1000.0, 256, 256, 1.6, 1.6)) == {"levels": (8.0, 4.0, 2.0),
                                                                    "max_iterations": (80, 40, 100)}
    small = refine_schedule(Camera(1000.0, 48, 40, 6.0, 6.0))
    assert small["levels"][-1] == 1.0 and len(small["levels"]) == len(small["max_iterations"])


def test_a_time_budget_counts_the_whole_call_and_is_kept(ct, tmp_path):
    import time

    budget = 8.0
    t0 = time.perf_counter()
    summary = train(ct, CAM, tmp_path / "m.pt", tiny(time_budget_s=budget, val_every=1))
    wall = time.perf_counter() - t0
    assert summary["steps"] >= 1
    # the training time is the call's wall time (preparation and validations included), not the steps' alone
    assert summary["train_time_s"] == pytest.approx(wall, abs=0.1)
    # no step started that the recent steps and validations said would end past the budget: it can overrun only
    # by a step slower than those before it (a shared machine), never by the preparation or the validations
    times = [h[1] for h in read_model_file(tmp_path / "m.pt")["history"]]
    slowest = max(b - a for a, b in zip(times, times[1:], strict=False)) if len(times) > 1 else times[0]
    assert summary["train_time_s"] <= budget + slowest
    assert read_model_file(tmp_path / "m.pt")["complete"] is True
