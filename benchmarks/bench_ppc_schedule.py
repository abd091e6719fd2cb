"""ppc-opt on a sample CT's hard set: the final opt-lncc step on the refine schedule against the registration's levels.

    PYTHONPATH=XRayCTRegistration NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 \
        python benchmarks/bench_ppc_schedule.py --ct chest --model ppc_chest.pt

The 30 hard-set cases of ``bench_ppc.py`` (seed 0); each case is registered with both schedules in turn
(``ppc_learned.register_ppc(..., final_schedule=...)``). Prints the per-schedule summary and writes the rows
(``--out``, JSON). Results: ``benchmarks/results/ppc_schedule.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from bench_multict import ct_camera  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

SCHEDULES = ("refine", "default")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default="chest")
    ap.add_argument("--model", required=True, help="ppc model of the CT (xrayctreg train --model ppc)")
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("ppc_schedule_rows.json"))
    args = ap.parse_args()
    ct = read_ct(sample_ct_path(name=args.ct))
    cases = ev.make_cases(ct, ct_camera(args.ct), args.cases, seed=args.seed, init="hard")
    fns = {s: ev.intensity_method("ppc-opt", model=args.model, final_schedule=s)(cases) for s in SCHEDULES}
    ev.run_method(cases.subset([0]), fns["default"], name="warm-up")
    out: dict[str, list[dict]] = {s: [] for s in SCHEDULES}
    for k in range(len(cases)):
        for s, fn in fns.items():
            c0 = time.process_time()
            row = ev.run_method(cases.subset([k]), fn, name=s)[0]
            out[s].append({**row, "cpu_s": time.process_time() - c0})
            print(s, k, f"mRPD {row['mrpd']:.2f} mTRE {row['mtre']:.2f} cpu {out[s][-1]['cpu_s']:.2f}", flush=True)
    args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")
    for s, rows in out.items():
        mrpd, mtre = np.array([r["mrpd"] for r in rows]), np.array([r["mtre"] for r in rows])
        cpu = np.array([r["cpu_s"] for r in rows])
        print(f"{s}: median mRPD {np.median(mrpd):.3f} mm, success mRPD < 2 mm {100 * np.mean(mrpd < 2):.0f} %, "
              f"mTRE < 2 mm {100 * np.mean(mtre < 2):.0f} %, median CPU {np.median(cpu):.2f} s")


if __name__ == "__main__":
    main()
