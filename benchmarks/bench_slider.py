"""Time a live pose-slider update in the Slicer module: DRR re-render at preview resolution through the logic.

A slider move calls XRayCTRegistrationLogic.updatePosePreview(..., maxSize=PREVIEW_SIZE), as the widget does:
pose from the six parameters, DRR at preview resolution written into the DRR node and placed on the detector,
the X-ray's display copy moved by its pose transform (the X-ray node itself is not changed).
Runs headless on a real MRML scene (slicer-core) with the sample chest CT. Each run is a fresh logic
(first render = set-up) followed by ``--updates`` timed slider moves at random poses; the machine's
load average is recorded before and after, since the timings depend on what else runs.

    python benchmarks/bench_slider.py [CT.nii.gz] [--runs 5] [--updates 30] [--call updatePosePreview|renderDrr]
        [--out benchmarks/results/slider.md]
"""

import argparse
import os
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


def p90(values):
    return float(np.percentile(values, 90))


def one_update(logic, M, ct, xray, params, nodes: tuple, call: str) -> tuple:
    """One slider move through ``call``; returns the nodes it wrote ``(drr, transform, display volume)``."""
    if call == "renderDrr":  # the path before the preview moved a transform (the X-ray node is rewritten)
        return logic.renderDrr(ct, xray, params, drrNode=nodes[0], maxSize=M.PREVIEW_SIZE), None, None
    drr, preview = logic.updatePosePreview(ct, xray, params, nodes[0], nodes[1:], maxSize=M.PREVIEW_SIZE)
    return (drr, *preview)


def one_run(ns, M, ct, xray, updates: int, seed: int, call: str) -> tuple[float, list[float], object]:
    """First render (set-up) time, slider update times (s) and the logic of one run with a fresh logic."""
    logic = M.XRayCTRegistrationLogic()
    t0 = time.perf_counter()
    nodes = one_update(logic, M, ct, xray, np.zeros(6), (None, None, None), call)
    first = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(updates):
        params = rng.uniform([-10, -10, -10, -20, -20, -40], [10, 10, 10, 20, 20, 40])
        t0 = time.perf_counter()
        nodes = one_update(logic, M, ct, xray, params, nodes, call)
        times.append(time.perf_counter() - t0)
    for node in nodes:
        if node is not None:
            ns.scene.RemoveNode(node)
    return first, times, logic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ct", nargs="?", help="CT file (default: XRayCTRegistrationLib.data.sample_ct_path())")
    ap.add_argument("--runs", type=int, default=5, help="runs, each with a fresh logic")
    ap.add_argument("--updates", type=int, default=30, help="slider updates timed per run")
    ap.add_argument("--detector", type=int, default=512, help="X-ray size in pixels (square)")
    ap.add_argument("--call", choices=("updatePosePreview", "renderDrr"), default="updatePosePreview",
                    help="the logic call timed: the widget's live preview (default) or the older renderDrr path")
    ap.add_argument("--out", help="write a Markdown table here")
    args = ap.parse_args()
    if args.ct is None:
        from XRayCTRegistrationLib import data

        args.ct = str(data.sample_ct_path())

    import torch
    from mrml_scene import blank_xray_node, load_node, make_scene
    from XRayCTRegistrationSlicerLib.rendering import samplesPerRay

    ns = make_scene(Path(tempfile.mkdtemp()) / "cache")
    import XRayCTRegistration as M

    ct = load_node(ns.scene, args.ct, "CT")
    xray = blank_xray_node(ns.scene, M, args.detector)
    load_before = os.getloadavg()
    runs = [one_run(ns, M, ct, xray, args.updates, seed, args.call) for seed in range(args.runs)]
    load_after = os.getloadavg()

    logic = runs[-1][2]
    volume = logic.attenuationVolume(ct)
    camera = logic.previewCamera(logic.cameraFromNode(xray), M.PREVIEW_SIZE)
    samples = samplesPerRay(volume, M.PREVIEW_SIZE, M.PREVIEW_SIZE)
    all_times = [t for _, times, _ in runs for t in times]
    medians = [statistics.median(times) for _, times, _ in runs]
    dims = ct.GetImageData().GetDimensions()
    n = args.detector
    lines = [
        "# Live slider update (Slicer module, headless)",
        "",
        f"`python benchmarks/bench_slider.py --runs {args.runs} --updates {args.updates} --call {args.call}` — "
        f"`XRayCTRegistrationLogic.{args.call}(..., maxSize=PREVIEW_SIZE)` per slider move"
        + (", as the widget calls it: pose, DRR at preview resolution written into its node and placed on the "
           "detector, the X-ray's display copy moved by its pose transform (the X-ray node is not changed)."
           if args.call == "updatePosePreview" else ": pose, DRR at preview resolution written into its node and "
           "placed on the detector, the X-ray node moved (the path before the live preview used a transform)."),
        "",
        f"- CT: `{Path(args.ct).name}`, {dims[0]}x{dims[1]}x{dims[2]} voxels; X-ray {n}x{n}; "
        f"preview DRR {camera.cols}x{camera.rows}, {samples} samples per ray, full-resolution CT",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)}",
        "",
        "| run | first render (set-up), s | median update, s | p90 update, s | slowest, s |",
        "|---|---|---|---|---|",
    ]
    for i, (first, times, _) in enumerate(runs, 1):
        lines.append(f"| {i} | {first:.3f} | {statistics.median(times):.4f} | {p90(times):.4f} | {max(times):.4f} |")
    lines += [
        f"| all {len(all_times)} updates | | {statistics.median(all_times):.4f} | {p90(all_times):.4f} | "
        f"{max(all_times):.4f} |",
        "",
        f"Best run's median: {min(medians):.4f} s; median over all updates: {statistics.median(all_times):.4f} s; "
        f"p90 over all updates: {p90(all_times):.4f} s; target < {TARGET_S} s per update: "
        f"{'met' if p90(all_times) < TARGET_S else 'missed'} (p90).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
