"""The registration benchmark protocol: simulated cases, per-case errors, summary tables and plots.

Every registration method (intensity-based, learned, another library's) is judged the same way:

1. :func:`make_cases` draws deterministic cases from a CT: a ground-truth pose around the reference
   (AP) view, a simulated X-ray (a DRR made noisy, blurred and re-contrasted by
   :class:`simulate.NoiseModel`) and an initial pose. ``init="sopi"`` perturbs the ground truth as
   SOPI's simulated study does (rotation ``N(6.4, 3.8)`` degrees and translation ``N(15, 8.6)`` mm
   in random directions); ``init="hard"`` spreads the initial mTRE uniformly up to 60 mm to
   measure the capture range.
2. :func:`run_method` calls a ``register_fn(case) -> world_from_camera`` on every case, times it
   and measures every error of ``CONVENTIONS.md`` ("Metrics") plus the final image agreement.
3. :func:`summarize` turns the rows into SOPI's Table-1 numbers plus mTRE, mPD, the success rate at
   mTRE < 2 mm and the capture range; :func:`markdown_table` prints several summaries side by side;
   :func:`plot_success_vs_initial_mtre` draws the success rate against the initial error.

Units: mm and degrees; poses are ``world_from_camera`` 4x4 matrices in world RAS.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .files import replace_file
from .geometry import Camera, ReferenceView, check_rigid, invert_rigid, transform_points
from .metrics import (
    capture_range,
    image_ncc,
    mpd,
    mrpd,
    mtre,
    param_errors,
    rotation_error_deg,
    ssim,
    success,
    target_points,
    translation_error_mm,
)
from .names import DEFAULT_METHOD
from .projector import Projector, samples_for
from .registry import get_method
from .simulate import NoiseModel, perturb_params, random_params, xray_from_drr
from .volume import Volume, hu_to_mu

INITS = ("sopi", "hard")
"""Kinds of initial pose :func:`make_cases` draws."""

SOPI_ROTATION_DEG = (6.4, 3.8)
"""Mean and standard deviation (degrees) of the initial rotation error of SOPI's simulated study."""

SOPI_TRANSLATION_MM = (15.0, 8.6)
"""Mean and standard deviation (mm) of the initial translation error of SOPI's simulated study."""

HARD_MAX_MTRE = 60.0
"""Largest initial mTRE (mm) of the ``hard`` set."""

SUCCESS_MTRE_MM = 2.0
"""Success threshold on the final mTRE (mm)."""

LOOSE_MTRE_MM = 5.0
"""Looser final-mTRE threshold (mm) of the second capture range: the method reached the right basin."""

SOPI_FAILURE_DEG_MM = (3.0, 3.0)
"""SOPI's failure criterion: rotation error >= 3 degrees or translation error >= 3 mm."""


@dataclass
class Case:
    """One simulated registration problem.

    Attributes:
        index: position in its case set.
        xray: simulated X-ray ``[rows, cols]`` (attenuation-bright).
        world_from_camera_gt: 4x4 ground-truth pose.
        world_from_camera_init: 4x4 initial pose handed to the method.
        params_gt, params_init: the same poses as ``(rx, ry, rz, tx, ty, tz)`` of the reference view.
        initial_mtre: mTRE (mm) of the initial pose.
        noise: the imaging model that made the X-ray.
    """

    index: int
    xray: np.ndarray
    world_from_camera_gt: np.ndarray
    world_from_camera_init: np.ndarray
    params_gt: np.ndarray
    params_init: np.ndarray
    initial_mtre: float
    noise: NoiseModel


@dataclass
class CaseSet:
    """Cases sharing one CT, camera, reference view and target points.

    Attributes:
        volume_mu: attenuation volume (1/mm), world RAS; what the methods register.
        camera: the X-ray camera.
        reference: the view pose parameters refer to.
        points: target points ``[n, 3]`` (world RAS, mm) for mTRE, mPD and mRPD.
        init: ``"sopi"`` or ``"hard"``.
        seed: the seed the cases were drawn with.
        cases: the cases.
        n_samples: samples per ray of the DRRs rendered for the X-rays and the final-image scores
            (0: one per voxel, :func:`projector.samples_for`).
    """

    volume_mu: Volume
    camera: Camera
    reference: ReferenceView
    points: np.ndarray
    init: str
    seed: int
    cases: list[Case] = field(default_factory=list)
    n_samples: int = 0
    _projector: Projector | None = field(default=None, repr=False, compare=False)

    def render(self, world_from_camera: np.ndarray) -> np.ndarray:
        """DRR ``[rows, cols]`` of ``volume_mu`` at a 4x4 pose (``n_samples`` per ray; one per voxel when 0)."""
        if self._projector is None:
            n = self.n_samples if self.n_samples > 0 else samples_for(self.volume_mu)
            self._projector = Projector(self.volume_mu, self.camera, n_samples=n)
        with torch.no_grad():
            return self._projector(torch.as_tensor(np.asarray(world_from_camera, dtype=np.float64))).numpy()

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self):
        return iter(self.cases)

    def __getitem__(self, i: int) -> Case:
        return self.cases[i]

    def subset(self, indices: Sequence[int]) -> CaseSet:
        """The same set restricted to the cases at ``indices`` (their ``index`` is kept)."""
        return CaseSet(self.volume_mu, self.camera, self.reference, self.points, self.init, self.seed,
                       [self.cases[i] for i in indices], self.n_samples, self._projector)


# -- cases ------------------------------------------------------------------------------------------------
def _scale_to_mtre(points: np.ndarray, reference: ReferenceView, gt: np.ndarray, direction: np.ndarray,
                   target_mm: float) -> np.ndarray:
    """Parameters ``gt + s * direction`` with ``s >= 0`` chosen (bisection) so that the mTRE is ``target_mm``."""
    w_gt = reference.pose(gt)

    def err(s: float) -> float:
        return mtre(points, w_gt, reference.pose(gt + s * direction))

    hi = 1.0
    while err(hi) < target_mm and hi < 1e6:
        hi *= 2.0
    lo = 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if err(mid) < target_mm:
            lo = mid
        else:
            hi = mid
    return gt + 0.5 * (lo + hi) * direction


def make_cases(ct_hu: Volume, camera: Camera, n: int, seed: int = 0, init: str = "sopi", *,
               reference: ReferenceView | None = None, rot_deg: float = 10.0, trans_mm: float = 20.0,
               photons: float = 1e4, blur_px: float = 1.0, hard_max_mtre: float = HARD_MAX_MTRE,
               n_points: int = 100, n_samples: int | None = None) -> CaseSet:
    """Draw ``n`` deterministic registration cases from a CT.

    Args:
        ct_hu: the CT in HU (world RAS); its attenuation (``hu_to_mu``) is rendered and handed to
            the methods, its bone voxels (HU > 250) give the target points.
        camera: the X-ray camera.
        n: number of cases.
        seed: the cases are a function of ``(ct, camera, n, seed, init, options)`` only.
        init: ``"sopi"``: initial pose = ground truth perturbed by a rotation of ``N(6.4, 3.8)``
            degrees and a translation of ``N(15, 8.6)`` mm in random directions
            (:func:`simulate.perturb_params`). ``"hard"``: the same kind of random direction, scaled so
            that the initial mTRE of case ``k`` is drawn uniformly in
            ``[k, k + 1) * hard_max_mtre / n`` (so the set spans ``[0, hard_max_mtre)`` evenly).
        reference: reference view; default the AP view of the CT's centre at ``camera.sdd``.
        rot_deg: ground-truth angles are uniform in ``+-rot_deg`` (degrees, each) around the reference.
        trans_mm: ground-truth translations are uniform in ``+-trans_mm`` (mm, each).
        photons: unattenuated counts per pixel of :meth:`NoiseModel.random` (the contrast change is
            random per case).
        blur_px: detector blur (pixels) of :meth:`NoiseModel.random`.
        hard_max_mtre: largest initial mTRE (mm) of the ``hard`` set.
        n_points: number of target points.
        n_samples: samples per ray of the simulated DRR; default one per voxel (:func:`projector.samples_for`).

    Returns:
        A :class:`CaseSet`.

    Raises:
        InputError: ``n < 1``, an unknown ``init``, a non-positive ``hard_max_mtre``.
    """
    if int(n) < 1:
        raise InputError(f"make_cases: n must be at least 1, got {n}")
    if init not in INITS:
        raise InputError(f"make_cases: init must be one of {', '.join(INITS)}, got {init!r}")
    if not hard_max_mtre > 0:
        raise InputError(f"make_cases: hard_max_mtre must be positive, got {hard_max_mtre}")
    vol_mu = Volume(hu_to_mu(ct_hu.data), ct_hu.ijk_to_ras)
    if reference is None:
        reference = ReferenceView.ap(vol_mu.center, camera.sdd)
    points = target_points(ct_hu, n_points)
    rng = np.random.default_rng([int(seed), INITS.index(init)])
    out = CaseSet(vol_mu, camera, reference, points, init, int(seed), n_samples=int(n_samples or 0))
    for k in range(int(n)):
        gt = random_params(rng, rot_deg, trans_mm)
        start = perturb_params(gt, rng, *SOPI_ROTATION_DEG, *SOPI_TRANSLATION_MM)
        if init == "hard":
            target = (k + rng.uniform()) * hard_max_mtre / n
            direction = start - gt
            start = _scale_to_mtre(points, reference, gt, direction / np.linalg.norm(direction), target)
        noise = NoiseModel.random(rng, photons=photons, blur_px=blur_px)
        w_gt, w_init = reference.pose(gt), reference.pose(start)
        drr = out.render(w_gt)
        xray = xray_from_drr(drr, noise, rng)
        out.cases.append(Case(k, xray, w_gt, w_init, gt, start, mtre(points, w_gt, w_init), noise))
    return out


# -- running a method -------------------------------------------------------------------------------------
RegisterFn = Callable[[Case], object]
"""A method under test: ``register_fn(case)`` returns the pose found (a 4x4 ``world_from_camera``), or an
object with a ``world_from_camera`` attribute (e.g. :class:`registration.RegistrationResult`), or a dict
with a ``"world_from_camera"`` key (further keys ``iterations`` and ``success`` are recorded)."""


def _unpack(out: object) -> tuple[np.ndarray, dict]:
    """The pose and the extra fields of a ``register_fn`` return value."""
    if isinstance(out, Mapping):
        w, extra = out.get("world_from_camera"), {k: out[k] for k in ("iterations", "success") if k in out}
    elif hasattr(out, "world_from_camera"):
        w = out.world_from_camera
        extra = {k: getattr(out, k) for k in ("iterations", "success") if hasattr(out, k)}
        unc = getattr(getattr(out, "result", out), "uncertainty", None)
        if unc is not None:
            extra["depth_sd_mm"] = float(unc.depth_mm)
    else:
        w, extra = out, {}
    if w is None:
        raise InputError("register_fn: returned no world_from_camera")
    return check_rigid(np.asarray(w, dtype=np.float64), "register_fn result"), extra


def _unit_range(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _depth(world_from_camera: np.ndarray, point: np.ndarray) -> float:
    """Distance (mm) of a world point from the source along the camera's principal ray."""
    return float(transform_points(invert_rigid(world_from_camera), np.asarray(point)[None])[0, 2])


def evaluate_case(cases: CaseSet, case: Case, world_from_camera: np.ndarray) -> dict:
    """Every error of one pose against a case's ground truth, and the final DRR's agreement with the X-ray.

    Keys: ``initial_mtre``, ``mtre``, ``mpd``, ``mrpd`` (mm); ``rotation_error_deg`` (geodesic),
    ``translation_error_mm`` (isocentre distance), ``param_errors`` (``|d rx|, ..., |d tz|``);
    ``depth_error_mm`` (signed error of the distance of the reference isocentre from the source, along
    the principal ray: the direction one view sees least);
    ``success_mtre`` (mTRE < 2 mm), ``success_sopi`` (rotation < 3 degrees and translation < 3 mm);
    ``ncc`` (DRR at the pose found vs the X-ray) and ``ssim`` (of both images rescaled to [0, 1],
    since the X-ray's contrast differs from the DRR's).
    """
    w_gt = case.world_from_camera_gt
    w = check_rigid(world_from_camera, "world_from_camera")
    rot = rotation_error_deg(w_gt, w)
    trans = translation_error_mm(w_gt, w, cases.reference.isocenter)
    m = mtre(cases.points, w_gt, w)
    drr = cases.render(w)
    return {
        "initial_mtre": float(case.initial_mtre),
        "mtre": m,
        "mpd": mpd(cases.points, w_gt, w, cases.camera),
        "mrpd": mrpd(cases.points, w_gt, w),
        "rotation_error_deg": rot,
        "translation_error_mm": trans,
        "param_errors": [float(v) for v in param_errors(cases.reference, w_gt, w)],
        "depth_error_mm": _depth(w, cases.reference.isocenter) - _depth(w_gt, cases.reference.isocenter),
        "success_mtre": bool(success(mtre_mm=m, mtre_threshold=SUCCESS_MTRE_MM)),
        "success_sopi": bool(success(rotation_deg=rot, translation_mm=trans,
                                     rotation_threshold=SOPI_FAILURE_DEG_MM[0],
                                     translation_threshold=SOPI_FAILURE_DEG_MM[1])),
        "ncc": image_ncc(drr, case.xray),
        "ssim": ssim(_unit_range(np.asarray(drr, np.float64)), _unit_range(np.asarray(case.xray, np.float64)),
                     data_range=1.0),
    }


def run_method(cases: CaseSet, register_fn: RegisterFn, name: str = "method",
               log: Callable[[str], None] | None = None) -> list[dict]:
    """Run ``register_fn`` on every case and return one JSON-ready row per case.

    The time is the wall time of the ``register_fn`` call (s). A call that raises is recorded as a
    failure at the initial pose (``error`` holds the message). Each row holds ``method``, ``set``
    (``cases.init``), ``case``, ``time_s``, the fields of :func:`evaluate_case`, ``final_pose``, and the
    method's own ``iterations`` / ``reported_success`` when it gives them. ``log`` (e.g. ``print``)
    gets one line per case.
    """
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        error = None
        try:
            w, extra = _unpack(register_fn(case))
        except Exception as e:  # a method's crash is a failed case, not a crashed benchmark
            w, extra, error = case.world_from_camera_init, {}, f"{type(e).__name__}: {e}"
        dt = time.perf_counter() - t0
        row = {"method": name, "set": cases.init, "case": case.index, "time_s": dt}
        row.update(evaluate_case(cases, case, w))
        if error is not None:
            row["success_mtre"] = row["success_sopi"] = False
            row["error"] = error
        if "iterations" in extra:
            row["iterations"] = int(extra["iterations"])
        if "success" in extra:
            row["reported_success"] = bool(extra["success"])
        if "depth_sd_mm" in extra:
            row["depth_sd_mm"] = extra["depth_sd_mm"]
        row["final_pose"] = np.asarray(w, dtype=float).tolist()
        rows.append(row)
        if log is not None:
            log(f"{name} [{cases.init} {case.index}] mTRE {row['initial_mtre']:6.2f} -> {row['mtre']:6.2f} mm, "
                f"rot {row['rotation_error_deg']:.2f} deg, trans {row['translation_error_mm']:.2f} mm, "
                f"{dt:.2f} s" + (f"  ERROR {error}" if error else ""))
    return rows


# -- summaries ----------------------------------------------------------------------------------------------
def summarize(rows: Sequence[Mapping], name: str | None = None, bin_mm: float = 5.0, rate: float = 0.95) -> dict:
    """SOPI Table-1 numbers and the project's own for one method on one case set.

    Returns a dict: ``name``, ``n``; ``rotation_mean``/``rotation_std`` (degrees) and
    ``translation_mean``/``translation_std`` (mm) over all cases; ``failure_rate`` (fraction with
    rotation >= 3 degrees or translation >= 3 mm); ``time_mean``/``time_median`` (s);
    ``mtre_mean``/``mtre_median``, ``mpd_mean``, ``mrpd_mean`` (mm); ``success_rate`` (fraction with
    mTRE < 2 mm); ``initial_mtre_mean``/``initial_mtre_max`` (mm); ``capture_range`` (mm,
    :func:`metrics.capture_range` with ``bin_mm`` bins at ``rate``, success = mTRE < 2 mm) and
    ``capture_range_loose`` (the same with success = final mTRE < :data:`LOOSE_MTRE_MM`, i.e. the
    right basin was reached whatever the final accuracy); ``ncc_mean``, ``ssim_mean``.
    """
    if len(rows) == 0:
        raise InputError("summarize: no rows")

    def col(key: str) -> np.ndarray:
        return np.asarray([r[key] for r in rows], dtype=np.float64)

    rot, trans, t, m = col("rotation_error_deg"), col("translation_error_mm"), col("time_s"), col("mtre")
    init = col("initial_mtre")
    ok_mtre = np.asarray([r["success_mtre"] for r in rows], dtype=bool)
    ok_sopi = np.asarray([r["success_sopi"] for r in rows], dtype=bool)
    return {
        "name": name if name is not None else str(rows[0].get("method", "method")),
        "set": str(rows[0].get("set", "")),
        "n": len(rows),
        "rotation_mean": float(rot.mean()), "rotation_std": float(rot.std()),
        "translation_mean": float(trans.mean()), "translation_std": float(trans.std()),
        "failure_rate": float(1.0 - ok_sopi.mean()),
        "time_mean": float(t.mean()), "time_median": float(np.median(t)),
        "mtre_mean": float(m.mean()), "mtre_median": float(np.median(m)),
        "mpd_mean": float(col("mpd").mean()), "mrpd_mean": float(col("mrpd").mean()),
        "success_rate": float(ok_mtre.mean()),
        "initial_mtre_mean": float(init.mean()), "initial_mtre_max": float(init.max()),
        "capture_range": capture_range(init, ok_mtre, bin_mm=bin_mm, rate=rate),
        "capture_range_loose": capture_range(init, m < LOOSE_MTRE_MM, bin_mm=bin_mm, rate=rate),
        "ncc_mean": float(col("ncc").mean()), "ssim_mean": float(col("ssim").mean()),
        **_depth_summary(rows),
    }


def _depth_summary(rows: Sequence[Mapping]) -> dict:
    """The median absolute depth error and, where reported, the coverage of the 2-sd depth interval.

    ``depth_error_median`` (mm); where the method reports a depth standard deviation,
    ``depth_coverage_2sd`` (fraction of cases whose true depth lies within +-2 sd) and ``depth_sd_median``.
    """
    out: dict = {}
    if rows and all("depth_error_mm" in r for r in rows):
        err = np.abs([r["depth_error_mm"] for r in rows])
        out["depth_error_median"] = float(np.median(err))
        if all("depth_sd_mm" in r for r in rows):
            sd = np.asarray([r["depth_sd_mm"] for r in rows])
            out["depth_coverage_2sd"] = float(np.mean(err <= 2 * sd))
            out["depth_sd_median"] = float(np.median(sd))
    return out


def markdown_table(summaries: Sequence[Mapping], capture: bool = True) -> str:
    """A markdown table, one line per summary, in the layout of SOPI's Table 1 plus the project's columns.

    Columns: method, cases, rotation error (mean +- std, degrees), translation error (mean +- std,
    mm), failure rate (rotation >= 3 degrees or translation >= 3 mm), mean and median time (s), mTRE
    mean / median (mm), mPD mean (mm), success rate at mTRE < 2 mm and, with ``capture``, the capture
    ranges at final mTRE < 2 mm and < 5 mm (mm; "≥ x (all bins)" when every bin up to the largest
    initial mTRE succeeds).
    """
    head = ["Method", "Cases", "Rotation error (deg)", "Translation error (mm)", "Failure rate (3 deg / 3 mm)",
            "Mean time (s)", "Median time (s)", "mTRE mean / median (mm)", "mPD (mm)", "Success (mTRE < 2 mm)"]
    if capture:
        head += ["Capture range, mTRE < 2 mm (mm)", f"Capture range, mTRE < {LOOSE_MTRE_MM:g} mm (mm)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [str(s["name"]), str(s["n"]), f"{s['rotation_mean']:.2f} ± {s['rotation_std']:.2f}",
                 f"{s['translation_mean']:.2f} ± {s['translation_std']:.2f}", f"{100 * s['failure_rate']:.1f} %",
                 f"{s['time_mean']:.2f}", f"{s['time_median']:.2f}",
                 f"{s['mtre_mean']:.2f} / {s['mtre_median']:.2f}", f"{s['mpd_mean']:.2f}",
                 f"{100 * s['success_rate']:.1f} %"]
        if capture:
            top = 5.0 * math.ceil(s["initial_mtre_max"] / 5.0)
            for cr in (s["capture_range"], s["capture_range_loose"]):
                cells.append(f"≥ {cr:.0f} (all bins)" if cr >= top and cr > 0 else f"{cr:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def success_by_bin(rows: Sequence[Mapping], bin_mm: float = 5.0,
                   mtre_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Success rate per initial-mTRE bin: ``(bin centres [B], rates [B], counts [B])``.

    Success is the row's ``success_mtre`` (mTRE < 2 mm), or final mTRE < ``mtre_threshold`` when
    given. Empty bins are left out.
    """
    init = np.asarray([r["initial_mtre"] for r in rows], dtype=np.float64)
    if mtre_threshold is None:
        ok = np.asarray([r["success_mtre"] for r in rows], dtype=bool)
    else:
        ok = np.asarray([r["mtre"] for r in rows], dtype=np.float64) < mtre_threshold
    idx = np.floor(init / bin_mm).astype(int)
    bins = np.unique(idx)
    rates = np.asarray([ok[idx == b].mean() for b in bins])
    counts = np.asarray([(idx == b).sum() for b in bins])
    return (bins + 0.5) * bin_mm, rates, counts


def plot_success_vs_initial_mtre(rows_by_method: Mapping[str, Sequence[Mapping]], path: str | Path,
                                 bin_mm: float = 5.0, title: str | None = None) -> Path:
    """Plot the success rate (mTRE < 2 mm) against the initial mTRE (``bin_mm`` bins), one line per method.

    Needs matplotlib (an optional dependency, imported here). Returns the path written (PNG or any
    format matplotlib infers from the suffix).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("plot_success_vs_initial_mtre: matplotlib is not installed") from None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, rows in rows_by_method.items():
        if not rows:
            continue
        centres, rates, counts = success_by_bin(rows, bin_mm)
        ax.plot(centres, 100 * rates, marker="o", label=f"{name} ({len(rows)} cases)")
    ax.axhline(95, color="0.6", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"initial mTRE (mm, {bin_mm:g} mm bins)")
    ax.set_ylabel("success rate, mTRE < 2 mm (%)")
    ax.set_ylim(-3, 103)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        replace_file(out, lambda tmp: fig.savefig(tmp, format=out.suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)
    return out


def intensity_method(method: str = DEFAULT_METHOD, volume_mu: Volume | None = None, **options) -> Callable:
    """A ``register_fn`` factory for any registered refinement method: returns ``fn(cases) -> register_fn``.

    ``intensity_method("opt-gc", max_iterations=(80, 40))(cases)`` registers ``cases.volume_mu`` (or
    ``volume_mu`` when given) to each case's X-ray from its initial pose with the case set's camera
    and reference view, through :func:`pipeline.register_xray`; ``options`` go to the method. ``method``
    is any name of :func:`registry.method_names` (``"refine"``).
    """
    from .pipeline import register_xray

    get_method(method, "refine")  # an unknown name fails here, not in every case

    def bind(cases: CaseSet) -> RegisterFn:
        vol = cases.volume_mu if volume_mu is None else volume_mu

        def fn(case: Case):
            return register_xray(None, case.xray, cases.camera, case.world_from_camera_init, method=method,
                                 volume_mu=vol, reference=cases.reference, **options)

        return fn

    return bind
