"""Backend parity: register the same simulated cases with the numba (CPU) and the torch projector (CUDA or CPU).

The GPU machine has neither SimpleITK nor a network, so the CT comes from an ``.npz`` file (``hu``: int16
``[k, j, i]`` HU, ``ijk_to_ras``: 4x4) written by ``benchmarks/make_ct_npz.py`` on a machine with the project's
environment:

    python benchmarks/make_ct_npz.py /tmp/chest_ct.npz                          # needs SimpleITK and the cache
    python benchmarks/bench_backend_parity.py /tmp/chest_ct.npz                 # on the GPU machine
    python benchmarks/bench_backend_parity.py /tmp/chest_ct.npz --device cpu    # torch on the CPU instead

Cases: ``evaluation.make_cases(ct, camera, n, seed)`` (SOPI-like starts, 128x128 pixels of 4 mm, sdd 1020 mm,
as in ``bench_registration.py``); each is registered with ``registration.register`` (default method and
settings) once with ``backend="numba"``, once with ``backend="torch"`` on ``--device`` and, on CUDA with the
``triton`` package, once with ``backend="triton"``. Prints a markdown
table (success at mTRE < 2 mm, median mTRE, median depth error, median time, iterations) and the largest
per-case difference between the two backends' final poses. Without a CUDA GPU and ``--device cuda`` (the
default) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from common import stand_in  # noqa: E402

SDD, SIZE, PIXEL = 1020.0, 128, 4.0


def run(npz: Path, n_cases: int, seed: int, device: str) -> str:
    """Register the cases with both backends; returns the markdown report."""
    from XRayCTRegistrationLib import evaluation as ev
    from XRayCTRegistrationLib.geometry import Camera
    from XRayCTRegistrationLib.projector import triton_kernels
    from XRayCTRegistrationLib.volume import Volume

    with np.load(npz) as f:
        ct = Volume(f["hu"].astype(np.float32), f["ijk_to_ras"])
    cam = Camera(SDD, SIZE, SIZE, PIXEL, PIXEL)
    cases = ev.make_cases(ct, cam, n_cases, seed=seed)
    runs = {"numba (cpu)": {"backend": "numba", "device": "cpu"},
            f"torch ({device})": {"backend": "torch", "device": device}}
    if device.startswith("cuda") and triton_kernels() is not None:
        runs[f"triton ({device})"] = {"backend": "triton", "device": device}
    for opts in runs.values():  # warm-up: kernels compile, the pyramid is built, CUDA initialises
        ev.run_method(cases.subset([0]), ev.intensity_method(**opts)(cases))
    rows = {name: ev.run_method(cases, ev.intensity_method(**opts)(cases), name=name, log=print)
            for name, opts in runs.items()}
    return report(rows, cases, npz, device)


def report(rows: dict[str, list[dict]], cases, npz: Path, device: str) -> str:
    """Markdown: one line per backend, then the per-case pose differences."""
    from XRayCTRegistrationLib import evaluation as ev

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "none"
    lines = [f"Cases: {len(cases)} SOPI-like (`make_cases(ct, camera, {len(cases)}, seed={cases.seed})`), "
             f"CT `{npz.name}`, {SIZE}x{SIZE} pixels of {PIXEL:g} mm; torch {torch.__version__}, GPU: {gpu}; "
             f"{os.cpu_count()} CPU cores.", "",
             "| Backend | Success (mTRE < 2 mm) | mTRE median (mm) | depth error median (mm) | time median (s) "
             "| iterations median |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        s = ev.summarize(r)
        dz = np.median([x["param_errors"][5] for x in r])
        its = np.median([x.get("iterations", 0) for x in r])
        lines.append(f"| {name} | {100 * s['success_rate']:.0f} % | {s['mtre_median']:.2f} | {dz:.2f} | "
                     f"{s['time_median']:.2f} | {its:.0f} |")
    ref = cases.reference
    base, *others = rows.items()
    lines.append("")
    for name, r in others:
        diffs = [np.abs(ref.params(np.asarray(x["final_pose"])) - ref.params(np.asarray(y["final_pose"])))
                 for x, y in zip(base[1], r, strict=True)]
        d = np.max(diffs, axis=0)
        lines.append(f"Largest per-case difference of the final poses, {name} vs {base[0]}: rotation "
                     f"{d[:3].max():.3f} deg, in-plane translation {d[3:5].max():.3f} mm, depth {d[5]:.3f} mm.")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ct", type=Path, nargs="?", help=".npz with hu (int16 [k, j, i]) and ijk_to_ras (4x4), "
                    "from benchmarks/make_ct_npz.py")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="torch backend's device (cuda or cpu)")
    ap.add_argument("--out", type=Path, help="also write the markdown report here")
    args = ap.parse_args()
    if args.ct is None:
        ap.error("give the CT .npz (benchmarks/make_ct_npz.py writes it)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to compare (run with --device cpu for the torch backend on the CPU)")
        return 0
    stand_in("SimpleITK")  # nothing here reads files with it
    t0 = time.time()
    text = run(args.ct, args.cases, args.seed, args.device)
    text += f"Wall time {time.time() - t0:.0f} s.\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
