"""X-ray images: reading with geometry, attenuation-bright conversion, writing and previews.

An X-ray in the library is a 2D float32 array ``[rows, cols]`` (row 0 at the top) whose values
mean attenuation (larger = more attenuating, bone bright, as in a DRR), plus the camera
intrinsics when they are known. :func:`read_xray` reads NRRD, NIfTI, MHA (a 3D image with a
single slice counts as 2D), 16-bit PNG/TIFF and DICOM (DX, CR, XA, RF) through SimpleITK, and
says in :attr:`XRayImage.report` what it did to the pixels and where the geometry came from.

Geometry precedence: the ``geometry`` argument (a :class:`Camera` or a sidecar JSON path) >
the sidecar ``<image name without extension>.json`` next to the image > DICOM tags
(DistanceSourceToDetector 0018|1110, ImagerPixelSpacing 0018|1164 or else PixelSpacing
0028|0030, Rows, Columns) > unknown (``camera is None``).

Attenuation-bright conversion (``kind``):

- ``'attenuation'``: values are used as they are (after the MONOCHROME1 inversion).
- ``'intensity'``: values are detector intensities (air bright) and become ``-log((I + eps) / I0)``
  with ``I0`` the 99.5th percentile of ``I`` (negative values clipped to 0), ``eps = 1e-4 * I0``;
  results below 0 (brighter than ``I0``) are clipped to 0.
- ``'auto'`` (default): DICOM MONOCHROME1 is inverted (ITK's DICOM reader does it: stored ``v``
  becomes ``2**BitsStored - 1 - v``, MONOCHROME2); then, for DICOM, the
  Pixel Intensity Relationship Sign (0028|1041) decides when present (+1: air bright, converted
  with the log above, or only inverted when the relationship 0028|1040 is already ``LOG``), and
  otherwise the stored grey levels are taken as display values, which show bone bright. For
  other files a border-versus-centre test decides: the image is taken as air bright when the
  median of the outer 5 % frame exceeds the median of the central half by more than 10 % of
  the 1-99 percentile range and lies at or above the 75th percentile of the image (the air
  around a patient is the brightest part of a raw image), or when the border median is more
  than 1.5 times the centre median (``(b - c) / (|b| + |c|) > 0.2``: a raw image of a body that
  fills the detector, thinner at the edges than in the middle); otherwise as attenuation-bright.
  Attenuation images (DRRs) are brighter in the middle and are never log-converted by this
  test; a collimated display image stored outside DICOM can fool it: give ``kind`` then.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .files import SINGLE_FILE_SUFFIXES, first_line, sidecar_path, write_atomic, write_text_atomic
from .geometry import Camera
from .integrity import verify_image_file
from .names import XRAY_KINDS
from .volume import check_values

KINDS = XRAY_KINDS
"""Accepted values of ``read_xray(kind=...)`` (defined in :mod:`names`)."""

I0_PERCENTILE = 99.5
"""Percentile of the raw intensities taken as the unattenuated intensity I0."""

EPS_FRACTION = 1e-4
"""``eps = EPS_FRACTION * I0`` in ``-log((I + eps) / I0)``: caps the attenuation of dark pixels near 9.2."""

_DICOM_KEY = re.compile(r"[0-9a-fA-F]{4}\|[0-9a-fA-F]{4}")

RELATIVE_BORDER_EXCESS = 0.2
"""``(border - centre) / (|border| + |centre|)`` above which ``kind='auto'`` takes an image as air-bright."""

TAG_SDD = "0018|1110"
TAG_SID = "0018|1111"
TAG_IMAGER_SPACING = "0018|1164"
TAG_PIXEL_SPACING = "0028|0030"
TAG_PHOTOMETRIC = "0028|0004"
TAG_ROWS = "0028|0010"
TAG_COLS = "0028|0011"
TAG_MODALITY = "0008|0060"
TAG_INTENSITY_RELATIONSHIP = "0028|1040"
TAG_INTENSITY_SIGN = "0028|1041"

GEOMETRY_TAGS = (TAG_SDD, TAG_SID, TAG_IMAGER_SPACING, TAG_PIXEL_SPACING, TAG_ROWS, TAG_COLS)
"""The DICOM tags :func:`dicom_geometry` reads."""


@dataclass
class XRayImage:
    """An X-ray ready for registration.

    Attributes:
        image: ``[rows, cols]`` float32, attenuation-bright, row 0 at the top.
        camera: the view's intrinsics, or None when unknown.
        report: what was done, one sentence each (pixel conversions, where the geometry came from).
        source: the file read.
        hints: geometry values found even when they do not make a full camera (keys among ``sdd``,
            ``sid``, ``row_spacing``, ``col_spacing``, mm), e.g. to pre-fill a form.
    """

    image: np.ndarray
    camera: Camera | None
    report: list[str]
    source: Path
    hints: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return int(self.image.shape[0]), int(self.image.shape[1])


# -- reading -------------------------------------------------------------------------------------
def _read_with_metadata(p: Path) -> tuple[sitk.Image, dict[str, str], bool]:
    """Read an image file; return it, its metadata dictionary and whether it is DICOM."""
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; expected an X-ray image file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    verify_image_file(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
        image = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"{p}: unreadable image ({first_line(e)})") from None
    meta = {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys()}
    # GDCM names DICOM tags "gggg|eeee"; other readers do not.
    is_dicom = any(_DICOM_KEY.fullmatch(k) for k in meta)
    return image, meta, is_dicom


def read_dicom_tags(path: str | Path) -> dict[str, str]:
    """The DICOM attributes of an image file as ``{"gggg|eeee": value string}`` (pixels are not read).

    Raises:
        InputError: missing or unreadable file, or a file that holds no DICOM attributes.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{p}: unreadable image ({first_line(e)})") from None
    meta = {k.lower(): reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys() if _DICOM_KEY.fullmatch(k)}
    if not meta:
        raise InputError(f"{p}: not a DICOM file (no DICOM attributes)")
    return meta


def _to_2d_array(image: sitk.Image, p: Path, is_dicom: bool, report: list[str]) -> np.ndarray:
    """A ``[rows, cols]`` float32 array from a 2D image or a 3D image with one slice; grey from colour."""
    size = image.GetSize()
    dim = image.GetDimension()
    if min(size) == 0:
        raise InputError(f"{p}: image is empty (size {size})")
    if dim == 3 and size[2] == 1:
        if not is_dicom:
            report.append("3D image with a single slice: read as 2D")
    elif dim != 2:
        raise InputError(f"{p}: expected a 2D X-ray, got a {dim}D image of size {size}")
    arr = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if dim == 3:
        arr = arr[0]
    n_comp = image.GetNumberOfComponentsPerPixel()
    if n_comp > 1:  # arr: [rows, cols, components]
        if n_comp in (3, 4):
            arr = arr[..., :3].mean(axis=-1)
            report.append(f"colour image ({n_comp} channels): converted to grey as the mean of R, G, B")
        else:
            arr = arr[..., 0]
            report.append(f"{n_comp} channels per pixel: first channel used")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _invert(arr: np.ndarray) -> np.ndarray:
    """Flip grey levels within their range: ``max + min - I``."""
    return (float(arr.max()) + float(arr.min()) - arr).astype(np.float32)


def intensity_to_attenuation(intensity: np.ndarray) -> tuple[np.ndarray, float]:
    """``-log((I + eps) / I0)`` clipped to ``>= 0``, with I0 the 99.5th percentile; returns it and I0.

    Raises:
        InputError: when the image holds no positive intensity to take I0 from.
    """
    i = np.maximum(np.asarray(intensity, dtype=np.float64), 0.0)
    i0 = float(np.percentile(i, I0_PERCENTILE))
    if i0 <= 0:
        raise InputError("X-ray: no positive intensities to take I0 from")
    eps = EPS_FRACTION * i0
    att = -np.log((i + eps) / (i0 + eps))
    return np.maximum(att, 0.0).astype(np.float32), i0


def air_is_bright(arr: np.ndarray) -> tuple[bool, str]:
    """The border-versus-centre test of the module docstring; returns the answer and a sentence why."""
    rows, cols = arr.shape
    br, bc = max(1, round(0.05 * rows)), max(1, round(0.05 * cols))
    frame = np.ones(arr.shape, dtype=bool)
    frame[br: rows - br, bc: cols - bc] = False
    centre = arr[rows // 4: rows - rows // 4, cols // 4: cols - cols // 4]
    border_med = float(np.median(arr[frame]))
    centre_med = float(np.median(centre))
    lo, p75, hi = np.percentile(arr, [1, 75, 99])
    air_at_border = border_med - centre_med > 0.1 * (hi - lo) and border_med >= p75
    denom = abs(border_med) + abs(centre_med)
    border_much_brighter = denom > 0 and (border_med - centre_med) / denom > RELATIVE_BORDER_EXCESS
    bright = air_at_border or border_much_brighter
    why = f"border median {border_med:.4g} vs centre median {centre_med:.4g}"
    return bool(bright), why


def dicom_number(meta: dict[str, str], tag: str) -> list[float] | None:
    """The numbers of a DICOM decimal-string tag (backslash-separated), or None when absent or unparsable."""
    if tag not in meta or not meta[tag]:
        return None
    try:
        return [float(v) for v in meta[tag].split("\\") if v.strip()]
    except ValueError:
        return None


def dicom_geometry(meta: dict[str, str], report: list[str], hints: dict[str, float]) -> Camera | None:
    """Camera from DICOM tags, or None (saying why in ``report``); fills ``hints`` with what is there.

    ``meta`` maps tags ``"gggg|eeee"`` (lower- or upper-case hex) to their values as DICOM strings
    (multiple values separated by backslashes), as SimpleITK's reader and Slicer's DICOM database
    give them; the rules are those of the module docstring (also used by the Slicer module).
    """
    sdd = dicom_number(meta, TAG_SDD)
    sid = dicom_number(meta, TAG_SID)
    if sdd and sdd[0] > 0:
        hints["sdd"] = sdd[0]
    if sid and sid[0] > 0:
        hints["sid"] = sid[0]
    spacing, spacing_tag = None, None
    for tag, name in ((TAG_IMAGER_SPACING, "ImagerPixelSpacing"), (TAG_PIXEL_SPACING, "PixelSpacing")):
        values = dicom_number(meta, tag)
        if values is None:
            continue
        if len(values) == 2 and min(values) > 0:
            spacing, spacing_tag = values, name
            break
        report.append(f"DICOM {name} {meta[tag]!r} is not a usable pixel size: ignored")
    if spacing is not None:
        hints["row_spacing"], hints["col_spacing"] = spacing
    missing = []
    if "sdd" not in hints:
        missing.append("DistanceSourceToDetector (0018,1110)")
    if spacing is None:
        missing.append("ImagerPixelSpacing (0018,1164) or PixelSpacing (0028,0030)")
    rows, cols = dicom_number(meta, TAG_ROWS), dicom_number(meta, TAG_COLS)
    if not rows or not cols:
        missing.append("Rows/Columns")
    if missing:
        report.append("geometry unknown: DICOM tags lack " + ", ".join(missing))
        return None
    note = "" if spacing_tag == "ImagerPixelSpacing" else " (PixelSpacing taken as the detector pixel size)"
    report.append(f"geometry from DICOM tags: DistanceSourceToDetector, {spacing_tag}, Rows, Columns{note}")
    return Camera(hints["sdd"], int(rows[0]), int(cols[0]), spacing[0], spacing[1])


def _attenuation_bright(arr: np.ndarray, meta: dict[str, str], is_dicom: bool, kind: str,
                        report: list[str]) -> np.ndarray:
    """Apply the conversions of the module docstring to ``arr`` ``[rows, cols]``."""
    photometric = meta.get(TAG_PHOTOMETRIC, "").upper() if is_dicom else ""
    if photometric == "MONOCHROME1":
        # ITK's GDCM reader (SimpleITK >= 2.3) already maps MONOCHROME1 to MONOCHROME2 grey levels.
        report.append("MONOCHROME1: inverted (by the DICOM reader) to MONOCHROME2")
    if kind == "attenuation":
        report.append("kind='attenuation': values used as attenuation")
        return arr
    if kind == "intensity":
        air_bright, why = True, "kind='intensity' given"
        log_scale = False
    elif is_dicom:
        sign = dicom_number(meta, TAG_INTENSITY_SIGN)
        relation = meta.get(TAG_INTENSITY_RELATIONSHIP, "").upper()
        if sign:
            # The sign describes the stored values; a MONOCHROME1 inversion flips it.
            s = sign[0] * (-1 if photometric == "MONOCHROME1" else 1)
            air_bright = s > 0
            why = f"DICOM Pixel Intensity Relationship {relation or '?'}, sign {int(sign[0]):+d}"
            log_scale = relation == "LOG"
        else:
            report.append("DICOM grey levels used as attenuation (display values, bone bright)")
            return arr
    else:
        air_bright, why = air_is_bright(arr)
        log_scale = False
    if not air_bright:
        report.append(f"attenuation-bright image ({why}): values used as they are")
        return arr
    if log_scale:
        report.append(f"air-bright image on a log scale ({why}): inverted")
        return _invert(arr)
    att, i0 = intensity_to_attenuation(arr)
    report.append(f"air-bright raw image ({why}): converted with -log(I/I0), I0={i0:.6g}")
    return att


def _resolve_geometry(geometry: Camera | str | Path | None, p: Path, meta: dict[str, str], is_dicom: bool,
                      image_spacing: tuple[float, ...], report: list[str],
                      hints: dict[str, float]) -> tuple[Camera | None, str]:
    """Pick the camera by precedence; return it and the name of where it came from (for errors)."""
    if is_dicom:
        sub_report: list[str] = []
        dicom_camera = dicom_geometry(meta, sub_report, hints)
    else:
        dicom_camera, sub_report = None, []
        if any(abs(s - 1.0) > 1e-9 for s in image_spacing[:2]):
            hints["col_spacing"], hints["row_spacing"] = float(image_spacing[0]), float(image_spacing[1])
    if isinstance(geometry, Camera):
        report.append("geometry from the geometry argument")
        return geometry, "geometry argument"
    if geometry is not None:
        g = Path(geometry)
        report.append(f"geometry from sidecar {g.name}")
        return Camera.load(g), str(g)
    side = sidecar_path(p)
    if side.is_file():
        report.append(f"geometry from sidecar {side.name}")
        if dicom_camera is not None:
            report.append("DICOM tags also give a geometry: the sidecar wins")
        return Camera.load(side), str(side)
    if is_dicom:
        report.extend(sub_report)
        return dicom_camera, f"{p} (DICOM tags)"
    report.append(f"geometry unknown: no sidecar {side.name} and no DICOM tags")
    return None, ""


def read_xray(path: str | Path, geometry: Camera | str | Path | None = None, kind: str = "auto") -> XRayImage:
    """Read an X-ray image as attenuation-bright float32 ``[rows, cols]`` with its geometry.

    Args:
        path: NRRD, NIfTI, MHA, 16-bit PNG/TIFF or DICOM (DX, CR, XA, RF) file.
        geometry: a :class:`Camera`, or the path of a geometry sidecar JSON; overrides the sidecar
            next to the image and the DICOM tags.
        kind: ``'auto'``, ``'attenuation'`` or ``'intensity'`` (see the module docstring).

    Raises:
        InputError: missing, empty or unreadable file; not 2D; NaN or infinite values; a constant
            image; a geometry whose rows/cols differ from the image; a bad ``kind``.
    """
    if kind not in KINDS:
        raise InputError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    p = Path(path)
    image, meta, is_dicom = _read_with_metadata(p)
    report: list[str] = []
    arr = _to_2d_array(image, p, is_dicom, report)
    check_values(arr, str(p))
    try:
        arr = _attenuation_bright(arr, meta, is_dicom, kind, report)
    except InputError as e:
        raise InputError(f"{p}: {e}") from None
    hints: dict[str, float] = {}
    camera, where = _resolve_geometry(geometry, p, meta, is_dicom, image.GetSpacing(), report, hints)
    if camera is not None and (camera.rows, camera.cols) != arr.shape:
        raise InputError(f"{where}: geometry is {camera.rows}x{camera.cols} pixels (rows x cols) but the image "
                         f"{p.name} is {arr.shape[0]}x{arr.shape[1]}")
    return XRayImage(np.ascontiguousarray(arr, dtype=np.float32), camera, report, p, hints)


# -- masks ---------------------------------------------------------------------------------------
def read_mask(path: str | Path) -> np.ndarray:
    """A drawn X-ray mask ``[rows, cols]`` from a 2D image file (any values; 0 = ignored), as float32."""
    p = Path(path)
    image, _meta, is_dicom = _read_with_metadata(p)
    arr = _to_2d_array(image, p, is_dicom, [])
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{p}: mask holds NaN or infinite values")
    return arr


def crop_margins(border_px: int | Sequence[int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixels of a collimator crop: one number for every edge, or four."""
    values = [border_px] if np.ndim(border_px) == 0 else list(border_px)
    if len(values) not in (1, 4) or not all(float(v) == int(v) for v in values):
        raise InputError(f"X-ray mask: crop must be one whole number of pixels or four (top, bottom, left, right), "
                         f"got {border_px}")
    top, bottom, left, right = (int(v) for v in (values * 4 if len(values) == 1 else values))
    return top, bottom, left, right


def xray_mask(image: np.ndarray, value_range: tuple[float, float] | None = None,
              border_px: int | Sequence[int] = 0, mask: np.ndarray | None = None) -> np.ndarray:
    """Similarity weights ``[rows, cols]`` (1 = used, 0 = ignored) of an X-ray, for ``registration.register(mask=)``.

    The one X-ray mask of the project: ``register --mask/--mask-range/--crop`` and the Slicer module's X-ray mask
    settings both call it.

    Args:
        image: the attenuation-bright X-ray ``[rows, cols]``.
        value_range: ``(low, high)``: only pixels with ``low <= value <= high`` are used (a threshold that drops
            collimator blades, burnt-out air or bright overlays).
        border_px: pixels dropped at the edges (a collimator crop): one number for every edge, or four
            ``(top, bottom, left, right)``; top is row 0, left is column 0.
        mask: a drawn mask ``[rows, cols]``: pixels where it is 0 are dropped.

    Raises:
        InputError: a bad range, a negative crop or one that leaves no pixel, a mask of another shape, or nothing left.
    """
    img = np.asarray(image)
    out = np.ones(img.shape, dtype=np.float32)
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        if not (np.isfinite(low) and np.isfinite(high)) or low > high:
            raise InputError(f"X-ray mask: value range must be two finite numbers low <= high, got {value_range}")
        out[(img < low) | (img > high)] = 0.0
    top, bottom, left, right = crop_margins(border_px)
    rows, cols = img.shape[:2]
    if min(top, bottom, left, right) < 0 or top + bottom >= rows or left + right >= cols:
        raise InputError(f"X-ray mask: border of {border_px} px does not fit a {rows}x{cols} image")
    out[:top], out[rows - bottom:], out[:, :left], out[:, cols - right:] = 0.0, 0.0, 0.0, 0.0
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != img.shape:
            raise InputError(f"X-ray mask: shape {m.shape} does not match the X-ray {img.shape}")
        out[m == 0] = 0.0
    if not out.any():
        raise InputError("X-ray mask: no pixel is left to register on")
    return out


# -- writing -------------------------------------------------------------------------------------
def _check_image_2d(image: np.ndarray, what: str) -> np.ndarray:
    """A 2D float32 array or an :class:`InputError` naming ``what``."""
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{what}: expected a non-empty 2D image [rows, cols], got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def write_image(image: np.ndarray, path: str | Path, camera: Camera | None = None, sidecar: bool = True) -> None:
    """Write a 2D float image ``[rows, cols]`` to ``.nrrd``, ``.mha``, ``.nii`` or ``.nii.gz``, atomically.

    With a camera, the pixel spacing is ``(col_spacing, row_spacing)`` and the origin is the centre
    of pixel (0, 0) on the detector in camera coordinates (mm), so physical coordinates are camera
    ``x, y``; and, when ``sidecar`` is true, the geometry sidecar (:func:`sidecar_path`) is written
    too, so that :func:`read_xray` finds the camera again.
    """
    p = Path(path)
    arr = _check_image_2d(image, str(p))
    img = sitk.GetImageFromArray(arr)  # [rows, cols] -> size (cols, rows)
    if camera is not None:
        if (camera.rows, camera.cols) != arr.shape:
            raise InputError(f"{p}: camera is {camera.rows}x{camera.cols} pixels but the image is "
                             f"{arr.shape[0]}x{arr.shape[1]}")
        img.SetSpacing((camera.col_spacing, camera.row_spacing))
        centre = camera.pixel_centers()[0, 0]
        img.SetOrigin((float(centre[0]), float(centre[1])))
    write_atomic(img, p, suffixes=SINGLE_FILE_SUFFIXES)
    if camera is not None and sidecar:
        write_text_atomic(json.dumps(camera.to_dict(), indent=2) + "\n", sidecar_path(p))


def to_uint8(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Window an image between its ``low`` and ``high`` percentiles to ``uint8`` (NaN -> 0)."""
    arr = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = np.percentile(arr[finite], [low, high])
    if hi <= lo:
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    scaled = np.where(finite, np.clip(scaled, 0.0, 1.0), 0.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path, low: float = 1.0, high: float = 99.0) -> None:
    """Write an 8-bit PNG preview of a 2D image, windowed between its ``low``/``high`` percentiles, atomically."""
    p = Path(path)
    arr = _check_image_2d(image, str(p))
    write_atomic(sitk.GetImageFromArray(to_uint8(arr, low, high)), p, compress=False, suffixes=(".png",))
