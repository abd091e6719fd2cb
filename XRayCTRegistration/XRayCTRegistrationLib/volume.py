"""CT volumes: the in-memory representation and HU -> attenuation.

A :class:`Volume` holds a 3D array in storage order ``[k, j, i]`` (slowest to fastest, as
SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` give it) and the 4x4
``ijk_to_ras`` matrix that maps the voxel index ``(i, j, k, 1)`` to world RAS in mm.

Files are read and written with SimpleITK, whose geometry is LPS; the change of frame is
``diag(-1, -1, 1, 1)`` on read and on write. :func:`resample` and :func:`pyramid` change the voxel
size while keeping the physical extent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .errors import InputError
from .files import first_line, write_atomic
from .geometry import LPS_FROM_RAS
from .integrity import check_dicom_series, verify_image_file

log = logging.getLogger(__name__)

MU_WATER = 0.02
"""Linear attenuation of water, 1/mm (about 70 keV effective energy)."""


@dataclass
class Volume:
    """A CT (or attenuation) volume.

    Attributes:
        data: voxel values, ``[k, j, i]`` float32.
        ijk_to_ras: 4x4 matrix from voxel index ``(i, j, k)`` to world RAS, mm.

    A volume is not changed in place once made (make a new one instead): volumes derived from it
    are kept with it (see :meth:`derived`).
    """

    data: np.ndarray
    ijk_to_ras: np.ndarray
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Store float32 data and a float64 matrix."""
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)

    def derived(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """What ``make()`` computes from this volume, made once per ``key`` and kept with this volume.

        Registration uses it for its downsampled pyramid levels, so that registering several X-rays to
        one CT downsamples the CT once; a trained model's CT check for the CT's hash. The data are taken
        as fixed: a volume whose voxels are changed in place keeps what was derived before.
        """
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

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


# -- reading and writing ---------------------------------------------------------------------------
def _lps_matrix_to_ras(direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``ijk_to_ras = diag(-1, -1, 1, 1) @ [direction * spacing | origin]`` from SimpleITK's LPS geometry."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)[None, :]
    m[:3, 3] = origin
    return LPS_FROM_RAS @ m


def _dicom_series(folder: Path) -> list[str]:
    """Sorted file names of the DICOM series in ``folder``; the largest one when there are several."""
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise InputError(f"{folder}: cannot scan the folder for DICOM series ({first_line(e)})") from None
    if not series_ids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    files = {sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files[sid]))
    if len(series_ids) > 1:
        listing = ", ".join(f"{sid} ({len(files[sid])} files)" for sid in series_ids)
        log.warning("%s: %d DICOM series found: %s; reading the largest, %s", folder, len(series_ids), listing, chosen)
    return files[chosen]


def read_image(path: Path) -> sitk.Image:
    """Read one image file with SimpleITK, raising :class:`InputError` naming the file on failure."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    verify_image_file(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: unreadable image ({first_line(e)})") from None


def check_values(data: np.ndarray, where: str) -> None:
    """Reject empty, non-finite or constant arrays with an :class:`InputError` naming ``where``."""
    if data.size == 0:
        raise InputError(f"{where}: image is empty (shape {tuple(data.shape)})")
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum() - n_nan)
        raise InputError(f"{where}: image holds non-finite values ({n_nan} NaN, {n_inf} inf)")
    if float(data.min()) == float(data.max()):
        raise InputError(f"{where}: image is constant (every voxel is {float(data.min())})")


def read_ct(path: str | Path) -> Volume:
    """Read a CT: a 3D image file SimpleITK reads (NIfTI, NRRD, MHA, ...) or a DICOM series folder.

    Values are returned as stored after the file's rescale (HU for CT). The geometry on disk is LPS
    (ITK); the returned ``ijk_to_ras`` maps ``(i, j, k)`` to world RAS in mm. A folder with several
    DICOM series gives the one with the most files, and a warning naming all of them is logged.

    Raises:
        InputError: missing, empty or unreadable file; not a 3D scalar image (2D, single slice, 4D,
            colour); NaN or infinite values; a constant image.
    """
    p = Path(path)
    if p.is_dir():
        files = _dicom_series(p)
        check_dicom_series(files, p)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            image = reader.Execute()
        except RuntimeError as e:
            raise InputError(f"{p}: unreadable DICOM series ({first_line(e)})") from None
    else:
        image = read_image(p)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{p}: expected a scalar CT, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim != 3:
        raise InputError(f"{p}: expected a 3D image, got a {dim}D image of size {size}")
    if min(size) == 0:
        raise InputError(f"{p}: image is empty (size {size})")
    if size[2] == 1:
        hint = "; pass the folder of the DICOM series" if p.is_file() and _is_dicom(p) else ""
        raise InputError(f"{p}: expected a 3D image, got a single slice of size {size[:2]}{hint}")
    data = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)  # [k, j, i]
    check_values(data, str(p))
    ijk_to_ras = _lps_matrix_to_ras(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    return Volume(data, ijk_to_ras)


def _is_dicom(path: Path) -> bool:
    """Whether a file carries the DICOM preamble magic ``DICM``."""
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image (LPS geometry on disk) holding ``volume``'s voxels as float32."""
    lps = LPS_FROM_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    image = sitk.GetImageFromArray(volume.data)  # [k, j, i] -> size (i, j, k)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def write_volume(volume: Volume, path: str | Path) -> None:
    """Write a volume as float32 to ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.mha`` (geometry stored in LPS).

    The write is atomic: a temporary file in the same folder replaces ``path`` only when complete.
    """
    write_atomic(volume_to_sitk(volume), path)


# -- resampling ------------------------------------------------------------------------------------
def _per_axis(value: float | Sequence[float], name: str) -> np.ndarray:
    """Broadcast a number or an (i, j, k) triple to three positive finite floats."""
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy() if np.ndim(value) == 0 else \
        np.asarray(value, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(f"{name}: expected a positive number or three positive numbers (i, j, k), got {value!r}")
    return arr


def resample(volume: Volume, spacing: float | Sequence[float] | None = None, *,
             factor: float | Sequence[float] | None = None) -> Volume:
    """Resample a volume to a new voxel size, keeping its physical extent and orientation.

    Give either ``spacing`` (mm, one number or ``(i, j, k)``) or ``factor`` (new spacing = old spacing *
    factor; 2 halves the number of voxels along an axis). The number of voxels along each axis becomes
    ``max(1, round(n * old / new))`` and the spacing is then adjusted so that the box covered by the
    voxels (``n * spacing``, from the outer faces of the first and last voxel) stays the same; the
    returned spacing can therefore differ slightly from the one asked for.

    Axes that shrink are box-averaged (``torch`` adaptive average pooling: exact block means for
    integer factors), axes that grow are interpolated trilinearly. Voxel centres of the result sit at
    the continuous input index ``(i' + 0.5) * n / n' - 0.5``.
    """
    if (spacing is None) == (factor is None):
        raise InputError("resample: give exactly one of 'spacing' or 'factor'")
    old_spacing = volume.spacing
    target = _per_axis(spacing, "spacing") if spacing is not None else old_spacing * _per_axis(factor, "factor")
    n_old = np.array(volume.shape_ijk)
    n_new = np.maximum(1, np.round(n_old * old_spacing / target)).astype(int)
    if np.array_equal(n_new, n_old):
        return Volume(volume.data.copy(), volume.ijk_to_ras.copy())
    x = torch.from_numpy(volume.data)[None, None]  # [1, 1, k, j, i]
    shrink = np.minimum(n_new, n_old)[::-1]  # (k, j, i)
    with torch.no_grad():
        if np.any(n_new < n_old):
            x = F.adaptive_avg_pool3d(x, tuple(int(v) for v in shrink))
        if np.any(n_new > n_old):
            x = F.interpolate(x, size=tuple(int(v) for v in n_new[::-1]), mode="trilinear", align_corners=False)
    scale = n_old / n_new
    new_from_old = np.eye(4)
    new_from_old[:3, :3] = np.diag(scale)
    new_from_old[:3, 3] = 0.5 * scale - 0.5
    return Volume(x[0, 0].numpy(), volume.ijk_to_ras @ new_from_old)


def pyramid(volume: Volume, levels: int, factor: float = 2.0) -> list[Volume]:
    """Multi-resolution pyramid of ``levels`` volumes, **coarsest first**, the input itself last.

    Entry ``l`` has ``factor ** (levels - 1 - l)`` times the input's spacing (see :func:`resample`);
    each level is resampled from the input directly, not from the level before.
    """
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or levels < 1:
        raise InputError(f"pyramid: 'levels' must be a positive integer, got {levels!r}")
    if not np.isfinite(factor) or factor <= 1:
        raise InputError(f"pyramid: 'factor' must be greater than 1, got {factor!r}")
    out = [resample(volume, factor=float(factor) ** (levels - 1 - level)) for level in range(levels - 1)]
    out.append(volume)
    return out


def block_average(volume: Volume, factors_ijk: Sequence[int]) -> Volume:
    """Average ``volume`` over blocks of ``factors_ijk`` voxels (along i, j, k).

    Voxels left over at the far end of an axis are dropped; the new ``ijk_to_ras`` puts each new
    voxel at the centre of its block, so the geometry stays exact.
    """
    fi, fj, fk = (max(1, int(f)) for f in factors_ijk)
    if (fi, fj, fk) == (1, 1, 1):
        return volume
    a = volume.data
    nk, nj, ni = a.shape[0] // fk, a.shape[1] // fj, a.shape[2] // fi
    if min(nk, nj, ni) < 1:
        raise InputError(f"volume: too small ({volume.shape_ijk}) to downsample by {(fi, fj, fk)}")
    a = a[:nk * fk, :nj * fj, :ni * fi].reshape(nk, fk, nj, fj, ni, fi).mean(axis=(1, 3, 5), dtype=np.float32)
    s = np.eye(4)
    s[:3, :3] = np.diag([fi, fj, fk])
    s[:3, 3] = [(fi - 1) / 2, (fj - 1) / 2, (fk - 1) / 2]
    return Volume(a, volume.ijk_to_ras @ s)


def pad(volume: Volume, width: int = 1, value: float = 0.0) -> Volume:
    """Surround ``volume`` with ``width`` layers of ``value`` on every side, keeping its world geometry.

    Registration renders a zero-padded volume so that attenuation ramps down to zero inside the
    box the rays are clipped to: the image then changes smoothly with the pose where the CT's
    faces cut through the body, and the pose gradient sees that change.
    """
    if width < 1:
        return volume
    data = np.pad(volume.data, width, mode="constant", constant_values=value)
    shift = np.eye(4)
    shift[:3, 3] = -width
    return Volume(data, volume.ijk_to_ras @ shift)
