"""The demo: simulate an X-ray of the sample chest CT, register it from a perturbed pose, draw it."""

from __future__ import annotations

from pathlib import Path

from .console import Progress, format_params
from .data import sample_ct_path
from .errors import InputError
from .evaluation import make_cases
from .files import Outputs, json_text
from .fusion import before_after, save_rgb
from .geometry import Camera, save_pose
from .metrics import evaluate_pose
from .names import DEFAULT_METHOD
from .pipeline import register_xray
from .volume import read_ct
from .xray import write_image

DEMO_CAMERA = Camera(sdd=1020.0, rows=128, cols=128, row_spacing=4.0, col_spacing=4.0)
"""Detector of the demo, as in the registration benchmark: 128 x 128 pixels of 4 mm, 1020 mm from the source."""


def run_demo(out_dir: str | Path = "out/demo", seed: int = 1, method: str = DEFAULT_METHOD,
             cache_dir: str | Path | None = None, progress=None) -> dict:
    """Run the demo and write its files into ``out_dir``; returns the metrics before and after.

    The case is the benchmark's (:func:`evaluation.make_cases`, SOPI-like start, seed ``seed``): the
    ground-truth pose within +-10 degrees / +-20 mm of the AP view, the start off by a rotation of about
    6.4 +- 3.8 degrees and a translation of about 15 +- 8.6 mm (SOPI's simulated study), the X-ray the
    DRR with Poisson noise, blur and a random contrast change. The outputs are checked before any work
    and appear all at once (``files.Outputs``); a refused demo leaves no folder behind.
    """
    from .registration import METHODS

    if method not in METHODS:
        raise InputError(f"--method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    with Outputs() as outputs:
        out = outputs.folder(out_dir, "--out-dir", DEMO_FILES, make_parents=True)
        metrics, result = _demo_into(out, seed, method, cache_dir, progress)
    _print_summary(method, result, metrics["before"], metrics["after"])
    print(f"wrote {out_dir}/fusion.png, xray.nrrd, xray.json, pose_gt.json, pose_init.json, result.json, metrics.json")
    return metrics


DEMO_FILES = ("fusion.png", "xray.nrrd", "xray.json", "pose_gt.json", "pose_init.json", "result.json", "metrics.json")
"""What the demo writes into its output folder."""


def _demo_into(out: Path, seed: int, method: str, cache_dir: str | Path | None, progress) -> tuple[dict, object]:
    """The demo's work, writing into the (temporary) folder ``out``; returns the metrics and the result."""
    ct_path = sample_ct_path(cache_dir)
    print(f"CT: {ct_path}")
    ct = read_ct(ct_path)
    camera = DEMO_CAMERA
    cases = make_cases(ct, camera, 1, seed=seed, init="sopi")
    case, reference = cases[0], cases.reference
    gt, init = case.world_from_camera_gt, case.world_from_camera_init
    print(f"ground truth: {format_params(case.params_gt)}")
    print(f"start:        {format_params(case.params_init)}")

    bar = Progress("register") if progress is None else None
    try:
        result = register_xray(ct, case.xray, camera, init, method=method, volume_mu=cases.volume_mu,
                               reference=reference, progress=progress or bar)
    finally:
        if bar is not None:
            bar.close()

    before = evaluate_pose(cases.points, gt, init, camera, reference)
    after = evaluate_pose(cases.points, gt, result.world_from_camera, camera, reference)
    write_image(case.xray, out / "xray.nrrd", camera)
    save_pose(out / "pose_gt.json", gt, reference)
    save_pose(out / "pose_init.json", init, reference)
    (out / "result.json").write_text(json_text(result.to_dict()), encoding="utf-8")
    metrics = {"before": before, "after": after}
    (out / "metrics.json").write_text(json_text(metrics), encoding="utf-8")
    picture = before_after(case.xray, cases.render(init), cases.render(result.world_from_camera),
                           ("X-ray", "start", f"{method}"), zoom=2)
    save_rgb(picture, out / "fusion.png")
    return metrics, result


def _print_summary(method: str, result, before: dict, after: dict) -> None:
    """The result line and the table of errors before and after."""
    final = result.result
    print(f"result:       {format_params(result.params)}")
    print(f"{method}: {'converged' if result.success else 'FAILED'} in {final.iterations} iterations, "
          f"{final.wall_time_s:.2f} s; {final.message}")
    print(f"{'':>22} {'start':>9} {'result':>9}")
    for key, label in (("mtre_mm", "mTRE (mm)"), ("mpd_mm", "mPD (mm)"), ("mrpd_mm", "mRPD (mm)"),
                       ("rotation_error_deg", "rotation error (deg)"), ("translation_error_mm", "translation (mm)")):
        print(f"{label:>22} {before[key]:9.2f} {after[key]:9.2f}")
