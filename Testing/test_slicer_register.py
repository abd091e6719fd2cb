"""Registration through the module's logic: the wiring (progress, cancel, failure, outputs) with a
scripted library result, and the module's own self-test running the real registration headless."""

import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
from mrml_scene import make_scene, scene_state
from test_slicer_logic import POSE, inputs  # noqa: F401  (fixture)
from XRayCTRegistrationLib.errors import InputError


@dataclass
class _Result:
    world_from_camera: np.ndarray
    params: np.ndarray
    similarity: float
    iterations: int
    wall_time_s: float
    method: str
    success: bool
    message: str


@pytest.fixture
def ns(tmp_path):
    return make_scene(tmp_path / "cache")


@pytest.fixture
def module(ns):
    import XRayCTRegistration as M

    return M


@pytest.fixture
def scripted_register(monkeypatch):
    """Replace the library's register with one that returns a given pose and records its call."""
    calls = {}

    def register(volume_mu, xray, camera, init_world_from_camera, reference=None, method="opt-ncc",
                 progress=None, should_stop=None, **options):
        calls.update(volume_mu=volume_mu, xray=xray, camera=camera, init=init_world_from_camera,
                     reference=reference, method=method, options=options)
        for i in range(3):
            if progress is not None:
                progress(i / 3, f"step {i}")
            if should_stop is not None and should_stop():
                break
        pose = calls["answer"]
        return _Result(pose, reference.params(pose), 0.97, 3, 0.01, method, calls.get("success", True), "done")

    mod = types.ModuleType("XRayCTRegistrationLib.registration")
    mod.register = register
    monkeypatch.setitem(sys.modules, "XRayCTRegistrationLib.registration", mod)
    return calls


def test_register_writes_the_library_result(ns, module, inputs, scripted_register):  # noqa: F811
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    scripted_register["answer"] = pose
    seen = []
    out = logic.register(ct, xray, np.zeros(6), method="opt-gc", progress=lambda f, m: seen.append((f, m)),
                         shouldStop=lambda: False, maxIterations=5)
    # what the library got: attenuation volume, the X-ray array, the DICOM camera, the AP reference view
    assert scripted_register["method"] == "opt-gc" and scripted_register["options"] == {"maxIterations": 5}
    np.testing.assert_allclose(scripted_register["xray"], image, rtol=1e-6)
    assert scripted_register["camera"] == camera
    assert scripted_register["volume_mu"].data.max() < 0.1  # 1/mm, not HU
    np.testing.assert_allclose(scripted_register["init"], scripted_register["reference"].world_from_camera)
    assert seen == [(0.0, "step 0"), (1 / 3, "step 1"), (2 / 3, "step 2")]
    # what the scene got
    assert not out.cancelled
    np.testing.assert_allclose(out.params, POSE, atol=1e-6)
    np.testing.assert_allclose(ns.slicer.util.arrayFromTransformMatrix(out.transformNode), pose, atol=1e-6)
    np.testing.assert_allclose(logic.ijkToWorld(xray)[:3, 3],
                               (pose @ [*(camera.pixel_centers()[0, 0]), 1.0])[:3], atol=1e-6)
    drr = ns.slicer.util.arrayFromVolume(out.drrNode)[0]
    assert drr.shape == image.shape  # final DRR at the X-ray's size (below FINAL_SIZE)
    assert np.corrcoef(drr.ravel(), image.ravel())[0, 1] > 0.995


def test_register_cancelled_leaves_scene_unchanged(ns, module, inputs, scripted_register):  # noqa: F811
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    scripted_register["answer"] = pose
    before = scene_state(ns.scene)
    cancel = {"flag": False}

    def progress(fraction, message):
        cancel["flag"] = fraction > 0.2  # the user presses Cancel during the run

    out = logic.register(ct, xray, np.zeros(6), progress=progress, shouldStop=lambda: cancel["flag"])
    assert out.cancelled and out.transformNode is None and out.drrNode is None
    assert scene_state(ns.scene) == before


def test_register_failure_and_bad_input_leave_scene_unchanged(ns, module, inputs, scripted_register):  # noqa: F811
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    scripted_register.update(answer=pose, success=False)
    before = scene_state(ns.scene)
    with pytest.raises(RuntimeError, match="did not succeed: done"):
        logic.register(ct, xray, np.zeros(6))
    with pytest.raises(InputError, match="method: 'simplex'"):
        logic.register(ct, xray, np.zeros(6), method="simplex")
    with pytest.raises(InputError, match="3D volume"):
        logic.register(ct, ct, np.zeros(6))
    assert scene_state(ns.scene) == before


def test_module_self_test_runs_headless(ns, module):
    """The ScriptedLoadableModuleTest that Slicer's test runner uses: render, placement and a real registration."""
    result = module.XRayCTRegistrationTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures
    assert result.testsRun == 1
    assert ns.scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode") >= 1
