"""Release checks of the Slicer module: the gated self-test, Cancel killing the whole training process tree."""

import os
import subprocess
import sys
import time

import pytest
from XRayCTRegistrationSlicerLib.training_process import TrainingProcess, descendantPids, killProcessTree

GRANDPARENT_SCRIPT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
)
"""A launcher that starts a Python child (as PythonSlicer starts the real Python), prints its pid and waits."""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def wait_until_gone(pids, seconds=10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


class PopenProcess:
    """A real operating-system process behind the few QProcess calls TrainingProcess makes."""

    def __init__(self, environment):
        self.environment, self.slots, self.popen = environment, {}, None

    def connect(self, signal, slot):
        self.slots[signal] = slot

    def start(self, program, args):
        self.popen = subprocess.Popen([program, *args], stdout=subprocess.PIPE, text=True)

    def waitForStarted(self, ms):
        return self.popen is not None

    def errorString(self):
        return ""

    def readAllStandardOutput(self):
        return b""

    def processId(self):
        return self.popen.pid

    def kill(self):
        self.popen.kill()

    def waitForFinished(self, ms):
        self.popen.wait(ms / 1000)
        return True


def start_launcher():
    """A TrainingProcess running GRANDPARENT_SCRIPT; returns it, the launcher's and the child's pids."""
    processes = []

    def factory(environment):
        processes.append(PopenProcess(environment))
        return processes[-1]

    training = TrainingProcess(lambda f, m: None, lambda outcome: None, factory)
    training.start([sys.executable, "-c", GRANDPARENT_SCRIPT], {}, "model.pt")
    popen = processes[0].popen
    child = int(popen.stdout.readline())
    return training, popen, child


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_cancel_kills_the_whole_process_tree():
    training, popen, child = start_launcher()
    assert alive(popen.pid) and alive(child)
    assert descendantPids(popen.pid) == [child]
    training.cancel()
    popen.wait(10)
    assert wait_until_gone([popen.pid, child]), "the training's child process survived Cancel"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_killing_the_launcher_alone_leaves_the_child_running():
    """Why the tree is killed: QProcess.kill() ends the launcher only."""
    training, popen, child = start_launcher()
    try:
        popen.kill()
        popen.wait(10)
        time.sleep(0.2)
        assert alive(child)
    finally:
        killProcessTree(child)
    assert wait_until_gone([child])


def test_self_test_skips_heavy_parts_with_a_message(ns, module, monkeypatch, caplog):
    """On a build machine without torch the self-test still checks the module, the GUI and the refusals."""
    monkeypatch.setattr(module.XRayCTRegistrationTest, "heavyPackages", ("numpy", "no_such_package_here"))
    with caplog.at_level("INFO"):
        result = module.XRayCTRegistrationTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures
    assert "Skipped the rendering and registration tests: no_such_package_here not installed" in caplog.text
    assert "Logic refuses bad input" in caplog.text
    assert ns.scene.GetFirstNodeByName("CT") is None and ns.scene.GetFirstNodeByName("X-ray") is None  # none ran


def test_device_choice():
    import torch
    from XRayCTRegistrationLib.errors import InputError
    from XRayCTRegistrationSlicerLib.rendering import resolveDevice

    gpu = torch.cuda.is_available()
    assert resolveDevice("auto") == ("cuda" if gpu else "cpu") and resolveDevice("cpu") == "cpu"
    with pytest.raises(InputError, match="'tpu' is not one of auto, cpu, cuda"):
        resolveDevice("tpu")
    if not gpu:
        with pytest.raises(InputError, match="torch sees no CUDA GPU"):
            resolveDevice("cuda")


def test_device_choice_reaches_the_registration(ns, module, inputs, monkeypatch):
    """The parameter node's device choice, resolved as the widget does, is the device the library registers on."""
    import numpy as np
    from slicer_inputs import POSE
    from XRayCTRegistrationLib import pipeline
    from XRayCTRegistrationSlicerLib.rendering import resolveDevice

    ct, xray, *_ = inputs
    p = module.XRayCTRegistrationLogic().getParameterNode()
    assert p.device == "auto"
    with pytest.raises(ValueError):
        p.device = "tpu"
    p.device = "cpu"
    seen = []
    original = pipeline.register_xray
    monkeypatch.setattr(pipeline, "register_xray", lambda *a, **kw: seen.append(kw["device"]) or original(*a, **kw))
    out = module.XRayCTRegistrationLogic().register(ct, xray, POSE + 1.0, device=resolveDevice(p.device),
                                                    levels=(2, 1), max_iterations=(60, 30), method="opt-ncc")
    assert seen == ["cpu"] and out.result.success and np.abs(out.params - POSE).max() < 1.0
