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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .geometry import PARAM_NAMES, Camera, ReferenceView, check_rigid, invert_rigid, transform_points
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


REFINE_ITERATIONS = (80, 40, 20)
"""Iteration budget per level of the refinement after a learned initialisation (see :func:`refine_schedule`)."""


def refine_schedule(camera: Camera) -> dict:
    """Keyword arguments of ``registration.register`` for the refinement after a learned initialisation.

    The registration's default levels plus one finer level (half the finest factor, at least 1):
    ``(8, 4, 2)`` at 256 x 256 pixels. On the chest CT benchmark (``benchmarks/results/init.md``) the finer
    level took init + refinement from 75 % to 100 % success (mTRE < 2 mm) for about 0.5 s more.
    """
    coarse, fine = default_levels(camera)
    levels = (coarse, fine, max(1.0, fine / 2)) if fine > 1 else (coarse, fine)
    return {"levels": levels, "max_iterations": REFINE_ITERATIONS[:len(levels)]}


DEFAULT_MAX_ITERATIONS = (80, 40)
"""Iteration budget of each level when none is given (the last value repeats for further levels)."""

MIN_LEVEL_PIXELS = 16
"""A level's detector keeps at least this many pixels along its shorter side."""

SAMPLES_PER_VOXEL = 1.0
"""Samples per ray per voxel of the (downsampled) volume's longest side."""

MIN_COVERAGE = 0.02
"""Fewest fraction of X-ray pixels the projected CT must cover (at the start and while optimising)."""


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


@dataclass
class _Level:
    """One pyramid level: its views, detector factor and parameter scales."""

    factor: float
    views: list[_View]
    scales: torch.Tensor  # [6] Adam step per parameter (deg, mm)
    max_iterations: int


# -- the optimiser ------------------------------------------------------------------------------------------
def register(volume_mu: Volume, xray: np.ndarray | Sequence[np.ndarray], camera: Camera | Sequence[Camera],
             init_world_from_camera: np.ndarray, reference: ReferenceView | None = None,
             method: str = DEFAULT_METHOD, levels: Sequence[float] | None = None,
             max_iterations: int | Sequence[int] | None = None, time_budget_s: float | None = None,
             step_sizes: Sequence[float] | None = None, mask: np.ndarray | Sequence[np.ndarray] | None = None,
             relative_views: Sequence[np.ndarray] | None = None, labels: Volume | None = None,
             label_ids: Sequence[int] | None = None,
             progress: Callable[[float, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None, device: str = "cpu",
             tolerance: float = 1e-5, patience: int = 4, max_shrinks: int = 2,
             renderer: Callable[..., torch.nn.Module] | None = None) -> RegistrationResult:
    """Register a CT to one or more X-rays by maximising an image similarity over the 6 pose parameters.

    Args:
        volume_mu: attenuation volume (1/mm, see :func:`volume.hu_to_mu`), world RAS.
        xray: X-ray image ``[rows, cols]`` (larger = more attenuating), or one per view.
        camera: intrinsics of the X-ray, or one per view.
        init_world_from_camera: 4x4 initial pose of view 0 (world RAS from camera).
        reference: view the parameters are relative to; default the AP view of the CT's centre at
            the camera's ``sdd``.
        method: one of :data:`METHODS` (``opt-ncc``, ``opt-mncc``, ``opt-lncc``, ``opt-gc``,
            ``opt-ngi``, ``opt-gd``).
        levels: detector downsampling factors, coarse to fine (a factor is lowered where the
            detector would have fewer than :data:`MIN_LEVEL_PIXELS` pixels); default
            :func:`default_levels` of the first camera.
        max_iterations: iteration budget per level (one number for all, or one per level);
            default :data:`DEFAULT_MAX_ITERATIONS`.
        time_budget_s: stop optimising after this many seconds (the result says so).
        step_sizes: Adam step of each parameter at the coarsest level, either ``(deg, mm)`` or
            six values (deg, deg, deg, mm, mm, mm); finer levels scale them with the detector
            factor. Default: from the detector pixel size at the isocentre.
        mask: similarity weight ``[rows, cols]`` (0 = ignore the pixel) or one per view.
        relative_views: ``camera0_from_camera_v`` 4x4 for each view (required with several views;
            the first must be the identity).
        labels: label map on the CT's grid; with ``label_ids``, only those structures are rendered
            and the similarity is restricted to the dilated footprint of their projection.
        label_ids: label values of the structures to keep.
        progress: called with ``(fraction done in [0, 1], message)``.
        should_stop: polled every iteration; returning True stops (the result says so, success False).
        device: torch device for the rendering.
        tolerance: smallest similarity gain that counts as an improvement.
        patience: iterations without improvement before the step is halved.
        max_shrinks: halvings after which a level ends.
        renderer: builds the DRR renderer of a pyramid level, called as ``renderer(level_volume, camera,
            n_samples=..., device=...)`` with ``volume_mu`` block-averaged and zero-padded for the level;
            default :class:`projector.Projector` (e.g. :func:`physics.physics_renderer` for physics DRRs).

    Returns:
        A :class:`RegistrationResult`; inputs are never modified.

    Raises:
        InputError: inconsistent or non-finite inputs, an empty structure mask, an all-zero mask.
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    similarity = get_similarity(METHODS[method])
    images, cameras = _as_list(xray), _as_list(camera)
    n_views = len(images)
    if len(cameras) != n_views:
        raise InputError(f"camera: {len(cameras)} camera(s) given for {n_views} X-ray(s)")
    for v, (img, cam) in enumerate(zip(images, cameras, strict=True)):
        _check_image(img, cam, f"xray[{v}]" if n_views > 1 else "xray")
    init = check_rigid(init_world_from_camera, "init_world_from_camera")
    relatives = _check_relatives(relative_views, n_views)
    masks = _check_masks(mask, images)
    data = np.asarray(volume_mu.data)
    if data.ndim != 3 or not np.all(np.isfinite(data)):
        raise InputError("volume_mu: expected a 3D volume of finite attenuation values")
    if reference is None:
        reference = ReferenceView.ap(volume_mu.center, cameras[0].sdd)
    volume = volume_mu
    label_volume = None
    if labels is not None or label_ids is not None:
        volume, label_volume = _apply_labels(volume_mu, labels, label_ids)

    dev = torch.device(device)
    p0 = torch.as_tensor(reference.params(init), dtype=torch.float64)
    if levels is None:
        levels = default_levels(cameras[0])
    iters_per_level = _iterations(max_iterations, len(levels))
    sid = float(np.linalg.norm(transform_points(invert_rigid(init), volume.center)))
    pyramid = _build_levels(volume, label_volume, images, cameras, masks, relatives, levels, iters_per_level,
                            step_sizes, sid, dev, renderer or Projector)
    final_level = pyramid[-1] if pyramid[-1].factor == 1 else _build_levels(
        volume, label_volume, images, cameras, masks, relatives, [1], [0], step_sizes, sid, dev,
        renderer or Projector)[0]

    def result(params: torch.Tensor, sim: float, init_sim: float, it: int, ok: bool, msg: str,
               history: list) -> RegistrationResult:
        w = reference.pose(params.detach().numpy())
        return RegistrationResult(w, params.detach().numpy().copy(), float(sim), float(init_sim), it,
                                  time.perf_counter() - t_start, method, ok, msg, history, reference)

    # initial overlap check and similarity
    _update_label_weights(final_level, reference, p0)
    with torch.no_grad():
        init_sim, init_cov = _evaluate(final_level, reference, p0, similarity)
    if init_cov < MIN_COVERAGE or not math.isfinite(init_sim):
        return result(p0, init_sim, init_sim, 0, False,
                      f"the CT does not project onto the X-ray at the initial pose (covers {100 * init_cov:.1f}% "
                      "of the image); give a closer initial pose", [])

    history: list[tuple[int, int, float]] = []
    params = p0.clone()
    total_budget = sum(lv.max_iterations for lv in pyramid) or 1
    done = 0
    stop_msg = ""
    failed = ""
    for li, level in enumerate(pyramid):
        _update_label_weights(level, reference, params)
        if progress is not None:
            progress(done / total_budget, f"level {li + 1}/{len(pyramid)}: detector x1/{level.factor:g}")
        u = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        adam = _Adam(6)
        base = params.clone()
        best_sim, best_params = -math.inf, params.clone()
        since_best, shrinks = 0, 0
        for it in range(level.max_iterations):
            if should_stop is not None and should_stop():
                stop_msg = "stopped on request before convergence"
                break
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                stop_msg = f"time budget of {time_budget_s:g} s reached"
                break
            u.grad = None
            p = base + u * level.scales
            sim, cov = _similarity(level, reference, p, similarity)
            value = float(sim.detach())
            if not math.isfinite(value) or not torch.all(torch.isfinite(p)):
                failed = f"diverged at level {li + 1}, iteration {it + 1} (similarity or pose became NaN)"
                break
            if cov < MIN_COVERAGE:
                failed = f"the CT left the field of view at level {li + 1}, iteration {it + 1}"
                break
            history.append((li, it, value / len(level.views)))
            done += 1
            if value > best_sim + tolerance:
                best_sim, best_params, since_best = value, p.detach().clone(), 0
            else:
                since_best += 1
                if since_best >= patience:
                    shrinks += 1
                    if shrinks > max_shrinks:
                        break
                    adam.lr *= 0.5
                    since_best = 0
            sim.backward()
            with torch.no_grad():
                u += adam.step(u.grad)
            if progress is not None and it % 10 == 0:
                progress(min(1.0, done / total_budget), f"level {li + 1}: similarity {value / len(level.views):.4f}")
        if math.isfinite(best_sim):
            params = best_params
        if failed or stop_msg:
            break

    _update_label_weights(final_level, reference, params)
    with torch.no_grad():
        final_sim, final_cov = _evaluate(final_level, reference, params, similarity)
    if progress is not None:
        progress(1.0, f"done: similarity {final_sim:.4f}")
    iterations = len(history)
    if failed:
        return result(params, final_sim, init_sim, iterations, False, failed, history)
    if not math.isfinite(final_sim) or final_cov < MIN_COVERAGE:
        return result(params, final_sim, init_sim, iterations, False,
                      "the CT does not project onto the X-ray at the pose found", history)
    if final_sim < init_sim:
        return result(params, final_sim, init_sim, iterations, False,
                      f"the similarity fell from {init_sim:.4f} to {final_sim:.4f}; the pose found is not trusted",
                      history)
    if stop_msg:
        return result(params, final_sim, init_sim, iterations, "time budget" in stop_msg,
                      f"{stop_msg}; similarity {init_sim:.4f} -> {final_sim:.4f}", history)
    return result(params, final_sim, init_sim, iterations, True,
                  f"converged: similarity {init_sim:.4f} -> {final_sim:.4f} in {iterations} iterations", history)


class _Adam:
    """Adam ascent steps for a small parameter vector (unit step scale; parameters are pre-scaled)."""

    def __init__(self, n: int, lr: float = 1.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-12):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m = torch.zeros(n, dtype=torch.float64)
        self.v = torch.zeros(n, dtype=torch.float64)
        self.t = 0

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """The update (to add) for the gradient ``grad`` of the objective to maximise."""
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return self.lr * m_hat / (v_hat.sqrt() + self.eps)


# -- evaluation -----------------------------------------------------------------------------------------
def _view_poses(level: _Level, reference: ReferenceView, params: torch.Tensor) -> list[torch.Tensor]:
    w = reference.pose_torch(params)  # [4, 4] view 0
    return [w @ view.relative for view in level.views]


def _weight(view: _View) -> torch.Tensor | None:
    if view.label_weight is None:
        return view.weight
    return view.label_weight if view.weight is None else view.weight * view.label_weight


def _similarity(level: _Level, reference: ReferenceView, params: torch.Tensor,
                similarity: Callable) -> tuple[torch.Tensor, float]:
    """Summed similarity over the views (differentiable) and the smallest coverage of any view."""
    total = torch.zeros((), dtype=torch.float64)
    coverage = 1.0
    for view, w in zip(level.views, _view_poses(level, reference, params), strict=True):
        drr = view.projector(w)  # [rows, cols]
        coverage = min(coverage, _coverage(drr.detach(), view))
        total = total + similarity(drr[None], view.image, _weight(view))[0].to(torch.float64).cpu()
    return total, coverage


def _evaluate(level: _Level, reference: ReferenceView, params: torch.Tensor,
              similarity: Callable) -> tuple[float, float]:
    """Mean similarity over the views and the smallest coverage (no gradients)."""
    sim, cov = _similarity(level, reference, params, similarity)
    return float(sim) / len(level.views), cov


def _coverage(drr: torch.Tensor, view: _View) -> float:
    """Fraction of the (weighted) X-ray pixels that the projected CT covers."""
    peak = float(drr.max())
    if not math.isfinite(peak) or peak <= 0:
        return 0.0
    covered = (drr > 1e-3 * peak).to(drr.dtype)
    w = _weight(view)
    if w is None:
        return float(covered.mean())
    return float((covered * w).sum() / w.sum().clamp(min=1e-12))


def _update_label_weights(level: _Level, reference: ReferenceView, params: torch.Tensor) -> None:
    """Restrict each view's similarity to the dilated footprint of the structures at ``params``."""
    with torch.no_grad():
        for view, w in zip(level.views, _view_poses(level, reference, params), strict=True):
            if view.label_projector is None:
                continue
            foot = (view.label_projector(w) > 0).to(view.image.dtype)
            rad = max(1, round(0.05 * min(foot.shape)))
            foot = F.max_pool2d(foot[None, None], 2 * rad + 1, stride=1, padding=rad)[0, 0]
            view.label_weight = foot if float(foot.sum()) > 0 else None


# -- set-up -------------------------------------------------------------------------------------------------
def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


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


def _apply_labels(volume: Volume, labels: Volume | None, label_ids) -> tuple[Volume, Volume]:
    """Attenuation of the selected structures only, and their binary mask (float32)."""
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


def _scales(step_sizes, pixel_iso_mm: float, coarse_factor: float, factor: float) -> torch.Tensor:
    """Adam step per parameter (deg, mm) at a level with detector factor ``factor``."""
    if step_sizes is None:
        # mm per step: half a pixel (at the isocentre) at the coarsest level, a fifth when refining
        t = (0.5 if factor == coarse_factor else 0.2) * pixel_iso_mm
        r = math.degrees(t / 100.0)  # a 100 mm lever arm moves by t
        s = [r, r, r, t, t, 2 * t]
        return torch.tensor(s, dtype=torch.float64)
    s = [float(v) for v in step_sizes]
    if len(s) == 2:
        s = [s[0]] * 3 + [s[1]] * 3
    if len(s) != 6 or not all(math.isfinite(v) and v > 0 for v in s):
        raise InputError(f"step_sizes: expected (deg, mm) or six positive numbers, got {step_sizes}")
    return torch.tensor(s, dtype=torch.float64) * (factor / coarse_factor)


def _level_volume(volume: Volume, factors_ijk: Sequence[int]) -> Volume:
    """``volume`` block-averaged by ``factors_ijk`` and zero-padded, made once per volume and factors."""
    factors = tuple(int(f) for f in factors_ijk)
    return volume.derived(("registration level", factors), lambda: pad(block_average(volume, factors)))


def _build_levels(volume: Volume, label_volume: Volume | None, images: list, cameras: list[Camera],
                  masks: list, relatives: list[np.ndarray], levels: Sequence[float], iterations: list[int],
                  step_sizes, sid: float, dev: torch.device, renderer: Callable[..., torch.nn.Module]) -> list[_Level]:
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
        pixel_iso = None
        for img, cam, m, rel in zip(images, cameras, masks, relatives, strict=True):
            c = cam.downsampled(factor)
            pix = min(c.row_spacing, c.col_spacing) * sid / c.sdd  # detector pixel at the isocentre, mm
            pixel_iso = pix if pixel_iso is None else pixel_iso
            vf = [max(1, round(pix / s)) for s in volume.spacing]
            vol_l = _level_volume(volume, vf)
            n_samples = int(math.ceil(max(vol_l.shape_ijk) * SAMPLES_PER_VOXEL))
            proj = renderer(vol_l, c, n_samples=n_samples, device=dev)
            image = downsample_image(torch.as_tensor(np.asarray(img, dtype=np.float32)), c.rows, c.cols).to(dev)
            weight = None
            if m is not None:
                weight = downsample_image(torch.as_tensor(m), c.rows, c.cols).to(dev)
            label_proj = None
            if label_volume is not None:
                lab = _level_volume(label_volume, vf)
                label_proj = Projector(lab, c, n_samples=n_samples, device=dev)
            views.append(_View(proj, image, weight, torch.as_tensor(rel, dtype=torch.float64), label_proj))
        out.append(_Level(factor, views, _scales(step_sizes, pixel_iso, coarse, factor), n_it))
    return out
