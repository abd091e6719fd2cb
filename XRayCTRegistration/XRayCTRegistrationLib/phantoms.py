"""Synthetic CT volumes for tests, examples and the Slicer self-test.

All volumes are in Hounsfield units with an axis-aligned RAS ``ijk_to_ras`` centred on the
world origin unless an offset is given.
"""

from __future__ import annotations

import numpy as np

from .volume import Volume


def _grid(shape_kji: tuple[int, int, int], spacing: tuple[float, float, float], origin: np.ndarray):
    """World RAS coordinates (x, y, z), each ``[k, j, i]``, of the voxel centres."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape_kji)
    x = origin[0] + spacing[0] * i
    y = origin[1] + spacing[1] * j
    z = origin[2] + spacing[2] * k
    return np.meshgrid(x, y, z, indexing="xy")  # each [j, i, k]


def chest_phantom(shape_ijk: tuple[int, int, int] = (64, 48, 48), spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
                  center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Volume:
    """A small chest-like CT in HU: body, lungs, heart, a segmented spine, ribs and a sternum.

    The structures are asymmetric (heart to the patient's left, a bead in the right lung), so
    poses of it are distinguishable. Axis i runs along +x (toward the patient's right), j along
    +y (anterior), k along +z (superior).

    Args:
        shape_ijk: voxels along i, j and k.
        spacing: voxel size in mm along i, j, k.
        center: world RAS position of the volume centre, mm.
    """
    ni, nj, nk = shape_ijk
    sp = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(center, dtype=np.float64) - sp * (np.array(shape_ijk) - 1) / 2
    x, y, z = _grid((nk, nj, ni), tuple(sp), origin)  # each [j, i, k]
    ext = sp * (np.array(shape_ijk) - 1) / 2  # half extents, mm
    c = np.asarray(center, dtype=np.float64)
    x, y, z = x - c[0], y - c[1], z - c[2]
    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    ax, ay = 0.85 * ext[0], 0.75 * ext[1]
    body = (x / ax) ** 2 + (y / ay) ** 2 < 1
    hu[body] = 30.0
    for side in (-1, 1):  # lungs
        lung = ((x - side * 0.42 * ax) / (0.33 * ax)) ** 2 + ((y + 0.05 * ay) / (0.6 * ay)) ** 2 \
            + (z / (0.8 * ext[2])) ** 2 < 1
        hu[lung] = -820.0
    heart = ((x + 0.15 * ax) / (0.28 * ax)) ** 2 + ((y - 0.2 * ay) / (0.35 * ay)) ** 2 \
        + ((z + 0.25 * ext[2]) / (0.35 * ext[2])) ** 2 < 1
    hu[heart] = 45.0
    bead = (x - 0.45 * ax) ** 2 + (y - 0.1 * ay) ** 2 + (z - 0.3 * ext[2]) ** 2 < (2.5 * sp.max()) ** 2
    hu[bead] = 1500.0
    # spine: vertebral bodies with discs, posterior
    yv = -0.55 * ay
    pitch = max(6 * sp[2], 0.2 * ext[2])
    phase = np.mod(z + 0.5 * pitch, pitch) / pitch
    vert = ((x / (0.12 * ax)) ** 2 + ((y - yv) / (0.14 * ay)) ** 2 < 1) & (phase > 0.2)
    hu[vert] = 350.0
    shell = vert & ((x / (0.09 * ax)) ** 2 + ((y - yv) / (0.1 * ay)) ** 2 > 1)
    hu[shell] = 900.0
    spinous = (np.abs(x) < 0.03 * ax + sp[0] / 2) & (y < yv - 0.12 * ay) & (y > yv - 0.32 * ay) & (phase > 0.35)
    hu[spinous] = 800.0
    # ribs: elliptic rings at the vertebra levels, tilted down anteriorly
    r = np.sqrt((x / (0.92 * ax)) ** 2 + (y / (0.92 * ay)) ** 2)
    zr = z + 0.15 * (y + ay)
    rib_phase = np.mod(zr, pitch) / pitch
    ribs = (np.abs(r - 0.93) < 0.035) & (np.abs(rib_phase - 0.5) < 0.12) & (y > yv - 0.1 * ay) & body \
        & (np.abs(z) < 0.85 * ext[2])
    hu[ribs] = 750.0
    sternum = (np.abs(x) < 0.06 * ax) & (np.abs(y - 0.88 * ay) < 0.06 * ay) & (np.abs(z) < 0.6 * ext[2])
    hu[sternum] = 600.0
    data = np.transpose(hu, (2, 0, 1))  # [j, i, k] -> [k, j, i]
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag(sp)
    ijk_to_ras[:3, 3] = origin
    return Volume(data, ijk_to_ras)
