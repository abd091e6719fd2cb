"""Atomic file writes: a failed write leaves neither a partial file nor a temporary one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from .errors import InputError


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception message (SimpleITK's are long)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = lines[0] if lines else type(e).__name__
    # SimpleITK prefixes messages with the source location; keep the readable end.
    return text.split(": ", 1)[-1] if text.startswith("Exception thrown in SimpleITK") else text


SINGLE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
"""Formats that :func:`write_volume` and the X-ray writer accept: one file each, so writes can be atomic."""


def image_suffix(path: Path) -> str:
    """The image file extension of ``path`` in lower case, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def write_atomic(image: sitk.Image, path: str | Path, compress: bool = True,
                 suffixes: Sequence[str] = SINGLE_FILE_SUFFIXES) -> None:
    """Write ``image`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    ``suffixes`` lists the extensions accepted (single-file formats only). A failed write leaves
    neither a partial ``path`` nor the temporary file behind.
    """
    p = Path(path)
    suffix = image_suffix(p)
    if suffix not in suffixes:
        raise InputError(f"{p}: cannot write this format; use one of {', '.join(suffixes)}")
    if not p.parent.is_dir():
        raise InputError(f"{p}: output folder {p.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name[: -len(suffix)]}.", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp_name, compress)
        os.replace(tmp_name, p)
    except RuntimeError as e:
        raise InputError(f"{p}: cannot write image ({first_line(e)})") from None
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)


def write_text_atomic(text: str | bytes, path: str | Path) -> None:
    """Write a text file (or ``bytes`` as they are) through a temporary file in the same folder and ``os.replace``.

    Every file the library writes that is not an image goes through here (JSON, model files, downloads).
    """
    p = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
        os.replace(tmp_name, p)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
