"""The learned point-to-plane registration (``ppc``): recurrent flow correspondences, PointNet weights, PPC solver.

Each PPC iteration (:func:`dppc.iterate_ppc`) gets its correspondences from :class:`PPCNet`: a small
RAFT-like flow network (:class:`networks.flow.FlowNet`) between the DRR at the current pose and the
X-ray, both on a ``size x size`` detector, sampled at the projected contour points (its initial flow is
the patch-NCC block matching of ``FlowConfig.patch``, which its recurrent updates refine); a PointNet-style
network (:class:`networks.pointnet.WeightNet`) weights each correspondence; the weighted PPC solver
(:func:`ppc.solve_motion`, no learnable weights) turns them into the motion.

Training (:class:`PPCTrainer`, through ``training.train`` with ``TrainOptions(method="ppc")``, i.e.
``xrayctreg train --model ppc``) is patient-specific: the ground truth is drawn from the options' pose
range, the start from it by a random offset (:func:`start_offsets`, grown by the curriculum), the
"X-ray" is the augmented DRR at the ground truth; pairs come from a replay pool refreshed a few per step
(rendering dominates a CPU step otherwise). The loss is the flow error at the contour points
(L1, input pixels), discounted over the recurrent updates (``FLOW_GAMMA``), plus, after ``gd_start`` of
the training, the registration loss (mean 3D distance, mm, of the contour points moved by the solved
motion from their true positions) with a motion regulariser. Frames and units as in :mod:`ppc`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .dppc import MIN_CONTOUR_POINTS, PPCLevel, run_ppc_method
from .errors import InputError
from .geometry import Camera, ReferenceView, invert_rigid, transform_points
from .metrics import rotation_error_deg, translation_error_mm
from .networks.flow import FlowConfig, FlowNet
from .networks.pointnet import WeightConfig, WeightNet
from .ppc import (
    Contour,
    SurfacePoints,
    contour_points,
    motion_matrix,
    pixels_to_detector,
    ppc_system,
    solve_motion,
    surface_points,
)
from .training_data import RenderSettings, augment, low_res_camera, normalise
from .volume import Volume, hu_to_mu

START_OFFSET = (12.0, 30.0)
"""Largest start offset from the ground truth in training: degrees per angle, mm per translation (the hard
benchmark set's starts reach about 18 degrees and 36 mm on one axis; the network is applied iteratively)."""

FLOW_GAMMA = 0.8
"""Discount of the flow loss of earlier recurrent updates (the last one counts 1)."""

FEATURES = 9
"""Features per correspondence of the weighting network: position (2), flow (2), image normal (2), flow along the
normal (1), ``|n . d|`` (1), flow length (1)."""

USABLE_WEIGHT = 1e-6
"""A correspondence weighted at most this is not usable (training's collapse check, :meth:`Trainer.collapsed`)."""

RENDER = RenderSettings(ct_spacing_mm=2.0, detector_size=64, input_size=64, step_vox=1.0)
"""Training DRRs of the ppc model: a 64-pixel detector (its inputs are the DRR and X-ray at that size)."""


@dataclass
class PPCConfig:
    """Architecture of :class:`PPCNet`.

    Attributes:
        size: side of the square flow-network inputs, pixels (divisible by 4).
        max_points: contour points per training sample.
        flow: the flow network.
        weight: the weighting network.
        reg: damping of the PPC solve (see :func:`ppc.solve_motion`).
    """

    size: int = 64
    max_points: int = 256
    flow: FlowConfig = field(default_factory=lambda: FlowConfig(patch=8))
    weight: WeightConfig = field(default_factory=lambda: WeightConfig(features=FEATURES))
    reg: float = 1e-3

    def to_dict(self) -> dict:
        """Plain dictionary (saved in model files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PPCConfig:
        """Inverse of :meth:`to_dict`."""
        weight = WeightConfig(**{"centred": False, **d["weight"]})  # files from before the option: uncentred
        return cls(int(d["size"]), int(d["max_points"]), FlowConfig(**d["flow"]), weight, float(d["reg"]))


@dataclass
class Batch:
    """Contour data of a batch, padded to ``N`` points (camera frame of the start pose, mm; pixels of the level).

    Attributes:
        pixels: ``[B, N, 2]`` (row, col) projections at the start pose.
        points, normals: ``[B, N, 3]`` contour points and normals.
        true_points: ``[B, N, 3]`` the same CT points under the true pose (same camera frame convention).
        mask: ``[B, N]`` real points.
        cos: ``[B, N]`` ``|n . d|``.
    """

    pixels: torch.Tensor
    points: torch.Tensor
    normals: torch.Tensor
    true_points: torch.Tensor
    mask: torch.Tensor
    cos: torch.Tensor

    FIELDS = ("pixels", "points", "normals", "true_points", "mask", "cos")

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(getattr(self, k).to(device) for k in self.FIELDS))

    def select(self, idx: torch.Tensor) -> Batch:
        """The samples ``idx`` of the batch."""
        return Batch(*(getattr(self, k)[idx] for k in self.FIELDS))

    def put(self, idx: torch.Tensor, other: Batch) -> None:
        """Overwrite the samples ``idx`` with those of ``other`` (same point count)."""
        for k in self.FIELDS:
            getattr(self, k)[idx] = getattr(other, k)


class PPCNet(torch.nn.Module):
    """Flow network + weighting network; :meth:`forward` gives the flows, the targets and the weights."""

    def __init__(self, config: PPCConfig | None = None) -> None:
        """Build both networks."""
        super().__init__()
        self.config = config or PPCConfig()
        self.flow = FlowNet(self.config.flow)
        self.weight = WeightNet(self.config.weight)

    def forward(self, drr: torch.Tensor, xray: torch.Tensor, batch: Batch, iterations: int | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Flows at the points after each update ``[B, N, 2]`` (d_row, d_col, level pixels), targets, weights.

        ``drr`` and ``xray``: ``[B, rows, cols]`` of the level's detector, any scale (each is normalised).
        """
        s = self.config.size
        rows, cols = drr.shape[-2:]
        img1 = normalise(F.interpolate(drr[:, None].float(), size=(s, s), mode="bilinear", align_corners=False))
        img2 = normalise(F.interpolate(xray[:, None].float(), size=(s, s), mode="bilinear", align_corners=False))
        flows = self.flow(img1, img2, iterations)
        scale = torch.tensor([s / rows, s / cols], dtype=torch.float32, device=drr.device)
        at = (batch.pixels.float() + 0.5) * scale - 0.5  # (row, col) on the s-grid (pixel centres at integers)
        grid = torch.stack([2 * at[..., 1] / (s - 1) - 1, 2 * at[..., 0] / (s - 1) - 1], -1)[:, :, None]
        sampled = [F.grid_sample(f, grid, align_corners=True)[..., 0].permute(0, 2, 1).flip(-1) / scale
                   for f in flows]  # [B, N, 2] (d_row, d_col) in level pixels
        last = sampled[-1]
        n2 = batch.normals[..., :2].float()
        n2 = n2.flip(-1) / n2.norm(dim=-1, keepdim=True).clamp(min=1e-6)  # (row, col) order: (y, x)
        feats = torch.cat([2 * at / s - 1, last / 8, n2, (last * n2).sum(-1, keepdim=True) / 8,
                           batch.cos.float()[..., None], (last.norm(dim=-1, keepdim=True) / 8)], -1)
        weights = self.weight(feats, batch.mask)
        return sampled, batch.pixels.float() + last, weights


def solve_batch(batch: Batch, targets: torch.Tensor, weights: torch.Tensor, camera: Camera, reg: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Motions ``x`` ``[B, 6]`` and their rotation centres ``[B, 3]`` from target pixels ``[B, N, 2]``."""
    dt = torch.float64
    w = weights.to(dt) * batch.mask
    pts = batch.points.to(dt)
    center = (pts * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-9)
    a, b = ppc_system(pts, batch.normals.to(dt), pixels_to_detector(targets.to(dt), camera), center)
    return solve_motion(a, b, w, reg), center


def moved_points(batch: Batch, x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """The contour points ``[B, N, 3]`` moved by the motions ``x`` about ``center``."""
    m = motion_matrix(x, center)
    return batch.points.to(m.dtype) @ m[:, :3, :3].transpose(1, 2) + m[:, None, :3, 3]


def make_batch(surface: SurfacePoints, camera: Camera, starts: Sequence[np.ndarray], truths: Sequence[np.ndarray],
               max_points: int) -> Batch:
    """Contours at the start poses, padded to ``max_points``, with the points' true positions (camera frames)."""
    b = len(starts)
    out = {k: np.zeros((b, max_points, d)) for k, d in (("pixels", 2), ("points", 3), ("normals", 3),
                                                         ("true_points", 3), ("cos", 1))}
    mask = np.zeros((b, max_points), dtype=bool)
    for i, (ws, wt) in enumerate(zip(starts, truths, strict=True)):
        c = contour_points(surface, camera, ws, max_points=max_points)
        n = len(c)
        out["pixels"][i, :n], out["points"][i, :n], out["normals"][i, :n] = c.pixels, c.points, c.normals
        out["cos"][i, :n, 0] = c.cos
        out["true_points"][i, :n] = transform_points(invert_rigid(wt), surface.points[c.index])
        mask[i, :n] = True
    t = {k: torch.as_tensor(v) for k, v in out.items()}
    return Batch(t["pixels"], t["points"], t["normals"], t["true_points"], torch.as_tensor(mask), t["cos"][..., 0])


def true_flow(batch: Batch, camera: Camera) -> torch.Tensor:
    """Ground-truth flow ``[B, N, 2]`` (d_row, d_col, level pixels) at the contour points."""
    rc = torch.as_tensor(camera.project_camera_points(batch.true_points.cpu().numpy()), device=batch.pixels.device)
    return torch.nan_to_num(rc - batch.pixels) * batch.mask[..., None]


def flow_loss(flows: list[torch.Tensor], gt: torch.Tensor, mask: torch.Tensor, gamma: float = FLOW_GAMMA
              ) -> torch.Tensor:
    """Discounted masked L1 flow error over the recurrent updates (the last weighs 1), level pixels."""
    n = len(flows)
    m = mask.float()[..., None]
    per = [((f - gt.float()).abs() * m).sum() / m.sum().clamp(min=1) for f in flows]
    return sum(gamma ** (n - 1 - i) * p for i, p in enumerate(per))


def flow_error(flow: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean end-point error (level pixels) of flows ``[B, N, 2]`` at the real points."""
    return float((flow.float() - gt.float()).norm(dim=-1)[mask].mean())


def registration_loss(batch: Batch, x: torch.Tensor, center: torch.Tensor, motion_weight: float = 1e-3
                      ) -> torch.Tensor:
    """Mean 3D distance (mm) of the moved contour points from their true positions, plus the motion regulariser."""
    d = (moved_points(batch, x, center) - batch.true_points).norm(dim=-1)
    m = batch.mask.to(d.dtype)
    return (d * m).sum() / m.sum().clamp(min=1) + motion_weight * (x ** 2).sum(-1).mean()


# -- training ---------------------------------------------------------------------------------------------------
def start_offsets(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    """Training start offsets ``[n, 6]`` (degrees, mm) from the ground truth.

    Each sample's offset is uniform in the box ``scale * START_OFFSET`` times its own magnitude, uniform in
    (0, 1): small offsets (the later PPC iterations) are as frequent as large ones (the first).
    """
    off = scale * np.asarray(START_OFFSET)[[0, 0, 0, 1, 1, 1]]
    return rng.uniform(0, 1, (n, 1)) * rng.uniform(-1, 1, (n, 6)) * off


def replace_pairs(pool: list, fresh: tuple, start: int) -> int:
    """Overwrite a training pool's pairs from index ``start`` on (cyclically) with ``fresh``; the next start.

    ``pool`` and ``fresh``: (start DRRs, truth DRRs, params, :class:`Batch`), the pool's fields in place. The
    ppc trainer's pool holds ``pool_size // 2`` pairs and renders ``max(1, fresh_per_step // 2)`` new ones per
    step at the current start-offset scale.
    """
    n_pool = len(pool[0])
    idx = (start + torch.arange(len(fresh[0]))) % n_pool
    for store, new in zip(pool[:3], fresh[:3], strict=True):
        store[idx.to(store.device)] = new
    pool[3].put(idx.to(pool[3].pixels.device), fresh[3])
    return int(idx[-1] + 1) % n_pool


def pose_errors(reference: ReferenceView, params: torch.Tensor, motions: np.ndarray) -> tuple[float, float]:
    """Mean rotation (deg) and translation (mm) errors of solved motions ``[B, 4, 4]`` (camera frames).

    ``params`` ``[B, 12]``: each pair's start and true pose parameters (of ``reference``); the start pose moved by
    its motion is compared with the truth.
    """
    rot, trans = [], []
    for k in range(len(motions)):
        start, gt = reference.pose(params[k, :6].numpy()), reference.pose(params[k, 6:].numpy())
        pose = start @ invert_rigid(motions[k])
        rot.append(rotation_error_deg(gt, pose))
        trans.append(translation_error_mm(gt, pose, reference.isocenter))
    return float(np.mean(rot)), float(np.mean(trans))


def short_of_usable(weights: torch.Tensor, mask: torch.Tensor) -> int:
    """Samples of a batch (weights and mask ``[B, N]``) with fewer usable correspondences than a PPC update needs.

    Usable: weighted above :data:`USABLE_WEIGHT`; needed: ``dppc.MIN_CONTOUR_POINTS``, or all of a sample's points
    where it has fewer.
    """
    usable = ((weights > USABLE_WEIGHT) & mask).sum(1)
    return int((usable < mask.sum(1).clamp(max=MIN_CONTOUR_POINTS)).sum())


def collapse_reason(val: dict[str, float]) -> str | None:
    """The ppc trainer's ``Trainer.collapsed``: why a validation (``short_of_usable`` of ``samples``) is a collapse."""
    if val.get("short_of_usable", 0) == 0:
        return None
    return (f"the weighting network collapsed: {val['short_of_usable']} of {val['samples']} validation samples "
            f"have fewer than {MIN_CONTOUR_POINTS} correspondences weighted above {USABLE_WEIGHT:g}")


def build_ppc_net(options) -> PPCNet:
    """The untrained :class:`PPCNet` of ``training.TrainOptions`` with ``method="ppc"``."""
    return PPCNet(PPCConfig())


def make_trainer(ct_hu: Volume, camera: Camera, options, reference: ReferenceView | None = None,
                 device: str | torch.device = "cpu", ct_source: str = ""):
    """A :class:`PPCTrainer` (a ``training.Trainer`` with the ppc data, loss and validation)."""
    from .training import Trainer

    class PPCTrainer(Trainer):
        """``training.Trainer`` for the ppc model: start/truth pairs, flow + registration loss, pose validation."""

        def __init__(self) -> None:
            # the ppc resolution; domain randomisation (the X-ray side only) as the options ask
            options.render = replace(RENDER, physics_kvp=options.render.physics_kvp,
                                     physics_scatter=options.render.physics_scatter)
            self.surface = surface_points(Volume(hu_to_mu(ct_hu.data), ct_hu.ijk_to_ras))
            super().__init__(ct_hu, camera, options, reference, device, ct_source)
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=options.lr,
                                               weight_decay=options.weight_decay)

        def make_network(self) -> PPCNet:
            return build_ppc_net(self.options)

        def _pairs(self, rng: np.random.Generator, n: int, scale: float):
            """``n`` new (start, truth) pairs: start DRRs, clean truth DRRs, params ``[n, 12]``, contour batch."""
            gt = self.options.pose_range.sample(rng, n)
            start = gt + start_offsets(rng, n, scale)
            chunks = np.array_split(np.arange(n), -(-n // 64))
            drr = torch.cat([self.source.render(start[c], physics=False) for c in chunks])  # what registration renders
            xray = torch.cat([self.source.render(gt[c]) for c in chunks])  # physics when randomised
            ref = self.reference
            batch = make_batch(self.surface, self.source.low_camera, [ref.pose(p) for p in start],
                               [ref.pose(p) for p in gt], self.net.config.max_points).to(self.device)
            return drr, xray, torch.as_tensor(np.concatenate([start, gt], 1)), batch

        def _make_validation(self) -> None:
            rng = np.random.default_rng(10_000 + self.options.seed)
            gen = torch.Generator(device=self.device).manual_seed(10_000 + self.options.seed)
            drr, xray, params, batch = self._pairs(rng, min(self.options.val_size, 2 * self.options.batch_size, 16),
                                                   1.0)
            self.val = (drr, augment(xray, gen, self.options.augmentation)), params, batch
            self.ppc_pool = None

        def batch(self, scale, rng, gen):
            """A batch from the replay pool (see :func:`replace_pairs`), truth DRRs augmented anew into X-rays."""
            o = self.options
            n_pool = max(o.batch_size, self.pool_size // 2)
            if self.ppc_pool is None:
                self.ppc_pool, self.ppc_next = list(self._pairs(rng, n_pool, scale)), 0
            else:
                fresh = self._pairs(rng, min(n_pool, max(1, o.fresh_per_step // 2)), scale)
                self.ppc_next = replace_pairs(self.ppc_pool, fresh, self.ppc_next)
            idx = torch.as_tensor(rng.choice(n_pool, o.batch_size, replace=False))
            drr, xray, params, batch = self.ppc_pool
            return ((drr[idx.to(drr.device)], augment(xray[idx.to(xray.device)], gen, o.augmentation)),
                    params[idx], batch.select(idx.to(self.device)))

        def loss(self, x, params, drr, fraction):
            batch = drr
            flows, targets, weights = self.net(x[0], x[1], batch)
            parts = {"flow": flow_loss(flows, true_flow(batch, self.source.low_camera), batch.mask)}
            if fraction >= self.options.gd_start:
                xm, c = solve_batch(batch, targets, weights, self.source.low_camera, self.net.config.reg)
                parts["reg"] = self.options.beta * registration_loss(batch, xm, c).float()
            total = torch.stack(list(parts.values())).sum()
            return total, {k: v.detach() for k, v in parts.items()}

        def validate(self) -> dict[str, float]:
            (drr, xray), params, batch = self.val
            with torch.no_grad():
                flows, targets, weights = self.net(drr, xray, batch)
                epe = flow_error(flows[-1], true_flow(batch, self.source.low_camera), batch.mask)
                x, c = solve_batch(batch, targets, weights, self.source.low_camera, self.net.config.reg)
                m = motion_matrix(x, c).cpu().numpy()
            rot, trans = pose_errors(self.reference, params, m)
            return {"rot_deg": rot, "trans_mm": trans, "flow_px": epe,
                    "short_of_usable": short_of_usable(weights, batch.mask), "samples": len(m)}

        def collapsed(self, val: dict[str, float]) -> str | None:
            return collapse_reason(val)

    return PPCTrainer()


# -- the refine method -------------------------------------------------------------------------------------------
_MODELS: dict[tuple[str, float], tuple[PPCNet, dict]] = {}


def load_ppc_model(path: str | Path) -> tuple[PPCNet, dict]:
    """The network and the model file's dictionary (kept per path and modification time)."""
    from .training import read_model_file

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--model: {p}: model file not found (train one with 'xrayctreg train --model ppc')")
    key = (str(p.resolve()), p.stat().st_mtime)
    if key not in _MODELS:
        d = read_model_file(p)
        if d.get("method") != "ppc":
            raise InputError(f"--model: {p} is a '{d.get('method')}' model, not a ppc model "
                             "(train one with 'xrayctreg train --model ppc')")
        net = PPCNet(PPCConfig.from_dict(d["network"]))
        try:
            net.load_state_dict(d["state_dict"])
        except RuntimeError as e:
            raise InputError(f"--model: {p}: model file does not match the ppc network ({str(e)[:200]})") from None
        _MODELS[key] = (net.eval(), {k: v for k, v in d.items() if k not in ("state_dict", "optimizer")})
    return _MODELS[key]


def check_volume(info: dict, volume_mu: Volume, model_name: str) -> None:
    """Raise :class:`InputError` unless ``volume_mu`` has the grid the model's CT had."""
    same = list(volume_mu.shape_ijk) == list(info["ct"]["shape_ijk"]) and np.allclose(
        volume_mu.ijk_to_ras, np.asarray(info["ct"]["ijk_to_ras"]), atol=1e-4)
    if not same:
        raise InputError(f"--model: {model_name} was trained on another CT ({info['ct'].get('source') or 'unnamed'}, "
                         f"{'x'.join(map(str, info['ct']['shape_ijk']))} voxels), not this one "
                         f"({'x'.join(map(str, volume_mu.shape_ijk))} voxels)")


def learned_correspondences(net: PPCNet) -> Callable[[PPCLevel, torch.Tensor, Contour], tuple[np.ndarray, np.ndarray]]:
    """The ppc correspondence step: flow at the contour points and PointNet weights."""
    def correspond(level: PPCLevel, drr: torch.Tensor, contour: Contour) -> tuple[np.ndarray, np.ndarray]:
        t = {k: torch.as_tensor(getattr(contour, k))[None] for k in ("pixels", "points", "normals", "cos")}
        batch = Batch(t["pixels"], t["points"], t["normals"], t["points"], torch.ones(1, len(contour), dtype=bool),
                      t["cos"])
        with torch.no_grad():
            _, targets, weights = net(drr[None], level.xray[None], batch)
        return targets[0].double().numpy(), weights[0].double().numpy()
    return correspond


def register_ppc(volume_mu: Volume, xray: np.ndarray, camera: Camera, init_world_from_camera: np.ndarray, *,
                 model: str | Path | None = None, reference: ReferenceView | None = None,
                 progress: Callable[[float, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 device: str = "cpu", iterations: int = 10, robust: int = 0, final: str | None = None,
                 final_schedule: str = "default", **final_options):
    """The ``ppc`` refine method (registry calling convention).

    Args:
        volume_mu: attenuation (1/mm), world RAS; the CT the model was trained on.
        xray: attenuation-bright X-ray ``[rows, cols]``.
        camera: its geometry (the model's).
        init_world_from_camera: 4x4 start pose.
        model: the model file from ``xrayctreg train --model ppc``.
        reference: the view the result's parameters are relative to (default AP).
        progress: ``progress(fraction, message)`` after every iteration.
        should_stop: polled every iteration; True stops.
        device: torch device of the rendering (the networks run on the CPU).
        iterations: PPC iterations (ten, as in the paper).
        robust: Tukey re-solves per iteration on top of the learned weights (see :func:`ppc.ppc_step`); 0: none.
        final: an intensity method of ``registration.register`` run afterwards (``ppc-opt``: ``opt-lncc``).
        final_schedule: its levels (``dppc.run_ppc_method``): ``"default"``, the registration's own. On the hard
            sets the finer ``"refine"`` schedule lowered the chest's median mRPD from 0.39 to 0.15 mm for 0.9 s more
            CPU time (2.8 s in all), past the method's 3 s target in some runs (``ppc_schedule.md``).
        **final_options: options of that step.

    Returns:
        A ``registration.RegistrationResult``.
    """
    from .training import check_camera_match

    if model is None:
        raise InputError("--model: the ppc method needs a model file (train one with 'xrayctreg train --model ppc')")
    net, info = load_ppc_model(model)
    check_camera_match(info, camera, str(model))
    check_volume(info, volume_mu, str(model))
    level = low_res_camera(camera, RENDER.detector_size)
    factor = camera.rows / level.rows
    t0 = time.perf_counter()
    res = run_ppc_method(volume_mu, xray, camera, init_world_from_camera, learned_correspondences(net), "ppc",
                         reference=reference, progress=progress, should_stop=should_stop, device=device,
                         levels=(factor,), iterations=(int(iterations),), final=final, robust=int(robust),
                         final_schedule=final_schedule, **final_options)
    res.wall_time_s = time.perf_counter() - t0
    return res
