"""Forward + pose-gradient time of the numba ``Projector`` for two source trees, interleaved in one run.

Each round runs one process per tree (``--before`` then this checkout), alternating, so that both see the
same machine load; a process reads the chest CT, renders once to load the compiled kernels, then times
``--calls`` forward + backward passes (pose gradient) and reports their median. Prints a Markdown table of
the rounds and the medians over rounds.

    python benchmarks/bench_pose_gradient.py --before /tmp/before/XRayCTRegistration --ct CT [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent / "XRayCTRegistration"

CHILD = """
import json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from XRayCTRegistrationLib.geometry import Camera, ReferenceView
from XRayCTRegistrationLib.projector import Projector
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, read_ct
size, n_samples, calls = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ct = read_ct(sys.argv[2])
vol = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
cam = Camera(1020.0, size, size, 512.0 / size, 512.0 / size)
ref = ReferenceView.ap(vol.center, cam.sdd)
proj = Projector(vol, cam, n_samples=n_samples, backend="numba")
params = torch.tensor([5.0, -8.0, 3.0, 4.0, -6.0, 20.0], dtype=torch.float64)
times = []
for i in range(calls + 1):
    p = params.clone().requires_grad_(True)
    t = time.perf_counter()
    proj(ref.pose_torch(p)).sum().backward()
    times.append(time.perf_counter() - t)
print(json.dumps({"median_s": float(np.median(times[1:])), "grad": p.grad.tolist()}))
"""


def run_once(src: Path, ct: str, size: int, n_samples: int, calls: int) -> dict:
    """One process on sources ``src``: the median seconds of ``calls`` forward + backward passes and the gradient."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), ct, str(size), str(n_samples), str(calls)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the XRayCTRegistration folder of the earlier tree")
    ap.add_argument("--ct", required=True, help="CT file (e.g. the path `xrayctreg sample-data` prints)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--calls", type=int, default=5, help="timed calls per process")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rows = {"before": [], "after": []}
    grads = {}
    for _ in range(args.rounds):
        for name, src in (("before", args.before), ("after", AFTER)):
            res = run_once(src, args.ct, args.size, args.samples, args.calls)
            rows[name].append(res["median_s"])
            grads[name] = res["grad"]
    print("| round | " + " | ".join(str(i + 1) for i in range(args.rounds)) + " | median |")
    print("|---" * (args.rounds + 2) + "|")
    for name, ts in rows.items():
        cells = " | ".join(f"{1e3 * t:.1f}" for t in ts)
        print(f"| {name} (ms) | {cells} | {1e3 * statistics.median(ts):.1f} |")
    diff = max(abs(a - b) for a, b in zip(grads["before"], grads["after"], strict=True))
    print(f"\nlargest difference of the pose gradients (before - after): {diff:.3g} "
          f"(largest component {max(abs(g) for g in grads['after']):.3g})")


if __name__ == "__main__":
    main()
