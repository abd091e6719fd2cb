"""CT volumes: the in-memory representation and HU -> attenuation.

A :class:`Volume` holds a 3D array in storage order ``[k, j, i]`` (slowest to fastest, as
SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` give it) and the 4x4
``ijk_to_ras`` matrix that maps the voxel index ``(i, j, k, 1)`` to world RAS in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MU_WATER = 0.02
"""Linear attenuation of water, 1/mm (about 70 keV effective energy)."""


@dataclass
class Volume:
    """A CT (or attenuation) volume.

    Attributes:
        data: voxel values, ``[k, j, i]`` float32.
        ijk_to_ras: 4x4 matrix from voxel index ``(i, j, k)`` to world RAS, mm.
    """

    data: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self) -> None:
        """Store float32 data and a float64 matrix."""
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.data.shape
        return i, j, k

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def ras_to_ijk(self) -> np.ndarray:
        """4x4 matrix from world RAS to voxel index."""
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def center(self) -> np.ndarray:
        """Centre of the bounding box in world RAS, mm."""
        mid = (np.array(self.shape_ijk, dtype=np.float64) - 1) / 2
        return self.ijk_to_ras[:3, :3] @ mid + self.ijk_to_ras[:3, 3]


def hu_to_mu(hu: np.ndarray, mu_water: float = MU_WATER) -> np.ndarray:
    """Map Hounsfield units to linear attenuation (1/mm): ``mu = mu_water * (1 + HU / 1000)``, clipped at 0.

    Air (-1000 HU) gives 0, water 0.02/mm, dense bone (+1000 HU) about 0.04/mm.
    """
    mu = mu_water * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0)
    return np.maximum(mu, 0.0).astype(np.float32)
