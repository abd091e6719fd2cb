"""Training the patient-specific networks on the patient's own CT, and the model files they live in.

:func:`train` trains a :class:`networks.PoseRegressor` (``method='regressor'``) or a
:class:`networks.RTPI` (``method='rtpi'``), the stage-1 initialisers, or SOPI's stage-2
fine-registration network (``method='sopi-fine'``, :class:`networks.composite.FineNet` trained by
the double backward of :class:`sopi_fine.FineObjective`) on DRRs of one CT rendered on the fly at
random poses (:mod:`training_data`), with incremental learning: the pose range grows linearly from
``curriculum_start`` times the full range to the full range over the first ``curriculum_end``
fraction of training, then the learning rate decays (cosine) to 5 %. Training length is
``iterations`` steps and/or ``time_budget_s`` seconds of training time, both counted over the
whole training including resumed runs; whichever is reached first ends it. The training time is wall
time from the call of :func:`train` (preparation, validations and checkpoints included), and a time
budget is kept: no step starts that could not be finished, validated and written within it. A network
kind may say when its network has collapsed (:meth:`Trainer.collapsed`, e.g. the ppc weighting network
whose weights all underflowed to 0); the training then goes back to the weights of the last healthy
validation, records the collapse in the model file, and stops after ``MAX_COLLAPSES`` of them.

The model file (a ``torch.save`` dictionary, loadable with ``weights_only=True``) is also the
checkpoint: it is written atomically every ``checkpoint_every_s`` seconds and at the end, and
holds the weights, the optimiser state, the step counter, the training time, the loss and
validation history, and what the model is valid for: the CT (SHA-256 of the HU voxels and
``ijk_to_ras``), the detector geometry, the reference view, the pose range, the method and the
library version. :func:`load_initialiser` reads it back; :meth:`Initialiser.check_ct` and
:meth:`Initialiser.check_camera` refuse another CT or geometry with an :class:`InputError`.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import __version__
from .devices import host_to_device
from .errors import InputError
from .files import Outputs, write_text_atomic
from .geometry import Camera, ReferenceView, euler_xyz
from .names import FINE_MODEL, INITIALISER_METHODS, MODEL_KINDS, REFINER_MODELS
from .networks import RTPI, PoseRegressor, RegressorConfig, RTPIConfig
from .networks.composite import CompositeConfig, FineNet
from .networks.losses import gradient_difference_loss, l2_weights, rotation_loss
from .networks.rotations import geodesic_deg, params_to_target, target_to_params
from .sopi_fine import FineObjective, FineOffsets, FineScene
from .training_data import (
    Augmentation,
    DRRSource,
    PoseRange,
    RenderSettings,
    augment,
    ct_hash,
    prepare_image,
    to_input,
)
from .volume import Volume, hu_to_mu

METHODS = (*INITIALISER_METHODS, *REFINER_MODELS)
"""Model kinds :func:`train` knows (defined in :mod:`names`): the initialisers and the learned ppc refinement."""

FILE_FORMAT = "xrayctreg-initialiser"
"""``format`` entry of a model file."""

FORMAT_VERSION = 1
"""``format_version`` entry of a model file."""

FINE_RENDER = RenderSettings(ct_spacing_mm=3.0, detector_size=96, input_size=96)
"""Training DRRs of ``sopi-fine``: finer than the initialisers' 48 pixels, at which its learned field does not
see the depth (a 10 mm depth change is a third of a pixel at the image's edge); measured in
``benchmarks/results/sopi.md``."""

MAX_COLLAPSES = 3
"""Collapses (:meth:`Trainer.collapsed`) after which a training stops with the last healthy weights."""


@dataclass
class TrainOptions:
    """Everything that defines a training run (saved in the model file).

    Attributes:
        method: ``'regressor'`` or ``'rtpi'``.
        iterations: total training steps (``None``: no step limit).
        time_budget_s: total training time, seconds of wall time, preparation and validations included (``None``:
            no time limit); training ends within it. With neither,
            ``DEFAULT_ITERATIONS`` steps.
        batch_size: DRRs per step.
        lr, weight_decay: AdamW settings (the RTPI uses its explicit L2 term ``lam`` instead).
        pose_range: the full training range.
        render: resolutions of the training DRRs; None: :data:`FINE_RENDER` for ``sopi-fine``,
            ``RenderSettings()`` for the others.
        augmentation: X-ray-likeness augmentation.
        incremental: grow the pose range over training (else the full range from the start).
        curriculum_start: initial fraction of the range.
        curriculum_end: fraction of training after which the full range is used.
        rot_weight, trans_weight, ae_weight: regressor loss weights (rotation matrix MSE,
            normalised translation MSE, autoencoder reconstruction MSE).
        width, depth, autoencoder, attention: regressor architecture (see :class:`RegressorConfig`).
        alpha, beta, lam: RTPI loss weights (gradient difference between the X-ray and the DRR at
            the predicted pose, MSE of normalised parameters, L2 of the weights).
        gd_start: fraction of training after which the RTPI's gradient-difference term is on.
        fine_channels, fine_embed, composite, fine_norm, fine_shared: sopi-fine architecture (see
            :class:`CompositeConfig`); one encoder shared by the DRR and the X-ray by default, SOPI's
            two encoders with ``fine_shared=False`` (model files from before the option are read as two).
        mask_loss: sopi-fine: weight the embedded distance by the projected CT mask.
        fine_rot_deg, fine_trans_mm: sopi-fine: standard deviations of the training starts' offsets
            from their targets (see :class:`sopi_fine.FineOffsets`).
        fine_near: sopi-fine: the share of training starts about a millimetre from their targets
            (``FineOffsets.near_fraction``).
        fine_depth: sopi-fine: the share of training starts off in depth alone (``FineOffsets.depth_fraction``).
        val_iterations: sopi-fine: fine-registration iterations of each validation.
        pool_size: DRRs kept in the replay pool that batches are drawn from (each is augmented anew
            every time it is drawn).
        fresh_per_step: new DRRs rendered into the pool (replacing the oldest) at every step, at the
            current pose range; ``fresh_per_step == pool_size == batch_size`` renders every batch afresh.
        val_size: validation DRRs (fixed poses over the full range, fixed augmentation).
        val_every: steps between validations.
        checkpoint_every_s: seconds between checkpoints.
        seed: random seed.
    """

    method: str = "regressor"
    iterations: int | None = None
    time_budget_s: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    pose_range: PoseRange = field(default_factory=PoseRange)
    render: RenderSettings | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)
    incremental: bool = True
    curriculum_start: float = 0.2
    curriculum_end: float = 0.5
    rot_weight: float = 1.0
    trans_weight: float = 1.0
    ae_weight: float = 0.5
    width: float = 0.5
    depth: float = 0.34
    autoencoder: bool = True
    attention: bool = True
    alpha: float = 0.1
    beta: float = 1.0
    lam: float = 1e-5
    gd_start: float = 0.5
    fine_channels: int = 8
    fine_embed: int = 16
    composite: bool = True
    fine_norm: str = "none"
    fine_shared: bool = True
    mask_loss: bool = True
    fine_rot_deg: float = 5.0
    fine_trans_mm: float = 10.0
    fine_near: float = 0.0
    fine_depth: float = 0.0
    val_iterations: int = 15
    pool_size: int = 512
    fresh_per_step: int = 4
    val_size: int = 64
    val_every: int = 25
    checkpoint_every_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        """Check the method and the limits; choose the render settings when none are given."""
        if self.method not in MODEL_KINDS:
            raise InputError(f"--model: unknown model kind '{self.method}'; use one of {', '.join(MODEL_KINDS)}")
        if self.render is None:
            self.render = replace(FINE_RENDER) if self.method == FINE_MODEL else RenderSettings()
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"--iterations: must be at least 1, got {self.iterations}")
        if self.time_budget_s is not None and not (self.time_budget_s > 0 and math.isfinite(self.time_budget_s)):
            raise InputError(f"--time-budget: must be a positive number of seconds, got {self.time_budget_s}")
        batch = self.batch_size
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096:
            raise InputError(f"--batch-size: must be an integer from 1 to 4096, got {self.batch_size!r}")
        if not (self.checkpoint_every_s >= 0 and math.isfinite(self.checkpoint_every_s)):
            raise InputError(f"--checkpoint-every: must be 0 (every step) or more seconds, "
                             f"got {self.checkpoint_every_s}")
        if self.seed < 0:
            raise InputError(f"--seed: must be 0 or more, got {self.seed}")

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        d = asdict(self)
        d["pose_range"] = self.pose_range.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("fine_shared", False)  # files from before the option hold two encoders
        kw["pose_range"] = PoseRange.from_dict(d["pose_range"])
        kw["render"] = RenderSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["render"].items()})
        aug = dict(d["augmentation"])
        aug.setdefault("blur_on_photons", False)  # files from before the option blurred after the log
        kw["augmentation"] = Augmentation(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        return cls(**kw)


DEFAULT_ITERATIONS = 3000
"""Steps when neither ``iterations`` nor ``time_budget_s`` is given."""


def build_network(options: TrainOptions) -> torch.nn.Module:
    """The untrained network of ``options.method``."""
    size = options.render.input_size
    if options.method == "regressor":
        return PoseRegressor(RegressorConfig(input_size=size, width=options.width, depth=options.depth,
                                             autoencoder=options.autoencoder, attention=options.attention))
    if options.method == FINE_MODEL:
        return FineNet(CompositeConfig(input_size=size, channels=options.fine_channels,
                                       embed_channels=options.fine_embed, composite=options.composite,
                                       norm=options.fine_norm, shared=options.fine_shared))
    return RTPI(RTPIConfig(input_size=size))


def predict_params(net: torch.nn.Module, x: torch.Tensor, pose_range: PoseRange) -> torch.Tensor:
    """Pose parameters ``[B, 6]`` (degrees, mm) predicted by ``net`` for inputs ``[B, 1, S, S]``."""
    hw = torch.as_tensor(pose_range.half_widths, dtype=torch.float32, device=x.device)
    out = net(x)
    if "params" in out:
        return out["params"] * hw
    return target_to_params(out["rot6d"], out["trans"], hw[3:])


@dataclass
class TrainState:
    """Progress of a training run."""

    step: int = 0
    train_time_s: float = 0.0
    history: list = field(default_factory=list)
    collapses: list = field(default_factory=list)
    """``[step, reason]`` of each validation that found the network collapsed (:meth:`Trainer.collapsed`)."""


class _Clock:
    """The training time of a run (wall time, on top of the resumed runs') and how long each kind of work takes."""

    RECENT = 5
    """Durations kept per kind of work: the reserve is the longest of them."""

    def __init__(self, state: TrainState, setup_s: float, after_s: float = 0.0) -> None:
        self.state = state
        self.after_s = max(0.0, after_s)
        self.base = state.train_time_s + max(0.0, setup_s)
        self.start = time.perf_counter()
        self.recent: dict[str, list[float]] = {"step": [], "validation": [], "write": []}

    def timed(self, kind: str, fn: Callable, *args, **kwargs):
        """Run ``fn(*args, **kwargs)``, keep its duration under ``kind``, update the training time."""
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        durations = self.recent[kind]
        durations.append(time.perf_counter() - t0)
        del durations[:-self.RECENT]
        self.state.train_time_s = self.base + time.perf_counter() - self.start
        return out

    def reserve(self) -> float:
        """Seconds one more step needs to be finished: a step, a validation and the final write.

        Each is the longest of its recent durations; the first one, which includes the warm-up, counts only until
        there is another. ``after_s``, what the caller needs once the training returns, is added.
        """
        return self.after_s + sum(max(d[1:] or d) for d in self.recent.values() if d)


class _Objective(torch.nn.Module):
    """A training loss ``terms(x, params)`` as a module of the network it trains (what a CUDA graph captures)."""

    def __init__(self, terms: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
                 net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.terms = terms

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The loss and its parts on a batch."""
        return self.terms(x, params)


class Trainer:
    """One training run: data, network, optimiser, validation set and checkpoints.

    Args:
        ct_hu: the patient's CT in HU.
        camera: the full-resolution detector geometry the model will be used with.
        options: what to train and how.
        reference: the view the pose parameters are relative to (default AP about the CT centre).
        device: torch device for rendering and training.
        ct_source: the CT's file name, recorded in the model file.
    """

    def __init__(self, ct_hu: Volume, camera: Camera, options: TrainOptions, reference: ReferenceView | None = None,
                 device: str | torch.device = "cpu", ct_source: str = "") -> None:
        """Prepare the renderer, the network, the optimiser and the validation set."""
        self.options = options
        self.camera = camera
        self.reference = reference or ReferenceView.ap(ct_hu.center, camera.sdd)
        self.device = torch.device(device)
        self.ct_info = {"sha256": ct_hash(ct_hu), "shape_ijk": list(ct_hu.shape_ijk),
                        "ijk_to_ras": ct_hu.ijk_to_ras.tolist(), "source": str(ct_source)}
        self.source = DRRSource(ct_hu, camera, self.reference, options.render, self.device)
        self.fine: FineObjective | None = None
        if options.method == FINE_MODEL:
            self.ct_info["mu_sha256"] = ct_hash(Volume(hu_to_mu(ct_hu.data), ct_hu.ijk_to_ras))
            scene = FineScene(self.source.volume, self.source.low_camera, self.reference, options.render, self.device)
            offsets = FineOffsets(options.fine_rot_deg, options.fine_trans_mm, near_fraction=options.fine_near,
                                  depth_fraction=options.fine_depth)
            self.fine = FineObjective(scene, offsets, options.mask_loss, options.seed)
        torch.manual_seed(options.seed)
        self.net = self.make_network().to(self.device)
        if isinstance(self.net, RTPI):
            self.net.set_volume(torch.as_tensor(self.source.volume.data))
        decay = options.weight_decay if options.method == "regressor" else 0.0
        # on CUDA one fused kernel updates all the weights (the same AdamW update; on the CPU torch's default)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=options.lr, weight_decay=decay,
                                           fused=True if self.device.type == "cuda" else None)
        self.state = TrainState()
        self.pool_params: torch.Tensor | None = None
        self.pool_drr: torch.Tensor | None = None
        self.pool_next = 0
        # no more DRRs than a short run can use
        self.pool_size = min(options.pool_size, options.batch_size * options.iterations) if options.iterations \
            else options.pool_size
        self.half_widths = torch.as_tensor(options.pose_range.half_widths, dtype=torch.float32, device=self.device)
        self.cuda_graphs = True  # see _regressor_objective; False keeps every step eager (for comparisons)
        self.graph_shape: tuple[int, ...] | None = None  # the batch shape the objective was captured for
        self._objective: _Objective | None = None
        self.graph_error = ""  # why a capture failed ("" when none failed)
        self._make_validation()

    def make_network(self) -> torch.nn.Module:
        """The untrained network (a subclass training another kind of model overrides it)."""
        return build_network(self.options)

    # -- data ---------------------------------------------------------------------------------
    def _make_validation(self) -> None:
        """Fixed validation poses over the full range and their augmented DRRs."""
        rng = np.random.default_rng(10_000 + self.options.seed)
        params = self.options.pose_range.sample(rng, self.options.val_size)
        gen = torch.Generator(device=self.device).manual_seed(10_000 + self.options.seed)
        drr = self.source.render(params)
        self.val_params = torch.as_tensor(params, dtype=torch.float32, device=self.device)
        self.val_x = to_input(augment(drr, gen, self.options.augmentation), self.options.render.input_size)
        if self.fine is not None:
            self.fine.make_validation(self.val_x, self.val_params, min(self.options.val_size, 8))

    def _refresh_pool(self, scale: float, rng: np.random.Generator) -> None:
        """Render ``fresh_per_step`` DRRs at ``scale`` times the range into the pool (filling it on first use)."""
        o = self.options
        if self.pool_params is None:
            params = o.pose_range.sample(rng, self.pool_size, scale)
            self.pool_drr = torch.cat([self.source.render(p) for p in np.array_split(params, -(-self.pool_size // 64))])
            self.pool_params = torch.as_tensor(params, dtype=torch.float32, device=self.device)
            self.pool_next = 0
            return
        n = min(o.fresh_per_step, self.pool_size)
        params = host_to_device(o.pose_range.sample(rng, n, scale), torch.float64, self.device)
        idx = (self.pool_next + torch.arange(n, device=self.device)) % self.pool_size
        self.pool_drr[idx] = self.source.render(params)
        self.pool_params[idx] = params.float()
        self.pool_next = (self.pool_next + n) % self.pool_size

    def batch(self, scale: float, rng: np.random.Generator, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch: (inputs ``[B, 1, S, S]``, params ``[B, 6]``, clean DRRs ``[B, rows, cols]``).

        The pool is refreshed at ``scale`` times the range, then ``batch_size`` entries are drawn and augmented.
        """
        o = self.options
        self._refresh_pool(scale, rng)
        if self.pool_size == o.batch_size:
            idx = torch.arange(o.batch_size, device=self.device)
        else:
            idx = host_to_device(rng.choice(self.pool_size, o.batch_size, replace=o.batch_size > self.pool_size),
                                 torch.int64, self.device)
        drr = self.pool_drr[idx]
        x = to_input(augment(drr, gen, o.augmentation), o.render.input_size)
        return x, self.pool_params[idx], drr

    # -- schedule -----------------------------------------------------------------------------
    def fraction(self) -> float:
        """Fraction of the training done, from the step counter and the training time."""
        o, s = self.options, self.state
        if o.iterations is None and o.time_budget_s is None:
            return s.step / DEFAULT_ITERATIONS
        f = 0.0
        if o.iterations is not None:
            f = max(f, s.step / o.iterations)
        if o.time_budget_s is not None:
            f = max(f, s.train_time_s / o.time_budget_s)
        return min(f, 1.0)

    def range_scale(self, fraction: float) -> float:
        """Fraction of the pose range used at a training fraction (incremental learning)."""
        o = self.options
        if not o.incremental:
            return 1.0
        return min(1.0, o.curriculum_start + (1 - o.curriculum_start) * fraction / max(o.curriculum_end, 1e-9))

    def learning_rate(self, fraction: float) -> float:
        """Constant until the curriculum ends, then a cosine decay to 5 %."""
        o = self.options
        start = o.curriculum_end if o.incremental else 0.0
        if fraction <= start:
            return o.lr
        u = min(1.0, (fraction - start) / max(1 - start, 1e-9))
        return o.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * u)))

    # -- losses -------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, params: torch.Tensor, drr: torch.Tensor, fraction: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a batch and its parts (0-d tensors on the device, detached)."""
        o = self.options
        if self.fine is not None:
            return self.fine.loss(self.net, x, params, self.state.step, self.range_scale(fraction))
        if o.method == "regressor":
            total, *values = self._regressor_objective(x, params)
            names = ["rot", "trans", "ae"][:len(values)]
            return total, {k: v.detach() for k, v in zip(names, values, strict=True)}
        out = self.net(x)
        parts: dict[str, torch.Tensor] = {}
        pred = out["params"]
        parts["mse"] = o.beta * F.mse_loss(pred, params / self.half_widths)
        if o.alpha > 0 and fraction >= o.gd_start:
            moving = self.source.render(pred * self.half_widths, grad=True, physics=False)
            fixed = to_input(drr, o.render.input_size)
            parts["gd"] = o.alpha * gradient_difference_loss(fixed, to_input(moving, o.render.input_size)).mean()
        parts["l2"] = o.lam * l2_weights(self.net)
        total = torch.stack(list(parts.values())).sum()
        return total, {k: v.detach() for k, v in parts.items()}

    def _regressor_terms(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The regressor's loss on a batch and its parts: ``(total, rot, trans[, ae])``, 0-d tensors."""
        o = self.options
        out = self.net(x)
        r_true = euler_xyz(params[:, :3])
        _, t_true = params_to_target(params, self.half_widths[3:])
        parts = [o.rot_weight * rotation_loss(out["rot6d"], r_true).mean(),
                 o.trans_weight * F.mse_loss(out["trans"], t_true)]
        if "recon" in out and o.ae_weight > 0:
            parts.append(o.ae_weight * F.mse_loss(out["recon"], F.avg_pool2d(x, 2)))
        return (torch.stack(parts).sum(), *parts)

    def _regressor_objective(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`_regressor_terms`, on CUDA replayed from CUDA graphs from the second step on.

        The network's forward and the loss, and their backward, are captured once for the batch's shape
        (``torch.cuda.make_graphed_callables``): the host then launches two graphs a step instead of about a thousand
        kernels. The batch-norm statistics are put back after the capture's warm-up runs. With the network in
        evaluation mode, for other shapes, elsewhere, or when the capture failed, everything runs eagerly.
        """
        if self.graph_shape is None and not self.graph_error and self.cuda_graphs and self.device.type == "cuda" \
                and self.state.step >= 1:
            buffers = [b.detach().clone() for b in self.net.buffers()]
            objective = _Objective(self._regressor_terms, self.net)
            try:
                torch.cuda.make_graphed_callables(objective, (x, params), allow_unused_input=True)
                self.graph_shape, self._objective = tuple(x.shape), objective
            except Exception as e:  # noqa: BLE001 - whatever stops the capture, the training stays eager
                self.graph_error = f"{type(e).__name__}: {e}"
            with torch.no_grad():
                for b, saved in zip(self.net.buffers(), buffers, strict=True):
                    b.copy_(saved)
        if self.graph_shape == tuple(x.shape) and self.net.training:
            return self._objective(x, params)
        return self._regressor_terms(x, params)

    def fixed_batch_loss(self, x: torch.Tensor, params: torch.Tensor, drr: torch.Tensor) -> float:
        """Loss of a given batch (training-mode batch statistics, no update; for tests and diagnostics)."""
        saved = {k: v.clone() for k, v in self.net.state_dict().items()}
        with torch.no_grad():
            value = float(self.loss(x, params, drr, 1.0)[0])
        self.net.load_state_dict(saved)  # undo the batch-norm running-statistics update
        return value

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Mean rotation error (geodesic, degrees) and translation error (mm) on the validation set.

        For ``sopi-fine``: the errors after :attr:`TrainOptions.val_iterations` fine-registration steps.
        """
        if self.fine is not None:
            return self.fine.validate(self.net, self.options.val_iterations)
        self.net.eval()
        with torch.no_grad():
            pred = torch.cat([predict_params(self.net, xb, self.options.pose_range)
                              for xb in self.val_x.split(64)])
        self.net.train()
        rot = geodesic_deg(euler_xyz(pred[:, :3].double()), euler_xyz(self.val_params[:, :3].double()))
        trans = (pred[:, 3:] - self.val_params[:, 3:]).norm(dim=1)
        return {"rot_deg": float(rot.mean()), "trans_mm": float(trans.mean())}

    # -- training -----------------------------------------------------------------------------
    def step(self, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        """One optimisation step; returns the loss parts and ``loss``."""
        fraction = self.fraction()
        for g in self.optimizer.param_groups:
            g["lr"] = self.learning_rate(fraction)
        x, params, drr = self.batch(self.range_scale(fraction), rng, gen)
        loss, parts = self.loss(x, params, drr, fraction)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.optimizer.step()
        self.state.step += 1
        parts["loss"] = loss.detach()
        values = torch.stack([torch.as_tensor(v).to(loss.device, torch.float64)  # numbers or tensors: one wait
                              for v in parts.values()]).tolist()  # for the device per step
        return dict(zip(parts, values, strict=True))

    def run(self, out_path: str | Path, progress: Callable[[float, str], None] | None = None,
            should_stop: Callable[[], bool] | None = None, setup_s: float = 0.0, after_s: float = 0.0) -> dict:
        """Train until the options' limits (or ``should_stop()``), checkpointing to ``out_path``.

        The training time is the wall time of the whole run (``setup_s`` of preparation before it, validations and
        checkpoints included), added to that of the runs it resumes. With a time budget, no step starts that the
        slowest step so far, a validation, the final write and ``after_s`` (what the caller still needs once this
        returns) would carry past the budget: the run and the caller end within it.

        ``progress(fraction, message)`` is called after the first step, then at most every 0.5 s, and
        after the last step.

        Returns a summary: steps, training time, last loss, final validation errors, stopped early.
        """
        o = self.options
        rng = np.random.default_rng([o.seed, self.state.step])
        gen = torch.Generator(device=self.device).manual_seed(o.seed * 1_000_003 + self.state.step)
        clock = _Clock(self.state, setup_s, after_s)
        last_ckpt = last_report = time.perf_counter()
        reported = 0
        val = clock.timed("validation", self.validate)
        healthy = self._snapshot(val)
        loss_avg = None
        stopped = False
        while not self._finished(clock):
            if should_stop is not None and should_stop():
                stopped = True
                break
            parts = clock.timed("step", self.step, rng, gen)
            loss_avg = parts["loss"] if loss_avg is None else 0.9 * loss_avg + 0.1 * parts["loss"]
            done = self._finished(clock)
            if self.state.step % o.val_every == 0 or done:
                val = clock.timed("validation", self.validate)
                self.state.history.append([self.state.step, round(self.state.train_time_s, 3), loss_avg,
                                           val["rot_deg"], val["trans_mm"]])
                reason = self.collapsed(val)
                if reason is None:
                    healthy = self._snapshot(val)
                else:  # back to the last healthy validation's weights; give up after a few
                    self.state.collapses.append([self.state.step, reason])
                    self.net.load_state_dict(healthy[0])
                    self.optimizer.load_state_dict(healthy[1])
                    val = healthy[2]
                    if progress is not None:
                        progress(self.fraction(), f"step {self.state.step}: {reason}; back to the weights of step "
                                                  f"{healthy[3]}")
                    if len(self.state.collapses) >= MAX_COLLAPSES:
                        stopped = True
                        break
                    done = self._finished(clock)
            if progress is not None and (done or reported == 0 or time.perf_counter() - last_report >= 0.5):
                last_report = time.perf_counter()
                reported += 1
                scale = 100 * self.range_scale(self.fraction())
                progress(self.fraction(), f"step {self.state.step} loss {loss_avg:.4f} val {val['rot_deg']:.2f} deg "
                                          f"{val['trans_mm']:.1f} mm range {scale:.0f}%")
            if time.perf_counter() - last_ckpt >= o.checkpoint_every_s and not done:
                clock.timed("write", self.save, out_path, complete=False)
                last_ckpt = time.perf_counter()
        complete = not stopped and self.state.step > 0 and self._finished(clock)
        clock.timed("write", self.save, out_path, complete=complete)
        return {"steps": self.state.step, "train_time_s": self.state.train_time_s, "loss": loss_avg,
                "val_rot_deg": val["rot_deg"], "val_trans_mm": val["trans_mm"], "stopped": stopped,
                "collapses": list(self.state.collapses)}

    def collapsed(self, val: dict[str, float]) -> str | None:
        """Why the network, as validated (``val``, from :meth:`validate`), is unusable; ``None`` if it is not.

        A training whose network collapses (e.g. outputs that no longer depend on the input) goes back to the
        last healthy validation's weights. This network kind has no such check.
        """
        return None

    def _snapshot(self, val: dict[str, float]) -> tuple[dict, dict, dict[str, float], int]:
        """A state to go back to: copies of the weights and the optimiser state, their validation ``val``, the step."""
        return (copy.deepcopy(self.net.state_dict()), copy.deepcopy(self.optimizer.state_dict()), val,
                self.state.step)

    def _finished(self, clock: _Clock) -> bool:
        """True once the step limit is reached or the next step could not end, validated and written, in time."""
        budget = self.options.time_budget_s
        if budget is not None and self.state.train_time_s + clock.reserve() > budget:
            return True
        return self.fraction() >= 1.0

    def model_dict(self, complete: bool) -> dict:
        """The model file's dictionary."""
        return {
            "format": FILE_FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
            "method": self.options.method, "options": self.options.to_dict(),
            "network": self.net.config.to_dict(), "ct": self.ct_info, "geometry": self.camera.to_dict(),
            "reference": self.reference.to_dict(), "pose_range": self.options.pose_range.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "step": self.state.step,
            "train_time_s": self.state.train_time_s, "history": self.state.history, "complete": complete,
            "collapses": self.state.collapses,
        }

    def save(self, path: str | Path, complete: bool = False) -> None:
        """Write the model file atomically (``files.write_text_atomic``: a temporary file, then a rename)."""
        buffer = io.BytesIO()
        torch.save(self.model_dict(complete), buffer)
        write_text_atomic(buffer.getvalue(), path)

    def restore(self, d: dict) -> None:
        """Continue from a model file's dictionary (weights, optimiser, step counter, history)."""
        self.net.load_state_dict(d["state_dict"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.state = TrainState(int(d["step"]), float(d["train_time_s"]), list(d["history"]),
                                list(d.get("collapses", [])))


def read_model_file(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Read a model file's dictionary, raising :class:`InputError` naming the file on any problem."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: model file not found")
    try:
        d = torch.load(p, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem means the file is not a model
        raise InputError(f"{p}: not an initialiser model file ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != FILE_FORMAT:
        raise InputError(f"{p}: not an initialiser model file (no '{FILE_FORMAT}' format tag)")
    version = d.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(f"{p}: model file is damaged ('format_version' is {version!r}, not an integer)")
    if version > FORMAT_VERSION:
        raise InputError(f"{p}: model file format {d['format_version']} is newer than this library reads "
                         f"({FORMAT_VERSION}); update xrayctreg")
    check_model_dict(d, p)
    return d


MODEL_KEYS = ("method", "options", "network", "ct", "geometry", "reference", "pose_range", "state_dict",
              "optimizer", "step", "train_time_s", "history")
"""Keys every model file holds besides its format tag."""


def check_model_dict(d: dict, path: Path) -> None:
    """Raise :class:`InputError` naming ``path`` unless the model dictionary is complete and consistent.

    Builds every part (options, geometry, reference view, the network with its weights) the way
    :func:`load_initialiser` and ``train(resume=True)`` do, so damage shows here as one sentence.
    """
    missing = [k for k in MODEL_KEYS if k not in d]
    if missing:
        raise InputError(f"{path}: model file is incomplete (no {', '.join(missing)})")
    try:
        options = TrainOptions.from_dict(d["options"])
        if d["method"] != options.method:
            raise ValueError(f"method {d['method']!r} differs from its options' {options.method!r}")
        Camera.from_dict(d["geometry"], "geometry")
        ReferenceView.from_dict(d["reference"])
        if not isinstance(d["ct"]["sha256"], str) or len(d["ct"]["shape_ijk"]) != 3:
            raise ValueError("bad CT record")
        int(d["step"]), float(d["train_time_s"]), list(d["history"])
        if not isinstance(d["optimizer"], dict) or not {"state", "param_groups"} <= d["optimizer"].keys():
            raise ValueError("optimizer state lacks 'state' or 'param_groups'")
        if options.method not in REFINER_MODELS:  # a refinement model's own loader builds its network
            net = build_network(options)
            net.load_state_dict(d["state_dict"])
            torch.optim.AdamW(net.parameters()).load_state_dict(d["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, InputError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, KeyError):
            reason = f"no {e}"
        raise InputError(f"{path}: model file is damaged or does not match its network ({reason[:200]})") from None


def check_ct_match(d: dict, ct_hu: Volume, model_name: str, ct_name: str = "the CT") -> None:
    """Raise :class:`InputError` unless the model dictionary ``d`` was trained on ``ct_hu``."""
    digest = ct_hash(ct_hu)
    if digest != d["ct"]["sha256"]:
        raise InputError(f"{model_name}: model was trained on another CT ({d['ct'].get('source') or 'unnamed'}, "
                         f"{'x'.join(map(str, d['ct']['shape_ijk']))} voxels, hash {d['ct']['sha256'][:12]}), "
                         f"not on {ct_name} ({'x'.join(map(str, ct_hu.shape_ijk))} voxels, hash {digest[:12]}); "
                         f"train one for this CT with 'xrayctreg train'")


def check_camera_match(d: dict, camera: Camera, model_name: str) -> None:
    """Raise :class:`InputError` unless ``camera`` equals the geometry the model was trained for."""
    trained = Camera.from_dict(d["geometry"], model_name).to_dict()
    given = camera.to_dict()
    same = all(math.isclose(float(trained[k]), float(given[k]), rel_tol=1e-6, abs_tol=1e-6) for k in given)
    if not same:
        def show(g: dict) -> str:
            return (f"sdd {g['sdd']:g} mm, {g['rows']}x{g['cols']} px of {g['row_spacing']:g}x{g['col_spacing']:g} mm, "
                    f"offset ({g['x0']:g}, {g['y0']:g}) mm")
        raise InputError(f"{model_name}: model was trained for another detector geometry ({show(trained)}), "
                         f"not this X-ray's ({show(given)}); train one for this geometry with 'xrayctreg train'")


def write_training_inputs(ct_hu: Volume, camera: Camera, folder: str | Path) -> tuple[str, str]:
    """Write a CT (HU, ``ct.nrrd``) and a detector geometry (``geometry.json``) into ``folder`` for ``train``.

    The folder is created when needed; both files appear together or not at all (``files.Outputs``).
    Returns ``(ct_path, geometry_path)``.
    """
    from .volume import write_volume

    p = Path(folder)
    if str(folder) == "" or (p.exists() and not p.is_dir()):
        raise InputError(f"{folder}: training folder: {'empty path' if str(folder) == '' else 'not a folder'}")
    p.mkdir(parents=True, exist_ok=True)
    ct_path, geometry_path = p / "ct.nrrd", p / "geometry.json"
    with Outputs() as out:
        write_volume(ct_hu, out.file(ct_path, "training CT", (".nrrd",)))
        camera.save(out.file(geometry_path, "training geometry"))
    return str(ct_path), str(geometry_path)


def train(ct_hu: Volume, camera: Camera, out_path: str | Path, options: TrainOptions | None = None, *,
          reference: ReferenceView | None = None, resume: bool = False, device: str | torch.device = "cpu",
          ct_source: str = "", progress: Callable[[float, str], None] | None = None,
          should_stop: Callable[[], bool] | None = None, trainer_factory: Callable[..., Trainer] | None = None,
          started: float | None = None, after_s: float = 0.0) -> dict:
    """Train an initialiser on ``ct_hu`` for ``camera`` and write the model file ``out_path``.

    With ``resume`` and an existing ``out_path``, training continues from it (same CT, geometry and
    method required; the new ``options``' limits apply to the total). ``trainer_factory`` builds the
    :class:`Trainer` from ``(ct_hu, camera, options, reference, device, ct_source)`` (default :class:`Trainer`;
    ``ppc_learned.make_trainer`` for ``method="ppc"``). ``started``: the ``time.perf_counter()`` value the time
    budget counts from (default: this call; the command line passes its own start); ``after_s``: seconds the
    caller still needs once this returns, kept free within the budget (the command line: the interpreter's start-up
    and shutdown). Returns :meth:`Trainer.run`'s summary.
    """
    t_call = time.perf_counter() if started is None else min(float(started), time.perf_counter())
    options = options or TrainOptions()
    out = Path(out_path)
    Outputs().check(out, "--out")
    previous = None
    if resume and out.exists():
        previous = read_model_file(out, device)
        check_ct_match(previous, ct_hu, str(out), ct_source or "the CT")
        check_camera_match(previous, camera, str(out))
        if previous["method"] != options.method:
            raise InputError(f"{out}: cannot resume a '{previous['method']}' model as '{options.method}'")
        saved = TrainOptions.from_dict(previous["options"])
        saved.iterations, saved.time_budget_s = options.iterations, options.time_budget_s
        options = saved
        reference = ReferenceView.from_dict(previous["reference"])
    trainer = (trainer_factory or Trainer)(ct_hu, camera, options, reference, device, ct_source)
    if previous is not None:
        trainer.restore(previous)
    return trainer.run(out, progress, should_stop, setup_s=time.perf_counter() - t_call, after_s=after_s)


@dataclass
class Initialiser:
    """A trained initialiser ready to predict poses (see :func:`load_initialiser`).

    Attributes:
        net: the network (evaluation mode).
        method: ``'regressor'`` or ``'rtpi'``.
        reference: the view the predicted parameters are relative to.
        camera: the detector geometry it was trained for.
        render: the resolutions of its training DRRs.
        pose_range: its training range.
        info: the model file's dictionary without the weights.
        name: where it was read from.
    """

    net: torch.nn.Module
    method: str
    reference: ReferenceView
    camera: Camera
    render: RenderSettings
    pose_range: PoseRange
    info: dict
    name: str = "model"

    def check_ct(self, ct_hu: Volume, ct_name: str = "the CT") -> None:
        """Raise :class:`InputError` unless the model was trained on ``ct_hu`` (HU voxels and geometry)."""
        check_ct_match(self.info, ct_hu, self.name, ct_name)

    def check_camera(self, camera: Camera) -> None:
        """Raise :class:`InputError` unless ``camera`` is the geometry the model was trained for."""
        check_camera_match(self.info, camera, self.name)

    def predict_params(self, image: np.ndarray) -> np.ndarray:
        """Pose parameters ``[6]`` (degrees, mm, relative to :attr:`reference`) for an X-ray ``[rows, cols]``."""
        if np.shape(image) != (self.camera.rows, self.camera.cols):
            raise InputError(f"{self.name}: X-ray is {np.shape(image)} pixels but the model's geometry is "
                             f"{self.camera.rows}x{self.camera.cols}")
        device = next(self.net.parameters()).device
        x = prepare_image(image, self.camera, self.render).to(device)
        with torch.no_grad():
            return predict_params(self.net, x, self.pose_range)[0].double().cpu().numpy()


def read_network(d: dict, device: str | torch.device = "cpu") -> tuple[TrainOptions, torch.nn.Module, dict]:
    """``(options, network in evaluation mode, info)`` of a model file's dictionary; ``info`` lacks the weights."""
    options = TrainOptions.from_dict(d["options"])
    net = build_network(options)
    net.load_state_dict(d["state_dict"])
    net.to(device).eval()
    return options, net, {k: v for k, v in d.items() if k not in ("state_dict", "optimizer")}


def load_initialiser(path: str | Path, device: str | torch.device = "cpu") -> Initialiser:
    """Read a model file written by :func:`train` (a finished or an interrupted one)."""
    d = read_model_file(path, device)
    if d["method"] not in INITIALISER_METHODS:
        raise InputError(f"{path}: a '{d['method']}' refinement model, not an initialiser; use it with "
                         f"'register --method {d['method']} --model {path}'")
    options, net, info = read_network(d, device)
    return Initialiser(net, d["method"], ReferenceView.from_dict(d["reference"]), Camera.from_dict(d["geometry"]),
                       options.render, options.pose_range, info, str(path))


def initialise(model: Initialiser, xray: np.ndarray, camera: Camera) -> np.ndarray:
    """Predict the initial ``world_from_camera`` (4x4) of an attenuation-bright X-ray ``[rows, cols]``.

    Raises:
        InputError: ``camera`` is not the geometry the model was trained for, or the image size differs.
    """
    model.check_camera(camera)
    return model.reference.pose(model.predict_params(xray))
