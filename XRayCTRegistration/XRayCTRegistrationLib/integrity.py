"""Integrity checks of input image files, made before SimpleITK reads (and may silently repair) them.

SimpleITK reads a ``.nii.gz`` cut short as if whole (the missing voxels come back as zeros), turns
NaN voxels of a NIfTI file into 0, and reads a compressed MetaImage with a damaged stream into
wrong values. :func:`verify_image_file` reads every compressed stream to its end (the gzip CRC and
length, the zlib checksum), compares the data length with the header's voxel count, and looks for
NaN and infinities in floating-point NIfTI data. :func:`check_dicom_series` checks the slice
geometry of a DICOM series (missing slices, duplicate positions, uneven spacing, mixed orientations
or sizes). Every problem is an :class:`InputError` naming the user's file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .files import first_line

NRRD_TYPE_BYTES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
    "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
    "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4,
    "longlong": 8, "long long": 8, "long long int": 8, "signed long long": 8, "signed long long int": 8,
    "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8, "unsigned long long int": 8,
    "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}
"""Bytes per value of the NRRD ``type`` field's spellings."""

META_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}
"""Bytes per value of MetaImage ``ElementType`` values."""


def _gunzip(data: bytes, path: Path) -> bytes:
    """The whole content of a gzip stream, or an :class:`InputError` saying it is cut short or corrupt."""
    try:
        return gzip.decompress(data)
    except EOFError:
        raise InputError(f"{path}: compressed data is cut short (the file is truncated)") from None
    except (OSError, zlib.error) as e:
        raise InputError(f"{path}: compressed data is corrupt ({e})") from None


def _check_length(have: int, need: int, path: Path) -> None:
    if have < need:
        raise InputError(f"{path}: image data is cut short ({have} of {need} bytes; the file is truncated)")


def _verify_nifti(raw: bytes, path: Path) -> None:
    """NIfTI-1 (the whole file's bytes, decompressed): data length, and NaN/inf in float data."""
    if len(raw) < 348:
        raise InputError(f"{path}: NIfTI header is cut short ({len(raw)} bytes)")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348:
        return  # NIfTI-2 or not NIfTI: left to SimpleITK
    dims = struct.unpack(endian + "8h", raw[40:56])
    datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    n = int(np.prod([max(1, d) for d in dims[1:1 + max(0, min(dims[0], 7))]], dtype=np.int64))
    _check_length(len(raw), vox_offset + n * max(bitpix, 8) // 8, path)
    if datatype in (16, 64):  # float32, float64
        values = np.frombuffer(raw, dtype=endian + ("f4" if datatype == 16 else "f8"), count=n, offset=vox_offset)
        _check_finite(values, path)
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise InputError(f"{path}: NIfTI header holds a non-finite scaling (scl_slope {slope}, scl_inter {inter})")


def _check_finite(values: np.ndarray, path: Path) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        n_nan = int(np.isnan(values).sum())
        n_inf = int(values.size - finite.sum()) - n_nan
        raise InputError(f"{path}: image holds non-finite values ({n_nan} NaN, {n_inf} inf)")


def _split_header(raw: bytes, end: bytes, path: Path) -> tuple[str, bytes] | None:
    """The text header up to ``end`` and the bytes after it, or None when there is no such marker."""
    at = raw.find(end)
    if at < 0:
        return None
    return raw[:at].decode("latin-1"), raw[at + len(end):]


def _verify_nrrd(raw: bytes, path: Path) -> None:
    """NRRD with attached data: the gzip stream read to the end, the data length checked."""
    parts = _split_header(raw, b"\n\n", path)
    if parts is None:
        return
    header, data = parts
    fields = {}
    for line in header.splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if "data file" in fields or "datafile" in fields:
        return
    encoding = fields.get("encoding", "raw").lower()
    try:
        n = int(np.prod([int(v) for v in fields.get("sizes", "").split()], dtype=np.int64))
    except ValueError:
        return
    need = n * NRRD_TYPE_BYTES.get(fields.get("type", "").lower(), 1)
    if encoding in ("gzip", "gz"):
        data = _gunzip(data, path)
    elif encoding != "raw":
        return
    _check_length(len(data), need, path)


def _verify_meta(raw: bytes, path: Path) -> None:
    """MetaImage with local data: the zlib stream read to the end, the data length checked."""
    parts = _split_header(raw, b"ElementDataFile = LOCAL", path)
    if parts is None:
        return
    header, data = parts
    data = data[1:] if data.startswith(b"\n") else data[2:] if data.startswith(b"\r\n") else data
    fields = {}
    for line in header.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip()] = value.strip()
    try:
        n = int(np.prod([int(v) for v in fields.get("DimSize", "").split()], dtype=np.int64))
        n *= int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return
    need = n * META_TYPE_BYTES.get(fields.get("ElementType", ""), 1)
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            data = zlib.decompress(data)
        except zlib.error as e:
            raise InputError(f"{path}: compressed data is corrupt or cut short ({e})") from None
    _check_length(len(data), need, path)


def verify_image_file(path: str | Path) -> None:
    """Check an image file's data before SimpleITK reads it (see the module docstring).

    Formats without a checksum or a length to compare (PNG, TIFF, DICOM) are left to SimpleITK.

    Raises:
        InputError: a compressed stream cut short or corrupt, data shorter than the header says,
            NaN or infinite values in a floating-point NIfTI file.
    """
    p = Path(path)
    name = p.name.lower()
    if not name.endswith((".gz", ".nii", ".nrrd", ".nhdr", ".mha")):
        return
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"{p}: cannot read the file ({e.strerror})") from None
    if name.endswith(".gz"):
        raw = _gunzip(raw, p)
        name = name[:-3]
    if name.endswith(".nii"):
        _verify_nifti(raw, p)
    elif name.endswith(".nrrd"):
        _verify_nrrd(raw, p)
    elif name.endswith(".mha"):
        _verify_meta(raw, p)


# -- DICOM series ----------------------------------------------------------------------------------
def _slice_info(file: str) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """(position, orientation [6], (rows, columns)) of one DICOM slice, from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise InputError(f"{file}: unreadable DICOM slice ({first_line(e)})") from None

    def numbers(tag: str, count: int) -> np.ndarray:
        text = reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else ""
        try:
            values = np.array([float(v) for v in text.strip().split("\\")], dtype=np.float64)
        except ValueError:
            values = np.zeros(0)
        if values.shape != (count,) or not np.all(np.isfinite(values)):
            raise InputError(f"{file}: DICOM slice lacks a usable {tag} ({text.strip()!r})")
        return values

    size = tuple(reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "?" for t in ("0028|0010", "0028|0011"))
    return numbers("0020|0032", 3), numbers("0020|0037", 6), size


def check_dicom_series(files: Sequence[str], folder: str | Path, tolerance: float = 0.01) -> None:
    """Refuse a DICOM series whose slices do not make one regular volume.

    Checks, in this order: every slice has the same orientation (ImageOrientationPatient) and size
    (Rows, Columns); no two slices share a position; the positions along the slice normal are evenly
    spaced within ``tolerance`` (a fraction of the spacing), so a missing slice shows as a gap.

    Raises:
        InputError: naming the folder and the slices (files, positions in mm) where the series breaks.
    """
    if len(files) < 2:
        return
    infos = [_slice_info(f) for f in files]
    names = [Path(f).name for f in files]
    for (_, orient, size), name in zip(infos[1:], names[1:], strict=True):
        if not np.allclose(orient, infos[0][1], atol=1e-4):
            raise InputError(f"{folder}: mixed slice orientations ({names[0]} and {name}); not one volume")
        if size != infos[0][2]:
            raise InputError(f"{folder}: mixed slice sizes ({names[0]} is {'x'.join(infos[0][2])}, {name} is "
                             f"{'x'.join(size)} pixels); not one volume")
    normal = np.cross(infos[0][1][:3], infos[0][1][3:])
    depth = np.array([float(normal @ pos) for pos, _, _ in infos])
    order = np.argsort(depth)
    depth, names = depth[order], [names[i] for i in order]
    steps = np.diff(depth)
    for i, step in enumerate(steps):
        if step < 1e-3:
            raise InputError(f"{folder}: two slices at the same position {depth[i]:.3f} mm ({names[i]} and "
                             f"{names[i + 1]}); duplicate slices")
    spacing = float(np.median(steps))
    for i, step in enumerate(steps):
        if abs(step - spacing) > tolerance * spacing:
            missing = f"; about {round(step / spacing) - 1} slice(s) missing" if step > 1.5 * spacing else ""
            raise InputError(f"{folder}: uneven slice spacing: {step:.3f} mm between {names[i]} ({depth[i]:.3f} mm) "
                             f"and {names[i + 1]} ({depth[i + 1]:.3f} mm), {spacing:.3f} mm elsewhere{missing}")
