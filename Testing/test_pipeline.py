"""The pipeline (initialise, then refine) and the method registry."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_registration
from test_registration import CAM, FAST, GT, SDD, START  # the phantom scene of the registration tests
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, save_pose
from XRayCTRegistrationLib.metrics import image_ncc, mtre
from XRayCTRegistrationLib.pipeline import PipelineResult, register_xray
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.registration import METHODS, RegistrationResult
from XRayCTRegistrationLib.registry import get_method, method_names, register_method, unregister_method

ROOT = Path(__file__).resolve().parents[1]
scene = test_registration.scene  # the same module-scoped fixture


def test_registry_holds_the_library_methods():
    assert set(METHODS) <= set(method_names("refine"))
    assert [m for m in method_names("refine") if m in METHODS] == list(METHODS)
    assert {"reference", "pose", "model"} <= set(method_names("init"))
    assert get_method("opt-gc").options["method"] == "opt-gc"
    with pytest.raises(InputError, match="unknown refine method 'opt-xyz'; choose one of opt-ncc"):
        get_method("opt-xyz")
    with pytest.raises(InputError, match="already registered"):
        register_method("opt-ncc", "XRayCTRegistrationLib.registration:register")
    with pytest.raises(InputError, match="kind must be one of"):
        register_method("x", "a.b:c", kind="stage3")
    with pytest.raises(InputError, match="bad method name"):
        register_method("a b", "a.b:c")
    with pytest.raises(InputError, match="give a function"):
        register_method("ab", "no_colon")
    # learned refiners are marked as needing a model file; benchmarks that train nothing leave them out
    with_model = set(method_names("refine", needs_model=True))
    assert {"ppc", "ppc-opt", "sopi-fine", "sopi-fine-opt"} <= with_model
    assert set(method_names("refine", needs_model=False)) == set(method_names("refine")) - with_model
    assert set(METHODS) <= set(method_names("refine", needs_model=False))



def test_a_learned_initialisers_schedule_reaches_only_the_methods_without_their_own(scene):
    from XRayCTRegistrationLib.pipeline import Initialisation

    hu, vol, ref, xray, pts = scene
    seen = {}

    def start(inputs, source):
        return Initialisation(ref.pose(START), "spy-init", "a learned start",
                              refine_options={"levels": (4.0, 2.0, 1.0)})

    def refine(name):
        def fn(volume_mu, image, camera, pose, **options):
            seen[name] = options.get("levels")
            return RegistrationResult(world_from_camera=pose, params=ref.params(pose), similarity=0.0,
                                      initial_similarity=0.0, iterations=1, wall_time_s=0.0, method=name,
                                      success=False, message="spy", reference=ref)
        return fn

    register_method("spy-init", start, kind="init")
    register_method("spy-plain", refine("spy-plain"))
    register_method("spy-own", refine("spy-own"), own_schedule=True)
    try:
        for name in ("spy-plain", "spy-own"):
            register_xray(hu, xray, CAM, None, init_method="spy-init", method=name)
        assert seen == {"spy-plain": (4.0, 2.0, 1.0), "spy-own": None}
        register_xray(hu, xray, CAM, None, init_method="spy-init", method="spy-own", levels=(2.0,))
        assert seen["spy-own"] == (2.0,)  # a caller's levels still reach it
    finally:
        for name, kind in (("spy-init", "init"), ("spy-plain", "refine"), ("spy-own", "refine")):
            unregister_method(name, kind)
    # the learned refiners end, if at all, with an intensity step on the registration's own levels (sopi.md,
    # ppc_schedule.md); the intensity methods and the search take the finer schedule of a learned start
    own = {m for m in method_names("refine") if get_method(m).own_schedule}
    assert own == {"dppc", "dppc-opt", "ppc", "ppc-opt", "sopi-fine", "sopi-fine-opt"}

def test_light_modules_load_neither_torch_nor_numpy():
    code = ("import sys; import XRayCTRegistrationLib.errors, XRayCTRegistrationLib.names, "
            "XRayCTRegistrationLib.registry; "
            "heavy = sorted(m for m in ('numpy', 'torch', 'SimpleITK') if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "XRayCTRegistration"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pipeline_refines_from_a_pose(scene, tmp_path):
    hu, vol, ref, xray, pts = scene
    w0 = ref.pose(START)
    out = register_xray(hu, xray, CAM, w0, method="opt-ncc", **FAST)
    assert isinstance(out, PipelineResult) and isinstance(out.refinement, RegistrationResult)
    assert out.success, out.result.message
    assert mtre(pts, ref.pose(GT), out.world_from_camera) < 2.0 < 8.0 < mtre(pts, ref.pose(GT), w0)
    assert out.initialisation.method == "pose" and out.initialisation.iterations == 0
    np.testing.assert_allclose(out.initialisation.world_from_camera, w0)
    assert out.initialisation.similarity == out.refinement.initial_similarity
    assert out.iterations == out.refinement.iterations > 0
    d = json.loads(json.dumps(out.to_dict()))
    for key in ("world_from_camera", "similarity", "iterations", "wall_time_s", "method", "success", "params"):
        assert d[key] == out.refinement.to_dict()[key]
    assert d["initialisation"]["method"] == "pose" and set(d["timings"]) == {"initialisation_s", "refinement_s",
                                                                             "total_s"}
    assert d["timings"]["total_s"] >= d["timings"]["refinement_s"] > 0
    # the same start from a pose file, and from the attenuation alone
    save_pose(tmp_path / "start.json", w0)
    again = register_xray(None, xray, CAM, tmp_path / "start.json", method="opt-ncc", volume_mu=vol, **FAST)
    np.testing.assert_allclose(again.world_from_camera, out.world_from_camera, atol=1e-9)


def test_pipeline_initialisation_alone(scene):
    hu, vol, ref, xray, _ = scene
    out = register_xray(hu, xray, CAM, refine=False)
    assert out.refinement is None and out.initialisation.method == "reference"
    np.testing.assert_allclose(out.world_from_camera, ref.world_from_camera)
    np.testing.assert_allclose(out.params, np.zeros(6), atol=1e-9)
    assert out.result.similarity == pytest.approx(image_ncc(render(vol, CAM, ref.world_from_camera), xray), abs=1e-6)
    assert out.iterations == 0 and out.to_dict()["timings"]["refinement_s"] == 0.0


def test_pipeline_refuses_bad_requests_before_work(scene):
    hu, vol, ref, xray, _ = scene
    with pytest.raises(InputError, match="unknown refine method"):
        register_xray(hu, xray, CAM, method="opt-nope")
    with pytest.raises(InputError, match="unknown init method"):
        register_xray(hu, xray, CAM, init_method="dicom-angles")
    with pytest.raises(InputError, match="needs a model file"):
        register_xray(hu, xray, CAM, init_method="model")
    with pytest.raises(InputError, match="give the CT"):
        register_xray(None, xray, CAM)
    with pytest.raises(InputError, match="init"):
        register_xray(hu, xray, CAM, np.eye(4) * 2)


# -- a new method: one module plus one registration call, seen by the CLI, Slicer and the benchmark ----------
@pytest.fixture
def toy():
    import importlib

    sys.path.insert(0, str(Path(__file__).parent))
    module = importlib.import_module("toy_method")
    if "toy-ncc" not in method_names("refine"):
        importlib.reload(module)  # registers it again after an earlier test removed it
    yield "toy-ncc"
    unregister_method("toy-ncc")


def _cli_method_choices():
    import argparse

    from XRayCTRegistrationLib.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    register = sub.choices["register"]
    return next(a for a in register._actions if a.dest == "method").choices


def test_toy_method_in_cli_and_benchmark(toy, scene):
    import importlib.util

    from XRayCTRegistrationLib.evaluation import make_cases

    assert toy in _cli_method_choices()
    spec = importlib.util.spec_from_file_location("bench_registration", ROOT / "benchmarks" / "bench_registration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    hu = scene[0]
    cases = make_cases(hu, Camera(SDD, 32, 32, 9.0, 9.0), 2, seed=3, n_points=30, n_samples=64)
    rows = bench.run_methods(cases, [toy], log=None)
    assert [r["method"] for r in rows[toy]] == [toy, toy] and all("error" not in r for r in rows[toy])
    assert all(r["iterations"] > 0 for r in rows[toy])
    table = bench.methods_table(rows)
    assert f"| {toy} |" in table


def test_toy_method_unregistered_is_gone(toy):
    unregister_method(toy)
    assert toy not in _cli_method_choices()


def test_toy_method_in_slicer(toy, ns, module, inputs):
    from slicer_inputs import POSE

    ct, xray, volume, camera, image, pose = inputs
    assert toy in module.registrationMethods()
    params = module.XRayCTRegistrationLogic().getParameterNode()
    params.method = toy  # the parameter node accepts it
    assert params.method == toy
    out = module.XRayCTRegistrationLogic().register(ct, xray, POSE + np.array([1.0, 0, 0, 2.0, 0, 0]), method=toy)
    assert out.result.method == "opt-ncc" and out.pipeline.refinement.iterations <= 25  # the toy's own schedule
    assert out.transformNode is not None
