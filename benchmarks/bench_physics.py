"""Physics DRR: speed against the monochromatic DRR, and registration on physics-simulated X-rays.

Run from the repository root (the sample chest CT is fetched by ``xrayctreg sample-data``):

    PYTHONPATH=$PWD/XRayCTRegistration python benchmarks/bench_physics.py

Speed: the chest CT (512x512x133), a 256x256 detector (2 mm pixels, sdd 1020 mm), the AP view; the
monochromatic DRR (``Projector`` of ``hu_to_mu``) and the physics DRR (``PhysicsProjector`` of the
two-material decomposition, 100 kVp, 20 energy bins, scatter 0.3, blur 1 px), both 200 samples per
ray, timed interleaved (mono, physics, mono, ...), forward alone and forward + pose gradient.
``--device cuda`` times the torch backend on a GPU (``--tables`` then gives attenuation tables saved
here with ``--save-tables``, for a machine without xraydb).

Registration: cases of ``evaluation.make_cases`` (SOPI-like initial errors, 128x128 detector of 4 mm
pixels) whose X-rays are replaced by physics simulations at 80, 100 and 120 kVp (scatter 0.3, blur
1 px, 1e4 photons per pixel); each case is registered with opt-lncc (current defaults) on the
monochromatic DRR and on the physics DRR (the renderer at the simulation's kVp, without scatter).
Results: ``benchmarks/results/physics.md`` and ``physics_rows.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "XRayCTRegistration"))

from common import machine_info, stand_in  # noqa: E402

stand_in("SimpleITK")  # not on the GPU machine: there the CT comes as a .npz (--ct) and the tables as --tables
from XRayCTRegistrationLib import _physics_cpu  # noqa: E402
from XRayCTRegistrationLib import spectrum as sp  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.geometry import Camera, ReferenceView  # noqa: E402
from XRayCTRegistrationLib.materials import decompose  # noqa: E402
from XRayCTRegistrationLib.physics import PhysicsProjector, physics_renderer, register_fitting_scatter  # noqa: E402
from XRayCTRegistrationLib.projector import Projector  # noqa: E402
from XRayCTRegistrationLib.training import load_initialiser, read_model_file  # noqa: E402
from XRayCTRegistrationLib.volume import Volume, hu_to_mu, read_ct  # noqa: E402

SDD = 1020.0
OUT = HERE / "results"
TABLE_NAMES = ("soft tissue", "bone", "aluminium", "CsI")


def save_tables(path: Path) -> None:
    """Attenuation tables (1-150 keV, 0.5 keV grid) of the benchmark's materials, for a machine without xraydb."""
    e = np.round(np.arange(1.0, 150.5, 0.5), 3)
    np.savez(path, energies=e, **{n: sp.mass_attenuation(n, e) for n in TABLE_NAMES})


def use_tables(path: Path) -> None:
    """Replace xraydb look-ups by the saved tables (interpolated linearly in log-log)."""
    t = np.load(path)
    e = t["energies"]

    def table(name: str, energies: tuple[float, ...]) -> np.ndarray:
        q = np.asarray(energies, dtype=np.float64)
        return np.exp(np.interp(np.log(q), np.log(e), np.log(t[name])))

    sp._mass_attenuation_cached = table


def load_ct(path: str | None) -> Volume:
    """The CT of the speed test: a file, a ``.npz`` of arrays (``hu``, ``ijk_to_ras``; a machine without
    SimpleITK), or the chest sample CT."""
    if path is None:
        return read_ct(sample_ct_path(name="chest"))
    if path.endswith(".npz"):
        z = np.load(path)
        return Volume(z["hu"], z["ijk_to_ras"])
    return read_ct(path)


def timed(fn, sync) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def speed(ct: Volume, device: str, runs: int) -> dict:
    """Median times (s) of mono and physics DRRs at 256x256, interleaved, forward and forward + pose gradient."""
    cam = Camera(SDD, 256, 256, 2.0, 2.0)
    ref = ReferenceView.ap(ct.center, SDD)
    backend = "auto"  # numba on the CPU, triton on CUDA (when it imports; else torch's grid_sample)
    t0 = time.perf_counter()
    mats = decompose(ct)
    t_decompose = time.perf_counter() - t0
    mono = Projector(Volume(hu_to_mu(ct.data), ct.ijk_to_ras), cam, device=device, backend=backend)
    phys = PhysicsProjector(mats, cam, spectrum=sp.TubeSpectrum(100.0), scatter_fraction=0.3, blur_px=1.0,
                            device=device, backend=backend)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    params = torch.zeros(1, 6, dtype=torch.float64)

    def fwd(proj):
        with torch.no_grad():
            proj(ref.pose_torch(params))

    def grad(proj):
        p = params.clone().requires_grad_(True)
        proj(ref.pose_torch(p)).sum().backward()

    out = {"t_decompose_s": t_decompose}
    for name, fn in (("forward", fwd), ("gradient", grad)):
        fn(mono)
        fn(phys)  # warm-up (compilation, caches)
        tm, tp = [], []
        for _ in range(runs):
            tm.append(timed(lambda f=fn: f(mono), sync))
            tp.append(timed(lambda f=fn: f(phys), sync))
        out[name] = {"mono_s": float(np.median(tm)), "physics_s": float(np.median(tp)),
                     "ratio": float(np.median(tp) / np.median(tm))}
    with torch.no_grad():
        w = ref.pose_torch(params)
        paths = phys.paths(w)
        t_paths = [timed(lambda: phys.paths(w), sync) for _ in range(runs)]
        after = after_march(phys, paths)
        t_spec = [timed(after, sync) for _ in range(runs)]
    out["physics_paths_s"] = float(np.median(t_paths))
    out["physics_spectral_detector_s"] = float(np.median(t_spec))
    if device == "cpu":
        out.update(against_reference(phys, mats, cam, ref))
    return out


def after_march(phys: PhysicsProjector, paths: torch.Tensor):
    """The physics DRR's steps after the march (spectral sum, scatter, blur) on ``paths`` [1, M, R], as it runs them.

    On the CPU (numba backend) the :mod:`_physics_cpu` kernels of the projector's forward, else the torch steps.
    """
    rows, cols = phys.camera.rows, phys.camera.cols
    if not phys._fused():
        return lambda: phys.detect(phys.primary(paths).reshape(1, rows, cols))
    table, ops, p = phys.cpu_table(), phys.detector_operators(), paths.numpy()
    i_p, unused = np.empty((1, p.shape[2])), np.empty((0, 0, 0), np.float32)

    def run():
        _physics_cpu.spectral_sum(p, *table, i_p, unused, False)
        ops.detect(i_p.reshape(rows, cols), phys.scatter_fraction)

    return run


def against_reference(phys: PhysicsProjector, mats, cam: Camera, ref: ReferenceView) -> dict:
    """The numba physics DRR (16-bit material pairs, steps after the march in numba) against the torch backend's.

    At the AP view and a pose 10 deg / 20 mm off it: the largest absolute difference of the log images,
    of the paths (g/cm^3 * mm) relative to the largest path, and the relative difference of the pose gradients
    of the sum of the image.
    """
    slow = PhysicsProjector(mats, cam, spectrum=phys.spectrum, scatter_fraction=phys.scatter_fraction,
                            blur_px=phys.blur_px, backend="torch")
    res = {"ref_log_max_abs": 0.0, "ref_path_max_rel": 0.0, "ref_grad_rel": 0.0}
    for p in ([0.0] * 6, [10.0, -5.0, 5.0, 20.0, -10.0, 15.0]):
        params = torch.tensor([p], dtype=torch.float64)
        with torch.no_grad():
            w = ref.pose_torch(params)
            d_log = float((phys(w) - slow(w)).abs().max())
            pa, pb = phys.paths(w), slow.paths(w)
        grads = []
        for proj in (phys, slow):
            q = params.clone().requires_grad_(True)
            proj(ref.pose_torch(q)).sum().backward()
            grads.append(q.grad)
        res["ref_log_max_abs"] = max(res["ref_log_max_abs"], d_log)
        res["ref_path_max_rel"] = max(res["ref_path_max_rel"], float((pa - pb).abs().max() / pb.abs().max()))
        res["ref_grad_rel"] = max(res["ref_grad_rel"], float((grads[0] - grads[1]).norm() / grads[1].norm()))
    return res


def physics_cases(cases, ct: Volume, kvp: float, seed: int, scatter: float = 0.3):
    """``cases`` with X-rays simulated by the physics model at ``kvp`` (``scatter``, blur 1 px, 1e4 photons)."""
    from XRayCTRegistrationLib.projector import samples_for

    mats = decompose(ct)
    sim = PhysicsProjector(mats, cases.camera, spectrum=sp.TubeSpectrum(kvp), scatter_fraction=scatter, blur_px=1.0,
                           n_samples=samples_for(cases.volume_mu))
    g = torch.Generator().manual_seed(seed)
    new = []
    for c in cases:
        x = sim.simulate(torch.as_tensor(c.world_from_camera_gt), photons=1e4, generator=g).numpy()
        new.append(dataclasses.replace(c, xray=x))
    return dataclasses.replace(cases, cases=new), mats


def training_words(model: str) -> str:
    """How a model's training X-rays were made, from its file: "mono DRRs" or "physics 80-120 kVp, scatter 0-0.5"."""
    from XRayCTRegistrationLib.training import TrainOptions

    render = TrainOptions.from_dict(read_model_file(model)["options"]).render
    if render.physics_kvp is None:
        return "mono DRRs"
    (k0, k1), (s0, s1) = render.physics_kvp, render.physics_scatter
    return f"physics {k0:g}-{k1:g} kVp, scatter {s0:g}-{s1:g}"


def initialiser_method(ct: Volume, cases, model: str):
    """The pose an initialiser model predicts from each case's X-ray (``register --init-model M --no-refine``)."""
    from XRayCTRegistrationLib.pipeline import register_xray

    initialiser = load_initialiser(model)

    def fn(case):
        return register_xray(ct, case.xray, cases.camera, initialiser, refine=False, volume_mu=cases.volume_mu)

    return fn


def sopi_method(ct: Volume, cases, rtpi: str, fine: str):
    """SOPI: RTPI's pose, then the sopi-fine model from it (``register --init-model R --method sopi-fine``)."""
    from XRayCTRegistrationLib.pipeline import register_xray
    from XRayCTRegistrationLib.sopi_refine import load_fine_model

    initialiser, model = load_initialiser(rtpi), load_fine_model(fine)

    def fn(case):
        return register_xray(ct, case.xray, cases.camera, initialiser, method="sopi-fine", model=model,
                             volume_mu=cases.volume_mu)

    return fn


def sopi_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``--sopi-model``: comma-separated ``RTPI.pt:FINE.pt`` pairs."""
    pairs = tuple(tuple(p.split(":")) for p in text.split(",") if p)
    for p in pairs:
        if len(p) != 2 or not all(p):
            raise SystemExit(f"--sopi-model: give RTPI.pt:FINE.pt pairs, got {':'.join(p)!r}")
    return pairs


def fitted_scatter_method(cases, mats, carrier, renderer, kvp: float, start=None):
    """opt-lncc with the physics renderer and the scatter fraction fitted to each X-ray (two to four passes).

    :func:`physics.register_fitting_scatter`: pass 1 from the initial pose with ``f`` fitted there, each next pass
    from the last pose with ``f`` refitted there, until the fraction settles. The time counts every pass and fit.
    ``start``: a
    ``register_fn`` whose pose replaces the case's initial pose (e.g. the learned ppc method), timed with the rest.
    """
    from functools import partial

    from XRayCTRegistrationLib.pipeline import register_xray
    from XRayCTRegistrationLib.projector import samples_for

    fit = PhysicsProjector(mats, cases.camera, spectrum=sp.TubeSpectrum(kvp), blur_px=1.0,
                           n_samples=samples_for(cases.volume_mu))

    def fn(case):
        def register_with(f, w):
            return register_xray(None, case.xray, cases.camera, w, method="opt-lncc", volume_mu=carrier,
                                 reference=cases.reference, renderer=partial(renderer, scatter_fraction=f))

        w0 = case.world_from_camera_init if start is None else start(case).world_from_camera
        return register_fitting_scatter(case.xray, w0, fit, register_with)[0]

    return fn


def registration(ct: Volume, name: str, n_cases: int, kvps: list[float], seed: int, log,
                 renderer_scatter: float = 0.0, xray_scatter: float = 0.3, fitted: bool = True,
                 init: str = "sopi", renderers: tuple[str, ...] = ("mono", "physics"),
                 ppc_models: tuple[str, ...] = (), init_models: tuple[str, ...] = (),
                 sopi_models: tuple[tuple[str, str], ...] = ()) -> dict:
    """opt-lncc with the monochromatic and the physics renderer (and fitted scatter) on physics X-rays, per kVp.

    ``init``: the cases' starts (``sopi`` or ``hard``, :func:`evaluation.make_cases`); ``renderers``: which of the
    plain renderers run besides the fitted scatter. ``ppc_models``: models of the learned point-to-plane method
    (``xrayctreg train --model ppc`` on this CT, on monochromatic DRRs or with ``--physics-kvp``); each adds its rows
    alone and followed by the fitted-scatter registration, every method run on a case before the next case.
    ``init_models``: initialiser models (``xrayctreg train --model regressor`` or ``rtpi``), the same two rows each.
    ``sopi_models``: (RTPI model, sopi-fine model) pairs, SOPI's two stages, the same two rows each.
    """
    from bench_multict import PIXEL_MM
    from XRayCTRegistrationLib import evaluation as ev

    cam = Camera(SDD, 128, 128, PIXEL_MM[name], PIXEL_MM[name])
    base = ev.make_cases(ct, cam, n_cases, seed=seed, init=init)
    ev.run_method(base.subset([0]), ev.intensity_method("opt-lncc")(base), name="warm-up")
    rows: dict[str, list[dict]] = {}
    for kvp in kvps:
        cases, mats = physics_cases(base, ct, kvp, seed, xray_scatter)
        carrier, renderer = physics_renderer(mats, spectrum=sp.TubeSpectrum(kvp), scatter_fraction=renderer_scatter)
        fns = {"mono renderer": ev.intensity_method("opt-lncc")(cases),
               "physics renderer": ev.intensity_method("opt-lncc", volume_mu=carrier, renderer=renderer)(cases)}
        fns = {k: f for k, f in fns.items() if k.split()[0] in renderers}
        if fitted:
            fns["physics renderer, fitted scatter"] = fitted_scatter_method(cases, mats, carrier, renderer, kvp)
        starts = []  # (label alone, label before "+ fitted scatter", register_fn) of each learned method
        for model in ppc_models:
            trained = training_words(model)
            starts.append((f"ppc (learned, {trained})", f"ppc ({trained})",
                           ev.intensity_method("ppc", model=model)(cases)))
        for model in init_models:
            kind = f"{read_model_file(model)['method']} ({training_words(model)})"
            starts.append((kind, kind, initialiser_method(ct, cases, model)))
        for rtpi, fine in sopi_models:
            kind = f"SOPI: RTPI ({training_words(rtpi)}) + sopi-fine ({training_words(fine)})"
            starts.append((kind, kind, sopi_method(ct, cases, rtpi, fine)))
        for alone, prefix, fn in starts:
            fns[alone] = fn
            fns[f"{prefix} + physics renderer, fitted scatter"] = fitted_scatter_method(cases, mats, carrier, renderer,
                                                                                        kvp, start=fn)
        for label in fns:
            rows[f"{name}, {kvp:g} kVp, {label}"] = []
        for k in range(len(cases)):  # interleaved per case
            one = cases.subset([k])
            for label, fn in fns.items():
                rows[f"{name}, {kvp:g} kVp, {label}"] += ev.run_method(one, fn, name=f"{name} {kvp:g} {label}",
                                                                        log=log)
    return rows


NOTES = """## Notes

- **Cost of the physics DRR (CPU, numba backend).** The two materials are rendered in one march: each density is
  quantised to 16 bits (step max / 65535) and the pair shares one 32-bit word per voxel
  (`MaterialVolumes.packed_pairs`, made once per CT), so the march reads as many bytes as the monochromatic one; the
  spectral sum and its path derivatives share one exponential per bin and ray (no autograd graph over the bins);
  the pose gradient contracts each material's per-ray Jacobian weighted by dI/dp. The march is bound by its voxel
  reads: in a prototype on the chest CT (load 2-3, 2 threads) two float32 single-material marches took
  255-265 ms, a fused float32 two-channel march (channel-last) 232-241 ms, the 16-bit pair march 162-226 ms and
  the monochromatic march 137-184 ms. Accuracy against the float32 reference: see the speed section above.
  The pair march skips the empty runs at both ends of each ray as the monochromatic one does (`pair_skip.md`:
  on the chest CT, whose blocks are 21 % empty, 0.86 of the forward time and 0.87 of the Jacobian's, paired
  over alternated calls; the abdomen CT's air reads above -1000 HU and the spine crop is all tissue, so neither
  has an empty block and neither changes). The speed table above predates this.
- **No torch between numba regions (CPU).** The physics DRR's forward and pose gradient are one autograd function
  (`physics._NumbaImage`): the pair march (numba), then the spectral sum (a numba parallel loop in numba's own
  thread pool), the scatter fog, the detector blur and the log (separable operators in numba on the calling
  thread, `_physics_cpu.DetectorOperators`) and, backward, their adjoints and the contraction with the per-ray
  Jacobians (numba); no torch operation on an image runs between the numba regions. Before (commit 2abe996) these
  steps were small torch operations: numba's and torch's OpenMP thread pools each spin after their parallel
  regions, and on two cores loaded by other processes the spinning threads of one pool took the cores the other
  needed, so the ratio to the monochromatic DRR (one numba region) swung with the load (forward 1.73 and 3.02 in
  two earlier windows with the default threads), while one thread or `OMP_WAIT_POLICY=PASSIVE` kept it at
  1.3-1.7. The torch steps stay for the torch and triton backends (CUDA) and where the kVp needs a gradient; the
  CPU steps are tested against them (`Testing/test_physics_cpu.py`: operators and adjoints to 1e-12, the image
  to 1e-5, the pose gradient to 1e-4).
- **Default threads (numba 2, torch 2, no environment variable), windows on this shared machine** (physics /
  monochromatic time, median of 15 interleaved runs, 256x256; `benchmarks/bench_physics.py --skip-registration
  --runs 15`; before = commit 2abe996, the steps after the march in torch; after = this code; in each window
  after then before, back to back; load = 1-minute load average at the start and end of each run):

  | window (clock) | after: load | after: forward / gradient | before: load | before: forward / gradient |
  |---|---|---|---|---|
  | 1 (20:08-20:28) | 11.1-10.2 | 1.39 / 1.11 | 9.7-6.4 | 3.24 / 3.86 |
  | 2 (20:28-20:32) | 5.3-5.2 | 1.38 / 1.27 | 5.2-4.4 | 3.18 / 3.32 |
  | 3 (20:35-20:40) | 3.0-5.3 | 1.30 / 1.41 | 5.3-7.3 | 2.74 / 2.91 |
  | 4 (19:49-20:01, before first) | 5.2-12.4 | 1.40 / 1.65 | 0.2-6.0 | 3.19 / 1.78 |

  The target (under 2x) now holds with the default threads in every window, forward and gradient (1.30-1.40
  forward, 1.11-1.65 gradient), where the same runs of the torch steps gave 2.74-3.24 forward and 1.78-3.86
  gradient. With one thread (`NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1`, 20:40-20:43, load 7.4-5.8): 1.30 / 1.73.
  The steps after the march take 0.15-0.16 of the monochromatic forward's time in windows 1-3 (26-44 ms at
  load 3-5; the speed section's split); the rest of the ratio is the pair march (a 32-bit word of two 16-bit
  densities per voxel, and two Jacobians per ray for the gradient). Absolute times vary with the load by up to
  10x between windows (window 1: monochromatic forward 1.6 s); compare ratios only.
- **Earlier history, by thread configuration** (before = commit 0e3e736, one float32 march per material and the
  spectral sum through autograd; after = the packed pair march with the steps after it in torch, commit 2abe996;
  the torch steps are now replaced, see above):

  | threads (environment) | load (1 min) | 0e3e736: forward / gradient | 2abe996: forward / gradient |
  |---|---|---|---|
  | numba 1, torch 1 (`NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1`) | 8.8-9.6, after 9.6-5.5 | 2.19 / 2.17 | 1.34 / 1.56 |
  | numba 2, torch 2, `OMP_WAIT_POLICY=PASSIVE` | 5.1-5.7 | 2.34 / 2.07 | 1.32 / 1.72 |
  | numba 2, torch 2 (defaults) | 5.4-3.8 | 2.66 / 2.82 | 1.73 / 2.16 |
  | numba 2, torch 2 (defaults) | 3.0-10.5, after 3.5-3.3 | 3.85 / 4.06 | 3.02 / 1.62 |
  | numba 2, `OMP_NUM_THREADS=1` | 2.9-3.0 | | 1.30 / 1.94 |

- **GPU.** Not measured (no GPU machine for this work). On one:
  `PYTHONPATH=$PWD/XRayCTRegistration python3 benchmarks/bench_physics.py --device cuda --skip-registration
  --runs 30 --tag physics_gpu` (that machine has neither xraydb nor SimpleITK: first run `--save-tables T.npz` here
  and pass `--tables T.npz`, and give the CT as `.npz` arrays `hu`, `ijk_to_ras`).
- **Registration** (`physics_multict.md`: 8 SOPI-like cases per CT and kVp (seed 0), X-rays with scatter 0.3, the
  registration's defaults of today, with the detector blur fitted with the pose, `fit_blur=True`). Scatter, not the
  spectrum, is what hurts: without a scatter model both renderers fail on every CT (chest 0 %, abdomen 0-12.5 %,
  spine 0 %, success at mTRE < 2 mm; on the chest, 12 cases at 100 kVp without scatter in the X-rays: 100 % for
  both, `physics_noscatter.md`, made before the blur fit). With the scatter fraction fitted to each X-ray
  (`physics.fit_scatter_fraction`: the fraction whose image has the X-ray's sorted intensities, so misalignment
  does not pass for fog; fitted at the initial pose, registered, refitted at the result and registered again):
  chest 87.5-100 %, abdomen 62.5-75 % (its misses end 2.2-3.2 mm off), spine 87.5 % at every kVp (median mTRE
  0.44-0.57 mm; the one miss per kVp ends 19-23 mm off), at 0.7-2.6 times the median time of one registration
  with the physics renderer without scatter. Before the blur fit (commit
  6e02f2d's library, 10 cases): chest 90-100 %, abdomen 50-60 %, spine 40-60 %; the case sets differ (8 against
  10 cases, and the projector changed since), so compare loosely. With the X-rays' true fraction (a best case,
  `physics_scatter.md`, chest, 100 kVp, before the blur fit): 91.7 %. The fit at the true pose recovers
  0.299-0.301 of 0.3 (chest, 6 cases at 80 and 120 kVp); at the initial pose 0.30-0.39 on 8 of 12, 0.75-1.6 on the
  others, hence the refit. On the spine crop both renderers without scatter diverge (mTRE 62-107 mm mean): the
  fog flattens the small crop's contrast. The fit is `register --renderer physics --fit-scatter`; the
  learned initialisers and stage-2 methods on physics X-rays: `physics_trained.md`. Capture range on physics
  X-rays: `physics_hard.md`.
- **The learned point-to-plane method on physics X-rays** (`physics_ppc_hard.md`: the hard set, 24 cases per CT,
  100 kVp, scatter 0.3; `--ppc-model` with the models of `ppc.md`, trained on monochromatic DRRs of each CT).
  ppc alone succeeds in no case on any CT: it brings most far starts closer (13-16 of 24 cases end closer than
  they started, all but one from 10 mm or more) but moves the near ones away (11 of the 12 starts under 10 mm end
  7-37 mm off); its flow network
  never saw scatter fog or a polychromatic contrast. As the first step before the fitted-scatter physics
  registration it still widens the capture range where the fog leaves the intensity registration a narrow basin:
  chest 100 % success and a capture range of at least 60 mm (the fitted-scatter registration alone: 79 %, 40 mm),
  spine crop 67 % and 30 mm (54 %, 25 mm); abdomen 58 % and 5 mm (54 %, 10 mm), though every abdomen case ends
  within 5 mm (alone: up to 30 mm). The flow network trained on physics X-rays (domain randomisation over kVp and
  scatter): `physics_trained.md`.
- **Registration times** (`physics_multict.md`) are from a machine with a load average of 3-5 on 2 cores (other
  work running), one numba / torch thread (`NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1`) and `nice -n 10`.
- **DeepDRR 1.2.2** (the physics peer) does not install in a bench environment here: it pins numpy < 2 (this project
  runs numpy 2), its projector imports cupy and pyrender (OpenGL through EGL) at import time and runs CUDA kernels
  only (no CPU path), and it pulls cuda-python, open3d, pyvista, PyOpenGL 3.1.6 and torchvision. This machine has no
  GPU; the GPU machine has no network and takes at most 64 MiB of carried wheels. No side-by-side intensity
  profiles.
- **Spectra.** `spekpy` 2.5.4 is a 164 MB wheel (215 MB installed, with matplotlib): not a dependency; the tube
  model is Kramers' law through aluminium filtration with xraydb attenuation (see `spectrum.py`); a cross-check of
  its half-value layers against spekpy is not done.
"""


INIT_WORDS = {"sopi": "SOPI-like", "hard": "hard-set (initial mTRE uniform in 0-60 mm)"}


def write_report(path: Path, args, spd: dict | None, rows: dict | None, meta: dict) -> None:
    from XRayCTRegistrationLib import evaluation as ev

    lines = ["# Physics DRR: speed and registration on physics-simulated X-rays", "",
             f"Command: `{' '.join(meta['command'])}`", "",
             f"Machine: {meta['machine']}; environment: {meta.get('environment', 'not recorded')}", "",
             f"Load average (1, 5, 15 min) at start {meta['load_start']}, at end {meta['load_end']}; "
             f"wall time {meta['wall_s']:.0f} s.", ""]
    if spd is not None:
        lines += [f"## Speed, 256x256, chest CT 512x512x133, 200 samples per ray, device {args.device}", "",
                  f"Median of {args.runs} interleaved runs each. Physics: 2 materials (soft tissue, bone), 100 kVp, "
                  "20 energy bins, scatter 0.3, blur 1 px.", "",
                  "| pass | monochromatic (ms) | physics (ms) | ratio |", "|---|---|---|---|"]
        for k in ("forward", "gradient"):
            v = spd[k]
            lines.append(f"| {k} | {1e3 * v['mono_s']:.1f} | {1e3 * v['physics_s']:.1f} | {v['ratio']:.2f} |")
        lines += ["", f"Physics forward, split: material paths {1e3 * spd['physics_paths_s']:.1f} ms, spectral sum + "
                  f"scatter + blur {1e3 * spd['physics_spectral_detector_s']:.1f} ms. Material decomposition of the "
                  f"CT (once per CT): {spd['t_decompose_s']:.1f} s.", ""]
        if "ref_log_max_abs" in spd:
            lines += ["Against the reference (the torch backend: float32 densities, grid_sample, the spectral sum "
                      "in torch) at the AP view and a pose 10 deg / 20 mm off: largest difference of the log "
                      f"images {spd['ref_log_max_abs']:.1e}, of the material paths {spd['ref_path_max_rel']:.1e} "
                      f"of the largest path, pose gradient of the image sum {spd['ref_grad_rel']:.1e} "
                      "(relative norm of the difference).", ""]
    if rows is not None:
        lines += [f"## Registration on physics-simulated X-rays ({args.cts}, 128x128, opt-lncc defaults)", "",
                  f"{args.cases} {INIT_WORDS[args.init]} cases per CT and kVp (seed {args.seed}; detector pixel 4 mm, "
                  "spine 1.5 mm); "
                  f"X-rays: physics model, scatter {args.xray_scatter:g}, blur 1 px, 1e4 photons; physics renderer "
                  f"at the simulation's kVp, scatter {args.renderer_scatter:g}; \"fitted scatter\": the physics "
                  "renderer with the scatter fraction fitted to each X-ray (`physics.fit_scatter_fraction`, at the "
                  "initial pose, then refitted at each result and registered again from it until it settles, "
                  "`physics.register_fitting_scatter`; time of all passes). "
                  "Success: mTRE < 2 mm.",
                  "", ev.markdown_table([ev.summarize(r, name=n) for n, r in rows.items()],
                                        capture=args.init == "hard"), ""]
    path.write_text("\n".join(lines) + "\n" + NOTES, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--kvps", default="80,100,120")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--xray-scatter", type=float, default=0.3, help="scatter fraction of the simulated X-rays")
    ap.add_argument("--renderer-scatter", type=float, default=0.0, help="scatter fraction of the physics renderer")
    ap.add_argument("--cts", default="chest", help="sample CTs of the registration (data.SAMPLES names)")
    ap.add_argument("--no-fit", action="store_true", help="leave out the physics renderer with fitted scatter")
    ap.add_argument("--init", choices=sorted(INIT_WORDS), default="sopi",
                    help="the cases' starts: SOPI-like errors, or the hard set spanning 0-60 mm (capture range)")
    ap.add_argument("--renderers", default="mono,physics",
                    help="plain renderers to run besides the fitted scatter (comma-separated: mono, physics; or none)")
    ap.add_argument("--ppc-model", default="",
                    help="models of the learned ppc method for the CT of --cts (one CT; comma-separated): each adds "
                         "its rows")
    ap.add_argument("--init-model", default="",
                    help="initialiser models (regressor, rtpi) for the CT of --cts (one CT; comma-separated): each "
                         "adds its rows alone and followed by the fitted-scatter registration")
    ap.add_argument("--sopi-model", default="",
                    help="SOPI's two stages for the CT of --cts (one CT; comma-separated RTPI.pt:FINE.pt pairs): each "
                         "adds its rows alone and followed by the fitted-scatter registration")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-registration", action="store_true")
    ap.add_argument("--ct", default=None, help="speed: CT image or .npz (hu, ijk_to_ras); default the chest CT")
    ap.add_argument("--tables", type=Path, default=None, help="attenuation tables (.npz) instead of xraydb")
    ap.add_argument("--save-tables", type=Path, default=None, help="write the attenuation tables and exit")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--tag", default="physics")
    args = ap.parse_args()
    if args.save_tables:
        save_tables(args.save_tables)
        return
    if args.tables:
        use_tables(args.tables)
    load_start = os.getloadavg()
    t_start = time.time()
    spd = None if args.skip_speed else speed(load_ct(args.ct), args.device, args.runs)
    if spd is not None:
        print(json.dumps(spd, indent=1), flush=True)
    rows = None
    if not args.skip_registration:
        rows, kvps = {}, [float(k) for k in args.kvps.split(",")]
        for name in args.cts.split(","):
            rows.update(registration(read_ct(sample_ct_path(name=name)), name, args.cases, kvps, args.seed,
                                     lambda m: print(m, flush=True), args.renderer_scatter, args.xray_scatter,
                                     not args.no_fit, args.init, tuple(args.renderers.split(",")),
                                     tuple(m for m in args.ppc_model.split(",") if m),
                                     tuple(m for m in args.init_model.split(",") if m),
                                     sopi_pairs(args.sopi_model)))
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS",
                                                                   "OMP_WAIT_POLICY"))
    meta = {"command": sys.argv, "machine": machine_info(), "environment": env,
            "load_start": [round(v, 2) for v in load_start],
            "load_end": [round(v, 2) for v in os.getloadavg()], "wall_s": time.time() - t_start}
    if args.device.startswith("cuda"):
        meta["machine"] += f"; GPU {torch.cuda.get_device_name()}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}_rows.json").write_text(json.dumps({"meta": meta, "speed": spd, "rows": rows}, indent=1),
                                                    encoding="utf-8")
    write_report(args.out / f"{args.tag}.md", args, spd, rows, meta)
    print((args.out / f"{args.tag}.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
