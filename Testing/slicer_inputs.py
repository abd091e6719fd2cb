"""Inputs of the Slicer module's tests: a CT phantom and an X-ray simulated from it, as files and as nodes.

Volumes are written with SimpleITK (LPS on disk) and read back through Slicer's own storage nodes,
so the tests also check the RAS/LPS handling between the library and Slicer.
"""

import numpy as np
import SimpleITK as sitk
from mrml_scene import load_node
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.phantoms import chest_phantom
from XRayCTRegistrationLib.projector import render
from XRayCTRegistrationLib.volume import Volume, hu_to_mu

SDD = 1000.0
XRAY_SPACING = 6.0
POSE = np.array([6.0, -4.0, 8.0, 5.0, -7.0, 12.0])
"""Pose parameters (degrees, mm) the X-ray of :func:`make_inputs` is simulated at."""


def write_volume(path, data_kji, ijk_to_ras):
    """Write a 3D array with a RAS ijk_to_ras as an LPS image file (NRRD, NIfTI...)."""
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.asarray(data_kji))
    img.SetSpacing(spacing.tolist())
    img.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    img.SetOrigin(ijk_to_lps[:3, 3].tolist())
    sitk.WriteImage(img, str(path))


def write_image2d(path, image, spacing):
    img = sitk.GetImageFromArray(np.asarray(image, dtype=np.float32))
    img.SetSpacing((spacing, spacing))
    sitk.WriteImage(img, str(path))


def ct_phantom():
    return chest_phantom(shape_ijk=(48, 40, 40), spacing=(4.0, 4.0, 4.0), center=(10.0, -20.0, 30.0))


def xray_camera(rows=48, cols=40):
    return Camera(sdd=SDD, rows=rows, cols=cols, row_spacing=XRAY_SPACING, col_spacing=XRAY_SPACING)


def simulated_xray(volume_hu, camera, params):
    """DRR ``[rows, cols]`` of an HU volume at pose parameters, and the pose (world_from_camera)."""
    mu = Volume(hu_to_mu(volume_hu.data), volume_hu.ijk_to_ras)
    pose = ReferenceView.ap(mu.center, camera.sdd).pose(params)
    return render(mu, camera, pose, n_samples=128), pose


def make_inputs(ns, module, folder):
    """CT phantom (NRRD) and an X-ray simulated at POSE (NIfTI, 2D) with DICOM geometry attributes, as nodes.

    Returns ``(ctNode, xrayNode, volume_hu, camera, image, world_from_camera)``.
    """
    volume = ct_phantom()
    write_volume(folder / "ct.nrrd", volume.data.astype(np.int16), volume.ijk_to_ras)
    camera = xray_camera()
    image, pose = simulated_xray(volume, camera, POSE)
    write_image2d(folder / "xray.nii.gz", image, XRAY_SPACING)
    ct = load_node(ns.scene, folder / "ct.nrrd", "CT")
    xray = load_node(ns.scene, folder / "xray.nii.gz", "X-ray")
    xray.SetAttribute(module.DICOM_SDD_ATTRIBUTE, str(SDD))
    xray.SetAttribute(module.DICOM_SPACING_ATTRIBUTE, f"{XRAY_SPACING}\\{XRAY_SPACING}")
    return ct, xray, volume, camera, image, pose
