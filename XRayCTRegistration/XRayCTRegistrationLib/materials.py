"""CT -> per-material density volumes (the material decomposition of a physics DRR).

A :class:`MaterialVolumes` holds, on the CT's grid, one partial density volume per material
(g/cm^3: the mass of that material per unit volume of the voxel). A voxel may hold several
materials; its total density is the sum.

From HU (:func:`decompose`): the voxel's mass density follows a piecewise-linear calibration
(:func:`density_from_hu`): ``rho = 1 + HU/1000`` up to 100 HU (air, lung, fat, water and soft tissue
mix linearly between air at -1000 HU and water at 0 HU), then ``rho = 1.1 + 5.85e-4 (HU - 100)``
(bone mineral mixtures, reaching cortical bone's 1.92 g/cm^3 at 1500 HU), clipped at 0. The
density is shared among the materials by weights that sum to one: with thresholds
``h_1 < h_2 < ...`` (HU) between consecutive materials and a transition width ``s`` (HU), the
logistic ``sigma_i = 1 / (1 + exp(-(HU - h_i) / s))`` gives material ``i`` the weight
``sigma_i (1 - sigma_{i+1})`` (``sigma_0 = 1``): smooth, so a small HU change moves a voxel smoothly
between materials. The default is soft tissue below 350 HU and cortical bone above, as DeepDRR's
defaults; air is folded into soft tissue (its density is near zero and its mass attenuation
within a few percent of soft tissue's from 20 to 150 keV).

From a label map (:func:`from_labels`): each label value names a material and the voxel's
density comes from :func:`density_from_hu` (or the material's nominal density if asked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._raymarch import block_table, pack_pair
from .errors import InputError
from .spectrum import material
from .volume import Volume

DEFAULT_THRESHOLDS: tuple[tuple[str, float], ...] = (("soft tissue", -np.inf), ("bone", 350.0))
"""``(material, lower HU threshold)`` pairs, in increasing HU order; the first has no lower threshold."""

TRANSITION_HU = 50.0
"""Width ``s`` of the logistic transition between materials, HU."""


@dataclass
class MaterialVolumes:
    """Partial density volumes of named materials on one grid.

    Attributes:
        names: material names (:data:`spectrum.MATERIALS`), ``[M]``.
        densities: ``[M, K, J, I]`` float32, g/cm^3.
        ijk_to_ras: 4x4 voxel index ``(i, j, k)`` -> world RAS, mm.
    """

    names: tuple[str, ...]
    densities: np.ndarray
    ijk_to_ras: np.ndarray
    _packed: list[tuple[np.ndarray, np.ndarray]] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the names against the densities and store float32 / float64."""
        self.names = tuple(self.names)
        for n in self.names:
            material(n)
        self.densities = np.ascontiguousarray(self.densities, dtype=np.float32)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.densities.ndim != 4 or self.densities.shape[0] != len(self.names):
            raise InputError(f"densities: expected [{len(self.names)}, K, J, I], got {list(self.densities.shape)}")

    def volume(self, index: int) -> Volume:
        """Material ``index``'s density (g/cm^3) as a :class:`Volume`."""
        return Volume(self.densities[index], self.ijk_to_ras)

    def volumes(self) -> list[Volume]:
        """Every material's density volume, in the order of :attr:`names`."""
        return [self.volume(m) for m in range(len(self.names))]

    def packed_pairs(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The densities as 16-bit pairs for the CPU ray march (:func:`_raymarch.pack_pair`), made once and kept.

        Materials ``2 p`` and ``2 p + 1`` share pair ``p`` (an odd last one is paired with an empty volume):
        one march per pair renders both. Each pair is ``(packed, scales, blocks)``, ``blocks`` its table of empty
        space (:func:`_raymarch.block_table`). The densities are taken as fixed once this was called.
        """
        if self._packed is None:
            d = self.densities
            if float(d.min()) < 0:
                raise InputError("materials: densities must be non-negative")
            pairs = [pack_pair(d[m], d[m + 1] if m + 1 < len(d) else np.zeros_like(d[m])) for m in range(0, len(d), 2)]
            self._packed = [(packed, scales, block_table(packed)) for packed, scales in pairs]
        return self._packed

    @classmethod
    def from_volumes(cls, names: Sequence[str], volumes: Sequence[Volume]) -> MaterialVolumes:
        """Stack density volumes on one grid (checked) under ``names``."""
        if len(names) != len(volumes) or not volumes:
            raise InputError(f"materials: {len(names)} names for {len(volumes)} volumes")
        for v in volumes[1:]:
            if v.data.shape != volumes[0].data.shape or not np.allclose(v.ijk_to_ras, volumes[0].ijk_to_ras):
                raise InputError("materials: every density volume must share the first one's grid")
        return cls(tuple(names), np.stack([v.data for v in volumes]), volumes[0].ijk_to_ras)


def density_from_hu(hu: np.ndarray) -> np.ndarray:
    """Mass density (g/cm^3) from HU by the piecewise-linear calibration of the module docstring."""
    h = np.asarray(hu, dtype=np.float32)
    rho = np.where(h <= 100.0, 1.0 + h / 1000.0, 1.1 + 5.85e-4 * (h - 100.0))
    return np.maximum(rho, 0.0).astype(np.float32)


def material_weights(hu: np.ndarray, thresholds: Sequence[tuple[str, float]] = DEFAULT_THRESHOLDS,
                     width_hu: float = TRANSITION_HU) -> np.ndarray:
    """Weights ``[M, ...]`` (sum 1 per voxel) of the materials of ``thresholds`` at ``hu``."""
    lows = [float(t) for _, t in thresholds]
    if len(lows) < 1 or any(b <= a for a, b in zip(lows, lows[1:], strict=False)):
        raise InputError(f"thresholds: expected increasing HU thresholds, got {lows}")
    if width_hu <= 0:
        raise InputError(f"width_hu: must be positive, got {width_hu!r}")
    h = np.asarray(hu, dtype=np.float32)
    sig = [np.ones_like(h)] + [1.0 / (1.0 + np.exp(-np.clip((h - t) / width_hu, -60, 60))) for t in lows[1:]]
    sig.append(np.zeros_like(h))
    return np.stack([sig[i] * (1.0 - sig[i + 1]) for i in range(len(lows))]).astype(np.float32)


def decompose(ct: Volume, thresholds: Sequence[tuple[str, float]] = DEFAULT_THRESHOLDS,
              width_hu: float = TRANSITION_HU) -> MaterialVolumes:
    """Per-material partial densities (g/cm^3) of a CT in HU by smooth HU thresholds."""
    rho = density_from_hu(ct.data)
    w = material_weights(ct.data, thresholds, width_hu)
    return MaterialVolumes(tuple(n for n, _ in thresholds), w * rho[None], ct.ijk_to_ras)


def from_labels(ct: Volume, labels: Volume, label_materials: Mapping[int, str],
                nominal_density: bool = False) -> MaterialVolumes:
    """Per-material densities from a label map aligned with the CT.

    Args:
        ct: the CT in HU.
        labels: integer label volume on the CT's grid.
        label_materials: label value -> material name; voxels with other labels are empty (air).
        nominal_density: use each material's nominal density instead of :func:`density_from_hu`.
    """
    if labels.data.shape != ct.data.shape:
        raise InputError(f"labels: shape {list(labels.data.shape)} differs from the CT's {list(ct.data.shape)}")
    names = tuple(dict.fromkeys(label_materials.values()))
    rho = density_from_hu(ct.data)
    lab = np.rint(labels.data).astype(np.int64)
    out = np.zeros((len(names),) + ct.data.shape, dtype=np.float32)
    for value, name in label_materials.items():
        inside = lab == int(value)
        out[names.index(name)][inside] = material(name).density if nominal_density else rho[inside]
    return MaterialVolumes(names, out, ct.ijk_to_ras)
