"""Where sopi-fine's learned distance ``L_N`` has its minimum along the depth, with and without detector blur.

    PYTHONPATH=XRayCTRegistration NUMBA_NUM_THREADS=1 python benchmarks/bench_sopi_depth.py --ct abdomen \
        --model base=fine.pt,other=fine2.pt --out /tmp/sopi_depth

The walk of :func:`sopi_fine.iterate` follows the pose gradient of ``L_N``, so it ends where ``L_N`` is smallest;
this script measures where that is along the translation of the reference view's axis (``tz``), through the true
pose of each SOPI-like case of ``bench_sopi.py`` (``evaluation.make_cases(..., init="sopi")``, seed 0): ``L_N`` of
the DRR at the true pose shifted by ``--offsets`` mm in depth, for X-rays with the benchmark's detector blur (1
pixel) and without it (``--xray-blurs``), and with the moving DRR blurred by ``--moving-blurs`` pixels of the
network's input. Reported per model: the median argmin (mm from the truth) and the cases within 1 mm.
Writes ``sopi_depth.md`` and ``sopi_depth_rows.json`` (per case) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from bench_multict import ct_camera  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.filters import gaussian_blur  # noqa: E402
from XRayCTRegistrationLib.sopi_fine import FineScene, embedded_distance  # noqa: E402
from XRayCTRegistrationLib.sopi_refine import load_fine_model  # noqa: E402
from XRayCTRegistrationLib.training_data import prepare_image  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402


def depth_profiles(model, cases: ev.CaseSet, offsets: np.ndarray, moving_blurs: list[float]) -> np.ndarray:
    """``L_N`` ``[blurs, offsets, cases]`` along ``tz`` through each case's true pose, per moving-DRR blur.

    Each depth's DRRs and mask are rendered once and blurred for every ``moving_blurs`` value.
    """
    scene = FineScene.from_mu(cases.volume_mu, cases.camera, model.reference, model.render)
    fixed = torch.cat([prepare_image(c.xray, cases.camera, model.render) for c in cases.cases])
    truth = torch.as_tensor(np.stack([model.reference.params(c.world_from_camera_gt) for c in cases.cases]))
    out = np.zeros((len(moving_blurs), len(offsets), len(cases.cases)))
    with torch.no_grad():
        e_f = model.net.encode_fixed(fixed)
        for i, o in enumerate(offsets):
            p = truth.clone()
            p[:, 5] += float(o)
            img = scene.moving(p)  # [B, 1, S, S]
            mask = None
            for j, blur in enumerate(moving_blurs):
                e_m = model.net.encode_moving(gaussian_blur(img, blur, border="replicate") if blur > 0 else img)
                if model.use_mask and mask is None:
                    mask = scene.mask(p, tuple(e_m.shape[-2:]))
                out[j, i] = embedded_distance(e_m, e_f, mask).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default="chest", help="sample CT (data.SAMPLES name)")
    ap.add_argument("--model", required=True, help="comma-separated LABEL=FILE sopi-fine models of this CT")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--offsets", type=float, default=8.0, help="largest depth offset, mm (steps of 1 mm)")
    ap.add_argument("--xray-blurs", default="1,0", help="the X-rays' detector blur, pixels of the detector")
    ap.add_argument("--moving-blurs", default="0", help="blur of the moving DRR, pixels of the network input")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    t0, load0 = time.time(), os.getloadavg()[0]
    ct = read_ct(str(sample_ct_path(name=args.ct)))
    offsets = np.arange(-args.offsets, args.offsets + 0.5, 1.0)
    models = {label: (path, load_fine_model(path)) for label, path in (m.split("=", 1) for m in args.model.split(","))}
    blurs = [float(b) for b in args.moving_blurs.split(",")]
    rows, lines = [], []
    for xray_blur in (float(b) for b in args.xray_blurs.split(",")):
        cases = ev.make_cases(ct, ct_camera(args.ct), args.cases, seed=0, init="sopi", blur_px=xray_blur)
        for label, (path, model) in models.items():
            for moving_blur, profile in zip(blurs, depth_profiles(model, cases, offsets, blurs), strict=True):
                argmin = offsets[profile.argmin(0)]
                rows.append({"ct": args.ct, "model": label, "file": path, "xray_blur_px": xray_blur,
                             "moving_blur_px": moving_blur, "argmin_mm": argmin.tolist()})
                lines.append(f"| {args.ct} | {label} | {xray_blur:g} | {moving_blur:g} | {np.median(argmin):+.1f} | "
                             f"{np.median(np.abs(argmin)):.1f} | {int((np.abs(argmin) <= 1).sum())} of {len(argmin)} |")
                print(lines[-1], flush=True)
    head = ["# Where sopi-fine's distance L_N is smallest along the depth", "",
            f"Command: `PYTHONPATH=XRayCTRegistration python benchmarks/bench_sopi_depth.py {' '.join(sys.argv[1:])}`",
            "", f"Machine: {machine_info()}; load average {load0:.1f} at the start; wall time "
                f"{time.time() - t0:.0f} s.", "",
            "| CT | model | X-ray blur (px) | moving DRR blur (input px) | median argmin (mm) "
            "| median abs. argmin (mm) | within 1 mm |", "|---|---|---|---|---|---|---|"]
    (args.out / "sopi_depth_rows.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (args.out / "sopi_depth.md").write_text("\n".join(head + lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
