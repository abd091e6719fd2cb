"""CPU ray-march kernels of two versions, timed in one process, interleaved call by call.

    python benchmarks/bench_kernel_versions.py --ct "$(xrayctreg sample-data)" --base f5e939a

``--base``: a commit whose ``XRayCTRegistrationLib/_raymarch.py`` is imported (from ``git show``) beside the
working tree's. Both render the same rays (the chest CT and a copy downsampled 2x, the AP view and four random
poses as in ``bench_cpu_kernel.py``, batch 1): ``march`` (forward) and ``march_with_jacobian`` (forward and
per-ray pose Jacobian), the kernels alone, without autograd. Each round calls both versions on every pose, the
order alternating between rounds, so the two see the same load; the table gives medians and minima per
version and the median over calls of the paired ratio (this version / base). Results:
``benchmarks/results/kernel_determinism.md``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from bench_cpu_kernel import DETECTOR_MM, SDD, downsample2, poses, thread_env  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import _raymarch  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera  # noqa: E402
from XRayCTRegistrationLib.projector import Projector  # noqa: E402
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, read_ct  # noqa: E402

KERNELS = "XRayCTRegistration/XRayCTRegistrationLib/_raymarch.py"


def base_module(commit: str) -> ModuleType:
    """``_raymarch.py`` of ``commit`` as a module of its own (kept in the temp folder, so numba caches it)."""
    source = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{commit}:{KERNELS}"], check=True,
                            capture_output=True, text=True).stdout
    folder = Path(tempfile.gettempdir()) / f"xrayctreg_raymarch_{commit}"
    folder.mkdir(exist_ok=True)
    path = folder / "raymarch_base.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        path.write_text(source, encoding="utf-8")
    sys.path.insert(0, str(folder))  # importable by name: numba's cache rebuilds environments by module name
    return importlib.import_module("raymarch_base")


def this_version() -> str:
    """``git describe --always --dirty`` of the working tree."""
    return subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip() or "unknown"


def time_pair(versions: dict[str, ModuleType], vol: Volume, size: int, n_samples: int, rounds: int) -> dict:
    """Seconds per call ``{(call, version): [...]}`` over rounds x poses, the versions alternating."""
    proj = Projector(vol, Camera(SDD, size, size, DETECTOR_MM / size, DETECTOR_MM / size), n_samples=n_samples,
                     backend="numba")
    ref, params = poses(vol)
    mats = [np.ascontiguousarray((proj._ijk_from_world64 @ ref.pose_torch(p).double())[:3].numpy())[None]
            for p in params]
    padded, blocks, dirs = proj._padded, proj._blocks, proj._dirs64.numpy()
    out = np.empty((1, dirs.shape[0]), np.float32)
    jac = np.empty((1, dirs.shape[0], 6), np.float32)
    calls = {"fwd": lambda mod, m: mod.march(padded, blocks, m, dirs, n_samples, out),
             "fwd+jac": lambda mod, m: mod.march_with_jacobian(padded, blocks, m, dirs, n_samples, out, jac)}
    for mod in versions.values():  # warm-up: compile or load
        for call in calls.values():
            call(mod, mats[0])
    times = {(c, v): [] for c in calls for v in versions}
    names = list(versions)
    for r in range(rounds):
        for m in mats:
            for c, call in calls.items():
                for v in names if r % 2 == 0 else names[::-1]:
                    t0 = time.perf_counter()
                    call(versions[v], m)
                    times[(c, v)].append(time.perf_counter() - t0)
    return times


def main() -> None:
    """Time both versions at every detector size on the chest CT and its half-resolution copy; write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ct", type=Path, required=True, help="the chest CT (xrayctreg sample-data)")
    ap.add_argument("--base", default="f5e939a", help="commit of the base version of _raymarch.py")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="detector sizes")
    ap.add_argument("--samples", type=int, default=200, help="samples per ray")
    ap.add_argument("--rounds", type=int, default=12, help="rounds (each: every pose, both versions)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "kernel_determinism.md")
    args = ap.parse_args()
    load0, t0 = os.getloadavg(), time.time()
    versions = {"base": base_module(args.base), "this": _raymarch}
    ct = read_ct(args.ct)
    chest = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    rows = []
    for label, vol in (("chest", chest), ("chest / 2", downsample2(chest))):
        for size in args.sizes:
            times = time_pair(versions, vol, size, args.samples, args.rounds)
            for call in ("fwd", "fwd+jac"):
                a, b = np.array(times[(call, "base")]), np.array(times[(call, "this")])
                rows.append(f"| {label} | {size}x{size} | {call} | {1e3 * np.median(a):.1f} | {1e3 * np.median(b):.1f} "
                            f"| {1e3 * a.min():.1f} | {1e3 * b.min():.1f} | {np.median(b / a):.3f} "
                            f"| {os.getloadavg()[0]:.2f} |")
                print(rows[-1], flush=True)
    head = ["# CPU ray-march kernels: this version against a base commit", "",
            f"Command: `python benchmarks/bench_kernel_versions.py {' '.join(sys.argv[1:])}`", "",
            f"Machine: {machine_info()}. OMP/NUMBA thread variables: {thread_env()}.",
            f"Load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (shared machine); wall time "
            f"{(time.time() - t0) / 60:.1f} min.", "",
            f"Base: `_raymarch.py` of commit {args.base}; this: the working tree's ({this_version()}). "
            f"{args.samples} samples per ray, "
            f"{args.rounds} rounds x 5 poses per row, the versions alternating call by call.", "",
            "| volume | detector | call | base median (ms) | this median (ms) | base min (ms) | this min (ms) "
            "| median paired ratio this/base | load |", "|---|---|---|---|---|---|---|---|---|"]
    args.out.write_text("\n".join(head + rows) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
