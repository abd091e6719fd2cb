"""Physics-based, differentiable DRR: materials, a polychromatic spectrum, scatter, blur and noise.

The model, per detector pixel (units in :mod:`.spectrum`):

1. **Paths**: ``p_m`` = the line integral of material ``m``'s partial density (g/cm^3) along the
   ray from the source to the pixel (mm), a DRR of each material of a :class:`materials.MaterialVolumes`
   (same camera, rays and sampling as :class:`projector.Projector`; backends below).
2. **Primary intensity** (flat-field normalised, 1 in air):
   ``I_p = sum_E w(E) exp(-sum_m (mu/rho)_m(E) p_m * 0.1)``, ``w(E) = S(E) eta(E) / sum_E S eta`` with
   ``S`` the tube's photon fluence (:class:`spectrum.TubeSpectrum`) and ``eta`` the detector response
   (:class:`spectrum.Detector`); the sum runs over ``n_bins`` energy bins (:func:`spectrum.energy_bins`).
3. **Scatter fog**: ``I = I_p + f * G_s * I_p`` with ``G_s`` a Gaussian low-pass of ``scatter_sigma_mm``
   (mm at the detector) and ``f`` the scatter-to-primary ratio in air-free regions (``scatter_fraction``).
4. **Detector blur**: Gaussian point spread of ``blur_px`` pixels on ``I``.
5. **Log image**: ``-log(I / (1 + f))``: the flat-field corrected, log-converted image a detector chain
   gives, attenuation-bright like a DRR (0 in air).
6. **Noise** (:meth:`PhysicsProjector.simulate` only): counts ``N ~ Poisson(N0 I / (1 + f))`` plus
   Gaussian electronic noise of ``electronic_std`` counts, then ``-log(max(N, 0.5) / N0)``.

Steps 1-5 are differentiable with respect to the pose on both projector backends (numba and
torch) and with respect to the tube voltage (:attr:`PhysicsProjector.kvp`; set
``requires_grad_()``; the energy bins are fixed at construction, so lowering the kVp is exact and
raising it above the construction value drops the energies above it).

Two backends compute the same model:

- **numba** (the CPU default, :func:`_raymarch.march_pair`): the materials are stored in pairs, each
  material's density quantised to 16 bits (step ``max / 65535``; :meth:`materials.MaterialVolumes.packed_pairs`,
  made once per CT) and two materials sharing one 32-bit word, so one march renders two materials at
  about the memory traffic of one monochromatic DRR (the march is bound by its voxel reads). The
  quantisation changes a path by at most half a step times the ray's length in the volume: on the
  chest CT (steps 1.7e-5 and 4.3e-5 g/cm^3 for soft tissue and bone) and a 500 mm ray, 4e-4 and
  1.1e-3 g/cm^2 if every rounding along the ray had the same sign (they do not: the measured
  difference to the float32 reference is in ``benchmarks/results/physics_speed.md``). The spectral sum and its path
  derivatives share one exponential per bin and ray (:class:`_SpectralSum`), so the pose
  gradient is the per-ray Jacobians of the paths weighted by ``dI/dp_m``. The image (:meth:`PhysicsProjector.forward`,
  :meth:`~PhysicsProjector.intensity`) and its pose gradient are one autograd function whose steps after the march
  (:mod:`._physics_cpu`: spectral sum, fog, blur, log and their adjoints) run in numba and numpy, not in torch: on
  a loaded CPU torch's thread pool, woken between numba's parallel regions, had doubled the time. With
  :attr:`kvp` requiring a gradient the steps after the march are the torch ones below.
- **torch** (and **triton** on CUDA): one :class:`projector.Projector` per material (float32 densities)
  and the spectral sum in torch: the reference the numba backend is tested against.

Monochromatic limit: one material whose density is ``hu_to_mu(HU) / MU_WATER``, a one-line spectrum
(:class:`spectrum.LineSpectrum`) and mass attenuation ``MU_WATER / (1 g/cm^3 * 0.1)`` gives exactly
today's DRR (:func:`monochromatic_equivalent`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _physics_cpu, _raymarch
from .errors import InputError
from .filters import gaussian_blur
from .geometry import Camera
from .materials import MaterialVolumes, decompose
from .projector import DEFAULT_SAMPLES, Projector, check_request, pose_gradient
from .spectrum import (
    CM_PER_MM,
    Detector,
    LineSpectrum,
    TubeSpectrum,
    bin_table,
    energy_bins,
    mass_attenuation,
)
from .volume import MU_WATER, Volume, block_average, pad

DEFAULT_BINS = 20
"""Energy bins of the spectral sum (see :mod:`.spectrum`: 0.5 % of the fine-grid intensity from 80 kVp up)."""


class PhysicsProjector(torch.nn.Module):
    """Physics DRRs of per-material density volumes: the call signature of :class:`projector.Projector`.

    Args:
        materials: per-material partial densities (g/cm^3), e.g. :func:`materials.decompose` of a CT.
        camera: detector intrinsics.
        spectrum: the tube (:class:`spectrum.TubeSpectrum`) or a line spectrum.
        detector: detector response.
        n_bins: energy bins of the spectral sum.
        scatter_fraction: scatter-to-primary ratio ``f`` of the fog (0: none).
        scatter_sigma_mm: width of the fog's Gaussian low-pass at the detector, mm.
        blur_px: detector point spread, Gaussian sigma in pixels (0: none).
        n_samples, device, backend: as for :class:`projector.Projector`.
        attenuation: optional ``[M, F]`` mass attenuation (cm^2/g) on the spectrum's energy grid,
            replacing the xraydb values (tests, the monochromatic limit).

    ``forward(world_from_camera [B, 4, 4] or [4, 4])`` returns the log image ``[B, rows, cols]``
    (or ``[rows, cols]``).
    """

    def __init__(self, materials: MaterialVolumes, camera: Camera, spectrum: TubeSpectrum | LineSpectrum | None = None,
                 detector: Detector | None = None, n_bins: int = DEFAULT_BINS, scatter_fraction: float = 0.0,
                 scatter_sigma_mm: float = 40.0, blur_px: float = 0.0, n_samples: int = DEFAULT_SAMPLES,
                 device: str | torch.device = "cpu", backend: str = "auto",
                 attenuation: np.ndarray | None = None) -> None:
        """Pack the material pairs (numba) or build one projector per material (torch, triton); the spectral tables."""
        super().__init__()
        if scatter_fraction < 0 or scatter_sigma_mm <= 0 or blur_px < 0:
            raise InputError("physics: need scatter_fraction >= 0, scatter_sigma_mm > 0 and blur_px >= 0")
        self.camera = camera
        self.names = materials.names
        self.spectrum = spectrum if spectrum is not None else TubeSpectrum()
        self.detector = detector if detector is not None else Detector()
        self.scatter_fraction = float(scatter_fraction)
        self.scatter_sigma_px = float(scatter_sigma_mm) / float(np.sqrt(camera.row_spacing * camera.col_spacing))
        self.blur_px = float(blur_px)
        self._numba = torch.device(device).type == "cpu" and backend in ("auto", "numba")
        self.n_samples = int(n_samples)
        if self._numba:  # packed material pairs, one march per pair (module docstring)
            check_request(camera, n_samples)
            self._pairs = materials.packed_pairs()
            self._ijk_from_world64 = torch.as_tensor(np.linalg.inv(materials.ijk_to_ras))
            self._dirs64 = torch.as_tensor(camera.pixel_centers(np.float64).reshape(-1, 3))
            self._detector_ops: dict[tuple[float, float], _physics_cpu.DetectorOperators] = {}
        self.projectors = torch.nn.ModuleList(
            [] if self._numba else
            [Projector(v, camera, n_samples=n_samples, device=device, backend=backend) for v in materials.volumes()])
        energies = self.spectrum.energies()
        if attenuation is None:
            attenuation = np.stack([mass_attenuation(n, energies) for n in self.names])
        attenuation = np.asarray(attenuation, dtype=np.float64)
        if attenuation.shape != (len(self.names), len(energies)):
            raise InputError(f"attenuation: expected [{len(self.names)}, {len(energies)}], "
                             f"got {list(attenuation.shape)}")
        self._energies = energies
        self.register_buffer("_mass_att", torch.as_tensor(attenuation))  # [M, F] cm^2/g
        self.register_buffer("_eta", torch.as_tensor(self.detector.efficiency(energies)))  # [F]
        self.kvp = torch.tensor(float(getattr(self.spectrum, "kvp", 0.0)), dtype=torch.float64)
        w0 = self._weights().detach().numpy()
        self.n_bins = int(energy_bins(w0, n_bins).max()) + 1
        self.register_buffer("_bins", torch.as_tensor(energy_bins(w0, self.n_bins)))

    def _weights(self) -> torch.Tensor:
        """Detected signal weights ``S(E) eta(E)`` ``[F]`` (sum 1) at the current :attr:`kvp`."""
        w = self.spectrum.fluence(self._energies, self.kvp) * self._eta.cpu()
        return w / w.sum()

    def spectral_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per bin: weight ``[n]`` and mass attenuation ``[M, n]`` (cm^2/g), float64, differentiable in kVp."""
        return bin_table(self._weights(), self._mass_att.cpu(), self._bins.cpu(), self.n_bins)

    def _ijk_from_camera(self, w: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The kernels' ``ijk_from_camera`` ``[B, 3, 4]`` (float64) of poses ``[B, 4, 4]``; whether to differentiate."""
        ijk_from_cam = (self._ijk_from_world64 @ w.to("cpu", torch.float64))[:, :3, :]
        return ijk_from_cam, torch.is_grad_enabled() and ijk_from_cam.requires_grad

    def paths(self, world_from_camera: torch.Tensor) -> torch.Tensor:
        """Density-weighted path lengths ``[B, M, R]`` (g/cm^3 * mm) at poses ``[B, 4, 4]``."""
        w = world_from_camera[None] if world_from_camera.dim() == 2 else world_from_camera
        if self._numba:
            ijk_from_cam, with_grad = self._ijk_from_camera(w)
            return _PairMarch.apply(ijk_from_cam, self, with_grad)
        return torch.stack([p(w).reshape(w.shape[0], -1) for p in self.projectors], dim=1)

    def cpu_table(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`spectral_table` as float64 arrays for :func:`_physics_cpu.spectral_sum` (no kVp gradient).

        Returns:
            bin weights ``[n]`` and mass attenuation times 0.1 ``[n, M]`` (per g/cm^3 * mm).
        """
        wb, mb = self.spectral_table()
        return wb.detach().numpy(), np.ascontiguousarray((mb.detach() * CM_PER_MM).numpy().T)

    def primary(self, paths: torch.Tensor) -> torch.Tensor:
        """Flat-field primary intensity ``[B, R]`` from paths ``[B, M, R]`` (step 2 of the module docstring)."""
        if self._numba and not self.kvp.requires_grad:
            return _SpectralSum.apply(paths, *self.cpu_table())
        wb, mb = self.spectral_table()
        wb = wb.to(paths.device, torch.float32)
        mb = (mb * CM_PER_MM).to(paths.device, torch.float32)
        depth = torch.matmul(mb.T, paths)  # [n, M] @ [B, M, R] -> [B, n, R]
        return torch.matmul(wb, torch.exp(-depth))  # [B, R]

    def detector_operators(self) -> _physics_cpu.DetectorOperators:
        """Steps 3-4 as separable operators for the numba backend (made once per fog width and blur)."""
        key = (self.scatter_sigma_px, self.blur_px)
        if key not in self._detector_ops:
            self._detector_ops[key] = _physics_cpu.DetectorOperators.build(self.camera.rows, self.camera.cols, *key)
        return self._detector_ops[key]

    def _fused(self) -> bool:
        """Whether the image is :class:`_NumbaImage`'s (numba backend, no kVp gradient)."""
        return self._numba and not self.kvp.requires_grad

    def detect(self, primary: torch.Tensor) -> torch.Tensor:
        """Scatter fog and detector blur on the primary ``[B, rows, cols]``; returns ``I / (1 + f)``."""
        x = primary[:, None]  # [B, 1, H, W]
        if self.scatter_fraction > 0:
            x = x + self.scatter_fraction * lowpass(x, self.scatter_sigma_px)
        return self.blur(x)[:, 0] / (1.0 + self.scatter_fraction)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """The detector blur (step 4) of images ``[B, 1, H, W]``."""
        return gaussian_blur(x, self.blur_px, border="replicate") if self.blur_px > 0 else x

    def intensity(self, world_from_camera: torch.Tensor) -> torch.Tensor:
        """Detected, flat-field normalised intensity ``[B, rows, cols]`` (steps 1-4)."""
        w = _batched_poses(world_from_camera)
        if self._fused():
            return _NumbaImage.apply(*self._ijk_from_camera(w), self, False)
        i_p = self.primary(self.paths(w)).reshape(w.shape[0], self.camera.rows, self.camera.cols)
        return self.detect(i_p)

    def forward(self, world_from_camera: torch.Tensor) -> torch.Tensor:
        """Log image ``-log(I / (1 + f))`` ``[B, rows, cols]`` (or ``[rows, cols]`` for one ``[4, 4]`` pose)."""
        if self._fused():
            img = _NumbaImage.apply(*self._ijk_from_camera(_batched_poses(world_from_camera)), self, True)
        else:
            img = -torch.log(self.intensity(world_from_camera).clamp(min=_physics_cpu.LOG_FLOOR))
        return img[0] if world_from_camera.dim() == 2 else img

    def simulate(self, world_from_camera: torch.Tensor, photons: float, electronic_std: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy log image (step 6) ``[B, rows, cols]`` or ``[rows, cols]``; no gradient."""
        if photons <= 0:
            raise InputError(f"photons: must be positive, got {photons!r}")
        with torch.no_grad():
            i = self.intensity(world_from_camera).double()
            counts = torch.poisson(photons * i, generator=generator)
            if electronic_std > 0:
                counts = counts + electronic_std * torch.randn(counts.shape, generator=generator, dtype=counts.dtype,
                                                               device=counts.device)
            img = -torch.log(counts.clamp(min=0.5) / photons).float()
        return img[0] if world_from_camera.dim() == 2 else img


def _batched_poses(world_from_camera: torch.Tensor) -> torch.Tensor:
    """Poses ``[B, 4, 4]`` from ``[B, 4, 4]`` or ``[4, 4]``; :class:`InputError` for other shapes."""
    w = world_from_camera[None] if world_from_camera.dim() == 2 else world_from_camera
    if w.shape[-2:] != (4, 4):
        raise InputError(f"world_from_camera: expected shape [B, 4, 4] or [4, 4], got {list(w.shape)}")
    return w


def _march_pairs(proj: PhysicsProjector, ijk_from_cam: torch.Tensor,
                 with_grad: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Material paths ``[B, M, R]`` (float32) at ``ijk_from_cam`` [B, 3, 4] (float64), and their Jacobians.

    The Jacobians ``[B, M, R, 6]`` (per ray, ``jb`` and ``jt`` of the kernels) when ``with_grad``, else ``None``.
    """
    m = np.ascontiguousarray(ijk_from_cam.detach().numpy())
    dirs, n_m = proj._dirs64.numpy(), len(proj.names)
    outs, jacs = [], []
    for vol, scales, blocks in proj._pairs:
        out = np.empty((m.shape[0], 2, dirs.shape[0]), dtype=np.float32)
        if with_grad:
            jacs.append(np.empty((m.shape[0], 2, dirs.shape[0], 6), dtype=np.float32))
            _raymarch.march_pair_with_jacobian(vol, blocks, scales, m, dirs, proj.n_samples, out, jacs[-1])
        else:
            _raymarch.march_pair(vol, blocks, scales, m, dirs, proj.n_samples, out)
        outs.append(out)
    paths = outs[0] if len(outs) == 1 and n_m == 2 else np.ascontiguousarray(np.concatenate(outs, 1)[:, :n_m])
    if not with_grad:
        return paths, None
    return paths, jacs[0] if len(jacs) == 1 and n_m == 2 else np.ascontiguousarray(np.concatenate(jacs, 1)[:, :n_m])


class _PairMarch(torch.autograd.Function):
    """Material paths ``[B, M, R]`` by the pair kernels, differentiable with respect to ``ijk_from_camera``."""

    @staticmethod
    def forward(ctx, ijk_from_cam: torch.Tensor, proj: PhysicsProjector, with_grad: bool) -> torch.Tensor:
        """Render every pair for ``ijk_from_cam`` [B, 3, 4] (float64); returns [B, M, R] float32."""
        paths, jac = _march_pairs(proj, ijk_from_cam, with_grad)
        ctx.jac = None if jac is None else torch.from_numpy(jac)
        ctx.dirs64 = proj._dirs64
        return torch.from_numpy(paths)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        """Contract the per-ray, per-material Jacobians with ``grad_out`` [B, M, R]; returns [B, 3, 4]."""
        if ctx.jac is None:
            raise RuntimeError("the material paths were rendered without a pose gradient")
        return pose_gradient(grad_out, ctx.jac, ctx.dirs64), None, None


class _SpectralSum(torch.autograd.Function):
    """Primary intensity ``[B, R]`` from paths ``[B, M, R]`` by :func:`_physics_cpu.spectral_sum`.

    The kernel also gives ``dI/dp`` for the backward pass (one exponential per bin and ray, no autograd graph
    over the bins).
    """

    @staticmethod
    def forward(ctx, paths: torch.Tensor, weights: np.ndarray, att: np.ndarray) -> torch.Tensor:
        """``weights`` ``[n]`` and ``att`` ``[n, M]`` (per g/cm^3 * mm), float64 arrays; returns the paths' dtype."""
        p = np.ascontiguousarray(paths.detach().numpy(), dtype=np.float32)
        i_p = np.empty((p.shape[0], p.shape[2]))
        d_ip = np.empty(p.shape, dtype=np.float32)
        _physics_cpu.spectral_sum(p, weights, att, i_p, d_ip, True)
        ctx.d_out = torch.from_numpy(d_ip)
        return torch.from_numpy(i_p).to(paths.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        """``dI/dp`` times ``grad_out`` [B, R]: the gradient of the paths [B, M, R]."""
        return grad_out[:, None, :] * ctx.d_out.to(grad_out.dtype), None, None


class _NumbaImage(torch.autograd.Function):
    """The numba backend's image ``[B, rows, cols]``: march, spectral sum, fog, blur (and log), and its pose gradient.

    Every step after the march is :mod:`._physics_cpu` (numba's thread pool or the calling thread): no torch
    operation on images between the numba regions, forward or backward (module docstring).
    """

    @staticmethod
    def forward(ctx, ijk_from_cam: torch.Tensor, with_grad: bool, proj: PhysicsProjector, log: bool) -> torch.Tensor:
        """The log image (``log``) or the intensity at ``ijk_from_cam`` [B, 3, 4] (float64), float32."""
        paths, jac = _march_pairs(proj, ijk_from_cam, with_grad)
        n_b, n_m, n_r = paths.shape
        i_p = np.empty((n_b, n_r))
        d_ip = np.empty((n_b, n_m, n_r) if with_grad else (0, 0, 0), dtype=np.float32)
        _physics_cpu.spectral_sum(paths, *proj.cpu_table(), i_p, d_ip, with_grad)
        ops, f = proj.detector_operators(), proj.scatter_fraction
        shape = (proj.camera.rows, proj.camera.cols)
        det = np.stack([ops.detect(i.reshape(shape), f) for i in i_p])  # [B, rows, cols]
        out = -np.log(np.maximum(det, _physics_cpu.LOG_FLOOR)) if log else det
        if with_grad:
            ctx.saved = (jac, d_ip, det, ops, f, log, proj._dirs64.numpy())
        return torch.from_numpy(out.astype(np.float32))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        """The gradient ``[B, 3, 4]`` of ``ijk_from_cam`` from that of the image ``[B, rows, cols]``."""
        if not hasattr(ctx, "saved"):
            raise RuntimeError("the physics image was rendered without a pose gradient")
        jac, d_ip, det, ops, f, log, dirs = ctx.saved
        g = grad_out.detach().numpy().astype(np.float64)
        if log:  # d(-log I)/dI, 0 where the floor clamped I
            g = np.where(det >= _physics_cpu.LOG_FLOOR, -g / np.maximum(det, _physics_cpu.LOG_FLOOR), 0.0)
        g_ip = np.stack([ops.detect_adjoint(gi, f) for gi in g]).reshape(g.shape[0], 1, -1)
        grad = _physics_cpu.contract_pose(g_ip * d_ip, jac, dirs)
        return torch.from_numpy(grad), None, None, None


def register_fitting_scatter(xray: np.ndarray, world_from_camera: np.ndarray, fit_projector: PhysicsProjector,
                             register_with: Callable[[float, np.ndarray], Any], passes: int = 2,
                             max_passes: int = 4) -> tuple[Any, float]:
    """Register with the scatter fraction fitted to the X-ray: fit, register, refit at the pose found, until it settles.

    Each pass: ``register_with(f, pose)`` (a registration with the physics renderer at scatter fraction ``f``
    from ``pose``; its result has ``world_from_camera``), ``f`` being :func:`fit_scatter_fraction` at the pose the
    pass starts from (the start first), then the fraction refitted at the pose found. At least ``passes`` passes,
    and more, up to ``max_passes``, while the refitted fraction differs from the one registered with by more than
    :data:`SCATTER_SETTLED` in fog share ``f / (1 + f)``: the pose and the fog are estimated in turn, and a result
    is converged only when both are. On the chest CT at 80 kVp (24 hard-set cases) the fraction still moved in the
    second pass where the pose did (3.5 -> 0.70 -> 0.33 and 9 -> 0.92 -> 0.30), and a third pass took those cases
    from 2.8 and 5.5 mm to 0.7 and 1.7 mm (`benchmarks/results/physics_trained.md`).

    The result is a failure whatever the registration said when the fraction has not settled after
    ``max_passes``, or when the last fit is at its bound (:data:`SCATTER_FIT_MAX`): at a wrong pose the fit drives
    the fog to its bound and the registration can converge there (chest, 80 kVp: one case 43.7 mm off in depth
    had the registration's verdict a success; the three fits that ended at the bound were the three registrations
    ending over 30 mm off, and no other).

    Returns:
        ``(the last registration's result, the fraction it registered with)``.
    """
    if not 1 <= passes <= max_passes:
        raise InputError(f"passes: must be at least 1 and at most max_passes ({max_passes}), got {passes}")
    w = np.asarray(world_from_camera, dtype=np.float64)
    f_next = fit_scatter_fraction(fit_projector, torch.as_tensor(w), xray)
    for k in range(max_passes):
        f = f_next
        out = register_with(f, w)
        w = np.asarray(out.world_from_camera, dtype=np.float64)
        f_next = fit_scatter_fraction(fit_projector, torch.as_tensor(w), xray)
        settled = abs(f_next / (1 + f_next) - f / (1 + f)) <= SCATTER_SETTLED
        if settled and k + 1 >= passes:
            break
    result = out.result if hasattr(out, "refinement") else out  # a pipeline's result or a registration's
    if max(f, f_next) >= SCATTER_FIT_MAX - 1e-6:  # no fog explains the X-ray: a wrong pose passes for fog
        result.success = False
        result.message = (f"the scatter fit ended at its bound (fraction {max(f, f_next):.1f}): no fog explains "
                          f"the X-ray's intensities at the pose found, which is not trusted; {result.message}")
    elif not settled:
        result.success = False
        result.message = (f"the scatter fraction did not settle in {max_passes} passes ({f:.3f} registered with, "
                          f"{f_next:.3f} refitted at the pose found); {result.message}")
    return out, f


SCATTER_SETTLED = 0.01
"""Largest change of the fitted fog share ``f / (1 + f)`` between passes at which the fraction has settled."""

SCATTER_FIT_G_MAX = 0.9
"""Largest scatter share ``g = f / (1 + f)`` :func:`fit_scatter_fraction` tries."""

SCATTER_FIT_MAX = SCATTER_FIT_G_MAX / (1.0 - SCATTER_FIT_G_MAX)
"""The scatter fraction at the fit's bound (9): a fit that ends there found no fog that explains the X-ray."""


def fit_scatter_fraction(proj: PhysicsProjector, world_from_camera: torch.Tensor, xray: torch.Tensor,
                         step: float = 0.005) -> float:
    """The scatter fraction ``f`` whose image at a pose has the X-ray's distribution of intensities.

    With ``g = f / (1 + f)`` the model's normalised intensity (steps 3-4 of the module docstring) is
    ``B[(1 - g) I_p + g G I_p]``. The fit compares the sorted pixel intensities of that image with the
    sorted ``exp(-xray)`` (least squares over ``g`` on a grid of ``step`` in ``[0, SCATTER_FIT_G_MAX]``): the
    sorted values do not depend on where structures lie in the image, so misalignment is not mistaken for fog as in a
    pixel-wise fit. How much of the CT the image covers still changes them: 6 mm off on the test phantom the fit
    gives 0.04 for a true 0.3, at the registered pose 0.31, hence :func:`register_fitting_scatter`'s refit.
    ``proj``'s own scatter fraction is not used, its camera, spectrum, fog width and blur are.

    Args:
        proj: the physics projector (camera, spectrum, fog width, blur of the X-ray).
        world_from_camera: the pose ``[4, 4]``, e.g. a registration's initial or final pose.
        xray: the X-ray's log image ``[rows, cols]`` (attenuation-bright, 0 in air).
        step: grid step of ``g``.

    Returns:
        ``f`` (scatter-to-primary ratio, >= 0).
    """
    rows, cols = proj.camera.rows, proj.camera.cols
    with torch.no_grad():
        i_p = proj.primary(proj.paths(world_from_camera)).reshape(1, 1, rows, cols).double()
        a = proj.blur(i_p).flatten()
        b = proj.blur(lowpass(i_p, proj.scatter_sigma_px)).flatten()
        x = torch.sort(torch.exp(-torch.as_tensor(xray, dtype=torch.float64)).flatten()).values
        gs = torch.arange(0.0, SCATTER_FIT_G_MAX + 0.5 * step, step, dtype=torch.float64)
        err = [float(((torch.sort((1 - g) * a + g * b).values - x) ** 2).sum()) for g in gs]
        g = float(gs[int(np.argmin(err))])
    return g / (1.0 - g)


def lowpass(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Gaussian low-pass of images ``[B, 1, H, W]`` (sigma in pixels), cheap for wide kernels.

    Wide kernels are applied on an image average-pooled by ``k = floor(sigma / 2)`` and the result
    is interpolated back (bilinear); the pooling's own blur is small against ``sigma``.
    """
    h, w = x.shape[-2:]
    k = max(1, int(sigma_px // 2))
    small = F.avg_pool2d(x, k, ceil_mode=True) if k > 1 else x
    small = gaussian_blur(small, float(sigma_px) / k, border="replicate")
    if k > 1:
        small = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return small


def monochromatic_equivalent(mu_volume: Volume, camera: Camera, energy_kev: float = 60.0,
                             **kwargs) -> PhysicsProjector:
    """A :class:`PhysicsProjector` that reproduces the monochromatic DRR of ``mu_volume`` (1/mm).

    One material (water) of density ``mu / MU_WATER`` g/cm^3, one energy, mass attenuation
    ``MU_WATER / CM_PER_MM`` cm^2/g: its log image equals :class:`projector.Projector`'s line integrals.
    """
    mv = MaterialVolumes(("water",), (mu_volume.data / MU_WATER)[None], mu_volume.ijk_to_ras)
    return PhysicsProjector(mv, camera, spectrum=LineSpectrum((energy_kev,), (1.0,)), n_bins=1,
                            attenuation=np.array([[MU_WATER / CM_PER_MM]]), **kwargs)


def randomised_images(proj: PhysicsProjector, paths: torch.Tensor, kvps: torch.Tensor,
                      scatter_fractions: torch.Tensor) -> torch.Tensor:
    """Log images ``[B, rows, cols]`` from paths ``[B, M, R]``, image ``b`` at ``kvps[b]`` and ``scatter_fractions[b]``.

    For domain randomisation: the paths are rendered once per batch and each image gets its own tube
    voltage (at most the projector's construction kVp) and scatter; ``proj``'s own settings are restored.
    """
    kvp0, f0 = proj.kvp, proj.scatter_fraction
    out = []
    try:
        for b in range(paths.shape[0]):
            proj.kvp = torch.as_tensor(float(kvps[b]), dtype=torch.float64)
            proj.scatter_fraction = float(scatter_fractions[b])
            i_p = proj.primary(paths[b:b + 1]).reshape(1, proj.camera.rows, proj.camera.cols)
            out.append(-torch.log(proj.detect(i_p).clamp(min=1e-30)))
    finally:
        proj.kvp, proj.scatter_fraction = kvp0, f0
    return torch.cat(out)


@dataclass
class PhysicsSettings:
    """Acquisition of a physics-simulated X-ray (``xrayctreg simulate --physics``).

    Attributes:
        kvp: tube voltage, kV.
        filtration_mm_al: total filtration, mm Al.
        scatter_fraction: scatter-to-primary ratio of the fog.
        scatter_sigma_mm: width of the fog's low-pass at the detector, mm.
        photons: unattenuated counts per pixel (0: no noise).
        electronic_std: electronic noise, counts (standard deviation).
        blur_px: detector blur, Gaussian sigma in pixels.
        n_bins: energy bins.
    """

    kvp: float = 100.0
    filtration_mm_al: float = 2.5
    scatter_fraction: float = 0.0
    scatter_sigma_mm: float = 40.0
    photons: float = 1e4
    electronic_std: float = 0.0
    blur_px: float = 1.0
    n_bins: int = DEFAULT_BINS


def simulate_xray(ct_hu: Volume, camera: Camera, world_from_camera: np.ndarray, settings: PhysicsSettings,
                  seed: int = 0, n_samples: int = DEFAULT_SAMPLES) -> np.ndarray:
    """A physics-simulated, attenuation-bright X-ray ``[rows, cols]`` (float32) of a CT in HU at one pose."""
    proj = PhysicsProjector(decompose(ct_hu), camera, spectrum=TubeSpectrum(settings.kvp, settings.filtration_mm_al),
                            n_bins=settings.n_bins, scatter_fraction=settings.scatter_fraction,
                            scatter_sigma_mm=settings.scatter_sigma_mm, blur_px=settings.blur_px, n_samples=n_samples)
    w = torch.as_tensor(np.asarray(world_from_camera, dtype=np.float64))
    with torch.no_grad():
        if settings.photons <= 0:
            return proj(w).numpy().astype(np.float32)
        g = torch.Generator().manual_seed(int(seed))
        return proj.simulate(w, settings.photons, settings.electronic_std, g).numpy().astype(np.float32)


def physics_renderer(materials: MaterialVolumes, **options) -> tuple[Volume, Callable[..., PhysicsProjector]]:
    """Physics DRRs for :func:`registration.register`: returns ``(volume, renderer)``.

    Pass ``volume`` as ``volume_mu`` and ``renderer`` as ``renderer``: ``volume`` is the total density times
    ``MU_WATER`` (a monochromatic stand-in on the materials' grid, used for the CT's centre, checks and
    pictures); ``renderer(level_volume, camera, n_samples=, device=)`` builds a :class:`PhysicsProjector` of
    the materials block-averaged and zero-padded as the registration's pyramid level (made once per level
    and kept). ``options`` go to :class:`PhysicsProjector` (spectrum, scatter, blur, ...); keyword
    ``overrides`` of a call replace them (e.g. ``functools.partial(renderer, scatter_fraction=f)`` for one
    X-ray's fitted scatter, :func:`fit_scatter_fraction`, on the same cached levels).
    """
    carrier = Volume(materials.densities.sum(0) * MU_WATER, materials.ijk_to_ras)
    levels: dict[tuple[int, ...], MaterialVolumes] = {}

    def build(level_volume: Volume, camera: Camera, n_samples: int = DEFAULT_SAMPLES,
              device: str | torch.device = "cpu", **overrides) -> PhysicsProjector:
        f = tuple(max(1, round(s / b)) for s, b in zip(level_volume.spacing, carrier.spacing, strict=True))
        if f not in levels:
            vols = [pad(block_average(v, f)) for v in materials.volumes()]
            levels[f] = MaterialVolumes.from_volumes(materials.names, vols)
        if levels[f].densities.shape[1:] != level_volume.data.shape:
            raise InputError("physics renderer: the level volume is not on the materials' grid")
        return PhysicsProjector(levels[f], camera, n_samples=n_samples, device=device, **{**options, **overrides})

    return carrier, build
