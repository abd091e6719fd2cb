"""The live pose preview: the X-ray is shown under a pose transform; the X-ray node itself is never changed."""

import numpy as np
from slicer_inputs import SDD


def _ijk(slicer, node):
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return m


def test_preview_moves_a_transform_not_the_xray_node(ns, module, inputs):
    ct, xray, volume, camera, image, _ = inputs
    logic = module.XRayCTRegistrationLogic()
    ijk_before = ns.slicer.util.arrayFromVTKMatrix(_ijk(ns.slicer, xray))
    voxels_before = ns.slicer.util.arrayFromVolume(xray).copy()
    mtime_before = xray.GetMTime()
    first = [5.0, -3.0, 8.0, 4.0, -6.0, 10.0]
    drr, (transform, shown) = logic.updatePosePreview(ct, xray, first, maxSize=24)
    nodes = ns.scene.GetNumberOfNodes()
    second = [-7.0, 4.0, -2.0, -5.0, 3.0, -8.0]
    drr2, (transform2, shown2) = logic.updatePosePreview(ct, xray, second, drr, (transform, shown), maxSize=24)
    # the same nodes are reused: a slider move adds nothing to the scene
    assert (drr2, transform2, shown2) == (drr, transform, shown) and ns.scene.GetNumberOfNodes() == nodes
    # the input X-ray node is untouched: geometry, parent, voxels, modification time
    np.testing.assert_array_equal(ns.slicer.util.arrayFromVTKMatrix(_ijk(ns.slicer, xray)), ijk_before)
    assert xray.GetTransformNodeID() is None and xray.GetMTime() == mtime_before
    np.testing.assert_array_equal(ns.slicer.util.arrayFromVolume(xray), voxels_before)
    # the shown X-ray shares the node's voxels and sits on the detector at the second pose, through the transform
    assert shown.GetImageData() is xray.GetImageData()
    assert shown.GetTransformNodeID() == transform.GetID()
    pose = logic.poseFromParameters(ct, xray, second)
    np.testing.assert_allclose(ns.slicer.util.arrayFromTransformMatrix(transform), pose, atol=1e-9)
    np.testing.assert_allclose(logic.ijkToWorld(shown), pose @ camera.detector_ijk_to_camera(), atol=1e-6)
    # its centre pixel lies on the principal ray, sdd from the source
    centre = logic.ijkToWorld(shown) @ np.array([(camera.cols - 1) / 2, (camera.rows - 1) / 2, 0.0, 1.0])
    np.testing.assert_allclose(centre[:3], pose[:3, 3] + SDD * pose[:3, 2], atol=1e-6)
    # and the DRR was rendered at that pose onto the same detector plane
    assert ns.slicer.util.arrayFromVolume(drr).shape == (1, 24, 20)
    np.testing.assert_allclose(logic.ijkToWorld(drr)[:3, 2], logic.ijkToWorld(shown)[:3, 2], atol=1e-9)


def test_fusion_shows_the_preview_volume_while_it_exists(ns, module, inputs):
    from XRayCTRegistrationSlicerLib.display import shownXray

    ct, xray, *_ = inputs
    logic = module.XRayCTRegistrationLogic()
    assert shownXray((None, None), xray) is xray
    _, nodes = logic.updatePosePreview(ct, xray, [0, 0, 0, 0, 0, 0], maxSize=16)
    assert shownXray(nodes, xray) is nodes[1]
    ns.scene.RemoveNode(nodes[1])
    assert shownXray(nodes, xray) is xray
