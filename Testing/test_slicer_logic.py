"""The Slicer module's logic on a real MRML scene (slicer-core), headless.

The CT and X-ray of the ``inputs`` fixture are files read through Slicer's own storage nodes
(see slicer_inputs), so the tests also check the RAS/LPS handling between the library and Slicer.
"""

import numpy as np
import pytest
from mrml_scene import load_node, make_scene, render_slice, scene_state
from slicer_inputs import POSE, SDD, simulated_xray, write_volume
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera, ReferenceView


# -- conversions -------------------------------------------------------------------------------
def test_ct_node_to_volume_matches_file(ns, module, inputs):
    ct, xray, volume, *_ = inputs
    logic = module.XRayCTRegistrationLogic()
    converted = logic.volumeFromNode(ct)
    np.testing.assert_allclose(converted.ijk_to_ras, volume.ijk_to_ras, atol=1e-6)
    np.testing.assert_array_equal(converted.data, volume.data.astype(np.int16))
    # a parent transform moves the CT in the world
    shift = ns.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = np.eye(4)
    m[:3, 3] = [5, 6, 7]
    shift.SetMatrixTransformToParent(ns.slicer.util.vtkMatrixFromArray(m))
    ct.SetAndObserveTransformNodeID(shift.GetID())
    np.testing.assert_allclose(logic.volumeFromNode(ct).ijk_to_ras, m @ volume.ijk_to_ras, atol=1e-6)


def test_xray_node_to_image_and_camera(module, inputs):
    ct, xray, volume, camera, image, _ = inputs
    logic = module.XRayCTRegistrationLogic()
    np.testing.assert_allclose(logic.xrayImageFromNode(xray), image, rtol=1e-6)
    assert logic.cameraFromNode(xray) == camera  # geometry from the DICOM attributes
    given = logic.cameraFromNode(xray, sdd=1200.0, rowSpacing=0.5, colSpacing=0.25)  # arguments win
    assert (given.sdd, given.row_spacing, given.col_spacing, given.rows, given.cols) == (1200.0, 0.5, 0.25, 48, 40)


def test_geometry_attributes_parsing(ns, module):
    node = ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    logic = module.XRayCTRegistrationLogic
    assert logic.geometryFromAttributes(node) == {}
    node.SetAttribute(module.DICOM_SPACING_ATTRIBUTE, "0.139\\0.143")
    node.SetAttribute(module.DICOM_SDD_ATTRIBUTE, "1040.5")
    assert logic.geometryFromAttributes(node) == {"sdd": 1040.5, "rowSpacing": 0.139, "colSpacing": 0.143}
    node.SetAttribute(module.DICOM_SPACING_ATTRIBUTE, "abc")
    with pytest.raises(InputError, match="ImagerPixelSpacing"):
        logic.geometryFromAttributes(node)


# -- detector placement and projection ----------------------------------------------------------
def test_known_point_projects_to_right_pixel_and_lands_on_detector(ns, module, tmp_path):
    """A bright bead at a known world point: the DRR's peak sits at the pixel the camera projects it to,
    and the detector voxel of that pixel lies on the ray from the source through the point."""
    ijk_to_ras = np.array([[-3.0, 0, 0, 80.0], [0, 3.0, 0, -50.0], [0, 0, 4.0, 20.0], [0, 0, 0, 1]])  # LAS-like
    data = np.full((30, 36, 32), -1000, np.int16)
    bead_ijk = np.array([21, 11, 19])  # i, j, k
    data[bead_ijk[2] - 1:bead_ijk[2] + 2, bead_ijk[1] - 1:bead_ijk[1] + 2, bead_ijk[0] - 1:bead_ijk[0] + 2] = 3000
    write_volume(tmp_path / "bead.nii.gz", data, ijk_to_ras)
    bead_world = (ijk_to_ras @ np.append(bead_ijk, 1.0))[:3]
    ct = load_node(ns.scene, tmp_path / "bead.nii.gz", "bead")
    xray = ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
    ns.slicer.util.updateVolumeFromArray(xray, np.zeros((1, 64, 56), np.float32))
    camera = Camera(sdd=SDD, rows=64, cols=56, row_spacing=2.0, col_spacing=2.5)
    logic = module.XRayCTRegistrationLogic()
    params = [10.0, -15.0, 20.0, 4.0, -6.0, 30.0]
    drr_node = logic.renderDrr(ct, xray, params, sdd=SDD, rowSpacing=2.0, colSpacing=2.5, maxSize=None)
    pose = logic.poseFromParameters(ct, xray, params, SDD, 2.0, 2.5)
    row, col = camera.project(bead_world, pose)
    drr = ns.slicer.util.arrayFromVolume(drr_node)[0]
    peak = np.unravel_index(np.argmax(drr), drr.shape)
    assert abs(peak[0] - row) <= 3 and abs(peak[1] - col) <= 3, (peak, row, col)  # the bead spans pixels
    # intensity-weighted centre of the bright spot: sub-pixel agreement (the library alone gives 0.002 px)
    spot = np.clip(drr - np.median(drr), 0, None)
    rr, cc = np.indices(drr.shape)
    assert abs((spot * rr).sum() / spot.sum() - row) < 0.05
    assert abs((spot * cc).sum() / spot.sum() - col) < 0.05
    # X-ray node placement: pixel (r, c) = voxel (i=c, j=r, k=0) lands at world_from_camera @ (x(c), y(r), sdd)
    ijk_to_world = logic.ijkToWorld(xray)
    centers = camera.pixel_centers()
    for r, c in [(0, 0), (0, 55), (63, 0), (17, 41)]:
        expected = pose[:3, :3] @ centers[r, c] + pose[:3, 3]
        np.testing.assert_allclose((ijk_to_world @ [c, r, 0, 1])[:3], expected, atol=1e-6)
    # the detector point of the bead's pixel is on the ray source -> bead, at distance sdd along +z
    hit = (ijk_to_world @ [col, row, 0, 1])[:3]
    source, axis = pose[:3, 3], pose[:3, 2]
    assert np.dot(hit - source, axis) == pytest.approx(SDD, abs=1e-6)
    ray = (bead_world - source) / np.linalg.norm(bead_world - source)
    assert np.linalg.norm(np.cross(hit - source, ray)) < 1e-6
    # the DRR node (same resolution here) shares the X-ray's IJKToRAS
    np.testing.assert_allclose(logic.ijkToWorld(drr_node), ijk_to_world, atol=1e-9)


def test_preview_drr_covers_the_same_detector_area(ns, module, inputs):
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    drr_node = logic.renderDrr(ct, xray, POSE, maxSize=16)
    assert ns.slicer.util.arrayFromVolume(drr_node).shape == (1, 16, 13)
    small = logic.ijkToWorld(drr_node)
    full = logic.ijkToWorld(xray)
    # the outer corners of the two images coincide (same detector area, coarser pixels)
    for corner_full, corner_small in [((-0.5, -0.5), (-0.5, -0.5)), ((39.5, 47.5), (12.5, 15.5))]:
        np.testing.assert_allclose((full @ [*corner_full, 0, 1])[:3], (small @ [*corner_small, 0, 1])[:3],
                                   atol=1e-6)


# -- outputs end to end -------------------------------------------------------------------------
def test_outputs_end_to_end(ns, module, inputs):
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    n_before = ns.scene.GetNumberOfNodes()
    transform, drr_node = logic.updateOutputs(ct, xray, POSE, maxSize=None)
    assert ns.scene.GetNumberOfNodes() > n_before
    assert transform.IsA("vtkMRMLLinearTransformNode") and drr_node.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(ns.slicer.util.arrayFromTransformMatrix(transform), pose, atol=1e-6)
    drr = ns.slicer.util.arrayFromVolume(drr_node)[0]
    # the DRR at the true pose reproduces the simulated X-ray (same renderer, more samples)
    ncc = np.corrcoef(drr.ravel(), image.ravel())[0, 1]
    assert ncc > 0.995
    other, _ = simulated_xray(volume, camera, POSE + [0, 0, 0, 20, 0, 0])
    assert np.corrcoef(drr.ravel(), other.ravel())[0, 1] < ncc - 0.01
    # re-rendering writes into the same nodes
    transform2, drr_node2 = logic.updateOutputs(ct, xray, np.zeros(6), transform, drr_node, maxSize=20)
    assert (transform2, drr_node2) == (transform, drr_node)
    assert ns.slicer.util.arrayFromVolume(drr_node).shape == (1, 20, 17)
    ref = ReferenceView.ap(volume.center, SDD)
    np.testing.assert_allclose(ns.slicer.util.arrayFromTransformMatrix(transform), ref.world_from_camera, atol=1e-6)


def test_scene_saved_to_mrb_and_read_back(ns, module, inputs, tmp_path):
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    params = logic.getParameterNode()
    params.ctVolume, params.xrayVolume, params.rz, params.method = ct, xray, 7.5, "opt-gc"
    transform, drr_node = logic.updateOutputs(ct, xray, POSE, maxSize=24)
    params.outputTransform, params.outputDrr = transform, drr_node
    drr = ns.slicer.util.arrayFromVolume(drr_node).copy()
    xray_ijk = logic.ijkToWorld(xray)
    path = tmp_path / "scene.mrb"
    assert ns.scene.WriteToMRB(str(path))

    ns2 = make_scene(tmp_path / "cache2")
    assert ns2.scene.ReadFromMRB(str(path), True)
    x2 = ns2.scene.GetFirstNodeByName("X-ray")
    t2 = ns2.scene.GetNodeByID(transform.GetID())
    d2 = ns2.scene.GetNodeByID(drr_node.GetID())
    np.testing.assert_allclose(ns2.slicer.util.arrayFromTransformMatrix(t2), pose, atol=1e-6)
    np.testing.assert_allclose(ns2.slicer.util.arrayFromVolume(d2), drr, rtol=1e-6)
    np.testing.assert_allclose(logic.ijkToWorld(x2), xray_ijk, atol=1e-4)
    assert x2.GetAttribute(module.DICOM_SDD_ATTRIBUTE) == str(SDD)
    params2 = module.XRayCTRegistrationLogic().getParameterNode()
    assert params2.rz == 7.5 and params2.method == "opt-gc"
    assert params2.outputTransform.GetID() == t2.GetID() and params2.ctVolume.GetName() == "CT"


# -- fusion -------------------------------------------------------------------------------------
def test_fusion_slice_view_holds_both_layers(ns, module, inputs):
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    # a DRR away from the X-ray's pose, so the two layers differ
    _, drr_node = logic.updateOutputs(ct, xray, POSE + [0, 0, 25, 30, 0, 0], maxSize=None)
    ns.slice_node.SetDimensions(camera.cols, camera.rows, 1)  # one view pixel per image pixel
    logic.showFusion(xray, drr_node, 1.0)
    assert ns.composite_node.GetBackgroundVolumeID() == xray.GetID()
    assert ns.composite_node.GetForegroundVolumeID() == drr_node.GetID()
    display = xray.GetDisplayNode()  # full-range window, so the rendered grey levels are linear in the X-ray
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(image.min()), float(image.max()))
    fg = render_slice(ns.slice_logic)[..., 0].astype(float)
    ns.composite_node.SetForegroundVolumeID(None)
    bg = render_slice(ns.slice_logic)[..., 0].astype(float)
    logic.showFusion(xray, drr_node, 0.5)
    assert ns.composite_node.GetForegroundOpacity() == 0.5
    fused = render_slice(ns.slice_logic)[..., 0].astype(float)
    # the slice is the X-ray plane, shown as a radiograph: the background is the X-ray, row 0 at the top
    # (a slice view samples at pixel corners: view pixel (r, c) is the image at (r + 0.5, c - 0.5), bilinear)
    expected = 0.25 * (image[1:, :-1] + image[1:, 1:] + image[:-1, :-1] + image[:-1, 1:])[:, :]  # at (r+.5, c+.5)
    view = bg[:-1, 1:]  # view (r, c+1) samples image (r + 0.5, c + 0.5)
    assert np.corrcoef(view.ravel(), expected.ravel())[0, 1] > 0.9999
    assert np.corrcoef(view.ravel(), expected[::-1].ravel())[0, 1] < 0.7
    assert np.corrcoef(view.ravel(), expected[:, ::-1].ravel())[0, 1] < 0.8
    # the fusion holds both layers: it differs from each and is their blend
    assert np.abs(fused - bg).mean() > 5 and np.abs(fused - fg).mean() > 5
    assert np.abs(fused - 0.5 * (bg + fg)).mean() < 1.5


def test_slice_to_ras_for_image(module):
    logic = module.XRayCTRegistrationLogic
    ijk = np.array([[0, 0, 1.0, 5], [-2.0, 0, 0, 6], [0, -3.0, 0, 7], [0, 0, 0, 1]])
    m = logic.sliceToRASForImage(ijk, (10, 20))
    np.testing.assert_allclose(m[:3, 0], [0, -1, 0])  # screen right = +i (columns)
    np.testing.assert_allclose(m[:3, 1], [0, 0, 1])  # screen up = -j (row 0 at the top)
    np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-12)
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0)
    np.testing.assert_allclose(m[:3, 3], ijk[:3, :3] @ [4.5, 9.5, 0] + ijk[:3, 3])
    fov = logic.fieldOfViewForImage(ijk, (10, 20), (100, 100))
    assert fov[:2] == pytest.approx((60.0, 60.0))  # 10 x 2 mm wide, 20 x 3 mm high, square view


# -- bad input: clear error, scene unchanged --------------------------------------------------------
def test_bad_inputs_raise_and_leave_scene_unchanged(ns, module, inputs):
    ct, xray, volume, camera, image, pose = inputs
    logic = module.XRayCTRegistrationLogic()
    plain = ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "plain X-ray")
    ns.slicer.util.updateVolumeFromArray(plain, np.ones((1, 8, 8), np.float32))
    nan_ct = ns.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "NaN CT")
    bad = volume.data.copy()
    bad[3, 4, 5] = np.nan
    ns.slicer.util.updateVolumeFromArray(nan_ct, bad)
    cases = [
        (dict(ctNode=None, xrayNode=xray), "CT volume: none selected"),
        (dict(ctNode=ct, xrayNode=None), "X-ray volume: none selected"),
        (dict(ctNode=ct, xrayNode=ct), "'CT': is a 3D volume with 40 slices"),
        (dict(ctNode=ct, xrayNode=plain), "imaging geometry missing (sdd, rowSpacing, colSpacing)"),
        (dict(ctNode=nan_ct, xrayNode=xray), "'NaN CT': holds NaN"),
        (dict(ctNode=ct, xrayNode=xray, params=[0, 0, np.nan, 0, 0, 0]), "pose parameters"),
    ]
    before = scene_state(ns.scene)
    for kwargs, message in cases:
        args = dict(params=np.zeros(6)) | kwargs
        for method in (logic.updateOutputs, logic.renderDrr):
            with pytest.raises(InputError) as err:
                method(args["ctNode"], args["xrayNode"], args["params"])
            assert message in str(err.value)
            assert "\n" not in str(err.value)
        assert scene_state(ns.scene) == before, message
    with pytest.raises(InputError, match="linear transform"):
        logic.updateOutputs(ct, xray, np.zeros(6), outputTransform=ns.scene.AddNewNodeByClass(
            "vtkMRMLGridTransformNode"))


# -- training helper ----------------------------------------------------------------------------
def test_train_command_and_progress_lines(module):
    logic = module.XRayCTRegistrationLogic
    cmd = logic.trainCommand("/data/ct.nrrd", "/data/geom.json", "/out dir/m.pt", python="/opt/PythonSlicer",
                             iterations=3, extraArgs=["--seed", 3])
    assert cmd[:5] == ["/opt/PythonSlicer", "-m", "XRayCTRegistrationLib.cli", "train", "--ct"]
    assert cmd[cmd.index("--out") + 1] == "/out dir/m.pt" and cmd[-2:] == ["--seed", "3"]
    assert cmd[cmd.index("--iterations") + 1] == "3" and "--time-budget" not in cmd
    assert "'/out dir/m.pt'" in logic.commandText(cmd)
    assert logic.trainEnvironment()["PYTHONPATH"].split(":")[0].endswith("XRayCTRegistration")
    with pytest.raises(InputError, match="ctPath"):
        logic.trainCommand("", "g.json", "out.pt")
    assert logic.parseProgressLine("PROGRESS 0.25 epoch 3/12 loss 0.41\n") == (0.25, "epoch 3/12 loss 0.41")
    assert logic.parseProgressLine("PROGRESS 1.7") == (1.0, "")
    assert logic.parseProgressLine("PROGRESS -1 start") == (0.0, "start")
    for line in ("loss 0.3", "PROGRESS", "PROGRESS abc x", "PROGRESS nan x", "progress 0.5 x", ""):
        assert logic.parseProgressLine(line) is None


def test_parameter_node_defaults_and_ranges(ns, module):
    params = module.XRayCTRegistrationLogic().getParameterNode()
    assert (params.sdd, params.method, params.fusionOpacity, params.xrayKind) == (0.0, "opt-lncc", 0.5, "auto")
    assert (params.initialiserMethod, params.trainingMinutes, module.modelPath(params)) == ("regressor", 15.0, "")
    params.initialiserModel = module.pathlib.Path("/models/ct model.pt")
    assert module.modelPath(params) == "/models/ct model.pt"
    with pytest.raises(ValueError):
        params.initialiserMethod = "cnn"
    np.testing.assert_array_equal(module.poseParameters(params), np.zeros(6))
    params.tz = -300.0
    with pytest.raises(ValueError):
        params.rx = 181.0
    with pytest.raises(ValueError):
        params.method = "no-such-method"
    params.xrayKind = "intensity"
    assert params.xrayKind == "intensity"
    with pytest.raises(ValueError):
        params.xrayKind = "raw"
