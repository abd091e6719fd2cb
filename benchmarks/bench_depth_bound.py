"""How well can one X-ray determine the pose? Cramér-Rao bounds of the benchmark's cases, per CT.

For each SOPI-like case of the multi-CT benchmark (``bench_multict.py``: same CTs, cameras and cases), the
Fisher information of the six pose parameters carried by the X-ray's photon counts at the true pose:

    F = sum_i lambda_i grad p_i grad p_i^T,    lambda_i = N0 exp(-p_i)

with ``p_i`` the DRR (line integral) of pixel ``i``, ``N0`` the unattenuated counts per pixel of the
benchmark's noise model and ``grad p_i`` its derivative with respect to ``(rx, ry, rz, tx, ty, tz)`` of the
reference view (central differences). This is the information of noisy but otherwise perfect data: the
benchmark's X-rays also carry a detector blur and an unknown contrast change, which can only remove
information (a known blur is a processing of the counts; unknown contrast parameters are nuisances), so
``F^-1`` is a lower bound on the covariance of any unbiased estimate from the benchmark's X-rays.

The mTRE of a pose is at least the length of the mean displacement of the target points (the mean of
lengths is at least the length of the mean); that displacement is linear in a small pose error
(``m = G dtheta``), so its covariance is at least ``G F^-1 G^T``. The table gives, per CT, the median
standard deviation of the target centroid's displacement along the viewing direction and the largest
success rate (mTRE < 2 mm) an unbiased estimator with Gaussian errors at the bound could reach:
``P(||m|| < 2 mm)`` for ``m ~ N(0, G F^-1 G^T)``, averaged over the cases (Monte Carlo). The same with a
second, lateral view (``bench_biplane.py``'s geometry) shows what two views give.

Against the bound, what the registration's similarity makes of the same X-ray: the default similarity (local NCC
of the DRR, blurred as the X-ray was, with the case's X-ray) along the depth ``tz`` through the true pose, the
other parameters held at the truth: where its maximum lies and how much it falls 2 mm away.

Run: ``PYTHONPATH=XRayCTRegistration python benchmarks/bench_depth_bound.py [--cases 36]``
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayCTRegistration"))

from bench_biplane import lateral_view  # noqa: E402
from bench_multict import SDD, SIZE, ct_camera  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.filters import detector_blur  # noqa: E402
from XRayCTRegistrationLib.geometry import invert_rigid, transform_points  # noqa: E402
from XRayCTRegistrationLib.registration import DEFAULT_METHOD, METHODS  # noqa: E402
from XRayCTRegistrationLib.similarity import get_similarity  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
PHOTONS = 1e4  # make_cases' default: unattenuated counts per pixel
STEPS = np.array([0.05, 0.05, 0.05, 0.1, 0.1, 0.1])  # central-difference steps: deg (rx, ry, rz), mm (tx, ty, tz)
SUCCESS_MM = 2.0
DRAWS = 20000
PROFILE_MM = np.linspace(-4.0, 4.0, 17)  # depth offsets of the similarity profile


def depth_profile(cases: ev.CaseSet, case: ev.Case) -> dict:
    """The default similarity along ``tz`` through the true pose: its argmax (mm from the truth) and its fall."""
    sim = get_similarity(METHODS[DEFAULT_METHOD])
    y = torch.as_tensor(case.xray, dtype=torch.float64)
    values = []
    for dz in PROFILE_MM:
        q = case.params_gt.copy()
        q[5] += dz
        p = torch.as_tensor(cases.render(cases.reference.pose(q)), dtype=torch.float64)
        values.append(float(sim(detector_blur(p, torch.tensor(case.noise.blur_px ** 2)), y)))
    v = np.asarray(values)
    mid = len(v) // 2
    two = [int(np.argmin(np.abs(PROFILE_MM - s))) for s in (-2.0, 2.0)]
    return {"profile_argmax_mm": float(PROFILE_MM[int(np.argmax(v))]),
            "profile_fall_2mm": float(min(v[mid] - v[two[0]], v[mid] - v[two[1]]) / max(1 - v[mid], 1e-12))}


def information(cases: ev.CaseSet, params: np.ndarray, relative: np.ndarray) -> np.ndarray:
    """Fisher information ``[6, 6]`` of the pose parameters from one view's counts at ``params``.

    ``relative``: ``camera0_from_camera`` of the view (identity for the reference view itself).
    """
    def drr(q: np.ndarray) -> np.ndarray:
        return cases.render(cases.reference.pose(q) @ relative).astype(np.float64).ravel()

    p0 = drr(params)
    grads = np.empty((6, p0.size))
    for k in range(6):
        d = np.zeros(6)
        d[k] = STEPS[k]
        grads[k] = (drr(params + d) - drr(params - d)) / (2 * STEPS[k])
    lam = PHOTONS * np.exp(-p0)
    return (grads * lam) @ grads.T


def centroid_jacobian(cases: ev.CaseSet, params: np.ndarray) -> np.ndarray:
    """``G [3, 6]``: mean displacement of the target points per unit parameter (camera frame: z = viewing ray; mm)."""
    def mean_point(q: np.ndarray) -> np.ndarray:
        return transform_points(invert_rigid(cases.reference.pose(q)), cases.points).mean(axis=0)

    g = np.empty((3, 6))
    for k in range(6):
        d = np.zeros(6)
        d[k] = STEPS[k]
        g[:, k] = (mean_point(params + d) - mean_point(params - d)) / (2 * STEPS[k])
    return g


def bound_row(cases: ev.CaseSet, case: ev.Case, info: np.ndarray, rng: np.random.Generator) -> dict:
    """The bound's numbers for one case and one set of views."""
    cov = np.linalg.inv(info)
    g = centroid_jacobian(cases, case.params_gt)
    cm = g @ cov @ g.T
    draws = rng.multivariate_normal(np.zeros(3), cm, size=DRAWS)
    return {"tz_sd_mm": float(np.sqrt(cov[5, 5])), "centroid_depth_sd_mm": float(np.sqrt(cm[2, 2])),
            "centroid_inplane_sd_mm": float(np.sqrt(cm[0, 0] + cm[1, 1])),
            "rotation_sd_deg": [float(np.sqrt(cov[k, k])) for k in range(3)],
            "max_success": float((np.linalg.norm(draws, axis=1) < SUCCESS_MM).mean())}


def run_ct(name: str, n: int, log) -> list[dict]:
    """Bounds of the first ``n`` SOPI-like cases of one CT, one view and two."""
    ct = read_ct(sample_ct_path(name=name))
    cam = ct_camera(name)
    cases = ev.make_cases(ct, cam, n, seed=0, init="sopi")
    rel = lateral_view(cases.reference, cam.sdd)
    rng = np.random.default_rng(0)
    rows = []
    for c in cases:
        f_ap = information(cases, c.params_gt, np.eye(4))
        f_lat = information(cases, c.params_gt, rel)
        for views, info in ((1, f_ap), (2, f_ap + f_lat)):
            row = {"ct": name, "case": c.index, "views": views, **bound_row(cases, c, info, rng)}
            rows.append(row)
        rows[-2].update(depth_profile(cases, c))
        log(f"{name} case {c.index}: centroid depth sd {rows[-2]['centroid_depth_sd_mm']:.2f} mm (one view), "
            f"{rows[-1]['centroid_depth_sd_mm']:.3f} mm (two); max success {rows[-2]['max_success']:.2f}")
    return rows


def table(rows: list[dict], cts: list[str]) -> list[str]:
    """The per-CT, per-view-count summary table."""
    out = ["| CT | views | cases | median sd of tz (mm) | median sd of the targets' depth (mm) | "
           "median sd in plane (mm) | median sd of rotations rx, ry, rz (deg) | largest success rate, mTRE < 2 mm "
           "(mean over cases) | cases where 97 % is reachable |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name in cts:
        for views in (1, 2):
            r = [x for x in rows if x["ct"] == name and x["views"] == views]
            rot = np.median([x["rotation_sd_deg"] for x in r], axis=0)
            out.append(f"| {name} | {views} | {len(r)} | {np.median([x['tz_sd_mm'] for x in r]):.3f} | "
                       f"{np.median([x['centroid_depth_sd_mm'] for x in r]):.3f} | "
                       f"{np.median([x['centroid_inplane_sd_mm'] for x in r]):.3f} | "
                       f"{rot[0]:.3f}, {rot[1]:.3f}, {rot[2]:.3f} | "
                       f"{100 * np.mean([x['max_success'] for x in r]):.1f} % | "
                       f"{sum(x['max_success'] >= 0.97 for x in r)} of {len(r)} |")
    return out


def profile_table(rows: list[dict], cts: list[str]) -> list[str]:
    """Per CT: where the default similarity's depth profile peaks, and how little it falls."""
    out = [f"| CT | cases | median abs. argmax of {DEFAULT_METHOD}'s similarity along tz (mm from the truth) | "
           "cases with the argmax 1 mm or more off | median fall 2 mm away, as a share of its distance to a perfect "
           "match (1 - S) |", "|---|---|---|---|---|"]
    for name in cts:
        r = [x for x in rows if x["ct"] == name and "profile_argmax_mm" in x]
        a = np.abs([x["profile_argmax_mm"] for x in r])
        out.append(f"| {name} | {len(r)} | {np.median(a):.2f} | {int(np.sum(a >= 1.0))} | "
                   f"{np.median([x['profile_fall_2mm'] for x in r]):.4f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cts", default="chest,abdomen,spine")
    ap.add_argument("--cases", type=int, default=36, help="the first cases of bench_multict's SOPI-like set")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    cts = [c for c in args.cts.split(",") if c]
    load0, t0 = os.getloadavg(), time.time()
    rows = [r for name in cts for r in run_ct(name, args.cases, print)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "depth_bound_rows.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    lines = ["# How well one X-ray determines the pose: Cramér-Rao bounds per CT", "",
             f"Command: `PYTHONPATH=XRayCTRegistration python benchmarks/bench_depth_bound.py --cts {args.cts} "
             f"--cases {args.cases}`", "", f"Machine: {machine_info()}; load average {load0[0]:.2f} at the start, "
             f"wall time {time.time() - t0:.0f} s (no timing is reported).", "",
             f"Cases: the first {args.cases} SOPI-like cases (seed 0) of `bench_multict.py` per CT: its cameras "
             f"(sdd {SDD:g} mm, {SIZE}x{SIZE} pixels: chest and abdomen 4 mm, spine 1.5 mm), true poses, and its "
             f"noise model's {PHOTONS:g} unattenuated photons per pixel. Two views: the reference view and one "
             "turned 90 degrees about the isocentre (`bench_biplane.lateral_view`: RAO 90), with the "
             "same counts.", "", *table(rows, cts), "",
             f"The default similarity ({DEFAULT_METHOD}) along the depth through the true pose (one view; steps of "
             f"{PROFILE_MM[1] - PROFILE_MM[0]:g} mm over +-{PROFILE_MM[-1]:g} mm; the DRR blurred by the case's "
             "detector blur, `filters.detector_blur`):", "", *profile_table(rows, cts), ""]
    (args.out / "depth_bound.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
