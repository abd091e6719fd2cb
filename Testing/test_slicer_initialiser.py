"""The learned initialiser through the Slicer module's logic, headless: the training command the logic
builds runs the real CLI out of process (as the widget does through QProcess), its progress lines parse
and reach 1.0 and the model file appears; Initialise predicts six finite pose parameters, refuses a
model of another CT with a clear error and leaves the scene unchanged; Register with the model refines."""

import os
import subprocess

import numpy as np
import pytest
from mrml_scene import load_node, scene_state
from slicer_inputs import write_volume
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.training import load_initialiser
from XRayCTRegistrationLib.volume import read_ct

TINY = ["--batch-size", "4", "--rot-range", "10", "--trans-range", "10"]


def run_training(logic, command):
    """Run a training command as the widget does: stream stdout lines, parse the progress ones."""
    env = dict(os.environ, **logic.trainEnvironment())
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    progress, other = [], []
    for line in proc.stdout:
        parsed = logic.parseProgressLine(line)
        (progress if parsed is not None else other).append(parsed if parsed is not None else line)
    assert proc.wait(timeout=120) == 0, "".join(other)
    return progress, other


@pytest.fixture(scope="module")
def trainings():
    """Trainings done in this module, by CT file content: the phantom is the same in every test, train once."""
    return {}


@pytest.fixture
def trained(ns, module, inputs, tmp_path, trainings):
    """A model trained for two steps on the CT of ``inputs`` through the logic's command line."""
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    ctPath, geometryPath = logic.writeTrainingInputs(ct, xray, tmp_path / "training")
    key = open(ctPath, "rb").read() + open(geometryPath, "rb").read()
    if key not in trainings:
        modelPath = str(tmp_path / "model.pt")
        command = logic.trainCommand(ctPath, geometryPath, modelPath, method="regressor", iterations=2, threads=1,
                                     extraArgs=TINY)
        progress, other = run_training(logic, command)
        trainings[key] = (modelPath, progress, other)
    modelPath, progress, other = trainings[key]
    return logic, modelPath, progress, other, ctPath, geometryPath


def test_training_inputs_and_command_run_out_of_process(module, inputs, trained):
    ct, xray, volume, camera, image, pose = inputs
    logic, modelPath, progress, other, ctPath, geometryPath = trained
    # the inputs on disk: the node's CT in HU with its world geometry, and the X-ray's geometry
    written = read_ct(ctPath)
    np.testing.assert_array_equal(written.data, volume.data.astype(np.int16).astype(np.float32))
    np.testing.assert_allclose(written.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
    assert Camera.load(geometryPath) == camera
    # progress lines streamed: fractions in [0, 1], never going back, ending at 1.0
    fractions = [f for f, _ in progress]
    assert len(progress) >= 2 and fractions[-1] == 1.0
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(fractions, fractions[1:], strict=False))
    assert all(message.startswith("step ") for _, message in progress)
    assert any(line.startswith("wrote ") for line in other)
    model = load_initialiser(modelPath)
    assert model.method == "regressor" and model.info["step"] == 2 and model.info["complete"]


def test_train_command_flags(module):
    logic = module.XRayCTRegistrationLogic
    cmd = logic.trainCommand("/data/ct.nrrd", "/data/geom.json", "/out dir/m.pt", method="rtpi", timeBudgetS=900,
                             resume=True, python="/opt/PythonSlicer")
    assert cmd[:5] == ["/opt/PythonSlicer", "-m", "XRayCTRegistrationLib.cli", "train", "--ct"]
    assert cmd[cmd.index("--out") + 1] == "/out dir/m.pt" and cmd[cmd.index("--model") + 1] == "rtpi"
    assert cmd[cmd.index("--time-budget") + 1] == "900" and "--resume" in cmd and "--progress-lines" in cmd
    assert "--iterations" not in cmd and "--threads" not in cmd
    fine = logic.trainCommand("/data/ct.nrrd", "/data/geom.json", "/out/fine.pt", method="sopi-fine", iterations=5)
    assert fine[fine.index("--model") + 1] == "sopi-fine"
    from XRayCTRegistrationLib.cli import build_parser

    assert build_parser().parse_args(fine[3:]).model == "sopi-fine"
    with pytest.raises(InputError, match="method 'cnn'"):
        logic.trainCommand("c", "g", "m", method="cnn")
    with pytest.raises(InputError, match="time budget"):
        logic.trainCommand("c", "g", "m", timeBudgetS=0)
    # the command line parses with the real CLI (no unknown flags)
    from XRayCTRegistrationLib.cli import build_parser

    args = build_parser().parse_args(cmd[3:])
    assert (args.model, args.time_budget, args.resume, args.progress_lines) == ("rtpi", 900.0, True, True)
    assert args.physics_kvp is None
    physics = logic.trainCommand("/data/ct.nrrd", "/data/geom.json", "/out/m.pt", iterations=5,
                                 physicsKvp=module.PHYSICS_TRAINING_KVP)
    assert build_parser().parse_args(physics[3:]).physics_kvp == list(module.PHYSICS_TRAINING_KVP)
    with pytest.raises(InputError, match="physics tube voltages"):
        logic.trainCommand("c", "g", "m", physicsKvp=(120.0, 80.0))


def test_initialise_with_model(ns, module, inputs, trained, tmp_path):
    ct, xray, volume, camera, image, pose = inputs
    logic, modelPath, *_ = trained
    before = scene_state(ns.scene)
    params = logic.initialise(ct, xray, modelPath)
    assert params.shape == (6,) and np.all(np.isfinite(params))
    # the parameters are relative to the sliders' reference view: they give the model's predicted pose
    model = load_initialiser(modelPath)
    predicted = model.reference.pose(model.predict_params(image))
    np.testing.assert_allclose(logic.poseFromParameters(ct, xray, params), predicted, atol=1e-6)
    assert logic.loadInitialiser(modelPath) is logic.loadInitialiser(modelPath)  # cached
    assert scene_state(ns.scene) == before


def test_initialise_refuses_model_of_another_ct(ns, module, inputs, trained, tmp_path):
    ct, xray, volume, *_ = inputs
    logic, modelPath, *_ = trained
    other = volume.data.astype(np.int16).copy()
    other[10:20, 10:20, 10:20] = 1500
    write_volume(tmp_path / "other.nrrd", other, volume.ijk_to_ras)
    otherCt = load_node(ns.scene, tmp_path / "other.nrrd", "Other CT")
    before = scene_state(ns.scene)
    with pytest.raises(InputError, match="model was trained on another CT .* not on CT volume 'Other CT'") as err:
        logic.initialise(otherCt, xray, modelPath)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="model was trained on another CT"):
        logic.register(otherCt, xray, np.zeros(6), initialiserModel=modelPath)
    with pytest.raises(InputError, match="another detector geometry"):
        logic.initialise(ct, xray, modelPath, sdd=900.0)
    with pytest.raises(InputError, match="model file not found"):
        logic.initialise(ct, xray, tmp_path / "missing.pt")
    with pytest.raises(InputError, match="no model file chosen"):
        logic.initialise(ct, xray, "")
    assert scene_state(ns.scene) == before


def test_register_with_model_initialises_then_refines(ns, module, inputs, trained):
    ct, xray, volume, camera, image, pose = inputs
    logic, modelPath, *_ = trained
    start = logic.initialise(ct, xray, modelPath)
    seen = []
    out = logic.register(ct, xray, [90.0, 0, 0, 0, 0, 0], initialiserModel=modelPath,
                         progress=lambda f, m: seen.append(f), levels=(2, 1), max_iterations=(20, 30),
                         method="opt-ncc")  # 48 x 40 pixels: global NCC
    assert not out.cancelled and out.transformNode is not None and out.drrNode is not None
    np.testing.assert_allclose(out.initialParams, start)  # started from the model's pose, not the given one
    assert seen and seen[-1] == 1.0
    reference = ReferenceView.ap(volume.center, camera.sdd)
    np.testing.assert_allclose(ns.slicer.util.arrayFromTransformMatrix(out.transformNode),
                               reference.pose(out.params), atol=1e-4)


def test_killed_training_keeps_a_checkpoint_that_resumes(module, inputs, tmp_path):
    ct, xray, *_ = inputs
    logic = module.XRayCTRegistrationLogic()
    ctPath, geometryPath = logic.writeTrainingInputs(ct, xray, tmp_path / "training")
    modelPath = tmp_path / "model.pt"
    command = logic.trainCommand(ctPath, geometryPath, str(modelPath), iterations=1000, threads=1,
                                 extraArgs=[*TINY, "--checkpoint-every", "0"])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **logic.trainEnvironment()))
    for line in proc.stdout:  # Cancel as the widget does (kill) once a checkpoint after step 2 exists
        parsed = logic.parseProgressLine(line)
        if parsed is not None and modelPath.exists() and load_initialiser(modelPath).info["step"] >= 2:
            break
    proc.kill()
    proc.wait(timeout=30)
    partial = load_initialiser(modelPath)
    assert not partial.info["complete"] and 2 <= partial.info["step"] < 1000
    resumed = logic.trainCommand(ctPath, geometryPath, str(modelPath), iterations=partial.info["step"] + 1,
                                 resume=True, threads=1, extraArgs=TINY)
    progress, _ = run_training(logic, resumed)
    assert progress[-1][0] == 1.0
    done = load_initialiser(modelPath)
    assert done.info["complete"] and done.info["step"] == partial.info["step"] + 1
