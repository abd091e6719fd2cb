"""Calibration of the reported pose uncertainty across CTs and detector sizes.

    .venv/bin/python benchmarks/bench_uncertainty.py --sizes 48,64 --cases 12 --out /tmp/unc_rows.json
    .venv/bin/python benchmarks/bench_uncertainty.py --from-rows /tmp/unc_rows.json \
        --multict benchmarks/results/multict_rows.json

Registers SOPI-like cases (``evaluation.make_cases``, seed 3: not the registration benchmarks' seed 0) of each
sample CT with ``registration.register``'s defaults, on square detectors of several sizes over the same field of
view, with X-rays from this project's projector (noise, photon-domain blur, contrast change). For each
registration it keeps the true depth error and the reported depth standard deviation. ``--multict`` adds the
128 x 128 rows of the multi-CT benchmark (seed 0, both renderers). The report gives, per CT and size, the
fraction of true depths inside the reported +-2 sd and the ratio of the absolute error to the sd, and the
calibration factor the tuning CTs (chest, abdomen) ask for: the multiplier of ``UNCERTAINTY_SCALE``'s variance
that puts 95 % of their true depths inside +-2 sd. The scale is a pure multiplier of the variance, so rows made
with another ``UNCERTAINTY_SCALE`` (the ``scale`` they record) are rescaled exactly.
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

from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib import registration as reg  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

FOV_MM = {"chest": 512.0, "abdomen": 512.0, "spine": 192.0}
"""Detector width (mm) per CT, as in the multi-CT benchmark (128 pixels of 4, 4 and 1.5 mm)."""
TUNING = ("chest", "abdomen")
SDD = 1020.0


def run(cts: list[str], sizes: list[int], n: int, seed: int, out: Path) -> list[dict]:
    """Register ``n`` cases per CT and detector size; rows are written to ``out`` after each case."""
    rows: list[dict] = []
    for name in cts:
        ct = read_ct(sample_ct_path(name=name))
        for size in sizes:
            cam = Camera(SDD, size, size, FOV_MM[name] / size, FOV_MM[name] / size)
            cases = ev.make_cases(ct, cam, n, seed=seed, init="sopi")
            for c in cases:
                t0 = time.perf_counter()
                res = reg.register(cases.volume_mu, c.xray, cam, c.world_from_camera_init, reference=cases.reference)
                e = ev.evaluate_case(cases, c, res.world_from_camera)
                u = res.uncertainty
                rows.append({"ct": name, "size": size, "case": c.index, "renderer": "ours", "mtre": e["mtre"],
                             "depth_error_mm": e["param_errors"][5], "depth_sd_mm": None if u is None else u.depth_mm,
                             "scale": reg.UNCERTAINTY_SCALE, "success": bool(res.success), "message": res.message,
                             "detector_blur_px": res.detector_blur_px, "time_s": time.perf_counter() - t0})
                print(f"{name} {size} {c.index}: mTRE {e['mtre']:.2f} depth error {e['param_errors'][5]:.2f} "
                      f"sd {rows[-1]['depth_sd_mm'] or float('nan'):.2f}", flush=True)
                out.write_text(json.dumps(rows), encoding="utf-8")
    return rows


def multict_rows(path: Path, scale: float) -> list[dict]:
    """The multi-CT benchmark's SOPI-like rows (128 x 128) in this script's row format."""
    d = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for name, ct in d["cts"].items():
        for renderer, sets in ct["rows"].items():
            for r in sets["sopi"]:
                out.append({"ct": name, "size": ct["camera"]["rows"], "case": r["case"], "renderer": renderer,
                            "mtre": r["mtre"], "depth_error_mm": r["depth_error_mm"], "depth_sd_mm": r["depth_sd_mm"],
                            "scale": scale, "success": r["reported_success"]})
    return out


def ratios(rows: list[dict], scale: float) -> np.ndarray:
    """Absolute depth error / reported sd at ``UNCERTAINTY_SCALE = scale``, rows in the right basin (mTRE < 20 mm)."""
    keep = [r for r in rows if r["depth_sd_mm"] is not None and r["mtre"] < 20.0]
    return np.array([abs(r["depth_error_mm"]) / (r["depth_sd_mm"] * np.sqrt(scale / r["scale"])) for r in keep])


def report(rows: list[dict], scale: float, command: str) -> str:
    """The markdown table: per CT and size, coverage and error / sd at the current scale; the tuning factor."""
    q_tune = ratios([r for r in rows if r["ct"] in TUNING], scale)
    factor = float((np.percentile(q_tune, 95) / 2.0) ** 2)
    lines = ["# Reported depth uncertainty: calibration across CTs and detector sizes", "",
             f"Command: `{command}`", "", f"Machine: {machine_info()}.", "",
             f"`UNCERTAINTY_SCALE` = {scale:g} (the library's now). Rows: SOPI-like cases, default registration "
             "(detector blur fitted); a row counts when the registration ended in the right basin (mTRE < 20 mm).",
             "", "| CT | Role | Detector (pixels) | Renderer | Rows | True depth within +-2 sd "
             "| median abs. error / sd | 90th percentile abs. error / sd | median sd (mm) "
             "| median abs. depth error (mm) |", "|---" * 10 + "|"]
    keys = sorted({(r["ct"], r["size"], r["renderer"]) for r in rows}, key=lambda k: (k[0] not in TUNING, k))
    for ct, size, renderer in keys:
        rs = [r for r in rows if (r["ct"], r["size"], r["renderer"]) == (ct, size, renderer)]
        q = ratios(rs, scale)
        if not len(q):
            continue
        ok = [r for r in rs if r["depth_sd_mm"] is not None and r["mtre"] < 20.0]
        sd = np.median([r["depth_sd_mm"] * np.sqrt(scale / r["scale"]) for r in ok])
        err = np.median([abs(r["depth_error_mm"]) for r in ok])
        lines.append(f"| {ct} | {'tuning' if ct in TUNING else 'held out'} | {size} | {renderer} | {len(q)} | "
                     f"{100 * np.mean(q <= 2):.0f} % | {np.median(q):.2f} | {np.percentile(q, 90):.2f} | {sd:.2f} | "
                     f"{err:.2f} |")
    lines += ["", f"Tuning CTs ({', '.join(TUNING)}), all sizes: {len(q_tune)} rows, true depth within +-2 sd in "
              f"{100 * np.mean(q_tune <= 2):.0f} %; the variance factor that would put 95 % inside is {factor:.3f} "
              f"(`UNCERTAINTY_SCALE` {scale * factor:.0f})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cts", default="chest,abdomen,spine")
    ap.add_argument("--sizes", default="48,64,128")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/unc_rows.json"), help="rows JSON written while running")
    ap.add_argument("--from-rows", type=Path, nargs="+", default=None, help="report from saved rows, no runs")
    ap.add_argument("--multict", type=Path, default=None, help="multi-CT benchmark rows to add (128 x 128)")
    ap.add_argument("--report", type=Path, default=HERE / "results" / "uncertainty.md")
    args = ap.parse_args()
    if args.from_rows:
        rows = sum((json.loads(p.read_text(encoding="utf-8")) for p in args.from_rows), [])
    else:
        rows = run(args.cts.split(","), [int(s) for s in args.sizes.split(",")], args.cases, args.seed, args.out)
    if args.multict is not None:
        rows += multict_rows(args.multict, float(os.environ.get("MULTICT_SCALE", reg.UNCERTAINTY_SCALE)))
    command = "python benchmarks/bench_uncertainty.py " + " ".join(sys.argv[1:])
    args.report.write_text(report(rows, reg.UNCERTAINTY_SCALE, command), encoding="utf-8")
    print(args.report.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
