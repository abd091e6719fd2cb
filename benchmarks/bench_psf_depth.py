"""How much the depth found from one view depends on the model of the detector's point spread.

The magnification of the projected CT is what one view sees of its depth, and it moves the image very little:
:func:`registration.detector_sensitivity` gives the root-mean-square motion at the detector per mm of depth, a
fraction of a pixel. A point-spread function (PSF) whose shape differs from the X-ray's, even at the same
variance, shifts the blurred edges by a comparable fraction of a pixel, and the similarity's optimum moves in depth
to compensate.

For the first SOPI-like cases of ``bench_multict.py`` per CT (its cameras and true poses), a noise-free X-ray with
the benchmark's PSF alone (``simulate.xray_from_drr``: a sampled Gaussian of sigma 1 pixel acting on the photons;
no noise, no contrast change), and the depth ``tz`` that maximises a similarity along the depth through the true
pose (the other parameters at the truth; steps of 0.25 mm over +-3 mm, peak refined by a parabola), with the DRR
blurred by

- the X-ray's own PSF (the Gaussian): the optimum is then at the truth up to the profile's resolution;
- the registration's PSF model at the same variance (:func:`filters.detector_blur`: four passes of a 3-tap kernel,
  the model ``registration.register`` fits);
- the same model with its variance fitted with the depth (the best of a grid of variances from 0.5 to 2 pixels^2),
  as the registration does.

Similarities: local NCC (the default) and :func:`similarity.intensity_fit` (a global measure that keeps the
large-scale intensities).

Run: ``PYTHONPATH=XRayCTRegistration python benchmarks/bench_psf_depth.py [--cases 8]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayCTRegistration"))

from bench_multict import ct_camera  # noqa: E402
from common import machine_info  # noqa: E402
from XRayCTRegistrationLib import evaluation as ev  # noqa: E402
from XRayCTRegistrationLib.data import sample_ct_path  # noqa: E402
from XRayCTRegistrationLib.filters import blur_image, detector_blur  # noqa: E402
from XRayCTRegistrationLib.registration import detector_sensitivity  # noqa: E402
from XRayCTRegistrationLib.similarity import intensity_fit, local_ncc  # noqa: E402
from XRayCTRegistrationLib.simulate import NoiseModel, xray_from_drr  # noqa: E402
from XRayCTRegistrationLib.volume import read_ct  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
SIGMA_PX = 1.0  # the benchmark's detector blur (evaluation.make_cases)
OFFSETS_MM = np.linspace(-3.0, 3.0, 25)
SIMILARITIES = {"lncc": local_ncc, "fit": intensity_fit}


def gaussian_psf(line: np.ndarray) -> torch.Tensor:
    """The X-ray's own PSF applied to a DRR: a sampled Gaussian on the photons, as ``xray_from_drr`` does."""
    return torch.as_tensor(-np.log(np.maximum(blur_image(np.exp(-line), SIGMA_PX, dtype=np.float64), 1e-30)))


def model_psf(line: np.ndarray, variance: float = SIGMA_PX ** 2) -> torch.Tensor:
    """The registration's PSF model, by default at the X-ray's variance."""
    return detector_blur(torch.as_tensor(line, dtype=torch.float64), torch.tensor(variance))


PSFS = {"same PSF (Gaussian)": gaussian_psf, "registration's PSF model": model_psf}
FITTED_VARIANCES = np.linspace(0.5, 2.0, 7)  # pixels^2: the blur fitted with the depth, as the registration does


def peak(values: np.ndarray) -> float:
    """Offset (mm) of the profile's maximum, refined by a parabola through it and its neighbours."""
    i = int(np.argmax(values))
    if 0 < i < len(values) - 1:
        a, b, c = values[i - 1], values[i], values[i + 1]
        den = a - 2 * b + c
        return float(OFFSETS_MM[i] + (0.5 * (a - c) / den if den < 0 else 0.0) * (OFFSETS_MM[1] - OFFSETS_MM[0]))
    return float(OFFSETS_MM[i])


def run_case(cases: ev.CaseSet, case: ev.Case) -> dict:
    """Depth optima of each similarity under each PSF model for one case."""
    clean = NoiseModel(photons=0.0, blur_px=SIGMA_PX, gamma=1.0, gain=1.0, offset=0.0)
    gt = cases.render(cases.reference.pose(case.params_gt))
    y = torch.as_tensor(xray_from_drr(gt, clean, np.random.default_rng(0)), dtype=torch.float64)
    drrs = []
    for dz in OFFSETS_MM:
        q = case.params_gt.copy()
        q[5] += dz
        drrs.append(cases.render(cases.reference.pose(q)).astype(np.float64))
    row = {"case": case.index}
    for pname, psf in PSFS.items():
        blurred = torch.stack([psf(d) for d in drrs])  # [n, rows, cols]
        for sname, sim in SIMILARITIES.items():
            row[f"{sname} / {pname}"] = peak(sim(blurred, y).numpy())
    for sname, sim in SIMILARITIES.items():  # the registration's PSF model with its variance fitted too
        grid = np.stack([sim(torch.stack([model_psf(d, v) for d in drrs]), y).numpy() for v in FITTED_VARIANCES])
        best = int(np.argmax(grid.max(1)))
        row[f"{sname} / registration's PSF model, variance fitted"] = peak(grid[best])
        row[f"{sname} fitted variance"] = float(FITTED_VARIANCES[best])
    sens = detector_sensitivity(cases.reference, cases.camera, cases.volume_mu, case.params_gt)
    row["px_per_mm_depth"] = float(sens[5] / cases.camera.col_spacing)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cts", default="chest,abdomen,spine")
    ap.add_argument("--cases", type=int, default=8, help="the first cases of bench_multict's SOPI-like set")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--from-rows", type=Path, nargs="+", default=None,
                    help="write the report from rows files of earlier runs (e.g. one per CT, run at the same time)")
    args = ap.parse_args()
    load0, t0 = os.getloadavg(), time.time()
    rows = {}
    for path in args.from_rows or []:
        rows.update(json.loads(path.read_text(encoding="utf-8")))
    for name in [] if args.from_rows else [c for c in args.cts.split(",") if c]:
        cases = ev.make_cases(read_ct(sample_ct_path(name=name)), ct_camera(name), args.cases, seed=0, init="sopi")
        rows[name] = [run_case(cases, c) for c in cases]
        print(name, json.dumps(rows[name][-1]), flush=True)
    keys = [f"{s} / {p}" for p in [*PSFS, "registration's PSF model, variance fitted"] for s in SIMILARITIES]
    lines = ["# Depth from one view against the model of the detector's point spread", "",
             f"Command: `PYTHONPATH=XRayCTRegistration python benchmarks/bench_psf_depth.py --cts {args.cts} "
             f"--cases {args.cases}`", "", f"Machine: {machine_info()}; load average {load0[0]:.2f} at the start, "
             f"wall time {time.time() - t0:.0f} s (no timing is reported).", "",
             "X-ray: the true pose's DRR with the benchmark's PSF alone (sampled Gaussian, sigma 1 pixel, on the "
             "photons; no noise, no contrast change). Each cell: the median (and largest) absolute offset, mm, "
             "of the similarity's maximum along the depth from the true depth, the DRR blurred by the PSF named.",
             "", "| CT | cases | image motion per mm of depth (px, rms) | "
             + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for name, r in rows.items():
        cells = [f"{np.median([abs(x[k]) for x in r]):.2f} ({np.max([abs(x[k]) for x in r]):.2f})" for k in keys]
        lines.append(f"| {name} | {len(r)} | {np.median([x['px_per_mm_depth'] for x in r]):.3f} | "
                     + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "psf_depth_rows.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (args.out / "psf_depth.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
