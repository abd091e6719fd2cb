"""A real MRML scene from slicer-core with the logics the module needs, for headless tests."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
from slicer_stubs import install


def make_scene(cache_dir: Path, slice_dims=(96, 96)):
    """Scene + application logic (Colors registered) + remote I/O (for .mrb) + a red slice logic.

    Returns a namespace: scene, slicer, app_logic, slice_logic, slice_node, composite_node, keep.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkMRMLApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Colors", colors)
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    remote_io.AddDataIOToScene()
    data_io = slicer.vtkDataIOManagerLogic()
    data_io.SetMRMLScene(scene)
    data_io.SetMRMLApplicationLogic(app_logic)
    data_io.SetAndObserveDataIOManager(scene.GetDataIOManager())
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    scene.GetCacheManager().SetRemoteCacheDirectory(str(cache_dir))
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLScene(scene)
    slice_logic.SetMRMLApplicationLogic(app_logic)
    slice_node = slice_logic.AddSliceNode("Red")
    slice_node.SetDimensions(slice_dims[0], slice_dims[1], 1)
    composite_node = slice_logic.GetSliceCompositeNode()
    install(scene)
    return types.SimpleNamespace(scene=scene, slicer=slicer, app_logic=app_logic, slice_logic=slice_logic,
                                 slice_node=slice_node, composite_node=composite_node,
                                 keep=[colors, remote_io, data_io])


def load_node(scene, path, name: str):
    """Read an image file into a new scalar volume node through a vtkMRMLVolumeArchetypeStorageNode."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"{path}: cannot be read")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def blank_xray_node(scene, module, size: int, width_mm: float = 400.0, sdd: float = 1020.0):
    """A square single-slice X-ray node of zeros, ``size`` pixels a side over ``width_mm``, with DICOM geometry tags."""
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
    slicer.util.updateVolumeFromArray(node, np.zeros((1, size, size), np.float32))
    node.SetAttribute(module.DICOM_SDD_ATTRIBUTE, f"{sdd:g}")
    node.SetAttribute(module.DICOM_SPACING_ATTRIBUTE, f"{width_mm / size}\\{width_mm / size}")
    return node


def render_slice(slice_logic) -> np.ndarray:
    """The slice view's RGBA image ``[rows, cols, 4]`` (uint8), row 0 at the top."""
    import vtk.util.numpy_support as ns

    producer = slice_logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    nx, ny, _ = image.GetDimensions()
    rgba = ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)
    return rgba[::-1].copy()  # VTK's row 0 is the bottom


def write_png(slice_logic, path: Path) -> None:
    """Write the slice view's image to a PNG file."""
    import vtk

    producer = slice_logic.GetImageDataConnection().GetProducer()
    producer.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetInputConnection(slice_logic.GetImageDataConnection())
    writer.SetFileName(str(path))
    writer.Write()


def scene_state(scene) -> tuple:
    """Everything a test compares to say 'the scene is unchanged': node IDs, the scene XML, voxel checksums."""
    import hashlib

    import slicer

    ids = tuple(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    scene.SetSaveToXMLString(1)
    scene.Commit()
    xml = scene.GetSceneXMLString()
    scene.SetSaveToXMLString(0)
    sums = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        data = slicer.util.arrayFromVolume(node) if node.GetImageData() else np.zeros(0)
        sums.append((node.GetID(), hashlib.sha1(np.ascontiguousarray(data).tobytes()).hexdigest()))
    return ids, xml, tuple(sums)
