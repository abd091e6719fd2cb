"""Make Resources/Screenshots/fusion.png: X-ray (grey) with the DRR (warm colours) fused over it in a slice view
turned to the X-ray plane, rendered headless by Slicer's slice logic (slicer-core).

The X-ray is simulated from the chest CT at a known pose with a small pose error left in the DRR, so both
layers show. python benchmarks/fusion_screenshot.py [CT.nii.gz] [--out Resources/Screenshots/fusion.png]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XRayCTRegistration"))
sys.path.insert(0, str(ROOT / "Testing"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ct", nargs="?", help="CT file (default: XRayCTRegistrationLib.data.sample_ct_path())")
    ap.add_argument("--out", default=str(ROOT / "Resources" / "Screenshots" / "fusion.png"))
    ap.add_argument("--size", type=int, default=256, help="X-ray size in pixels (square)")
    args = ap.parse_args()
    if args.ct is None:
        from XRayCTRegistrationLib import data

        args.ct = str(data.sample_ct_path())

    from mrml_scene import blank_xray_node, load_node, make_scene, write_png

    ns = make_scene(Path(tempfile.mkdtemp()) / "cache", slice_dims=(512, 512))
    import XRayCTRegistration as M

    scene, util = ns.scene, ns.slicer.util
    ct = load_node(scene, args.ct, "CT")
    xray = blank_xray_node(scene, M, args.size)
    logic = M.XRayCTRegistrationLogic()
    truth = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    simulated = logic.renderDrr(ct, xray, truth, maxSize=None)
    image = util.arrayFromVolume(simulated)[0].copy()
    rng = np.random.default_rng(1)
    util.updateVolumeFromArray(xray, (image + rng.normal(0, 0.02 * image.std(), image.shape))[None].astype(np.float32))
    scene.RemoveNode(simulated)
    _, drr = logic.updateOutputs(ct, xray, truth + [0, 0, 4.0, 12.0, -8.0, 0], maxSize=None)
    logic.showFusion(xray, drr, 0.45)
    colors = scene.GetFirstNodeByName("Warm1") or scene.GetNodeByID("vtkMRMLColorTableNodeWarm1")
    if colors is not None:
        drr.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_png(ns.slice_logic, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
