"""Patient-specific training data: DRRs of the patient's CT at random poses, made to look like X-rays.

Poses are drawn uniformly in a :class:`PoseRange` (default +-30 degrees about every axis and
+-50 mm along every axis) around the reference view (AP about the CT's centre by default). DRRs
are rendered on the fly in batches at low resolution: the CT is resampled to a few millimetres
per voxel and the detector downsampled (:meth:`Camera.downsampled`) so that its longer side has
``detector_size`` pixels; the image is then resized to the network's square input and normalised
per image (zero mean, unit standard deviation).

:func:`augment` makes DRRs look like acquired radiographs: Poisson noise, blur, contrast and
gamma, occasional intensity inversion, random erasing and collimation edges.
:func:`prepare_image` applies the same resizing and normalisation to a real X-ray.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .errors import InputError
from .filters import gaussian_blur
from .geometry import Camera, ReferenceView
from .projector import Projector
from .volume import Volume, hu_to_mu, resample

MAX_ROT_RANGE_DEG = 180.0
"""Largest rotation half-width (degrees) of a pose range."""

MAX_TRANS_RANGE_MM = 1e4
"""Largest translation half-width (mm) of a pose range."""


def check_pose_range(rot_deg, trans_mm) -> None:
    """Raise :class:`InputError` unless rotation half-widths are in [0, 180] degrees and translations in [0, 1e4] mm."""
    for option, values, top in (("--rot-range", rot_deg, MAX_ROT_RANGE_DEG), ("--trans-range", trans_mm,
                                                                               MAX_TRANS_RANGE_MM)):
        v = np.atleast_1d(np.asarray(values, dtype=float))
        if not np.all(np.isfinite(v)) or np.any(v < 0) or np.any(v > top):
            shown = v[0] if v.size == 1 or np.all(v == v[0]) else v.tolist()
            raise InputError(f"{option}: must be a number from 0 to {top:g}, got {shown}")


@dataclass
class PoseRange:
    """Half-widths of the uniform pose distribution: rotations (degrees) and translations (mm)."""

    rot_deg: tuple[float, float, float] = (30.0, 30.0, 30.0)
    trans_mm: tuple[float, float, float] = (50.0, 50.0, 50.0)

    def __post_init__(self) -> None:
        """Broadcast numbers to triples of floats."""
        self.rot_deg = tuple(float(v) for v in np.broadcast_to(np.asarray(self.rot_deg, dtype=float), (3,)))
        self.trans_mm = tuple(float(v) for v in np.broadcast_to(np.asarray(self.trans_mm, dtype=float), (3,)))
        check_pose_range(self.rot_deg, self.trans_mm)

    @property
    def half_widths(self) -> np.ndarray:
        """``(rx, ry, rz, tx, ty, tz)`` half-widths ``[6]``."""
        return np.array(self.rot_deg + self.trans_mm)

    def sample(self, rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
        """``n`` pose parameter vectors ``[n, 6]`` uniform in ``scale`` times the range."""
        hw = scale * self.half_widths
        return rng.uniform(-hw, hw, size=(n, 6))

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {"rot_deg": list(self.rot_deg), "trans_mm": list(self.trans_mm)}

    @classmethod
    def from_dict(cls, d: dict) -> PoseRange:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["rot_deg"]), tuple(d["trans_mm"]))


def ct_hash(ct: Volume) -> str:
    """SHA-256 (hex) of a CT's voxel values (float32, ``[k, j, i]``) and its ``ijk_to_ras`` (float64).

    Computed once per ``Volume`` (kept with it, see :meth:`Volume.derived`): checking a model against
    the same CT for every X-ray costs nothing after the first.
    """

    def digest() -> str:
        h = hashlib.sha256()
        h.update(np.asarray(ct.data.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(ct.data, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(np.round(ct.ijk_to_ras, 9), dtype=np.float64).tobytes())
        return h.hexdigest()

    return ct.derived(("sha256",), digest)


@dataclass
class RenderSettings:
    """Resolution of the training DRRs.

    Attributes:
        ct_spacing_mm: voxel size of the resampled CT, mm.
        detector_size: pixels along the longer side of the downsampled detector.
        input_size: side of the square network input, pixels.
        step_vox: ray-marching step in (resampled) voxels.
        physics_kvp: domain randomisation with the physics DRR (:mod:`.physics`): each DRR at a tube
            voltage drawn uniformly in this range (kV); ``None`` (default) renders monochromatic DRRs.
        physics_scatter: with ``physics_kvp``: range of the scatter-to-primary ratio (uniform).
    """

    ct_spacing_mm: float = 4.0
    detector_size: int = 48
    input_size: int = 48
    step_vox: float = 1.5
    physics_kvp: tuple[float, float] | None = None
    physics_scatter: tuple[float, float] = (0.0, 0.5)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


def low_res_camera(camera: Camera, detector_size: int) -> Camera:
    """The detector downsampled so that its longer side has ``detector_size`` pixels (never upsampled)."""
    factor = max(1.0, max(camera.rows, camera.cols) / detector_size)
    return camera.downsampled(factor)


def low_res_volume(volume_mu: Volume, settings: RenderSettings) -> Volume:
    """The attenuation volume resampled to ``settings.ct_spacing_mm`` (kept when already that coarse)."""
    if np.min(volume_mu.spacing) < settings.ct_spacing_mm:
        return resample(volume_mu, settings.ct_spacing_mm)
    return volume_mu


def low_res_samples(volume: Volume, settings: RenderSettings) -> int:
    """Samples per ray of the training DRRs: one every ``settings.step_vox`` voxels of ``volume`` (at least 16)."""
    return max(16, int(math.ceil(np.linalg.norm(volume.shape_ijk) / settings.step_vox)))


class DRRSource:
    """Render low-resolution DRRs of one CT at batches of pose parameters.

    Args:
        ct_hu: the CT in HU.
        camera: the full-resolution detector.
        reference: the view the pose parameters are relative to.
        settings: resolutions.
        device: torch device of the renderer.
    """

    def __init__(self, ct_hu: Volume, camera: Camera, reference: ReferenceView,
                 settings: RenderSettings | None = None, device: str | torch.device = "cpu") -> None:
        """Resample the CT (as attenuation) and build the projector."""
        self.settings = settings = settings or RenderSettings()
        self.reference = reference
        self.camera = camera
        self.volume = low_res_volume(Volume(hu_to_mu(ct_hu.data), ct_hu.ijk_to_ras), settings)
        self.low_camera = low_res_camera(camera, settings.detector_size)
        self.device = torch.device(device)
        n = low_res_samples(self.volume, settings)
        self.projector = Projector(self.volume, self.low_camera, n_samples=n, device=self.device)
        self.physics = None
        if settings.physics_kvp is not None:
            self.physics = _physics_projector(ct_hu, self.volume, self.low_camera, settings, n, self.device)
            self._generator = torch.Generator().manual_seed(0)

    def poses(self, params: torch.Tensor) -> torch.Tensor:
        """``world_from_camera`` ``[B, 4, 4]`` (float32) of parameters ``[B, 6]`` (degrees, mm); differentiable."""
        return self.reference.pose_torch(params.double()).float()

    def render(self, params: torch.Tensor | np.ndarray, grad: bool = False, physics: bool = True) -> torch.Tensor:
        """DRRs ``[B, rows, cols]`` (low-resolution detector) at parameters ``[B, 6]`` (degrees, mm).

        Line integrals of the attenuation, or, when the settings ask for domain randomisation and ``physics``
        is true, physics log images (each at its own kVp and scatter). ``physics=False`` gives the line
        integrals in either case: the DRRs a registration renders, as opposed to the X-rays it is given.
        """
        p = torch.as_tensor(params, dtype=torch.float64, device=self.device)
        with torch.set_grad_enabled(grad):
            if self.physics is None or not physics:
                return self.projector(self.poses(p))
            return self._render_physics(self.poses(p))

    def _render_physics(self, poses: torch.Tensor) -> torch.Tensor:
        """Physics DRRs (log images) at ``poses`` ``[B, 4, 4]``, each at a random kVp and scatter."""
        from .physics import randomised_images

        b = poses.shape[0]
        (k0, k1), (s0, s1) = self.settings.physics_kvp, self.settings.physics_scatter
        kvps = k0 + (k1 - k0) * torch.rand(b, generator=self._generator, dtype=torch.float64)
        fractions = s0 + (s1 - s0) * torch.rand(b, generator=self._generator, dtype=torch.float64)
        return randomised_images(self.physics, self.physics.paths(poses), kvps, fractions)


def _physics_projector(ct_hu: Volume, mu: Volume, camera: Camera, settings: RenderSettings, n_samples: int,
                       device: torch.device):
    """A physics projector of ``ct_hu`` resampled to ``mu``'s grid, at the top of the kVp range."""
    from .materials import decompose
    from .physics import PhysicsProjector
    from .spectrum import TubeSpectrum

    hu = resample(ct_hu, settings.ct_spacing_mm) if np.min(ct_hu.spacing) < settings.ct_spacing_mm else ct_hu
    if hu.data.shape != mu.data.shape:
        raise RuntimeError("physics training DRRs: the resampled HU and attenuation grids differ")
    spectrum = TubeSpectrum(kvp=float(max(settings.physics_kvp)))
    return PhysicsProjector(decompose(hu), camera, spectrum=spectrum, n_samples=n_samples, device=device)


def to_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize images ``[B, rows, cols]`` to the network input ``[B, 1, size, size]`` and normalise each."""
    x = images[:, None].float()
    if tuple(x.shape[-2:]) != (size, size):
        if x.shape[-2] >= size and x.shape[-1] >= size:
            x = F.adaptive_avg_pool2d(x, (size, size))
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return normalise(x)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean and unit standard deviation of ``[B, C, H, W]``."""
    mean = x.mean((1, 2, 3), keepdim=True)
    std = x.std((1, 2, 3), keepdim=True).clamp(min=1e-6)
    return (x - mean) / std


def prepare_image(image: np.ndarray, camera: Camera, settings: RenderSettings) -> torch.Tensor:
    """A full-resolution attenuation-bright X-ray ``[rows, cols]`` -> network input ``[1, 1, S, S]``.

    The image is area-averaged to the training detector (:func:`low_res_camera`), then resized
    and normalised exactly as the training DRRs are.
    """
    low = low_res_camera(camera, settings.detector_size)
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    x = F.adaptive_avg_pool2d(x, (low.rows, low.cols))
    return to_input(x[:, 0], settings.input_size)


@dataclass
class Augmentation:
    """Probabilities and strengths of :func:`augment` (set a probability to 0 to switch a step off).

    Attributes:
        photons: range of unattenuated counts per pixel (log-uniform) for Poisson noise.
        p_noise: probability of noise.
        blur_px: maximum Gaussian blur sigma, pixels.
        gamma: range of the contrast exponent (log-uniform).
        p_invert: probability of inverting the intensities.
        p_erase: probability of one random erased rectangle (2-15 % of the image, random value).
        p_collimate: probability of collimation edges (a random margin on each side set to a constant).
        max_collimation: largest margin, as a fraction of the image side.
        blur_on_photons: blur the photon counts before the log, as a detector's point spread acts (and as
            :func:`simulate.xray_from_drr` does); False (the default, with which every committed model was
            trained) blurs the attenuation image after the log. With it, RTPI and sopi-fine failed less on the
            chest and abdomen CTs and more on the held-out spine crop (``benchmarks/results/sopi_depth.md``).
    """

    photons: tuple[float, float] = (3e2, 3e4)
    p_noise: float = 0.9
    blur_px: float = 1.0
    gamma: tuple[float, float] = (0.7, 1.4)
    p_invert: float = 0.05
    p_erase: float = 0.3
    p_collimate: float = 0.3
    max_collimation: float = 0.15
    blur_on_photons: bool = False


def augment(drr: torch.Tensor, generator: torch.Generator, aug: Augmentation | None = None) -> torch.Tensor:
    """Make line-integral DRRs ``[B, H, W]`` look like X-rays; returns ``[B, H, W]`` in about [0, 1].

    Steps, each image drawn independently: Poisson noise at a random dose, Gaussian blur,
    rescaling to [0, 1] and a random gamma, inversion, a random erased rectangle, collimation edges.
    """
    aug = aug or Augmentation()
    x = drr.float().clamp(min=0)[:, None]  # [B, 1, H, W]
    b, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    lo, hi = math.log(aug.photons[0]), math.log(aug.photons[1])
    n0 = torch.exp(lo + (hi - lo) * rand(b))[:, None, None, None]
    counts = torch.poisson(n0 * torch.exp(-x), generator=generator)
    with_noise = (rand(b) < aug.p_noise)[:, None, None, None]
    # the radius from the largest possible sigma, not this batch's (which would wait for the device)
    sigma, radius = aug.blur_px * rand(b), max(1, math.ceil(3 * aug.blur_px))
    if aug.blur_on_photons:
        # counts (or the noise-free transmission) blurred, then the log: an edge's profile as a detector records it
        seen = torch.where(with_noise, counts / n0, torch.exp(-x))
        seen = gaussian_blur(seen, sigma, radius=radius, border="replicate")
        floor = torch.where(with_noise, 0.5 / n0, torch.full_like(n0, 1e-30))
        x = -torch.log(torch.maximum(seen, floor))
    else:
        x = torch.where(with_noise, -torch.log(counts.clamp(min=0.5) / n0), x)
        x = gaussian_blur(x, sigma, radius=radius, border="replicate")
    x_min = x.amin((2, 3), keepdim=True)
    x_max = x.amax((2, 3), keepdim=True)
    x = ((x - x_min) / (x_max - x_min).clamp(min=1e-6)).clamp(0, 1)
    lg0, lg1 = math.log(aug.gamma[0]), math.log(aug.gamma[1])
    x = x ** torch.exp(lg0 + (lg1 - lg0) * rand(b))[:, None, None, None]
    x = torch.where((rand(b) < aug.p_invert)[:, None, None, None], 1 - x, x)
    rows = torch.arange(h, device=dev)[None, :, None]
    cols = torch.arange(w, device=dev)[None, None, :]
    # random erasing: one rectangle of 2-15 % of the area, aspect 1/2-2, filled with a random value
    area = (0.02 + 0.13 * rand(b)) * h * w
    aspect = torch.exp(math.log(0.5) + math.log(4.0) * rand(b))
    eh = (area * aspect).sqrt().clamp(1, h)
    ew = (area / aspect).sqrt().clamp(1, w)
    r0 = rand(b) * (h - eh)
    c0 = rand(b) * (w - ew)
    box = (rows >= r0[:, None, None]) & (rows < (r0 + eh)[:, None, None]) & \
          (cols >= c0[:, None, None]) & (cols < (c0 + ew)[:, None, None])
    box = box & (rand(b) < aug.p_erase)[:, None, None]
    x = torch.where(box[:, None], rand(b)[:, None, None, None], x)
    # collimation: a margin on each side, shown as a flat value (bright: little dose behind the blades)
    m = aug.max_collimation * rand(b, 4)
    inside = (rows >= (m[:, 0] * h)[:, None, None]) & (rows < ((1 - m[:, 1]) * h)[:, None, None]) & \
             (cols >= (m[:, 2] * w)[:, None, None]) & (cols < ((1 - m[:, 3]) * w)[:, None, None])
    outside = ~inside & (rand(b) < aug.p_collimate)[:, None, None]
    x = torch.where(outside[:, None], (0.7 + 0.3 * rand(b))[:, None, None, None], x)
    return x[:, 0]
