"""A radiograph loaded the way Slicer's DICOM module loads it: geometry and C-arm angles from the DICOM database.

The volume node is read from a real DICOM file through Slicer's archetype storage node and given the
``DICOM.instanceUIDs`` attribute, as the DICOM scalar volume plugin does; ``slicer.dicomDatabase`` is the
project's stand-in (Testing/slicer_stubs/dicom_database.py) over the same real files.
"""

import numpy as np
import pytest
from dicom_files import write_xa
from mrml_scene import load_node, scene_state
from slicer_inputs import ct_phantom, write_volume
from slicer_stubs.dicom_database import DicomDatabase
from XRayCTRegistrationLib.carm import CArmPosition, world_from_carm
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import ReferenceView
from XRayCTRegistrationLib.xray import read_xray
from XRayCTRegistrationSlicerLib import dicom


@pytest.fixture
def dicom_xray(ns, tmp_path, monkeypatch):
    """An XA file (LAO 20, CAU 12, SID 740, SDD 1000, 5 x 4 mm pixels), its node and the database holding it."""
    path = tmp_path / "xa.dcm"
    pixels = (np.arange(40 * 48).reshape(40, 48) % 900).astype(float)
    uid = write_xa(path, pixels, sdd=1000.0, spacing=(5.0, 4.0), primary=20.0, secondary=-12.0, sid=740.0)
    node = load_node(ns.scene, path, "XA")
    node.SetAttribute(dicom.INSTANCE_UIDS_ATTRIBUTE, uid)
    database = DicomDatabase([path])
    monkeypatch.setattr(ns.slicer, "dicomDatabase", database, raising=False)
    return path, node, database


def test_geometry_from_database_same_as_library_reader(module, dicom_xray):
    path, node, database = dicom_xray
    logic = module.XRayCTRegistrationLogic()
    assert node.GetAttribute(module.DICOM_SDD_ATTRIBUTE) is None  # the DICOM plugin sets no geometry attributes
    assert logic.geometryFromAttributes(node) == {"sdd": 1000.0, "rowSpacing": 5.0, "colSpacing": 4.0}
    assert logic.cameraFromNode(node) == read_xray(path).camera
    # attributes set on the node win over the database
    node.SetAttribute(module.DICOM_SDD_ATTRIBUTE, "1100")
    assert logic.geometryFromAttributes(node)["sdd"] == 1100.0
    # the principal point comes from the arguments
    camera = logic.cameraFromNode(node, x0=3.5, y0=-2.0)
    assert (camera.x0, camera.y0) == (3.5, -2.0)


def test_pixel_spacing_fallback_and_missing_tags_follow_library_rules(ns, module, tmp_path, monkeypatch):
    logic = module.XRayCTRegistrationLogic()
    path = tmp_path / "nosdd.dcm"
    uid = write_xa(path, np.ones((8, 10)), sdd=None, spacing=(0.5, 0.25))
    node = load_node(ns.scene, path, "no sdd")
    node.SetAttribute(dicom.INSTANCE_UIDS_ATTRIBUTE, uid)
    monkeypatch.setattr(ns.slicer, "dicomDatabase", DicomDatabase([path]), raising=False)
    values, report = dicom.geometryFromDatabase(node)
    assert values == {"rowSpacing": 0.5, "colSpacing": 0.25}
    assert "geometry unknown: DICOM tags lack DistanceSourceToDetector (0018,1110)" in report
    with pytest.raises(InputError, match="imaging geometry missing \\(sdd\\)"):
        logic.cameraFromNode(node)


def test_node_without_database_has_no_geometry(ns, module, monkeypatch):
    node = ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain")
    monkeypatch.setattr(ns.slicer, "dicomDatabase", None, raising=False)
    assert module.XRayCTRegistrationLogic.geometryFromAttributes(node) == {}
    node.SetAttribute(dicom.INSTANCE_UIDS_ATTRIBUTE, "1.2.3")
    monkeypatch.setattr(ns.slicer, "dicomDatabase", DicomDatabase(), raising=False)  # UID not in the database
    assert module.XRayCTRegistrationLogic.geometryFromAttributes(node) == {}
    with pytest.raises(InputError, match="'plain': not loaded from the DICOM database"):
        dicom.carmPositionOfNode(node)


def test_initialise_from_dicom_gives_the_carm_pose(ns, module, dicom_xray, tmp_path):
    path, node, database = dicom_xray
    volume = ct_phantom()
    write_volume(tmp_path / "ct.nrrd", volume.data.astype(np.int16), volume.ijk_to_ras)
    ct = load_node(ns.scene, tmp_path / "ct.nrrd", "CT")
    logic = module.XRayCTRegistrationLogic()
    before = scene_state(ns.scene)
    params = logic.initialiseFromDicom(ct, node)
    assert scene_state(ns.scene) == before
    reference = ReferenceView.ap(volume.center, 1000.0)
    expected = world_from_carm(CArmPosition(20.0, -12.0, 740.0), volume.center, 1000.0)
    np.testing.assert_allclose(reference.pose(params), expected, atol=1e-9)
    np.testing.assert_allclose(logic.poseFromParameters(ct, node, params), expected, atol=1e-9)
