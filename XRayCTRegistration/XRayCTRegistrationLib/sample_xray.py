"""The simulated sample X-ray: a radiograph simulated from a sample CT at a stated pose, with its geometry.

No acquired radiograph with its imaging geometry (and the CT of the same patient) is available from the package
registries the sample CTs come from, so the sample X-ray is *simulated*, and named so everywhere: the DRR of the
sha256-checked sample CT (``data.SAMPLES``) at the pose stated here, turned into a noisy, blurred radiograph by
the library's detector model (``simulate.xray_from_drr``: Poisson counts, Gaussian detector blur). It is made on
the user's machine from the CT, once (no download beyond the CT's), and written into the sample cache with its
geometry sidecar (CONVENTIONS.md) and its ground-truth pose (a pose file relative to the CT's AP reference view).

Determinism: the recipe (pose, detector, noise, seed, samples per ray) is fixed in :data:`SIMULATED_XRAYS` and the
DRR is rendered on the CPU, so the same library version makes the same image from the same CT. Floating-point
rounding may differ between CPUs, so the files are not compared with checksums recorded here; instead a manifest,
written last, records the CT's sha256, the recipe and the sha256 of each file as written. The cached files are
used only when the manifest matches the recipe and the CT and every file still has its sha256; otherwise (a
truncated or altered file, another recipe) they are made again.

The module imports neither torch nor the renderer until an X-ray is made: the Slicer module lists the recipes at
startup, before torch may be installed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .data import SAMPLES, DataError, cache_folder, sample_ct_path, sha256_of
from .files import write_text_atomic

if TYPE_CHECKING:
    import numpy as np

    from .geometry import Camera

RECIPE_VERSION = 1
"""Changes whenever the way the X-ray is made changes (a new version makes the cached files again)."""


@dataclass(frozen=True)
class SimulatedXray:
    """How a simulated sample X-ray is made.

    Attributes:
        sample: name of the sample CT it is simulated from (``data.SAMPLES``).
        params: the ground-truth pose ``(rx, ry, rz, tx, ty, tz)`` (degrees, mm) relative to the CT's AP
            reference view (CONVENTIONS.md; isocentre at the CT's centre, source-isocentre 0.7 sdd).
        detector: the detector geometry as the geometry sidecar's fields (CONVENTIONS.md; mm, pixels).
        photons: unattenuated counts per pixel of the Poisson noise.
        blur_px: Gaussian detector blur, sigma in pixels.
        seed: seed of the noise.
        n_samples: samples per ray of the DRR.
    """

    sample: str
    params: tuple[float, float, float, float, float, float]
    detector: tuple[tuple[str, float], ...]
    photons: float
    blur_px: float
    seed: int
    n_samples: int

    @property
    def camera(self) -> Camera:
        """The detector geometry as a library ``Camera``."""
        from .geometry import Camera

        return Camera.from_dict(dict(self.detector), f"simulated {self.sample} X-ray")

    @property
    def stem(self) -> str:
        """The file name stem, e.g. ``chest_simulated_xray``."""
        return f"{self.sample}_simulated_xray"

    def recipe(self) -> dict:
        """Everything that decides the image, as JSON values (recorded in the manifest)."""
        return {"version": RECIPE_VERSION, "sample": self.sample, "params": [float(v) for v in self.params],
                "camera": dict(self.detector), "photons": float(self.photons), "blur_px": float(self.blur_px),
                "seed": int(self.seed), "n_samples": int(self.n_samples), "device": "cpu"}

    def paths(self, cache_dir: str | Path | None = None) -> dict[str, Path]:
        """Where the files lie in the cache: ``xray`` (NRRD), ``geometry`` (its sidecar), ``pose``, ``manifest``."""
        folder = cache_folder(cache_dir) / f"simulated-{self.sample}-xray"
        return {"xray": folder / f"{self.stem}.nrrd", "geometry": folder / f"{self.stem}.json",
                "pose": folder / f"{self.stem}_pose.json", "manifest": folder / f"{self.stem}_manifest.json"}


SIMULATED_XRAYS: dict[str, SimulatedXray] = {
    "chest": SimulatedXray("chest", (4.0, -6.0, 3.0, 8.0, -12.0, 25.0),
                           (("sdd", 1020.0), ("rows", 256), ("cols", 256), ("row_spacing", 2.0),
                            ("col_spacing", 2.0), ("x0", 0.0), ("y0", 0.0)),
                           photons=2e4, blur_px=1.0, seed=14, n_samples=256),
}
"""The simulated sample X-rays, by the name of the sample CT they are made from."""

FILE_ROLES = ("xray", "geometry", "pose")
"""The files of a simulated X-ray that the manifest checks."""


def simulated_xray(name: str = "chest") -> SimulatedXray:
    """The recipe of sample CT ``name``'s simulated X-ray; :class:`DataError` naming those that have one."""
    if name not in SIMULATED_XRAYS:
        raise DataError(f"sample data {name!r} has no simulated X-ray (samples with one: "
                        f"{', '.join(SIMULATED_XRAYS)})")
    return SIMULATED_XRAYS[name]


def describe_simulated_xrays() -> list[str]:
    """One line per simulated X-ray (for ``sample-data --list``)."""
    lines = []
    for name, sim in SIMULATED_XRAYS.items():
        c = dict(sim.detector)
        pose = ", ".join(f"{k} {v:g}" for k, v in zip(("rx", "ry", "rz", "tx", "ty", "tz"), sim.params, strict=True))
        lines.append(f"{name} simulated X-ray (--simulated-xray): a DRR of the {name} sample CT with Poisson noise "
                     f"({sim.photons:g} photons) and {sim.blur_px:g}-pixel blur, {c['rows']}x{c['cols']} pixels of "
                     f"{c['row_spacing']:g} mm, sdd {c['sdd']:g} mm, at the known pose {pose} (degrees, mm, from the "
                     "AP view); made here from the CT, not an acquired radiograph")
    return lines


def _manifest_matches(sim: SimulatedXray, paths: dict[str, Path], ct_sha256: str) -> bool:
    """Whether the cached files were made by this recipe from this CT and are unchanged since."""
    try:
        manifest = json.loads(paths["manifest"].read_text(encoding="utf-8"))
        if manifest.get("ct_sha256") != ct_sha256 or manifest.get("recipe") != sim.recipe():
            return False
        return all(paths[role].is_file() and sha256_of(paths[role]) == manifest["files"][role] for role in FILE_ROLES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def make_simulated_xray(sim: SimulatedXray, ct_path: str | Path, folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the X-ray of ``sim`` from the CT file and write it into ``folder``; returns ``(image, pose)``.

    Writes ``<stem>.nrrd`` (attenuation-bright, float32 ``[rows, cols]``), its geometry sidecar ``<stem>.json``
    and the ground-truth pose ``<stem>_pose.json`` (``world_from_camera`` and the parameters, world RAS, mm).
    """
    import numpy as np

    from .geometry import ReferenceView, save_pose, source_inside_volume
    from .projector import render
    from .simulate import NoiseModel, xray_from_drr
    from .volume import Volume, hu_to_mu, read_ct
    from .xray import write_image

    ct = read_ct(ct_path)
    camera = sim.camera
    reference = ReferenceView.ap(ct.center, camera.sdd)
    pose = reference.pose(np.asarray(sim.params, dtype=np.float64))
    if source_inside_volume(ct, pose):
        raise DataError(f"simulated X-ray of {sim.sample!r}: its pose puts the source inside the CT")
    drr = render(Volume(hu_to_mu(ct.data), ct.ijk_to_ras), camera, pose, n_samples=sim.n_samples)
    noise = NoiseModel(photons=sim.photons, blur_px=sim.blur_px)
    image = xray_from_drr(drr, noise, np.random.default_rng(sim.seed))
    folder = Path(folder)
    write_image(image, folder / f"{sim.stem}.nrrd", camera)
    save_pose(folder / f"{sim.stem}_pose.json", pose, reference)
    return image, pose


def _make_into_cache(sim: SimulatedXray, ct_path: Path, paths: dict[str, Path], ct_sha256: str) -> None:
    """Make the files in a temporary folder beside the cache's, move them in, then write the manifest."""
    folder = paths["manifest"].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths["manifest"].unlink(missing_ok=True)  # the old files are not valid from here on
    except OSError as e:
        raise DataError(f"{folder}: cannot write the simulated X-ray there ({e})") from None
    print(f"making the simulated {sim.sample} X-ray from the sample CT (once): {folder}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=".make-", dir=folder) as tmp:
        make_simulated_xray(sim, ct_path, tmp)
        staged = {role: Path(tmp) / paths[role].name for role in FILE_ROLES}
        digests = {role: sha256_of(path) for role, path in staged.items()}
        for role, path in staged.items():
            os.replace(path, paths[role])
    manifest = {"what": f"a simulated X-ray of the {sim.sample} sample CT (not an acquired radiograph)",
                "ct_sha256": ct_sha256, "recipe": sim.recipe(), "files": digests}
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", paths["manifest"])


def simulated_xray_paths(cache_dir: str | Path | None = None, name: str = "chest") -> dict[str, Path]:
    """Paths of sample CT ``name``'s simulated X-ray, its geometry sidecar and its ground-truth pose.

    The CT is fetched and sha256-checked first (:func:`data.sample_ct_path`); the X-ray is made from it on first
    use, and made again whenever the cached files do not match their manifest (see the module's docstring).
    Returns ``{"xray", "geometry", "pose", "manifest", "ct"}`` paths (``ct``: the sample CT it is made from).
    """
    sim = simulated_xray(name)
    ct_path = sample_ct_path(cache_dir, sim.sample)
    ct_sha256 = SAMPLES[sim.sample].members["ct"][1]
    paths = sim.paths(cache_dir)
    if not _manifest_matches(sim, paths, ct_sha256):
        if paths["manifest"].is_file():
            print(f"cached simulated X-ray {name!r} is incomplete or altered (sha256); making it again",
                  file=sys.stderr)
        _make_into_cache(sim, ct_path, paths, ct_sha256)
    return {**paths, "ct": ct_path}
