"""XRayCTRegistrationSlicerLib without Slicer: the training process driver on a stand-in process, the
numpy-only helpers, and the detector placement of Camera against exact answers."""

import numpy as np
import pytest
from XRayCTRegistrationLib.errors import InputError
from XRayCTRegistrationLib.geometry import Camera
from XRayCTRegistrationSlicerLib import images
from XRayCTRegistrationSlicerLib.training_process import NORMAL_EXIT, TrainingProcess


class FakeProcess:
    """Stands in for qt.QProcess: the test pushes output chunks and ends the process."""

    def __init__(self, environment, starts=True):
        self.environment, self.starts = environment, starts
        self.slots, self.buffer, self.started, self.killed = {}, b"", None, False

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def start(self, program, args):
        self.started = [program, *args]

    def waitForStarted(self, ms):
        return self.starts

    def errorString(self):
        return "no such program"

    def readAllStandardOutput(self):
        data, self.buffer = self.buffer, b""
        return data

    def processId(self):
        return 0  # no operating-system process behind it

    def kill(self):
        self.killed = True

    def waitForFinished(self, ms):
        return True

    def push(self, text):
        self.buffer += text.encode()
        self.slots["readyReadStandardOutput()"]()

    def finish(self, code=0, status=NORMAL_EXIT):
        self.slots["finished(int,QProcess::ExitStatus)"](code, status)


@pytest.fixture
def driver():
    events = {"progress": [], "outcomes": [], "processes": []}

    def factory(environment):
        events["processes"].append(FakeProcess(environment))
        return events["processes"][-1]

    tp = TrainingProcess(lambda f, m: events["progress"].append((f, m)), events["outcomes"].append, factory)
    return tp, events


def test_training_process_streams_progress_and_reports_success(driver, tmp_path):
    tp, events = driver
    model = tmp_path / "m.pt"
    tp.start(["python", "-m", "XRayCTRegistrationLib.cli", "train"], {"PYTHONPATH": "/lib"}, str(model))
    process = events["processes"][0]
    assert tp.running and process.started == ["python", "-m", "XRayCTRegistrationLib.cli", "train"]
    assert process.environment == {"PYTHONPATH": "/lib"}
    process.push("PROGRESS 0.25 step 1/4\nPROGR")  # a line cut in two chunks waits for its end
    assert events["progress"] == [(0.25, "step 1/4")]
    process.push("ESS 0.5 step 2/4\nwarning: slow\n")
    assert events["progress"] == [(0.25, "step 1/4"), (0.5, "step 2/4")]
    model.write_bytes(b"x")
    process.push("trained 4 steps in 1.0 s")  # no newline at the end: taken when the process ends
    process.finish(0)
    (outcome,) = events["outcomes"]
    assert not tp.running and outcome.state == "trained" and outcome.modelPath == str(model)
    assert outcome.summary == "trained 4 steps in 1.0 s" and outcome.log == ["warning: slow", outcome.summary]


def test_training_process_cancel_and_failure(driver, tmp_path):
    tp, events = driver
    tp.start(["python"], {}, str(tmp_path / "none.pt"))
    tp.cancel()
    assert events["processes"][0].killed
    events["processes"][0].finish(9, 1)
    assert events["outcomes"][-1].state == "cancelled" and not events["outcomes"][-1].checkpointKept
    (tmp_path / "kept.pt").write_bytes(b"x")
    tp.start(["python"], {}, str(tmp_path / "kept.pt"))
    tp.stop()
    events["processes"][1].finish(9, 1)
    assert events["outcomes"][-1].state == "cancelled" and events["outcomes"][-1].checkpointKept
    tp.start(["python"], {}, str(tmp_path / "m.pt"))
    events["processes"][2].push("".join(f"line {i}\n" for i in range(30)) + "Traceback: boom\n")
    events["processes"][2].finish(1)
    failed = events["outcomes"][-1]
    assert failed.state == "failed" and failed.exitCode == 1
    assert len(failed.log) == 20 and failed.log[-1] == "Traceback: boom"
    tp.start(["python"], {}, str(tmp_path / "m.pt"))
    events["processes"][3].finish(0, 1)  # crashed: not a normal exit
    assert events["outcomes"][-1].state == "failed"


def test_training_process_that_cannot_start():
    tp = TrainingProcess(lambda f, m: None, lambda o: None, lambda env: FakeProcess(env, starts=False))
    with pytest.raises(RuntimeError, match="Could not start nothing: no such program"):
        tp.start(["nothing"], {}, "m.pt")
    assert not tp.running


def test_detector_ijk_to_camera_lands_on_pixel_centres():
    cam = Camera(sdd=900.0, rows=5, cols=7, row_spacing=0.5, col_spacing=2.0, x0=3.0, y0=-1.0)
    m = cam.detector_ijk_to_camera()
    centres = cam.pixel_centers()
    for r, c in [(0, 0), (4, 6), (2, 3)]:
        np.testing.assert_allclose((m @ [c, r, 0.0, 1.0])[:3], centres[r, c], atol=1e-12)
    # exact: pixel (0, 0) at x = (0.5 - 3.5) * 2 + 3 = -3, y = (0.5 - 2.5) * 0.5 - 1 = -2, z = sdd; k along +z, 1 mm
    np.testing.assert_allclose(m @ [0, 0, 0, 1], [-3.0, -2.0, 900.0, 1.0])
    np.testing.assert_allclose(m @ [0, 0, 1, 1], [-3.0, -2.0, 901.0, 1.0])


def test_image_helpers():
    assert images.geometryFromAttributeValues("1020", "0.2\\0.3", "X") == {"sdd": 1020.0, "rowSpacing": 0.2,
                                                                         "colSpacing": 0.3}
    assert images.geometryFromAttributeValues(None, "0.4", "X") == {"rowSpacing": 0.4, "colSpacing": 0.4}
    with pytest.raises(InputError, match="X-ray volume 'X': attribute DICOM.ImagerPixelSpacing='a' is not"):
        images.geometryFromAttributeValues("", "a", "X")
    cam = images.cameraFromValues((32, 48), {"sdd": 0.0, "rowSpacing": 0.5, "colSpacing": 0.0},
                                  {"sdd": 1000.0, "colSpacing": 0.7}, "X")
    assert (cam.sdd, cam.rows, cam.cols, cam.row_spacing, cam.col_spacing) == (1000.0, 32, 48, 0.5, 0.7)
    with pytest.raises(InputError, match=r"imaging geometry missing \(sdd\)"):
        images.cameraFromValues((4, 4), {"sdd": 0.0, "rowSpacing": 1.0, "colSpacing": 1.0}, {}, "X")


def test_geometry_from_a_sidecar_attribute():
    text = '{"sdd": 1020, "rows": 32, "cols": 48, "row_spacing": 0.5, "col_spacing": 0.7, "x0": 3.5, "y0": -2}'
    tags = images.geometryFromSidecarAttribute(text, "X")
    assert tags == {"sdd": 1020.0, "rowSpacing": 0.5, "colSpacing": 0.7, "x0": 3.5, "y0": -2.0, "rows": 32.0,
                    "cols": 48.0}
    assert images.geometryFromSidecarAttribute(None, "X") == {}
    zero = {"sdd": 0.0, "rowSpacing": 0.0, "colSpacing": 0.0, "x0": 0.0, "y0": 0.0}
    cam = images.cameraFromValues((32, 48), zero, tags, "X")  # 0 entered: the attribute's values, x0 and y0 too
    assert (cam.sdd, cam.row_spacing, cam.col_spacing, cam.x0, cam.y0) == (1020.0, 0.5, 0.7, 3.5, -2.0)
    cam = images.cameraFromValues((32, 48), {**zero, "x0": 1.0, "sdd": 900.0}, tags, "X")  # entered values win
    assert (cam.sdd, cam.x0, cam.y0) == (900.0, 1.0, -2.0)
    with pytest.raises(InputError, match=r"its geometry is for 32x48 pixels \(rows x cols\), the image has 48x32"):
        images.cameraFromValues((48, 32), zero, tags, "X")
    for bad, why in (("{", "is not a geometry sidecar"), ("[1]", "is not a geometry sidecar"),
                     ('{"sdd": "far"}', "sdd='far' is not a finite number"), ('{"x0": NaN}', "x0=nan is not")):
        with pytest.raises(InputError, match=f"X-ray volume 'X': attribute XRayCTRegistration.Geometry.*{why}"):
            images.geometryFromSidecarAttribute(bad, "X")
    with pytest.raises(InputError, match="CT 'c': expected a 3D volume, got 4x4x1 voxels"):
        images.checkImageData("CT 'c'", (4, 4, 1), 1, xray=False)
    with pytest.raises(InputError, match="is a 3D volume with 3 slices"):
        images.checkImageData("X-ray 'x'", (4, 4, 3), 1, xray=True)
    with pytest.raises(InputError, match="expected a grey-level image, got 3 components"):
        images.checkImageData("X-ray 'x'", (4, 4, 1), 3, xray=True)
    with pytest.raises(InputError, match="holds NaN"):
        images.finiteFloat32(np.array([1.0, np.nan]), "X-ray 'x'")
    np.testing.assert_array_equal(images.checkParams([1, 2, 3, 4, 5, 6]), np.arange(1.0, 7.0))
    small = images.previewCamera(Camera(1000.0, 256, 128, 1.0, 1.0), 64)
    assert (small.rows, small.cols, small.row_spacing) == (64, 32, 4.0)
