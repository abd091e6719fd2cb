"""The demo: simulate an X-ray of the sample chest CT, register it from a perturbed pose, draw it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import sample_ct_path
from .errors import InputError
from .files import Outputs, json_text
from .fusion import before_after, save_rgb
from .geometry import Camera, ReferenceView, save_pose
from .metrics import evaluate_pose, target_points
from .projector import Projector
from .registration import DEFAULT_METHOD, METHODS, register
from .simulate import NoiseModel, perturb_params, random_params, xray_from_drr
from .volume import Volume, hu_to_mu, read_ct
from .xray import write_image

DEMO_CAMERA = Camera(sdd=1020.0, rows=128, cols=128, row_spacing=4.0, col_spacing=4.0)
"""Detector of the demo, as in the registration benchmark: 128 x 128 pixels of 4 mm, 1020 mm from the source."""


def run_demo(out_dir: str | Path = "out/demo", seed: int = 1, method: str = DEFAULT_METHOD,
             cache_dir: str | Path | None = None, progress=None) -> dict:
    """Run the demo and write its files into ``out_dir``; returns the metrics before and after.

    The outputs are checked before any work and appear all at once (see ``files.Outputs``).
    The ground-truth pose is drawn within +-10 degrees / +-20 mm of the AP view; the start is
    off by a rotation of about 6.4 +- 3.8 degrees and a translation of about 15 +- 8.6 mm (SOPI's
    simulated study). The X-ray is the DRR with Poisson noise, blur and a random contrast change.
    """
    if method not in METHODS:
        raise InputError(f"--method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    with Outputs() as outputs:
        out = outputs.folder(out_dir, "--out-dir", DEMO_FILES, make_parents=True)
        metrics, result = _demo_into(out, seed, method, cache_dir, progress)
    for line in _report(metrics, result, method):
        print(line)
    print(f"wrote {out_dir}/fusion.png, xray.nrrd, xray.json, pose_gt.json, pose_init.json, result.json, metrics.json")
    return metrics


DEMO_FILES = ("fusion.png", "xray.nrrd", "xray.json", "pose_gt.json", "pose_init.json", "result.json", "metrics.json")
"""What the demo writes into its output folder."""


def _demo_into(out: Path, seed: int, method: str, cache_dir: str | Path | None, progress) -> tuple[dict, object]:
    """The demo's work, writing into the (temporary) folder ``out``; returns the metrics and the result."""
    from .cli import Progress, format_params

    ct_path = sample_ct_path(cache_dir)
    print(f"CT: {ct_path}")
    ct = read_ct(ct_path)
    mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    camera = DEMO_CAMERA
    reference = ReferenceView.ap(ct.center, camera.sdd)
    rng = np.random.default_rng(seed)
    gt_params = random_params(rng, 10.0, 20.0)
    init_params = perturb_params(gt_params, rng, 6.4, 3.8, 15.0, 8.6)
    gt, init = reference.pose(gt_params), reference.pose(init_params)
    projector = Projector(mu, camera)
    with torch.no_grad():
        drr_gt = projector(torch.as_tensor(gt)).numpy()
        drr_init = projector(torch.as_tensor(init)).numpy()
    xray = xray_from_drr(drr_gt, NoiseModel.random(rng), rng)
    print(f"ground truth: {format_params(gt_params)}")
    print(f"start:        {format_params(init_params)}")

    bar = Progress("register") if progress is None else None
    try:
        result = register(mu, xray, camera, init, reference=reference, method=method, progress=progress or bar)
    finally:
        if bar is not None:
            bar.close()
    with torch.no_grad():
        drr_after = projector(torch.as_tensor(result.world_from_camera)).numpy()

    points = target_points(ct)
    before = evaluate_pose(points, gt, init, camera, reference)
    after = evaluate_pose(points, gt, result.world_from_camera, camera, reference)
    write_image(xray, out / "xray.nrrd", camera)
    save_pose(out / "pose_gt.json", gt, reference)
    save_pose(out / "pose_init.json", init, reference)
    (out / "result.json").write_text(json_text(result.to_dict()))
    metrics = {"before": before, "after": after}
    (out / "metrics.json").write_text(json_text(metrics))
    picture = before_after(xray, drr_init, drr_after, ("X-ray", "start", f"{method}"), zoom=2)
    save_rgb(picture, out / "fusion.png")
    return metrics, result


def _report(metrics: dict, result, method: str) -> list[str]:
    """The lines the demo prints after writing: the result and the errors before and after."""
    from .cli import format_params

    lines = [f"result:       {format_params(result.params)}",
             f"{method}: {'converged' if result.success else 'FAILED'} in {result.iterations} iterations, "
             f"{result.wall_time_s:.2f} s; {result.message}", f"{'':>22} {'start':>9} {'result':>9}"]
    for key, label in (("mtre_mm", "mTRE (mm)"), ("mpd_mm", "mPD (mm)"), ("mrpd_mm", "mRPD (mm)"),
                       ("rotation_error_deg", "rotation error (deg)"), ("translation_error_mm", "translation (mm)")):
        lines.append(f"{label:>22} {metrics['before'][key]:9.2f} {metrics['after'][key]:9.2f}")
    return lines
