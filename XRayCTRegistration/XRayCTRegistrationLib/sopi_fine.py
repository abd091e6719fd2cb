"""SOPI stage 2: fine registration on learned embedded features, and its double-backward training.

Seeds ``000_15f6fb30a4307072`` / ``001_72b32c0a91e9331e`` (SOPI), section 2.3 onwards.

**Similarity.** The X-ray ``I_f`` and the DRR ``I_m`` at the current pose parameters ``theta``
(degrees, mm, relative to a :class:`geometry.ReferenceView`) are each embedded by a composite
encoder (:class:`networks.composite.FineNet`, weights not shared) into ``e_f``, ``e_m``
``[B, C, H, W]``. The distance (SOPI eq. 6) is

    ``L_N = sum_hw M'_hw * ||e_m[:, h, w] - e_f[:, h, w]||_2 / sum_hw M'_hw``

where ``M'`` is the projection of the CT's bone mask (voxels above :data:`MASK_HU`) at ``theta``,
downsampled to ``H x W`` (a pixel counts when any of its rays crosses bone); an image whose mask
is empty uses every pixel. The mask is held constant (no gradient flows through it).

**Registration** (:func:`iterate`): the network is fixed; ``theta`` descends ``L_N`` through the
differentiable projector. The network is trained to point the pose gradient the right way (eq. 7),
neither to size it nor to make the value of ``L_N`` fall towards the truth: on the sample CTs ``L_N``
at the true pose is often higher than at the start (`benchmarks/results/sopi.md`). So the walk
trusts the learned direction and never judges a step by the value of ``L_N``: each step moves the
rotation and the translation by their own step lengths along the normalised gradient directions;
a step length halves when its direction reverses and grows by 10 % otherwise, and the iteration
stops when both step lengths are below their minimum (the stopping rule on update size) or at
``max_iterations``. As SOPI does, the rotation can be frozen after some iterations while the
translation goes on.

**Depth.** With SOPI's two encoders the translation along the viewing axis (``tz``, the depth) is
held: at 48-pixel inputs (12-pixel embeddings) such a network did not learn the depth,
whose effect is a magnification change well under an input pixel (its depth component was 5-7 % of
the translation gradient against 52-57 % for the teacher on the abdomen and spine CTs, and its sign
agreed with the teacher's in 40-60 % of the starts on all three sample CTs); the intensity step of
``sopi-fine-opt`` sets the depth.
With one shared encoder (:class:`networks.composite.CompositeConfig` ``shared``) ``L_N`` is zero
where the DRR is the X-ray, the learned field has its sink at the true pose, and the depth is
walked as well (:attr:`IterationSettings.hold_depth` chooses); at 96-pixel inputs
(:data:`training.FINE_RENDER`) the mean translation error after RTPI + sopi-fine, mostly depth, was
1.3-2.7 mm on the three sample CTs (`benchmarks/results/sopi.md`). What moves the sink in depth is the
X-ray's detector blur, which the DRR lacks: with the benchmark's 1-pixel blur the minimum of ``L_N`` along
the depth lies a median +1.0 mm (chest) and +3.5 mm (abdomen) from the truth, without it at the truth
(`benchmarks/results/sopi_depth.md`).

**Training** (:class:`FineObjective`, used by :class:`training.Trainer` for ``method='sopi-fine'``):
ProST's double backward. For a target pose ``theta_t`` (a DRR of the CT, augmented as the
initialisers' training data is) and a start ``theta = theta_t + offset``, the first backward pass
gives ``V = dL_N/dtheta = (V_r, V_t)`` with ``create_graph=True``; the pose geodesic gradient
``V' = dL_G(theta, theta_t)/dtheta`` (``L_G = 3 - tr(R^T R_t) + |t - t_t|^2``, which points away
from the target along the rotation geodesic and the straight translation) is the teacher; the
second backward trains the network on SOPI eq. 7,

    ``L = || V'_r/|V'_r| - V_r/|V_r| || + || V'_t/|V'_t| - V_t/|V_t| ||``.

The first backward must itself be differentiable with respect to the network. Two paths give
the same numbers (``Testing/test_sopi_fine.py`` checks that their network gradients agree):

- ``path="torch"``: the moving DRR is rendered by the projector's **torch backend**
  (``grid_sample``, whose pose gradient is built of differentiable operations) and autograd runs
  ``create_graph=True`` through it, as ProST does. On CUDA this is the path taken.
- ``path="jacobian"`` (the CPU default): the pose gradient is ``V = J^T u`` with ``J = dI/dtheta``
  the DRR's Jacobian (``[B, pixels, 6]``, from the numba kernels by
  :meth:`projector.Projector.pose_jacobian` and the chain rule through the pose) and
  ``u = dL_N/dI`` the image gradient. ``J`` does not depend on the network, so ``dV/dweights =
  J^T du/dweights``: only ``u`` needs ``create_graph=True``, and the projector is never
  differentiated twice. The numba backend's own autograd pose gradient could not serve here: it
  is a hand-written Jacobian kernel behind ``once_differentiable``, which cannot be differentiated
  again. On this CPU the Jacobian path is several times faster than double backward through
  ``grid_sample`` (which dominates the torch path's time).

Registration (first derivatives only) renders with the projector's automatic backend (numba on
the CPU), the renderer the training DRRs came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .geometry import Camera, ReferenceView, euler_xyz
from .networks.composite import FineNet
from .networks.rotations import geodesic_deg
from .projector import Projector
from .training_data import RenderSettings, low_res_camera, low_res_samples, low_res_volume, to_input
from .volume import Volume, hu_to_mu

MASK_HU = 150.0
"""Voxels above this (HU) form the CT's mask (bone), projected to weight the embedded distance."""

_EPS = 1e-8


class FineScene:
    """One CT seen through one (downsampled) detector: the differentiable DRRs and the projected mask.

    Args:
        volume: the attenuation volume (1/mm) at training resolution (:func:`training_data.low_res_volume`).
        low_camera: the downsampled detector (:func:`training_data.low_res_camera`).
        reference: the view pose parameters are relative to.
        settings: the render settings (input size, ray step).
        device: torch device.
    """

    def __init__(self, volume: Volume, low_camera: Camera, reference: ReferenceView, settings: RenderSettings,
                 device: str | torch.device = "cpu") -> None:
        """Build the torch-backend projector of the CT and a projector of its mask."""
        self.reference = reference
        self.settings = settings
        self.device = torch.device(device)
        n = low_res_samples(volume, settings)
        self.volume, self.low_camera, self.n_samples = volume, low_camera, n
        self.projector = Projector(volume, low_camera, n_samples=n, device=self.device)
        self._torch_projector: Projector | None = None
        threshold = float(hu_to_mu(np.asarray(MASK_HU)))
        mask = Volume((volume.data > threshold).astype(np.float32), volume.ijk_to_ras)
        self.mask_projector = Projector(mask, low_camera, n_samples=n, device=self.device)

    @classmethod
    def from_mu(cls, volume_mu: Volume, camera: Camera, reference: ReferenceView, settings: RenderSettings,
                device: str | torch.device = "cpu") -> FineScene:
        """The scene of a full-resolution attenuation volume and detector, downsampled as the training data are."""
        return cls(low_res_volume(volume_mu, settings), low_res_camera(camera, settings.detector_size), reference,
                   settings, device)

    def poses(self, params: torch.Tensor) -> torch.Tensor:
        """``world_from_camera`` ``[B, 4, 4]`` of parameters ``[B, 6]`` (float64, differentiable)."""
        return self.reference.pose_torch(params.to(self.device, torch.float64))

    def torch_projector(self) -> Projector:
        """The projector's torch backend (twice differentiable in the pose), made on first use."""
        if self._torch_projector is None:
            self._torch_projector = Projector(self.volume, self.low_camera, n_samples=self.n_samples,
                                              device=self.device, backend="torch")
        return self._torch_projector

    def moving(self, params: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Network inputs ``[B, 1, S, S]`` of the DRRs at ``params`` ``[B, 6]``; differentiable in ``params``.

        ``backend="torch"`` renders with :meth:`torch_projector` (differentiable twice).
        """
        proj = self.torch_projector() if backend == "torch" else self.projector
        return to_input(proj(self.poses(params)), self.settings.input_size)

    def render_with_jacobian(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DRRs ``[B, rows, cols]`` at ``params`` ``[B, 6]`` and their Jacobian ``dI/dparams`` ``[B, rows * cols, 6]``.

        The pose part comes from :meth:`projector.Projector.pose_jacobian` (numba, CPU), chained with
        ``d world_from_camera / d params`` of the reference view (float64).
        """
        p = params.detach().to(torch.float64)
        # world_from_camera[b] depends on params[b] only: the Jacobian of the batch sum holds every block
        d_w = torch.autograd.functional.jacobian(lambda q: self.poses(q).sum(0), p)  # [4, 4, B, 6]
        images, d_img = self.projector.pose_jacobian(self.poses(p))  # [B, r, c], [B, r, c, 4, 4]
        b = p.shape[0]
        jac = torch.einsum("brpq,pqbk->brk", d_img.reshape(b, -1, 4, 4), d_w)
        return images, jac

    def mask(self, params: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The projected CT mask at ``params``, ``[B, 1, *size]`` in {0, 1} (all ones where it is empty)."""
        with torch.no_grad():
            proj = self.mask_projector(self.poses(params.detach()))  # [B, rows, cols]
            m = (F.adaptive_avg_pool2d((proj > 0).float()[:, None], size) > 0).float()
            empty = m.sum((1, 2, 3), keepdim=True) == 0
            return torch.where(empty, torch.ones_like(m), m)


def embedded_distance(e_m: torch.Tensor, e_f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SOPI eq. 6: mask-weighted mean over pixels of the channel-wise L2 distance; ``[B]``.

    ``e_m``, ``e_f``: ``[B, C, H, W]``; ``mask``: ``[B, 1, H, W]`` or None (every pixel).
    """
    d = ((e_m - e_f) ** 2).sum(1, keepdim=True).add(_EPS).sqrt()  # [B, 1, H, W]
    if mask is None:
        return d.mean((1, 2, 3))
    return (mask * d).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp(min=1.0)


PATHS = ("auto", "jacobian", "torch")
"""How :func:`pose_gradient` differentiates through the projector (see the module docstring)."""


def pose_gradient(net: FineNet, scene: FineScene, params: torch.Tensor, e_f: torch.Tensor, *,
                  use_mask: bool = True, create_graph: bool = False, path: str = "auto"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_N [B], dL_N/dparams [B, 6])`` at ``params`` ``[B, 6]`` (float64) for fixed embeddings ``e_f``.

    With ``create_graph`` the gradient is itself differentiable with respect to the network (the
    first backward pass of the double backward). ``path``: ``"jacobian"`` (``J^T u``, numba, CPU) or
    ``"torch"`` (autograd through the torch backend); ``"auto"``: with ``create_graph`` the Jacobian
    path on the CPU and the torch path elsewhere, without it plain autograd through the scene's projector.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "auto" and create_graph:
        path = "jacobian" if scene.projector.active_backend() == "numba" else "torch"
    if path == "jacobian":
        return _pose_gradient_jacobian(net, scene, params, e_f, use_mask, create_graph)
    p = params if params.requires_grad else params.detach().requires_grad_()
    e_m = net.encode_moving(scene.moving(p, backend="torch" if path == "torch" else "auto"))
    mask = scene.mask(p, tuple(e_m.shape[-2:])) if use_mask else None
    loss = embedded_distance(e_m, e_f, mask)
    (grad,) = torch.autograd.grad(loss.sum(), p, create_graph=create_graph)
    return loss, grad


def _pose_gradient_jacobian(net: FineNet, scene: FineScene, params: torch.Tensor, e_f: torch.Tensor,
                            use_mask: bool, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pose_gradient` as ``J^T u``: the DRR Jacobian ``J`` times the image gradient ``u = dL_N/dI``."""
    images, jac = scene.render_with_jacobian(params)
    img = images.to(scene.device).requires_grad_()
    e_m = net.encode_moving(to_input(img, scene.settings.input_size))
    mask = scene.mask(params, tuple(e_m.shape[-2:])) if use_mask else None
    loss = embedded_distance(e_m, e_f, mask)
    (u,) = torch.autograd.grad(loss.sum(), img, create_graph=create_graph)
    grad = torch.einsum("brk,br->bk", jac.to(u.device), u.reshape(u.shape[0], -1).double())
    return loss, grad


def geodesic_gradient(params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``dL_G/dparams`` ``[B, 6]`` with ``L_G = 3 - tr(R(params)^T R(target)) + |t - t_target|^2`` (float64).

    Rotations ``R`` are :func:`geometry.euler_xyz` of the angles (degrees); the gradient points away
    from the target: along the rotation geodesic (``3 - tr`` grows with the angle between the
    rotations) and the straight line between the translations.
    """
    p = params.detach().double().requires_grad_()
    t = target.detach().double()
    rel = euler_xyz(p[:, :3]).transpose(-1, -2) @ euler_xyz(t[:, :3])
    loss = (3 - rel.diagonal(dim1=-2, dim2=-1).sum(-1)) + ((p[:, 3:] - t[:, 3:]) ** 2).sum(-1)
    (grad,) = torch.autograd.grad(loss.sum(), p)
    return grad


def unit(v: torch.Tensor) -> torch.Tensor:
    """Rows of ``v`` divided by their L2 norm (zero rows stay zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp(min=_EPS)


def direction_loss(grad_net: torch.Tensor, grad_geo: torch.Tensor) -> torch.Tensor:
    """SOPI eq. 7 per sample ``[B]``: distances between the normalised rotation and translation parts."""
    rot = (unit(grad_geo[:, :3]) - unit(grad_net[:, :3])).norm(dim=-1)
    trans = (unit(grad_geo[:, 3:]) - unit(grad_net[:, 3:])).norm(dim=-1)
    return rot + trans


@dataclass
class IterationSettings:
    """The fine registration's steps and stopping rule.

    Attributes:
        max_iterations: most pose updates.
        rot_step_deg, trans_step_mm: first step lengths of the rotation (degrees) and the translation (mm).
        min_rot_step_deg, min_trans_step_mm: converged when both step lengths are below these.
        max_rot_step_deg, max_trans_step_mm: step lengths never grow past these.
        growth: factor of a step length whose direction did not reverse.
        freeze_rotation_after: keep the rotation fixed after this many iterations (None: never).
        hold_depth: keep ``tz`` (the translation along the reference view's axis) fixed; None: for
            a network of two encoders, not for one shared encoder (see the module docstring).
        time_budget_s: stop after this many seconds (None: no limit).
    """

    max_iterations: int = 80
    rot_step_deg: float = 1.5
    trans_step_mm: float = 4.0
    min_rot_step_deg: float = 0.05
    min_trans_step_mm: float = 0.1
    max_rot_step_deg: float = 3.0
    max_trans_step_mm: float = 8.0
    growth: float = 1.1
    freeze_rotation_after: int | None = None
    hold_depth: bool | None = None
    time_budget_s: float | None = None


@dataclass
class IterationResult:
    """What :func:`iterate` found.

    ``params`` ``[B, 6]`` (float64, degrees and mm; the last pose evaluated), ``loss`` ``[B]`` (``L_N``
    there), ``initial_loss`` ``[B]``, ``iterations`` done, ``converged`` ``[B]`` (bool) and a one-line ``message``.
    """

    params: torch.Tensor
    loss: torch.Tensor
    initial_loss: torch.Tensor
    iterations: int
    converged: torch.Tensor
    message: str


class _Walk:
    """Per-case state of :func:`iterate`: the current pose, the last directions and the step lengths."""

    def __init__(self, start: torch.Tensor, s: IterationSettings, hold_depth: bool) -> None:
        n = start.shape[0]
        self.s = s
        self.hold_depth = hold_depth
        self.pose = start.clone()
        self.d_r = torch.zeros(n, 3, dtype=torch.float64, device=start.device)
        self.d_t = torch.zeros_like(self.d_r)
        self.step_r = torch.full((n,), s.rot_step_deg, dtype=torch.float64, device=start.device)
        self.step_t = torch.full((n,), s.trans_step_mm, dtype=torch.float64, device=start.device)

    def update(self, grad: torch.Tensor, first: bool) -> None:
        """Take the descent directions of ``grad`` ``[B, 6]``; halve a step whose direction reversed, else grow it."""
        grad = grad.detach().double()
        if self.hold_depth:
            grad = torch.cat([grad[:, :5], torch.zeros_like(grad[:, 5:])], 1)
        d_r, d_t = unit(grad[:, :3]), unit(grad[:, 3:])
        if not first:
            self.step_r = torch.where((d_r * self.d_r).sum(-1) < 0, 0.5 * self.step_r,
                                      (self.s.growth * self.step_r).clamp(max=self.s.max_rot_step_deg))
            self.step_t = torch.where((d_t * self.d_t).sum(-1) < 0, 0.5 * self.step_t,
                                      (self.s.growth * self.step_t).clamp(max=self.s.max_trans_step_mm))
        self.d_r, self.d_t = d_r, d_t

    def next_pose(self, rotation_frozen: bool) -> tuple[torch.Tensor, bool]:
        """The next pose and whether any case still moves (a step below its minimum is not taken)."""
        move_r = torch.where(self.step_r >= self.s.min_rot_step_deg, self.step_r, 0.0)
        move_r = move_r * (0.0 if rotation_frozen else 1.0)
        move_t = torch.where(self.step_t >= self.s.min_trans_step_mm, self.step_t, 0.0)
        moving = bool(((move_r > 0) | (move_t > 0)).any())
        return self.pose - torch.cat([move_r[:, None] * self.d_r, move_t[:, None] * self.d_t], 1), moving


def iterate(net: FineNet, scene: FineScene, fixed: torch.Tensor, start: torch.Tensor,
            settings: IterationSettings | None = None, *, use_mask: bool = True,
            progress: Callable[[float, str], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> IterationResult:
    """Descend ``L_N`` from ``start`` ``[B, 6]`` (degrees, mm) for X-ray inputs ``fixed`` ``[B, 1, S, S]``.

    Each iteration evaluates the pose gradient of ``L_N`` and moves the rotation and the translation
    by their step lengths along its normalised directions (``tz`` held with
    :attr:`IterationSettings.hold_depth`); a step length halves when its direction reversed and grows
    otherwise (up to the maximum). The value of ``L_N`` is reported, never used to accept or drop a
    step (see the module docstring). Every case of the batch has its own steps and stops on its own
    (once both are below their minimum). The network should be in evaluation mode.
    """
    s = settings or IterationSettings()
    if s.max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {s.max_iterations}")
    t0 = time.perf_counter()
    with torch.no_grad():
        e_f = net.encode_fixed(fixed)
    hold = s.hold_depth if s.hold_depth is not None else not getattr(getattr(net, "config", None), "shared", False)
    walk = _Walk(start.detach().to(scene.device, torch.float64), s, hold)
    initial = None
    message, it = f"stopped after {s.max_iterations} iterations", 0
    for it in range(1, s.max_iterations + 1):
        params = walk.pose
        loss, grad = pose_gradient(net, scene, params, e_f, use_mask=use_mask)
        loss = loss.detach().double()
        initial = loss if initial is None else initial
        walk.update(grad, first=it == 1)
        next_pose, moving = walk.next_pose(s.freeze_rotation_after is not None and it > s.freeze_rotation_after)
        if progress is not None:
            progress(it / s.max_iterations, f"iteration {it}: L_N {float(loss.mean()):.4f}")
        if not moving:
            message = f"converged after {it} iterations (updates below {s.min_rot_step_deg} deg, " \
                      f"{s.min_trans_step_mm} mm)"
            break
        walk.pose = next_pose
        if should_stop is not None and should_stop():
            message = f"stopped on request after {it} iterations"
            break
        if s.time_budget_s is not None and time.perf_counter() - t0 > s.time_budget_s:
            message = f"stopped at the time budget ({s.time_budget_s:g} s) after {it} iterations"
            break
    frozen = s.freeze_rotation_after is not None and it > s.freeze_rotation_after
    converged = ((walk.step_r < s.min_rot_step_deg) | frozen) & (walk.step_t < s.min_trans_step_mm)
    return IterationResult(params, loss, initial, it, converged, message)


@dataclass
class FineOffsets:
    """Start offsets of the training pairs: ``theta = theta_t + s * N(0, sigma)`` per parameter.

    Attributes:
        rot_deg: standard deviation of each rotation offset, degrees.
        trans_mm: standard deviation of each translation offset, mm.
        min_scale, max_scale: ``s`` is uniform in this range per pair (small offsets teach the
            directions near the optimum, large ones the capture range).
        near_fraction: the share of pairs whose ``s`` is instead uniform in ``near_scale``: starts about a
            millimetre from the target, where the field's sink is placed.
        near_scale: the range of ``s`` of those pairs.
        depth_fraction: the share of pairs whose start is off in depth (``tz``) alone, the other five
            offsets scaled by ``depth_others`` (the normalised translation direction of the others is mostly
            in plane, where the image moves five to ten times more per mm).
        depth_others: the scale of the other offsets of those pairs.

    Neither kind of pair moved the sink of ``L_N`` in depth on X-rays blurred as the benchmark's (1-3.5 mm
    off; on the abdomen CT +3.5 mm with 30 % near pairs, +3.0 mm with 30 % depth pairs, trained 9 minutes:
    ``benchmarks/results/sopi_depth.md``); both are off by default.
    """

    rot_deg: float = 5.0
    trans_mm: float = 10.0
    min_scale: float = 0.1
    max_scale: float = 1.5
    near_fraction: float = 0.0
    near_scale: tuple[float, float] = (0.02, 0.2)
    depth_fraction: float = 0.0
    depth_others: float = 0.05

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` offsets ``[n, 6]`` (degrees, mm)."""
        sigma = np.array([self.rot_deg] * 3 + [self.trans_mm] * 3)
        scale = rng.uniform(self.min_scale, self.max_scale, size=(n, 1))
        if self.near_fraction > 0:
            near = rng.uniform(size=(n, 1)) < self.near_fraction
            scale = np.where(near, rng.uniform(*self.near_scale, size=(n, 1)), scale)
        offsets = scale * rng.normal(size=(n, 6)) * sigma
        if self.depth_fraction > 0:
            depth = rng.uniform(size=(n, 1)) < self.depth_fraction
            offsets[:, :5] *= np.where(depth, self.depth_others, 1.0)
        return offsets


class FineObjective:
    """The double-backward training loss and the validation of the fine-registration network.

    Args:
        scene: the CT at training resolution (its reference is the model's).
        offsets: how far the training starts are from their targets.
        use_mask: weight ``L_N`` by the projected CT mask (False: the ablation without it).
        seed: random seed of the offsets (the step number is mixed in, so resumed runs continue the sequence).
    """

    def __init__(self, scene: FineScene, offsets: FineOffsets, use_mask: bool = True, seed: int = 0) -> None:
        """Keep the settings; the validation set is made by :meth:`make_validation`."""
        self.scene = scene
        self.offsets = offsets
        self.use_mask = use_mask
        self.seed = seed
        self.val_fixed: torch.Tensor | None = None
        self.val_start: torch.Tensor | None = None
        self.val_target: torch.Tensor | None = None

    def loss(self, net: FineNet, fixed: torch.Tensor, target: torch.Tensor, step: int, scale: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """SOPI eq. 7 averaged over a batch: X-ray-like inputs ``fixed`` ``[B, 1, S, S]`` of targets ``[B, 6]``.

        The start offsets are a function of ``step`` (and the seed), times ``scale`` (the trainer's
        incremental range). Gradients are on even inside ``torch.no_grad()``: the loss is made of a
        pose gradient.
        """
        with torch.enable_grad():
            return self._loss(net, fixed, target, step, scale)

    def _loss(self, net: FineNet, fixed: torch.Tensor, target: torch.Tensor, step: int, scale: float
              ) -> tuple[torch.Tensor, dict[str, float]]:
        rng = np.random.default_rng([self.seed, 7, step])
        t = target.detach().to(self.scene.device, torch.float64)
        start = t + scale * torch.as_tensor(self.offsets.sample(rng, t.shape[0]), device=t.device)
        start.requires_grad_()
        e_f = net.encode_fixed(fixed)
        l_n, grad = pose_gradient(net, self.scene, start, e_f, use_mask=self.use_mask, create_graph=True)
        teacher = geodesic_gradient(start, t)
        loss = direction_loss(grad, teacher).mean()
        cos_r = F.cosine_similarity(grad[:, :3], teacher[:, :3], dim=-1).mean()
        cos_t = F.cosine_similarity(grad[:, 3:], teacher[:, 3:], dim=-1).mean()
        return loss.float(), {"direction": float(loss.detach()), "l_n": float(l_n.detach().mean()),
                              "cos_rot": float(cos_r.detach()), "cos_trans": float(cos_t.detach())}

    def make_validation(self, fixed: torch.Tensor, target: torch.Tensor, n: int) -> None:
        """Keep ``n`` validation cases: inputs ``fixed`` ``[N, 1, S, S]`` of targets ``[N, 6]``, fixed starts."""
        rng = np.random.default_rng([self.seed, 10_007])
        k = min(n, fixed.shape[0])
        self.val_fixed, self.val_target = fixed[:k], target[:k].double()
        scale = self.offsets.max_scale
        offsets = FineOffsets(self.offsets.rot_deg, self.offsets.trans_mm, 0.5 * scale, scale).sample(rng, k)
        self.val_start = self.val_target + torch.as_tensor(offsets, device=self.val_target.device)

    def validate(self, net: FineNet, iterations: int = 15) -> dict[str, float]:
        """Mean rotation (geodesic, degrees) and translation (mm) errors after ``iterations`` fine steps."""
        was_training = net.training
        net.eval()
        out = iterate(net, self.scene, self.val_fixed, self.val_start, IterationSettings(max_iterations=iterations),
                      use_mask=self.use_mask)
        net.train(was_training)
        rot = geodesic_deg(euler_xyz(out.params[:, :3]), euler_xyz(self.val_target[:, :3]))
        trans = (out.params[:, 3:] - self.val_target[:, 3:]).norm(dim=1)
        return {"rot_deg": float(rot.mean()), "trans_mm": float(trans.mean())}
