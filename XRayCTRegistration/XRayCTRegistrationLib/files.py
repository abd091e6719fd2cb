"""The one output layer: every file the library, the CLI and the Slicer module write goes through :class:`Outputs`.

Promises (``Testing/test_faults.py`` checks them):

- every output is checked before any work starts (:meth:`Outputs.file`, :meth:`Outputs.folder`): its
  folder exists and is writable, it is not a folder, not an input (nor the geometry sidecar an input
  implies), not another output, and its format is one the writer knows;
- outputs are written to temporary names in their own folder and renamed into place only after all
  of them are complete; a multi-file output (a folder) is built as a sibling temporary folder and
  swapped in with one rename, the old folder kept until the new one is complete;
- temporary files are removed on every path (errors, exceptions, Ctrl-C);
- files get the permissions the umask gives (as ``open`` does), not ``0600``.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import SimpleITK as sitk

from .errors import InputError

SINGLE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
"""Image formats the volume and X-ray writers accept: one file each, so writes can be atomic."""

PART_MARK = ".part-"
"""Marker in the names of temporary files and folders (``.<name>.part-<token><suffix>``)."""


SITK_REASONS = (
    ("Unable to determine ImageIO reader", "not an image in a format this reader knows, or its header is damaged"),
    ("trouble reading NRRD", "damaged NRRD file (data missing, cut short or corrupt)"),
    ("File cannot be read", "damaged MetaImage file (data missing or cut short)"),
    ("Could not create IO object", "not an image in a format this reader knows"),
)
"""SimpleITK/ITK messages and the sentence said instead (they name C++ sources and temporary paths)."""


def first_line(e: BaseException) -> str:
    """A readable sentence from an exception message: SimpleITK's source locations and prefixes removed."""
    for key, sentence in SITK_REASONS:
        if key in str(e):
            return sentence
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    lines = [s for s in lines if not re.fullmatch(r"(Exception thrown in SimpleITK \w+: )?\S+\.(cxx|h|hxx):\d+:", s)]
    text = lines[0] if lines else type(e).__name__
    text = re.sub(r"^Exception thrown in SimpleITK \w+: \S+\.(cxx|h|hxx):\d+:\s*", "", text)
    text = re.sub(r"^(sitk::ERROR|ITK ERROR): (\w+\(0x[0-9a-f]+\): )?", "", text)
    return text or type(e).__name__


def image_suffix(path: str | Path) -> str:
    """The image file extension of ``path`` in lower case, ``.nii.gz`` counted as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def sidecar_path(image_path: str | Path) -> Path:
    """The geometry sidecar of an image: its name without the image extension, plus ``.json``.

    ``chest.nii.gz`` -> ``chest.json``, ``view.dcm`` -> ``view.json``, ``IM0001`` -> ``IM0001.json``.
    """
    p = Path(image_path)
    suffix = image_suffix(p)
    stem = p.name[: -len(suffix)] if suffix else p.name
    return p.with_name(stem + ".json")


def json_text(obj) -> str:
    """Indented JSON of ``obj`` with NaN and infinities written as ``null`` (JSON has no NaN)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (after resolving links; hard links too when both exist)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class Outputs:
    """The outputs of one command, committed together or not at all.

    Use as a context manager::

        with Outputs(inputs=[ct_path, pose_path]) as out:
            image_tmp = out.file(args.out, "--out", SINGLE_FILE_SUFFIXES, sidecar=True)  # checked now
            ...                                   # the work
            write_image(drr, image_tmp, camera)   # write to the temporary names
        # leaving the block without an exception renames every output into place

    ``inputs`` are the files the command reads: an output that is one of them (or the geometry
    sidecar ``<name>.json`` an input image implies) is refused. Errors raised inside the block that
    name a temporary path are rewritten to name the user's path.
    """

    def __init__(self, inputs: Iterable[str | Path | None] = ()) -> None:
        """Remember the inputs; nothing is created until :meth:`file` or :meth:`folder`."""
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.inputs: list[tuple[Path, str]] = []
        for p in inputs:
            if p is not None and str(p) != "":
                self.add_input(p)
        self.files: list[tuple[Path, Path]] = []  # (temporary, final)
        self.folders: list[tuple[Path, Path, bool]] = []  # (temporary, final, create parents)
        self.finals: list[tuple[Path, str]] = []  # every output and the option naming it

    # -- declaring -------------------------------------------------------------------------------
    def add_input(self, path: str | Path, sidecar: bool = False) -> None:
        """Declare a file the command reads; with ``sidecar``, its geometry sidecar JSON too."""
        p = Path(path)
        self.inputs.append((p, f"the input {p}"))
        if sidecar:
            self.inputs.append((sidecar_path(p), f"the geometry sidecar of {p}"))

    def check(self, path: str | Path, option: str, suffixes: Sequence[str] | None = None) -> Path:
        """Check one output path (see the class docstring) without staging it; returns it as a Path."""
        p = Path(path)
        if str(path) == "":
            raise InputError(f"{option}: empty output path")
        if suffixes is not None and image_suffix(p) not in suffixes:
            raise InputError(f"{p}: {option}: cannot write this format; use one of {', '.join(suffixes)}")
        if p.is_dir():
            raise InputError(f"{p}: {option}: is a folder; give a file name")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{p}: {option}: output folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{p}: {option}: output folder {parent} is not writable")
        for q, name in self.inputs:
            if _same_file(p, q):
                raise InputError(f"{p}: {option}: would overwrite {name}")
        for q, other in self.finals:
            if _same_file(p, q):
                raise InputError(f"{p}: {option}: is also the output of {other}")
        self.finals.append((p, option))
        return p

    def _temp_name(self, p: Path) -> Path:
        """``.<stem>.part-<token><suffix>`` beside ``p`` (the suffix kept: writers pick formats by it)."""
        suffix = image_suffix(p)
        stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
        return p.with_name(f".{stem}{PART_MARK}{self.token}{suffix}")

    def file(self, path: str | Path, option: str, suffixes: Sequence[str] | None = None,
             sidecar: bool = False) -> Path:
        """Check and stage one output file; returns the temporary path to write.

        With ``sidecar`` the image's geometry sidecar (:func:`sidecar_path`) is an output too; its
        temporary name is ``sidecar_path`` of the returned path, so ``write_image`` writes both.
        """
        p = self.check(path, option, suffixes)
        tmp = self._temp_name(p)
        self.files.append((tmp, p))
        if sidecar:
            side = self.check(sidecar_path(p), f"{option} (its geometry sidecar)")
            self.files.append((sidecar_path(tmp), side))
        return tmp

    def folder(self, path: str | Path, option: str, names: Sequence[str], make_parents: bool = False) -> Path:
        """Check and stage an output folder that will hold exactly ``names``; returns the temporary folder.

        An existing folder is replaced as a whole, so it may hold only files of those names (anything
        else is refused rather than lost). With ``make_parents`` missing parent folders are created
        when the outputs are committed (never on a refusal).
        """
        p = Path(path)
        if str(path) == "":
            raise InputError(f"{option}: empty output path")
        if p.exists() and not p.is_dir():
            raise InputError(f"{p}: {option}: exists and is not a folder")
        parent = p.parent if str(p.parent) else Path(".")
        home = next((a for a in [parent, *parent.parents] if a.exists()), None) if make_parents else parent
        if home is None or not home.is_dir():
            raise InputError(f"{p}: {option}: parent folder {parent} does not exist")
        if not os.access(home, os.W_OK | os.X_OK) or (p.is_dir() and not os.access(p, os.W_OK | os.X_OK)):
            raise InputError(f"{p}: {option}: folder is not writable")
        for q, name in self.inputs:
            if _same_file(p, q) or q.resolve().is_relative_to(p.resolve()):
                raise InputError(f"{p}: {option}: holds {name}, which would be replaced")
        for q, other in self.finals:
            if _same_file(p, q) or q.resolve().is_relative_to(p.resolve()):
                raise InputError(f"{p}: {option}: is also the output of {other}")
        if p.is_dir():
            others = sorted(f.name for f in p.iterdir() if f.name not in names)
            if others:
                raise InputError(f"{p}: {option}: folder holds other files ({', '.join(others[:3])}"
                                 f"{', ...' if len(others) > 3 else ''}); give a new or empty folder")
        for name in names:
            self.finals.append((p / name, option))
        tmp = home / f".{p.name}{PART_MARK}{self.token}"
        tmp.mkdir()
        self.folders.append((tmp, p, make_parents))
        return tmp

    # -- committing ------------------------------------------------------------------------------
    def commit(self) -> None:
        """Rename every staged output into place (raises if the work did not write one)."""
        for tmp, final in self.files:
            if not tmp.is_file():
                raise RuntimeError(f"{final}: output was not written")
        for _, final, make_parents in self.folders:
            if make_parents:
                final.parent.mkdir(parents=True, exist_ok=True)
        for tmp, final in self.files:
            os.replace(tmp, final)
        for tmp, final, _ in self.folders:
            _swap_folder(tmp, final, self.token)
        self.files, self.folders = [], []

    def discard(self) -> None:
        """Remove every temporary file and folder."""
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)
        for tmp, _, _ in self.folders:
            shutil.rmtree(tmp, ignore_errors=True)
        self.files, self.folders = [], []

    def rename_in_message(self, text: str) -> str:
        """``text`` with every temporary path replaced by the user's path."""
        for tmp, final in self.files:
            text = text.replace(str(tmp), str(final)).replace(tmp.name, final.name)
        for tmp, final, _ in self.folders:
            text = text.replace(str(tmp), str(final))
        return text

    def __enter__(self) -> Outputs:
        """Start staging."""
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Commit on success; otherwise remove the temporary files and name the user's paths in the error."""
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.discard()
        if isinstance(exc, InputError):
            message = self.rename_in_message(str(exc))
            if message != str(exc):
                raise InputError(message) from None
        return False


def _swap_folder(tmp: Path, final: Path, token: str) -> None:
    """Put the complete folder ``tmp`` at ``final`` with one rename; the old ``final`` goes only afterwards."""
    old = final.with_name(f".{final.name}.old-{token}")
    olds = []
    for attempt in range(5):  # another writer may swap the same folder at the same moment
        if final.exists():
            try:
                os.rename(final, old.with_name(f"{old.name}-{attempt}"))
                olds.append(old.with_name(f"{old.name}-{attempt}"))
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, final)
            break
        except OSError:
            if attempt == 4:
                if olds and not final.exists():
                    os.rename(olds.pop(), final)
                raise
    for o in olds:
        shutil.rmtree(o, ignore_errors=True)


def replace_file(path: str | Path, write: Callable[[Path], None], option: str = "output",
                 suffixes: Sequence[str] | None = None) -> None:
    """Write one file atomically: ``write(temporary_path)``, then rename it to ``path``."""
    with Outputs() as out:
        write(out.file(path, option, suffixes))


def write_atomic(image: sitk.Image, path: str | Path, compress: bool = True,
                 suffixes: Sequence[str] = SINGLE_FILE_SUFFIXES) -> None:
    """Write a SimpleITK image to ``path`` (one of ``suffixes``) atomically (see :class:`Outputs`)."""
    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as e:
            raise InputError(f"{tmp}: cannot write image ({first_line(e)})") from None

    replace_file(path, write, "output", suffixes)


def write_text_atomic(text: str | bytes, path: str | Path) -> None:
    """Write a text file (UTF-8; or ``bytes`` as they are) atomically (see :class:`Outputs`)."""
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    replace_file(path, lambda tmp: tmp.write_bytes(data))
