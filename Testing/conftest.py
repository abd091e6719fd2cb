"""Make the library and the Slicer module importable from the source tree; shared fixtures.

The Slicer fixtures import slicer-core, the stand-ins and the module only when a test asks for
them, so the library's tests do not load Slicer.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XRayCTRegistration"))

# Without a GPU the Triton kernels (test_projector_triton.py) run under Triton's interpreter, which must be chosen
# before triton is first imported. Only the triton backend imports triton, and on the CPU only when asked for.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# -- 3D Slicer module (headless, slicer-core) ---------------------------------------------------------
@pytest.fixture
def ns(tmp_path):
    """A fresh MRML scene with the logics the module needs (see mrml_scene.make_scene)."""
    from mrml_scene import make_scene

    return make_scene(tmp_path / "cache")


@pytest.fixture
def module(ns):
    """The Slicer module XRayCTRegistration, imported against the scene of ``ns``."""
    import XRayCTRegistration as M

    return M


@pytest.fixture
def inputs(ns, module, tmp_path):
    """CT phantom node (read from NRRD) and an X-ray node simulated at POSE (read from NIfTI, with DICOM tags).

    Returns ``(ctNode, xrayNode, volume_hu, camera, image, world_from_camera)``; see slicer_inputs.
    """
    from slicer_inputs import make_inputs

    return make_inputs(ns, module, tmp_path)
