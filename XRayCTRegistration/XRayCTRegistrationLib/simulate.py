"""Synthetic X-rays: a DRR made to look like an acquired radiograph, and random poses.

The imaging model: a DRR gives the line integral ``L`` of attenuation per pixel. The detector
counts ``N ~ Poisson(photons * exp(-L))`` (air gives ``photons`` counts), the counts are blurred
by the detector's point spread (Gaussian, ``blur_px`` pixels) and converted back to attenuation
``-log(N / photons)``; a contrast change ``a * L' ** gamma + b`` follows. The result is
attenuation-bright like a DRR, as CONVENTIONS.md asks of every X-ray image in the library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .filters import blur_image


@dataclass
class NoiseModel:
    """Parameters of :func:`xray_from_drr`.

    Attributes:
        photons: unattenuated counts per pixel (lower is noisier); 0 disables the noise.
        blur_px: Gaussian point-spread sigma in pixels; 0 disables the blur.
        gamma: contrast exponent applied to the normalised attenuation image.
        gain, offset: linear contrast change applied last.
    """

    photons: float = 1e4
    blur_px: float = 1.0
    gamma: float = 1.0
    gain: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        """Refuse values that give NaN, infinite, constant or inverted images (options named as on the CLI)."""
        rules = (("--photons", self.photons, 0.0, 1e12, True), ("--blur", self.blur_px, 0.0, 100.0, True),
                 ("--gamma", self.gamma, 0.05, 20.0, True), ("--gain", self.gain, 1e-6, 1e6, True),
                 ("--offset", self.offset, -1e3, 1e3, True))
        for option, value, low, high, _ in rules:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
                    not (math.isfinite(value) and low <= value <= high):
                raise InputError(f"{option}: must be a number from {low:g} to {high:g}, got {value!r}")

    @classmethod
    def random(cls, rng: np.random.Generator, photons: float = 1e4, blur_px: float = 1.0) -> NoiseModel:
        """A random contrast change (gamma 0.8-1.25, gain 0.7-1.4, offset +-0.1) at the given noise and blur."""
        return cls(photons=photons, blur_px=blur_px, gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
                   gain=float(rng.uniform(0.7, 1.4)), offset=float(rng.uniform(-0.1, 0.1)))


def xray_from_drr(drr: np.ndarray, noise: NoiseModel, rng: np.random.Generator) -> np.ndarray:
    """Turn a DRR (line integrals, ``[rows, cols]``) into a synthetic attenuation-bright X-ray.

    The detector blur acts on the photons (before the log), with or without noise, as a detector's does.
    """
    line = np.asarray(drr, dtype=np.float64)
    if noise.photons > 0:
        counts = rng.poisson(noise.photons * np.exp(-line)).astype(np.float32)
        counts = blur_image(counts, noise.blur_px) if noise.blur_px > 0 else counts
        att = -np.log(np.maximum(counts, 0.5) / noise.photons)
    elif noise.blur_px > 0:
        att = -np.log(np.maximum(blur_image(np.exp(-line), noise.blur_px, dtype=np.float64), 1e-30)).astype(np.float32)
    else:
        att = line.astype(np.float32)
    scale = max(float(np.percentile(att, 99.5)), 1e-6)
    att = scale * np.power(np.clip(att / scale, 0, None), noise.gamma)
    return (noise.gain * att + noise.offset * scale).astype(np.float32)


def random_params(rng: np.random.Generator, rot_deg: float | tuple[float, float, float] = 10.0,
                  trans_mm: float | tuple[float, float, float] = 20.0) -> np.ndarray:
    """Pose parameters drawn uniformly in ``[-rot_deg, rot_deg]`` (per axis) and ``[-trans_mm, trans_mm]``."""
    from .training_data import check_pose_range

    check_pose_range(rot_deg, trans_mm)
    rot = np.broadcast_to(np.asarray(rot_deg, dtype=np.float64), (3,))
    trans = np.broadcast_to(np.asarray(trans_mm, dtype=np.float64), (3,))
    return np.concatenate([rng.uniform(-rot, rot), rng.uniform(-trans, trans)])


def perturb_params(params: np.ndarray, rng: np.random.Generator, rot_mean_deg: float, rot_std_deg: float,
                   trans_mean_mm: float, trans_std_mm: float) -> np.ndarray:
    """Offset pose parameters by a random rotation and translation error of drawn magnitudes.

    The total rotation offset (norm of the three angle offsets, degrees) is drawn from
    ``N(rot_mean, rot_std)`` (folded at 0) in a random direction; likewise the translation offset (mm).
    """
    def offset(mean: float, std: float) -> np.ndarray:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        return abs(rng.normal(mean, std)) * direction

    return np.asarray(params, dtype=np.float64) + np.concatenate(
        [offset(rot_mean_deg, rot_std_deg), offset(trans_mean_mm, trans_std_mm)])

