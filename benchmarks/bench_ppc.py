"""Point-to-plane registration benchmark on the sample chest CT: dppc, dppc-opt, ppc, ppc-opt and opt-lncc.

    PYTHONPATH=XRayCTRegistration python benchmarks/bench_ppc.py --methods opt-lncc,dppc,dppc-opt
    PYTHONPATH=XRayCTRegistration python benchmarks/bench_ppc.py --methods ppc,ppc-opt --model ppc.pt

Protocol (``XRayCTRegistrationLib.evaluation``, as ``bench_registration.py``): the hard set, ground truth
uniform in +-10 deg / +-20 mm around the AP view, initial mTRE uniform in 0-60 mm, X-ray = DRR + Poisson
noise + blur + random contrast change; 128 x 128 detector of 4 mm. Each run adds its methods' rows to
``results/ppc_rows.json`` (earlier rows of other methods are kept, the same cases: same seed and count),
then writes ``results/ppc.md`` and ``results/ppc_success_vs_mtre.png`` from every row there.
Reported: mRPD (mean distance of the target points to the back-projected rays, mm), success at
mRPD < 2 mm (the paper's criterion) and at mTRE < 2 mm, capture ranges (5 mm bins, 95 %), time.
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
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera  # noqa: E402
from XRayCTRegistrationLib.metrics import capture_range  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

SDD, SIZE, PIXEL = 1020.0, 128, 4.0
OUT = HERE / "results"
RPD_MM = 2.0
NOTES = [
    "- The learned ppc model of the ppc and ppc-opt rows: `xrayctreg train --ct cxr.nii.gz --geometry G.json --model "
    "ppc --out ppc.pt --time-budget 900 --batch-size 4 --rot-range 10 --trans-range 20 --threads 1` (G.json: the "
    "benchmark's camera), under `nice -n 10` with one numba/OpenMP/torch thread: 460 steps in 900 s of training "
    "time, the first half of the budget the flow loss alone (start offsets grown by the curriculum), the second "
    "half flow + registration loss (end to end through the PPC solver). The machine was shared: the first 300 steps "
    "took 127 s (load average 6-9), then three unniced benchmarks of other engineers took the CPU (the training got "
    "about 4 % of a core) and the last 160 steps, most of the end-to-end stage, took 774 s. On an idle core the "
    "same budget gives several times more steps; the rows measure this under-trained model.",
    "- Flow error at the contour points of 32 fixed validation pairs (augmented X-rays, starts up to 12 deg / 30 mm "
    "off), end-point error / its component along the contour normal (the only one the PPC solve uses), level pixels "
    "of 8 mm, by true flow: 0-2 px: zero flow 0.90 / 0.57, untrained network (patch matching alone) 3.04 / 1.90, "
    "trained 0.86 / 0.55; 2-5 px: 3.18 / 2.01, 4.58 / 2.78, 2.18 / 1.35; over 5 px: 6.49 / 4.26, 6.00 / 3.68, "
    "4.84 / 3.05. The training removed the block matcher's outliers and learned part of the larger flows, but "
    "its small flows are no better than zero flow, so ppc alone stops 3-10 mm from the truth (median mRPD "
    "5.1 mm) and does not reach mRPD < 2 mm; it runs in about 1.1 s. So the learned ppc does not beat the "
    "classical dppc here (median mRPD 1.56 mm, 63 % at mRPD < 2 mm, capture range 15 mm).",
    "- Before this run the learned ppc diverged from every start (median mRPD 28.5 mm, 6 cases). Checks that found "
    "no bug in the geometry: the true correspondences through the PPC iteration recover the pose from over 20 mm "
    "to 1e-3 mm and the batch solver with the true flow moves the contour onto its true positions (tests); the "
    "flow is read at each contour point's (row, col) (test); the training and inference DRRs give the same flows. "
    "The cause was the network: with no matching prior, 300-500 CPU steps of flow loss left it near zero flow "
    "(no better than zero flow at offsets over 2 px) with 0.3-1 px of spurious flow at the true pose, which the "
    "solve turns into mm of depth motion at every iteration (10 cases, flow loss only: median mRPD 18.9 mm). The "
    "model now has a fixed patch-NCC correlation beside the learned one, whose soft-argmax is the initial flow "
    "(the update operator starts at zero), training pairs from a replay pool, and starts up to 12 deg / 30 mm "
    "with per-sample magnitudes. Tukey re-solves on top of the learned weights (`robust=2`) changed nothing "
    "(10 cases: median mRPD 5.01 vs 4.95 mm).",
    "- ppc-opt (ppc, then opt-lncc with `registration.refine_schedule`) has the lowest mRPD of the table (median "
    "0.29 mm), 100 % at mRPD < 2 mm over 0-60 mm and 87 % at mTRE < 2 mm; its four failures at mTRE < 2 mm are "
    "along the depth axis (depth error 2.2-3.2 mm, mRPD <= 0.65 mm), as dppc-opt's. Its final step is main's "
    "rewritten registration (Adam then L-BFGS); the opt-lncc, dppc and dppc-opt rows were measured before that "
    "rewrite (a rerun of opt-lncc on the same cases was started but got no CPU on the shared machine and was "
    "stopped), so the final-step rows are not the same code: ppc-opt's lower mRPD than opt-lncc's (0.29 vs 0.50 "
    "mm) may come from the newer optimiser rather than from ppc's start.",
    "- dppc alone reaches the right basin from up to 15 mm (every bin up to 15 mm at mRPD < 2 mm); its remaining "
    "error is mostly rotation (1-4 deg). dppc-opt's six failures at mTRE < 2 mm are all along the depth axis "
    "(final mTRE 2.0-2.6 mm, tz error 2.0-2.7 mm, mRPD <= 0.66 mm), which a single view barely sees.",
    "- Times were taken on a 2-core machine shared with other engineers' jobs (see the load averages of each "
    "run): compare times within one run only.",
    "- Not measured: other CTs; a ppc model trained on an unshared CPU or a GPU (the paper trains on about 80,000 "
    "samples of 43 patients); the issue's capture-range claim for ppc alone (55-60 mm) is not reached.",
]


def summary_row(name: str, rows: list[dict]) -> str:
    """One markdown line: mRPD, both success rates, capture ranges, time."""
    init = np.array([r["initial_mtre"] for r in rows])
    rpd = np.array([r["mrpd"] for r in rows])
    ok_rpd = rpd < RPD_MM
    ok_tre = np.array([r["success_mtre"] for r in rows], dtype=bool)
    t = np.array([r["time_s"] for r in rows])
    errors = sum("error" in r for r in rows)
    return (f"| {name} | {len(rows)} | {np.median(rpd):.2f} / {rpd.mean():.2f} "
            f"| {np.median([r['mtre'] for r in rows]):.2f} | {100 * ok_rpd.mean():.0f} % | {100 * ok_tre.mean():.0f} % "
            f"| {capture_range(init, ok_rpd):.0f} | {capture_range(init, ok_tre):.0f} "
            f"| {np.median(t):.2f} / {t.mean():.2f} | {errors} |")


def bins_table(rows_by_method: dict[str, list[dict]]) -> list[str]:
    """Success (mRPD < 2 mm) per 5 mm bin of initial mTRE, one line per method."""
    first = next(iter(rows_by_method.values()))
    centres, _, counts = ev.success_by_bin(first)
    lines = ["| Method | " + " | ".join(f"{c - 2.5:.0f}-{c + 2.5:.0f}" for c in centres) + " |",
             "|---|" + "---|" * len(centres), "| cases | " + " | ".join(str(n) for n in counts) + " |"]
    for m, rows in rows_by_method.items():
        init = np.array([r["initial_mtre"] for r in rows])
        ok = np.array([r["mrpd"] for r in rows]) < RPD_MM
        idx = np.floor(init / 5.0).astype(int)
        cells = [f"{100 * ok[idx == int(c // 5)].mean():.0f} %" if np.any(idx == int(c // 5)) else "-"
                 for c in centres]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def make_fn(method: str, cases: ev.CaseSet, model: str | None):
    """``register_fn`` of a registered method; the learned ones get the model file."""
    opts = {"model": model} if method.startswith("ppc") else {}
    return ev.intensity_method(method, **opts)(cases)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="opt-lncc,dppc,dppc-opt")
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model file of the ppc methods (xrayctreg train --model ppc)")
    ap.add_argument("--every", type=int, default=1,
                    help="run on every k-th case only (same cases as the full set, fewer of them)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true", help="rewrite ppc.md and the plot from the stored rows")
    args = ap.parse_args()
    rows_path = args.out / "ppc_rows.json"
    store = json.loads(rows_path.read_text()) if rows_path.exists() else {"runs": [], "rows": {}}
    if args.report_only:
        write_report(args.out, store)
        return
    load0, t0 = os.getloadavg(), time.time()
    ct = read_ct(sample_ct_path())
    cam = Camera(SDD, SIZE, SIZE, PIXEL, PIXEL)
    cases = ev.make_cases(ct, cam, args.cases, seed=args.seed, init="hard")
    methods = [m for m in args.methods.split(",") if m]
    if args.every > 1:
        cases = cases.subset(range(0, len(cases), args.every))
    ev.run_method(cases.subset([0]), make_fn(methods[0], cases, args.model), name="warm-up")  # compile, caches
    for m in methods:
        rows = ev.run_method(cases, make_fn(m, cases, args.model), name=m, log=print)
        store["rows"][m] = rows
        print(summary_row(m, rows), flush=True)
    store["runs"] = superseded_dropped(store["runs"], methods)
    store["runs"].append({"command": sys.argv, "methods": methods, "machine": machine_info(), "load_start": load0,
                          "load_end": os.getloadavg(), "wall_s": time.time() - t0, "seed": args.seed,
                          "cases": len(cases), "camera": cam.to_dict()})
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path.write_text(json.dumps(store, indent=1))
    write_report(args.out, store)


def superseded_dropped(runs: list[dict], methods: list[str]) -> list[dict]:
    """Earlier runs without the methods a new run measures again (their rows are replaced); empty runs go."""
    kept = []
    for r in runs:
        left = [m for m in r["methods"] if m not in methods]
        if left:
            kept.append({**r, "methods": left})
    return kept


def write_report(out: Path, store: dict) -> None:
    """``ppc.md`` and the plot from every stored row."""
    rows = store["rows"]
    png = ev.plot_success_vs_initial_mtre(rows, out / "ppc_success_vs_mtre.png",
                                          title=f"Chest CT, {SIZE}x{SIZE}: success (mTRE < 2 mm) vs initial mTRE")
    lines = ["# Point-to-plane registration (dppc, ppc) on the chest CT", "",
             "Runs (each adds its methods' rows; the cases are the same in every run: hard set, seed and count "
             "below):", ""]
    for r in store["runs"]:
        lines.append(f"- `PYTHONPATH=XRayCTRegistration python benchmarks/bench_ppc.py {' '.join(r['command'][1:])}`"
                     f": {', '.join(r['methods'])}; {r['cases']} cases, seed {r['seed']}; load average (1 min) "
                     f"{r['load_start'][0]:.1f} at start, {r['load_end'][0]:.1f} at end; wall {r['wall_s'] / 60:.1f} "
                     f"min; {r['machine']}.")
    lines += ["", "Cases: `evaluation.make_cases(ct, camera, n, seed, init=\"hard\")`, sample chest CT, camera sdd "
              f"{SDD:.0f} mm, {SIZE}x{SIZE} pixels of {PIXEL:g} mm; initial mTRE uniform in 0-60 mm. mRPD: mean "
              "distance (mm) of 100 bone target points placed by the true pose to the rays through their projections "
              "under the estimated pose. Capture range: the largest 5 mm bin of initial mTRE up to which every bin "
              "reaches 95 % success. Time: wall time of one `pipeline.register_xray` call, on a 2-core machine "
              "shared with other jobs (see the load averages): compare times within one run only.", "",
              "| Method | Cases | mRPD median / mean (mm) | mTRE median (mm) | Success mRPD < 2 mm "
              "| Success mTRE < 2 mm | Capture range, mRPD (mm) | Capture range, mTRE (mm) "
              "| Time median / mean (s) | Errors |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [summary_row(m, r) for m, r in rows.items()]
    lines += ["", "Success (mRPD < 2 mm) per 5 mm bin of initial mTRE (mm):", "", *bins_table(rows), "",
              f"Plot: `{png.name}` (success at mTRE < 2 mm against the initial mTRE).", "", "## Notes", "",
              *NOTES, ""]
    (out / "ppc.md").write_text("\n".join(lines))
    print(f"wrote {out / 'ppc.md'}")


if __name__ == "__main__":
    main()
