"""GPU benchmark of the projector (Triton and grid_sample backends, nanodrr), registration and training.

One call, a few minutes on one GPU, no network, no SimpleITK (the CT comes from a ``.npz`` written by
``benchmarks/make_ct_npz.py``):

    python benchmarks/bench_gpu.py --ct chest_ct.npz [--nanodrr-wheels DIR]

What it does, in order:

1. the environment: torch, CUDA, triton, numba, the card;
2. correctness: the triton and torch backends (on the GPU) against the numba kernel (on the CPU) at a few
   poses, images and pose gradients (relative L2), and nanodrr's images against ours (NCC, relative L2);
3. speed: forward and forward + pose gradient (the gradient of the image sum with respect to the six pose
   parameters) at 256x256x1, 512x512x1, 256x256x16 and 48x48x32 (detector pixels x poses), 200 samples per
   ray, on the chest CT; CUDA events around ``--inner`` back-to-back calls, after warm-up, renderers and
   modes interleaved in every repetition, medians over ``--repeats`` repetitions;
4. one registration on the GPU (the library's ``register``, default method, from the AP view to a known
   pose of a DRR of the CT): time and error;
5. regressor training throughput (the library's ``Trainer``, default options) for ``--train-seconds``.

nanodrr (0.1.7, the fastest peer found) is measured when ``--nanodrr-wheels`` names a folder with its wheel and
those of its pure-Python dependencies (``pip download nanodrr==0.1.7 jaxtyping wadler_lindig roma platformdirs
--no-deps -d DIR``); they are unpacked into a temporary folder and imported from there. Its torchio dependency
is only used to read files: when torchio is missing a stand-in module is installed and nanodrr's ``Subject`` is
built from tensors (our attenuation volume, ``convert_to_mu=False``). Its camera is ours with ``x0 = y0 = 0``
and ``rt_inv = world_from_camera``; the NCC check confirms the two render the same image.

The markdown table is printed last and written to ``--out`` (default ``$OUT/gpu.md`` when ``OUT`` is set).
``--dry-run`` runs everything on the CPU with a downsampled CT, tiny detectors, Triton's interpreter and
nanodrr's torch path, to check the script without a GPU (its numbers mean nothing).
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # must precede the first import of triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import zipfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from common import stand_in  # noqa: E402

stand_in("SimpleITK")  # the library reads files with it; this script builds volumes from arrays

from XRayCTRegistrationLib import metrics, projector  # noqa: E402
from XRayCTRegistrationLib import registration as registration_module  # noqa: E402
from XRayCTRegistrationLib.devices import ValueAndGrad  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera, ReferenceView  # noqa: E402
from XRayCTRegistrationLib.projector import Projector  # noqa: E402
from XRayCTRegistrationLib.registration import register  # noqa: E402
from XRayCTRegistrationLib.training import Trainer, TrainOptions  # noqa: E402
from XRayCTRegistrationLib.volume import Volume, block_average, hu_to_mu  # noqa: E402

SDD = 1020.0
DETECTOR_MM = 512.0  # detector side; the chest magnified by sdd / sid = 1 / 0.7 fits on it
N_SAMPLES = 200
SIZES = [(256, 1), (512, 1), (256, 16), (48, 32)]  # (detector side in pixels, poses per call)
DRY_SIZES = [(16, 1), (16, 2)]


# -- setup ------------------------------------------------------------------------------------------------
def load_ct(path: Path, dry: bool) -> tuple[Volume, Volume]:
    """The CT in HU and as attenuation (1/mm) from the ``.npz`` (``hu``, ``ijk_to_ras``); tiny with ``dry``."""
    with np.load(path) as z:
        hu = Volume(z["hu"].astype(np.float32), z["ijk_to_ras"])
    if dry:
        hu = block_average(hu, [max(1, n // 24) for n in hu.shape_ijk])
    return hu, Volume(hu_to_mu(hu.data), hu.ijk_to_ras)


def camera(size: int) -> Camera:
    return Camera(SDD, size, size, DETECTOR_MM / size, DETECTOR_MM / size)


def random_params(n: int, seed: int) -> np.ndarray:
    """Pose parameters ``[n, 6]`` around the AP view: +-15 deg, +-15 mm in plane, +-40 mm in depth."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-15, 15, (n, 5)), rng.uniform(-40, 40, (n, 1))], axis=1)


def environment(device: torch.device, nanodrr_note: str) -> list[str]:
    """One line per component: versions, the card, CPU threads."""
    import numba

    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU dry run)"
    return [f"card: {card}", f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_v}, "
            f"numba {numba.__version__} ({numba.get_num_threads()} threads), numpy {np.__version__}, "
            f"Python {platform.python_version()}", f"nanodrr: {nanodrr_note}"]


# -- nanodrr --------------------------------------------------------------------------------------------
def import_nanodrr(wheels: Path | None) -> tuple[types.ModuleType | None, str]:
    """Unpack the wheels in ``wheels`` onto ``sys.path`` and import nanodrr; returns (module or None, note)."""
    if wheels is None:
        return None, "not measured: no --nanodrr-wheels given (it is not installed on this machine)"
    found = sorted(wheels.glob("*.whl"))
    if not found:
        return None, f"not measured: no wheels in {wheels}"
    target = Path(tempfile.mkdtemp(prefix="bench-gpu-wheels-"))
    for whl in found:
        with zipfile.ZipFile(whl) as z:
            z.extractall(target)
    sys.path.insert(0, str(target))
    stand_in("torchio", ("ScalarImage", "LabelMap"))  # file reading only; Subject is built from tensors
    try:
        import nanodrr
        from nanodrr.data import Subject  # noqa: F401
        from nanodrr.drr import DRR  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any failure means: not measured, and say why
        return None, f"not measured: import failed ({type(e).__name__}: {e})"
    version = getattr(nanodrr, "__version__", None) or next((w.name.split("-")[1] for w in found
                                                              if w.name.startswith("nanodrr-")), "?")
    return nanodrr, version


class Ours:
    """This project's projector on ``params`` ``[B, 6]`` (degrees, mm; float64 on the device)."""

    def __init__(self, vol: Volume, cam: Camera, ref: ReferenceView, backend: str, device: torch.device,
                 volume_dtype: torch.dtype = torch.float32) -> None:
        self.proj = Projector(vol, cam, n_samples=N_SAMPLES, device=device, backend=backend, volume_dtype=volume_dtype)
        self.ref = ref
        self.name = f"ours-{self.proj.active_backend()}" + ("-fp16" if volume_dtype == torch.float16 else "")

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ref.pose_torch(params))  # [B, rows, cols]


class Nano:
    """nanodrr's DRR module on the same attenuation volume, camera and poses."""

    def __init__(self, vol: Volume, cam: Camera, ref: ReferenceView, device: torch.device, backend: str) -> None:
        from nanodrr.data import Subject
        from nanodrr.drr import DRR

        mu = torch.as_tensor(vol.data)[None, None]  # [1, 1, K, J, I]
        v2w = torch.as_tensor(vol.ijk_to_ras, dtype=torch.float64)
        nk, nj, ni = vol.data.shape
        size = torch.tensor([ni, nj, nk], dtype=torch.float32)
        v2g = torch.eye(4)  # voxel index -> grid_sample coordinates (align_corners=False), as nanodrr builds it
        v2g[:3, :3] = torch.diag(2.0 / size)
        v2g[:3, 3] = 1.0 / size - 1.0
        iso = torch.as_tensor(vol.center, dtype=torch.float32)
        self.subject = Subject(mu, torch.zeros_like(mu), v2w.float(), v2w.inverse().float(), v2g, iso,
                               max_label=0, convert_to_mu=False).to(device)
        self.drr = DRR.from_carm_intrinsics(cam.sdd, cam.col_spacing, cam.row_spacing, 0.0, 0.0, cam.rows,
                                            cam.cols, dtype=torch.float32, device=device)
        self.ref = ref
        self.backend = backend
        self.name = "nanodrr"

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        w = self.ref.pose_torch(params).float()
        return self.drr(self.subject, w, n_samples=N_SAMPLES, backend=self.backend)[:, 0]  # [B, rows, cols]


def our_renderers(mu: Volume, cam: Camera, ref: ReferenceView, device: torch.device) -> list[Ours]:
    """Ours with triton (float32 and float16 volume) when triton imports, and with torch's grid_sample."""
    out = []
    if projector.triton_kernels() is not None:
        out = [Ours(mu, cam, ref, "triton", device), Ours(mu, cam, ref, "triton", device, torch.float16)]
    return out + [Ours(mu, cam, ref, "torch", device)]


# -- correctness ----------------------------------------------------------------------------------------
def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` over all entries (float64, on the CPU)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def image_and_grad(render: Callable, params: np.ndarray, weights: torch.Tensor, device: torch.device):
    """Images ``[B, rows, cols]`` and the gradient ``[B, 6]`` of ``sum(weights * image)`` (both on the CPU)."""
    p = torch.tensor(params, dtype=torch.float64, device=device, requires_grad=True)
    img = render(p)
    (img.double() * weights.to(img.device)).sum().backward()
    return img.detach().cpu(), p.grad.cpu()


def correctness(mu: Volume, size: int, device: torch.device, nano_ok: bool) -> list[str]:
    """Our GPU backends (and nanodrr) against the numba kernel at 3 poses: relative L2 of images and gradients."""
    cam = camera(size)
    ref = ReferenceView.ap(mu.center, cam.sdd)
    params = random_params(3, seed=1)
    weights = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    img0, g0 = image_and_grad(Ours(mu, cam, ref, "numba", torch.device("cpu")), params, weights, torch.device("cpu"))
    lines = [f"reference: ours-numba on the CPU, {size}x{size}, 3 poses, {N_SAMPLES} samples per ray"]
    for ours in our_renderers(mu, cam, ref, device):
        img, g = image_and_grad(ours, params, weights, device)
        lines.append(f"{ours.name}: image rel. L2 {rel_l2(img, img0):.2e}, "
                     f"pose gradient rel. L2 {rel_l2(g, g0):.2e}")
    if nano_ok:
        nano = Nano(mu, cam, ref, device, "auto" if device.type == "cuda" else "torch")
        img, g = image_and_grad(nano, params, weights, device)
        ncc = np.mean([metrics.image_ncc(img[i].numpy(), img0[i].numpy()) for i in range(3)])
        lines.append(f"nanodrr: image rel. L2 {rel_l2(img, img0):.2e}, NCC {ncc:.6f}, "
                     f"pose gradient rel. L2 {rel_l2(g, g0):.2e}")
    return lines


# -- speed ----------------------------------------------------------------------------------------------
def timed_ms(fn: Callable[[], None], device: torch.device, inner: int) -> float:
    """Milliseconds per call of ``fn`` over ``inner`` back-to-back calls (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / inner
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t) * 1e3 / inner


def workloads(render: Callable, params: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The two timed modes of one renderer: forward (no autograd) and forward + pose gradient."""
    def forward() -> None:
        with torch.no_grad():
            render(params)

    def forward_grad() -> None:
        p = params.clone().requires_grad_(True)
        render(p).sum().backward()

    return {"fwd": forward, "fwd+grad": forward_grad}


def speed(mu: Volume, sizes: list[tuple[int, int]], device: torch.device, nano_ok: bool, repeats: int,
          inner: int) -> dict[tuple[int, int], dict[str, dict[str, float]]]:
    """Median ms per call, ``{(size, batch): {renderer: {mode: ms}}}``; renderers and modes interleaved."""
    results = {}
    for size, batch in sizes:
        cam = camera(size)
        ref = ReferenceView.ap(mu.center, cam.sdd)
        params = torch.tensor(random_params(batch, seed=2), dtype=torch.float64, device=device)
        renderers: list = our_renderers(mu, cam, ref, device)
        if nano_ok:
            renderers.append(Nano(mu, cam, ref, device, "auto" if device.type == "cuda" else "torch"))
        jobs = {(r.name, mode): fn for r in renderers for mode, fn in workloads(r, params).items()}
        for fn in jobs.values():  # warm-up: compilation, caches, allocator
            timed_ms(fn, device, 2)
        samples: dict[tuple[str, str], list[float]] = {k: [] for k in jobs}
        for _ in range(repeats):
            for key, fn in jobs.items():
                samples[key].append(timed_ms(fn, device, inner))
        results[(size, batch)] = {}
        for (name, mode), ms in samples.items():
            results[(size, batch)].setdefault(name, {})[mode] = statistics.median(ms)
        print(f"  {size}x{size}x{batch}: " + ", ".join(f"{n} {m} {v:.3f} ms" for (n, m), v in
                                                        ((k, statistics.median(s)) for k, s in samples.items())),
              flush=True)
        del renderers, jobs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


# -- registration and training --------------------------------------------------------------------------
def registration(ct_hu: Volume, mu: Volume, size: int, device: torch.device) -> list[str]:
    """Register a DRR at a known pose from the AP view, twice (the first includes warm-up); time and error."""
    cam = camera(size)
    ref = ReferenceView.ap(mu.center, cam.sdd)
    truth = ref.pose([4.0, -3.0, 5.0, 6.0, -5.0, 15.0])
    with torch.no_grad():
        xray = Projector(mu, cam, device=device)(torch.as_tensor(truth, device=device)).cpu().numpy()
    start = ref.pose(np.zeros(6))
    points = metrics.target_points(ct_hu)
    lines = [f"{size}x{size} DRR at (4, -3, 5 deg, 6, -5, 15 mm) from the AP view, initial mTRE "
             f"{metrics.mtre(points, truth, start):.1f} mm, default method, device {device}"]
    for attempt in ("first call", "second call"):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        res = register(mu, xray, cam, start, reference=ref, device=str(device))
        lines.append(f"{attempt}: {res.wall_time_s:.3f} s, {res.iterations} iterations, mTRE "
                     f"{metrics.mtre(points, truth, res.world_from_camera):.3f} mm, success {res.success}")
    return lines


KERNEL_VARIANTS = {  # name: keyword arguments of _raymarch_triton.march (the first is the projector's choice)
    "default (16x8 pixel tiles, poses fastest, split by size)": {},
    "rays in a line": {"width": 0},
    "no sample split": {"split": 1},
    "tiles fastest (pose by pose)": {"pose_fastest": False},
}


def kernel_variants(mu: Volume, sizes: list[tuple[int, int]], device: torch.device, repeats: int,
                    inner: int) -> list[str]:
    """Forward ms of the Triton kernel's launch choices (same images), interleaved; a markdown table."""
    T = projector.triton_kernels()
    if T is None:
        return ["not measured: triton does not import"]
    vol = torch.as_tensor(mu.data, device=device)
    head = ["detector, batch"] + list(KERNEL_VARIANTS) + ["split chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size, batch in sizes:
        cam = camera(size)
        ref = ReferenceView.ap(mu.center, cam.sdd)
        w = np.stack([ref.pose(p) for p in random_params(batch, seed=2)])
        m = torch.as_tensor((mu.ras_to_ijk @ w)[:, :3], dtype=torch.float32, device=device)
        dirs = torch.as_tensor(cam.pixel_centers(np.float32).reshape(-1, 3), device=device)
        jobs = {name: functools.partial(T.march, vol, m, dirs, N_SAMPLES, **{"width": size, **kw})
                for name, kw in KERNEL_VARIANTS.items()}
        first = jobs[next(iter(jobs))]()[0]
        for name, fn in jobs.items():  # warm-up, and every variant renders the same image
            err = rel_l2(fn()[0], first)
            if err > 1e-5:
                raise RuntimeError(f"kernel variant {name!r} differs from the default: rel. L2 {err:.2e}")
        samples: dict[str, list[float]] = {k: [] for k in jobs}
        for _ in range(repeats):
            for name, fn in jobs.items():
                samples[name].append(timed_ms(fn, device, inner))
        n_tiles = -(-size // T.TILE_WIDTH) * -(-size // (T.BLOCK_RAYS // T.TILE_WIDTH))
        cells = [f"{size}x{size}, {batch}"] + [f"{statistics.median(v):.3f}" for v in samples.values()]
        lines.append("| " + " | ".join(cells + [str(T.sample_split(n_tiles * batch, N_SAMPLES, device))]) + " |")
        print(f"  kernel variants {lines[-1]}", flush=True)
    return lines


def registration_cpu_vs_gpu(ct_hu: Volume, mu: Volume, size: int, device: torch.device, cases: int) -> list[str]:
    """Registrations of ``cases`` DRRs at known poses on the CPU (numba) and on ``device``, interleaved.

    On ``device`` twice: with the evaluations replayed from CUDA graphs (the default) and eager
    (``registration.CUDA_GRAPHS = False``). Each case starts from the AP view; success: the library's verdict and
    an mTRE under 2 mm. The kernels were compiled by the sections before.
    """
    cam = camera(size)
    ref = ReferenceView.ap(mu.center, cam.sdd)
    points = metrics.target_points(ct_hu)
    rng = np.random.default_rng(5)
    cpu = torch.device("cpu")
    variants = {"CPU": (cpu, True), f"{device} eager": (device, False), f"{device} graphs": (device, True)}
    rows = {k: {"s": [], "ok": 0, "tre": [], "params": []} for k in variants}
    capture_errors = _record_capture_errors()
    for _ in range(cases):
        params = np.concatenate([rng.uniform(-5, 5, 3), rng.uniform(-8, 8, 2), rng.uniform(-15, 15, 1)])
        truth = ref.pose(params)
        with torch.no_grad():
            xray = Projector(mu, cam, device=cpu)(torch.as_tensor(truth)).numpy()
        for key, (dev, graphs) in variants.items():
            registration_module.CUDA_GRAPHS = graphs
            res = register(mu, xray, cam, ref.pose(np.zeros(6)), reference=ref, device=str(dev))
            tre = metrics.mtre(points, truth, res.world_from_camera)
            rows[key]["s"].append(res.wall_time_s)
            rows[key]["ok"] += int(res.success and tre < 2.0)
            rows[key]["tre"].append(tre)
            rows[key]["params"].append(res.params)
    registration_module.CUDA_GRAPHS = True
    med = {k: statistics.median(v["s"]) for k, v in rows.items()}
    lines = [f"{size}x{size}, {cases} DRRs at random poses (+-5 deg, +-8 mm, +-15 mm in depth) from the AP view, "
             f"default method, CPU (numba, {__import__('numba').get_num_threads()} threads) and {device} (triton; "
             "evaluations eager, and replayed from CUDA graphs) interleaved"]
    for key, r in rows.items():
        lines.append(f"{key}: median {med[key]:.3f} s, {r['ok']}/{cases} within 2 mm mTRE "
                     f"(median {statistics.median(r['tre']):.2f} mm)")
    graphs, eager = f"{device} graphs", f"{device} eager"
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(rows[graphs]["params"], rows[eager]["params"],
                                                            strict=True))
    lines += [f"CPU / {graphs} time: {med['CPU'] / med[graphs]:.2f}x; CPU / {eager}: {med['CPU'] / med[eager]:.2f}x "
              "(issue 15's target: >= 3x with the same success)",
              f"largest difference of the parameters found, graphs vs eager: {diff:.3g} (deg or mm)",
              "CUDA graph captures that failed: " + ("; ".join(sorted(set(capture_errors))) or "none")]
    return lines


def _record_capture_errors() -> list[str]:
    """A list that collects the errors of failed CUDA graph captures (``ValueAndGrad.graph_error``) from now on."""
    errors: list[str] = []
    capture = ValueAndGrad._capture

    def recording(self) -> None:
        capture(self)
        if self.graph_error:
            errors.append(self.graph_error[:300])

    ValueAndGrad._capture = recording
    return errors


def training(ct_hu: Volume, device: torch.device, seconds: float, dry: bool) -> list[str]:
    """Steps per second of the regressor's training (default options) over ``seconds`` after the first step.

    Twice, one after the other, from the same seed: with the network replayed from CUDA graphs (the default on
    CUDA) and eager (``Trainer.cuda_graphs = False``).
    """
    lines = []
    for graphs in (True, False):
        options = TrainOptions(time_budget_s=max(seconds, 1.0), seed=0)
        if dry:
            options = TrainOptions(time_budget_s=max(seconds, 1.0), seed=0, pool_size=16, val_size=4, batch_size=4)
        t0 = time.perf_counter()
        trainer = Trainer(ct_hu, camera(256), options, device=device)
        trainer.cuda_graphs = graphs
        rng, gen = np.random.default_rng(0), torch.Generator(device=device).manual_seed(0)
        for _ in range(2):  # fills the replay pool; the second step captures the network
            trainer.step(rng, gen)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        setup_s = time.perf_counter() - t0
        steps, t1 = 0, time.perf_counter()
        while time.perf_counter() - t1 < seconds:
            parts = trainer.step(rng, gen)
            steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t1
        val = trainer.validate()
        mode = "network replayed from CUDA graphs" if trainer.graph_shape else "eager"
        if graphs and trainer.graph_error:
            mode += f" (capture failed: {trainer.graph_error[:300]})"
        lines.append(f"regressor, default options (batch {options.batch_size}, {options.render.detector_size}x"
                     f"{options.render.detector_size} DRRs, {trainer.source.projector.active_backend()} projector), "
                     f"{mode}: {steps / elapsed:.1f} steps/s ({steps} steps in {elapsed:.1f} s after {setup_s:.1f} s "
                     f"of setup and two steps; last loss {parts['loss'] if steps else float('nan'):.3f}, validation "
                     f"{val['rot_deg']:.1f} deg / {val['trans_mm']:.1f} mm)")
        del trainer
    return lines


# -- report ---------------------------------------------------------------------------------------------
def speed_table(results: dict, names: list[str]) -> list[str]:
    """Markdown table: one row per size, forward then forward + pose gradient for each renderer."""
    head = ["detector, batch"] + [f"{n} fwd (ms)" for n in names] + [f"{n} fwd+grad (ms)" for n in names]
    head.append(f"{names[0]} fwd samples/s")
    ratio = "nanodrr" in names and names[0] != "nanodrr"
    if ratio:
        head += [f"nanodrr / {names[0]} fwd", f"nanodrr / {names[0]} fwd+grad"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (size, batch), by_name in results.items():
        cells = [f"{size}x{size}, {batch}"]
        for mode in ("fwd", "fwd+grad"):
            cells += [f"{by_name[n][mode]:.3f}" if n in by_name else "-" for n in names]
        first = by_name.get(names[0], {}).get("fwd")
        cells.append(f"{size * size * batch * N_SAMPLES / (first * 1e-3):.3g}" if first else "-")
        if ratio:
            cells += [f"{by_name['nanodrr'][m] / by_name[names[0]][m]:.2f}x" for m in ("fwd", "fwd+grad")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(args, env: list[str], checks: list[str], results: dict, variants: list[str], reg: list[str],
           train: list[str]) -> str:
    order = ["ours-triton", "ours-triton-fp16", "ours-torch", "nanodrr"]
    names = sorted({n for by_name in results.values() for n in by_name},
                   key=lambda n: order.index(n) if n in order else len(order))
    cmd = "python benchmarks/bench_gpu.py " + " ".join(sys.argv[1:])
    out = ["# Projector on a GPU" + (" (DRY RUN on the CPU: the numbers mean nothing)" if args.dry_run else ""), "",
           f"Command: `{cmd}`", ""] + [f"- {line}" for line in env]
    out += ["", f"Chest CT {args.ct_shape} voxels, {N_SAMPLES} samples per ray, detector {DETECTOR_MM:.0f} mm "
            f"square at SDD {SDD:.0f} mm, poses within 15 deg / 15 mm (40 mm in depth) of AP. Median of {args.repeats} "
            f"interleaved repetitions of {args.inner} back-to-back calls (CUDA events), after warm-up. "
            f"fwd+grad: gradient of the image sum with respect to the 6 pose parameters.", ""]
    out += speed_table(results, names) + ["", "Triton kernel launch choices, forward ms (same images):", ""] + variants
    out += ["", "Correctness:", ""] + [f"- {line}" for line in checks]
    out += ["", "Registration:", ""] + [f"- {line}" for line in reg]
    out += ["", "Training:", ""] + [f"- {line}" for line in train]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", type=Path, required=True, help=".npz with hu (int16 [k, j, i]) and ijk_to_ras (4x4)")
    ap.add_argument("--nanodrr-wheels", type=Path, default=None, help="folder with nanodrr's wheel and its deps'")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inner", type=int, default=10, help="back-to-back calls per timing")
    ap.add_argument("--train-seconds", type=float, default=20.0)
    ap.add_argument("--reg-cases", type=int, default=8, help="registrations timed on the CPU and the GPU each")
    ap.add_argument("--out", type=Path, default=None, help="markdown output (default $OUT/gpu.md when OUT is set)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny CT and sizes, Triton interpreter")
    args = ap.parse_args()
    if args.dry_run:
        global N_SAMPLES
        N_SAMPLES = 50  # the interpreter is slow
        device, sizes, reg_size = torch.device("cpu"), DRY_SIZES, 32
        args.repeats, args.inner, args.train_seconds = min(args.repeats, 2), 1, min(args.train_seconds, 2.0)
        args.reg_cases = min(args.reg_cases, 2)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run on a GPU, or use --dry-run")
        device, sizes, reg_size = torch.device("cuda"), SIZES, 256
    t_start = time.perf_counter()
    nano, nano_note = import_nanodrr(args.nanodrr_wheels)
    env = environment(device, nano_note)
    print("\n".join(env), flush=True)
    ct_hu, mu = load_ct(args.ct, args.dry_run)
    args.ct_shape = "x".join(map(str, mu.shape_ijk))
    checks = correctness(mu, sizes[0][0], device, nano is not None)
    print("\n".join(checks), flush=True)
    results = speed(mu, sizes, device, nano is not None, args.repeats, args.inner)
    variants = kernel_variants(mu, sizes, device, args.repeats, args.inner)
    reg = registration(ct_hu, mu, reg_size, device)
    reg += registration_cpu_vs_gpu(ct_hu, mu, reg_size, device, args.reg_cases)
    print("\n".join(reg), flush=True)
    train = training(ct_hu, device, args.train_seconds, args.dry_run)
    print("\n".join(train), flush=True)
    text = report(args, env, checks, results, variants, reg, train)
    text += f"\nTotal run time {time.perf_counter() - t_start:.0f} s.\n"
    out = args.out or (Path(os.environ["OUT"]) / "gpu.md" if os.environ.get("OUT") else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
