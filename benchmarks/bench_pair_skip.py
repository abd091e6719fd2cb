"""Empty-space skipping in the physics DRR's two-material pair march (CPU): time with and without it.

    PYTHONPATH=XRayCTRegistration python benchmarks/bench_pair_skip.py --cts chest,abdomen,spine

For each sample CT, its two-material decomposition (``materials.decompose``) packed into 16-bit pairs
(``MaterialVolumes.packed_pairs``), a 256 x 256 detector of 2 mm pixels (sdd 1020 mm; the spine crop's 1.5 mm
pixels at 128 x 128: its camera of ``bench_multict.py``), 200 samples per ray, the AP view and four random poses.
The pair kernels run with the volume's block table (skipping the empty runs at both ends of each ray) and with a
table that marks every block occupied (every sample read), alternated call by call, ``--rounds`` times per pose;
the outputs of the two are compared. Results: ``benchmarks/results/pair_skip.md``.
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

from bench_cpu_kernel import poses  # noqa: E402
from bench_multict import ct_camera  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import _raymarch  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera  # noqa: E402
from XRayCTRegistrationLib.materials import decompose  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

SDD = 1020.0
SAMPLES = 200


def camera(name: str) -> Camera:
    """256 x 256 pixels of 2 mm, or the spine crop's own camera (its field is 192 mm)."""
    return ct_camera(name) if name == "spine" else Camera(SDD, 256, 256, 2.0, 2.0)


def run_ct(name: str, rounds: int) -> dict:
    """Median times (s) of the forward and the Jacobian pair kernels, with and without skipping, and checks."""
    ct = read_ct(sample_ct_path(name=name))
    mats = decompose(ct)
    (packed, scales, blocks), = mats.packed_pairs()
    full = _raymarch.block_table(np.ones_like(packed))
    cam = camera(name)
    ref, params = poses(ct)
    dirs = np.ascontiguousarray(cam.pixel_centers(np.float64).reshape(-1, 3))
    ijk_from_world = np.linalg.inv(mats.ijk_to_ras)
    mats_ = [np.ascontiguousarray((ijk_from_world @ ref.pose(p.numpy()))[None, :3, :]) for p in params]
    r = dirs.shape[0]
    out = {k: np.empty((1, 2, r), np.float32) for k in ("skip", "all")}
    jac = {k: np.empty((1, 2, r, 6), np.float32) for k in ("skip", "all")}
    tables = {"skip": blocks, "all": full}
    times = {(k, kind): [] for k in tables for kind in ("forward", "jacobian")}
    diff = {"forward": 0.0, "jacobian": 0.0}
    for m in mats_:
        for k, t in tables.items():  # warm-up: compile or load the kernels
            _raymarch.march_pair(packed, t, scales, m, dirs, SAMPLES, out[k])
            _raymarch.march_pair_with_jacobian(packed, t, scales, m, dirs, SAMPLES, out[k], jac[k])
        for _ in range(rounds):
            for k, t in tables.items():
                t0 = time.perf_counter()
                _raymarch.march_pair(packed, t, scales, m, dirs, SAMPLES, out[k])
                times[(k, "forward")].append(time.perf_counter() - t0)
            diff["forward"] = max(diff["forward"], float(np.abs(out["skip"] - out["all"]).max() / out["all"].max()))
            for k, t in tables.items():
                t0 = time.perf_counter()
                _raymarch.march_pair_with_jacobian(packed, t, scales, m, dirs, SAMPLES, out[k], jac[k])
                times[(k, "jacobian")].append(time.perf_counter() - t0)
            diff["jacobian"] = max(diff["jacobian"],
                                   float(np.abs(jac["skip"] - jac["all"]).max() / np.abs(jac["all"]).max()))
    occupied = np.diff(np.diff(np.diff(blocks, axis=0), axis=1), axis=2)
    row = {"ct": name, "shape": list(packed.shape), "pixels": f"{cam.rows}x{cam.cols}",
           "empty_blocks": float(1 - occupied.mean()), "diff": diff}
    for kind in ("forward", "jacobian"):
        a, b = np.array(times[("skip", kind)]), np.array(times[("all", kind)])
        row[kind] = {"skip_s": float(np.median(a)), "all_s": float(np.median(b)),
                     "paired_ratio": float(np.median(a / b))}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cts", default="chest,abdomen,spine")
    ap.add_argument("--rounds", type=int, default=5, help="alternated calls per pose and setting")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "pair_skip.md")
    args = ap.parse_args()
    load0, t0 = os.getloadavg(), time.time()
    rows = []
    for name in args.cts.split(","):
        rows.append(run_ct(name, args.rounds))
        print(rows[-1], flush=True)
    lines = ["# Empty-space skipping in the two-material pair march (physics DRR, CPU)", "",
             f"Command: `PYTHONPATH=XRayCTRegistration python benchmarks/bench_pair_skip.py --cts {args.cts} "
             f"--rounds {args.rounds}`", "",
             f"Machine: {machine_info()}; numba threads {_raymarch.numba.get_num_threads()}, torch threads "
             f"{torch.get_num_threads()}; load average (1, 5, 15 min) {[round(v, 2) for v in load0]} at the start, "
             f"{[round(v, 2) for v in os.getloadavg()]} at the end; wall time {time.time() - t0:.0f} s.", "",
             f"Kernels alone (`_raymarch.march_pair`, `march_pair_with_jacobian`), {SAMPLES} samples per ray, the AP "
             f"view and four random poses, {args.rounds} alternated calls per pose and setting; times are medians, "
             "the ratio the median of the paired ratios (with / without skipping). Largest difference of the outputs "
             "with and without skipping, relative to the largest value: paths (forward) and Jacobians.", "",
             "| CT | packed volume (voxels) | detector | empty blocks | forward with / without (ms) | ratio | "
             "Jacobian with / without (ms) | ratio | largest difference: paths, Jacobians |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, j = r["forward"], r["jacobian"]
        lines.append(f"| {r['ct']} | {'x'.join(map(str, r['shape'][::-1]))} | {r['pixels']} | "
                     f"{100 * r['empty_blocks']:.0f} % | {1e3 * f['skip_s']:.1f} / {1e3 * f['all_s']:.1f} | "
                     f"{f['paired_ratio']:.2f} | {1e3 * j['skip_s']:.1f} / {1e3 * j['all_s']:.1f} | "
                     f"{j['paired_ratio']:.2f} | {r['diff']['forward']:.1e}, {r['diff']['jacobian']:.1e} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
