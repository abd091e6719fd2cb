"""One view against two: the default registration on the sample CTs with a second, lateral view.

    .venv/bin/python benchmarks/bench_biplane.py --cts spine,abdomen --cases 12

For each CT the first SOPI-like cases of the multi-CT benchmark (``evaluation.make_cases``, seed 0, 128 x 128
pixels, the same detector as ``bench_multict.py``) are registered from the same starts twice: with the AP X-ray
alone, and with a second X-ray from a camera turned 90 degrees about the reference isocentre around the patient's
long axis (``relative_views``), rendered at the same ground truth by this project's projector with the same noise
model (photon noise, photon-domain blur, a random contrast change). Reported per CT and number of views: success at
mTRE < 2 mm, median mTRE, median depth error (along the first view's principal ray), the reported success and its
false successes, the median reported 2-sd depth interval and the median time. Results:
``benchmarks/results/biplane.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from bench_multict import ct_camera  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib.carm import CArmPosition, relative_carm_view  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.geometry import ReferenceView  # noqa: E402
from XRayCTRegistrationLib.registration import register  # noqa: E402
from XRayCTRegistrationLib.simulate import xray_from_drr  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

OUT = HERE / "results"


def lateral_view(reference: ReferenceView, sdd: float) -> np.ndarray:
    """``camera0_from_camera1``: the C-arm turned 90 degrees (RAO 90) about the reference view's isocentre."""
    sid = float(reference.isocenter_camera[2])
    return relative_carm_view(CArmPosition(0.0, 0.0, sid), CArmPosition(-90.0, 0.0, sid), sdd, sdd)


def run_ct(name: str, n: int, log) -> list[dict]:
    """Rows of one-view and two-view registrations of the first ``n`` SOPI-like cases of one CT."""
    ct = read_ct(sample_ct_path(name=name))
    cam = ct_camera(name)
    cases = ev.make_cases(ct, cam, n, seed=0, init="sopi")
    rel = lateral_view(cases.reference, cam.sdd)
    rng = np.random.default_rng([0, 90])
    rows = []
    register(cases.volume_mu, cases.cases[0].xray, cam, cases.cases[0].world_from_camera_init,
             reference=cases.reference)  # warm-up: kernels and the CT's pyramid
    for c in cases:
        second = xray_from_drr(cases.render(c.world_from_camera_gt @ rel), c.noise, rng)
        for views in (1, 2):
            t0 = time.perf_counter()
            kw = {} if views == 1 else {"relative_views": [np.eye(4), rel]}
            xr = c.xray if views == 1 else [c.xray, second]
            cams = cam if views == 1 else [cam, cam]
            res = register(cases.volume_mu, xr, cams, c.world_from_camera_init, reference=cases.reference, **kw)
            dt = time.perf_counter() - t0
            e = ev.evaluate_case(cases, c, res.world_from_camera)
            u = res.uncertainty
            rows.append({"ct": name, "case": c.index, "views": views, "mtre": e["mtre"],
                         "depth_error_mm": e["param_errors"][5], "success": bool(res.success),
                         "depth_2sd_mm": None if u is None else 2 * u.depth_mm, "time_s": dt,
                         "message": res.message})
            log(f"{name} case {c.index} views {views}: mTRE {e['initial_mtre']:.1f} -> {e['mtre']:.2f} mm, depth "
                f"error {e['param_errors'][5]:.2f} mm, success {res.success}, {dt:.2f} s")
    return rows


def table(rows: list[dict]) -> str:
    """Per CT and number of views: the summary line of the report."""
    lines = ["| CT | Views | Cases | Success, mTRE < 2 mm | median mTRE (mm) | median depth error (mm) | "
             "`success: true` | of which mTRE >= 2 mm | median reported 2-sd depth (mm) | median time (s) |",
             "|---" * 10 + "|"]
    for ct in dict.fromkeys(r["ct"] for r in rows):
        for views in (1, 2):
            rs = [r for r in rows if r["ct"] == ct and r["views"] == views]
            m = np.array([r["mtre"] for r in rs])
            ok = np.array([r["success"] for r in rs])
            sd = [r["depth_2sd_mm"] for r in rs if r["depth_2sd_mm"] is not None]
            lines.append(f"| {ct} | {views} | {len(rs)} | {100 * np.mean(m < 2):.0f} % | {np.median(m):.2f} | "
                         f"{np.median([r['depth_error_mm'] for r in rs]):.2f} | {int(ok.sum())} | "
                         f"{int(np.sum(ok & (m >= 2)))} | {np.median(sd) if sd else float('nan'):.1f} | "
                         f"{np.median([r['time_s'] for r in rs]):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cts", default="spine,abdomen")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    load0, t0 = os.getloadavg(), time.time()
    rows = sum((run_ct(n, args.cases, lambda s: print(s, flush=True)) for n in args.cts.split(",")), [])
    load1 = os.getloadavg()
    text = ["# One view against two (biplane), default registration", "",
            f"Command: `.venv/bin/python benchmarks/bench_biplane.py {' '.join(sys.argv[1:])}`", "",
            f"Machine: {machine_info()}.", f"Load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f}; "
            f"wall time {(time.time() - t0) / 60:.1f} min.", "",
            "Cases: the first SOPI-like cases of the multi-CT benchmark (seed 0, 128 x 128 pixels); the second view is "
            "the camera turned 90 degrees about the reference isocentre (a lateral view), rendered at the same ground "
            "truth by this project's projector with the same noise model. Same starts for one and two views.", "",
            table(rows)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "biplane.md").write_text("\n".join(text), encoding="utf-8")
    (args.out / "biplane_rows.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print("\n".join(text))


if __name__ == "__main__":
    main()
