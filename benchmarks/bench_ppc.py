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
    "- The learned ppc model was trained for this run with "
    "`xrayctreg train --ct cxr.nii.gz --geometry G.json --model ppc --out ppc.pt --time-budget 540 --batch-size 4 "
    "--rot-range 10 --trans-range 20 --threads 1` (G.json: the benchmark's camera), on the same shared 2-core machine "
    "while the dppc rows were measured (load average 9-15): 207 steps in 542 s of training time. Its validation "
    "error after one update stayed at about 8 deg / 21 mm (the starts are up to 8 deg / 25 mm off): at this "
    "budget the flow network has not learned usable correspondences, so the ppc rows measure an untrained "
    "update, not the method. The paper trains on about 80,000 samples of 43 patients on a GPU. The ppc rows are "
    "every fifth case of the same set (`--every 5`, 6 cases spanning 0-60 mm).",
    "- ppc-opt's successes are opt-lncc's: ppc moved every start further off (median mRPD 28.5 mm) and the "
    "final opt-lncc step recovered from there, as opt-lncc alone does over 0-60 mm on this CT.",
    "- dppc alone reaches the right basin from up to 15 mm (every bin up to 15 mm at mRPD < 2 mm); its remaining "
    "error is mostly rotation (1-4 deg). dppc-opt (dppc, then opt-lncc with `registration.refine_schedule`) has "
    "the lowest mRPD (median 0.34 mm vs opt-lncc 0.50 mm) and 100 % at mRPD < 2 mm over 0-60 mm; its six failures "
    "at mTRE < 2 mm are all along the depth axis (final mTRE 2.0-2.6 mm, tz error 2.0-2.7 mm, mRPD <= 0.66 mm), "
    "which a single view barely sees; so its capture range at mTRE < 2 mm is 0 (the 0-5 mm bin has one of them).",
    "- Times were taken under a load average of 9-15 on 2 cores (other engineers' jobs, the ppc training and the "
    "test suite): opt-lncc took 4.7 s median here against 0.15 s in `registration.md` (load about 1). Compare "
    "the methods within this table only; the issue's 3 s target is not assessable from these numbers.",
    "- Measured with this branch before main's registration rewrite (Adam then L-BFGS, issue 10) was merged: "
    "the opt-lncc row and the final step of dppc-opt and ppc-opt are the earlier `registration.register`.",
    "- Not measured: other CTs (the multi-CT sample data, `xrayctreg sample-data --list`, was not on main when "
    "this ran); a ppc model trained long enough to test the method's claims (55-60 mm capture range).",
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
    store["runs"].append({"command": sys.argv, "methods": methods, "machine": machine_info(), "load_start": load0,
                          "load_end": os.getloadavg(), "wall_s": time.time() - t0, "seed": args.seed,
                          "cases": len(cases), "camera": cam.to_dict()})
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path.write_text(json.dumps(store, indent=1))
    write_report(args.out, store)


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
