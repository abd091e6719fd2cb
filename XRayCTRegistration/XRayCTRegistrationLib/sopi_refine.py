"""The ``sopi-fine`` and ``sopi-fine-opt`` refinement methods (registered in :mod:`registry`).

``sopi-fine`` runs SOPI's learned fine registration (:func:`sopi_fine.iterate`) from the given
start with a model trained by ``xrayctreg train --model sopi-fine`` on this CT for this detector
geometry; ``sopi-fine-opt`` then refines its result with an intensity method
(:func:`registration.register`, ``opt-lncc`` by default), SOPI's "SOPI + opt". The start can be a
given pose, the reference view, or a trained initialiser's prediction (``--init-model rtpi.pt``):
the pipeline does the initialisation, this module the refinement.

Frames and units as everywhere: poses ``world_from_camera`` (4x4, world RAS), parameters in
degrees and mm relative to a :class:`geometry.ReferenceView` (the model's own view internally, the
caller's ``reference`` in the result).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .geometry import Camera, ReferenceView, check_rigid
from .names import FINE_MODEL
from .networks.composite import FineNet
from .registration import RegistrationResult, register
from .sopi_fine import FineScene, IterationSettings, iterate
from .training import check_camera_match, read_model_file, read_network
from .training_data import RenderSettings, ct_hash, prepare_image
from .volume import Volume

INTENSITY_OPTIONS = ("levels", "max_iterations", "step_sizes", "mask", "labels", "label_ids", "renderer", "tolerance",
                     "patience", "max_shrinks")
"""Options of :func:`registration.register` that ``sopi-fine-opt`` passes on to its intensity step."""


@dataclass
class FineModel:
    """A trained ``sopi-fine`` network ready to register (see :func:`load_fine_model`).

    Attributes:
        net: the two composite encoders (evaluation mode).
        reference: the view its training poses were relative to.
        camera: the detector geometry it was trained for.
        render: the resolutions of its training DRRs.
        use_mask: whether its distance is weighted by the projected CT mask.
        info: the model file's dictionary without the weights.
        name: where it was read from.
    """

    net: FineNet
    reference: ReferenceView
    camera: Camera
    render: RenderSettings
    use_mask: bool
    info: dict
    name: str = "model"

    def check_camera(self, camera: Camera) -> None:
        """Raise :class:`InputError` unless ``camera`` is the geometry the model was trained for."""
        check_camera_match(self.info, camera, self.name)

    def check_volume(self, volume_mu: Volume) -> None:
        """Raise :class:`InputError` unless ``volume_mu`` is the attenuation of the CT the model was trained on."""
        expected = self.info["ct"].get("mu_sha256")
        if expected != ct_hash(volume_mu):
            source = self.info["ct"].get("source") or "unnamed"
            raise InputError(f"{self.name}: model was trained on another CT ({source}, "
                             f"{'x'.join(map(str, self.info['ct']['shape_ijk']))} voxels); train one for this CT "
                             f"with 'xrayctreg train --model {FINE_MODEL}'")


def load_fine_model(path: str | Path, device: str | torch.device = "cpu") -> FineModel:
    """Read a ``sopi-fine`` model file written by ``training.train`` (finished or interrupted)."""
    d = read_model_file(path, device)
    if d["method"] != FINE_MODEL:
        raise InputError(f"{path}: a '{d['method']}' model, not a {FINE_MODEL} one; give it as --init-model, "
                         f"and a model from 'xrayctreg train --model {FINE_MODEL}' as --model")
    options, net, info = read_network(d, device)
    return FineModel(net, ReferenceView.from_dict(d["reference"]), Camera.from_dict(d["geometry"]), options.render,
                     options.mask_loss, info, str(path))


def _model(model: object, device: str) -> FineModel:
    """A :class:`FineModel` from what the caller gave (a file or a loaded model)."""
    if isinstance(model, FineModel):
        return model
    if isinstance(model, (str, Path)) and str(model):
        return load_fine_model(model, device)
    raise InputError(f"--method {FINE_MODEL} needs --model FILE (from 'xrayctreg train --model {FINE_MODEL}')")


def _scene(volume_mu: Volume, model: FineModel, device: str) -> FineScene:
    """The model's low-resolution scene of ``volume_mu``, built once per volume (``Volume.derived``)."""
    key = ("sopi-fine-scene", tuple(sorted(model.render.to_dict().items())),
           tuple(sorted(model.camera.to_dict().items())), tuple(np.round(model.reference.world_from_camera, 9).ravel()),
           str(device))
    return volume_mu.derived(key, lambda: FineScene.from_mu(volume_mu, model.camera, model.reference, model.render,
                                                            device))


def register_sopi_fine(volume_mu: Volume, xray: np.ndarray, camera: Camera, init_world_from_camera: np.ndarray, *,
                       reference: ReferenceView | None = None, model: object = None, polish: str | None = None,
                       progress: Callable[[float, str], None] | None = None,
                       should_stop: Callable[[], bool] | None = None, device: str = "cpu",
                       time_budget_s: float | None = None, fine_iterations: int | None = None,
                       freeze_rotation_after: int | None = None, **options) -> RegistrationResult:
    """Refine ``init_world_from_camera`` by SOPI's learned fine registration (and an intensity step with ``polish``).

    Args:
        volume_mu: the CT's attenuation (1/mm), world RAS; must be the CT the model was trained on.
        xray: attenuation-bright X-ray ``[rows, cols]``.
        camera: its geometry; must be the model's.
        init_world_from_camera: the start, 4x4.
        reference: the view the result's parameters are relative to (default the CT's AP view).
        model: a model file from ``xrayctreg train --model sopi-fine`` or a loaded :class:`FineModel`.
        polish: an intensity method (``opt-lncc``, ...) run from the fine result, or None.
        progress: ``progress(fraction, message)`` after each fine iteration (and during ``polish``).
        should_stop: polled after each iteration; True stops the registration (the result says so).
        device: torch device.
        time_budget_s: stop the fine iterations after this many seconds.
        fine_iterations: most fine iterations (default :class:`sopi_fine.IterationSettings`).
        freeze_rotation_after: keep the rotation fixed after this many fine iterations.
        **options: for ``polish``: the options of :data:`INTENSITY_OPTIONS` (others are ignored). Through the
            pipeline ``polish`` runs on the registration's default levels (``own_schedule`` in :mod:`registry`),
            not on a learned initialiser's finer refinement schedule.

    Returns:
        A ``registration.RegistrationResult``; ``similarity`` is ``-L_N`` (the embedded distance) for
        ``sopi-fine``, the intensity method's similarity with ``polish``.
    """
    t0 = time.perf_counter()
    fine = _model(model, device)
    fine.check_camera(camera)
    fine.check_volume(volume_mu)
    reference = reference or ReferenceView.ap(volume_mu.center, camera.sdd)
    start = check_rigid(init_world_from_camera, "init")
    settings = IterationSettings(freeze_rotation_after=freeze_rotation_after, time_budget_s=time_budget_s)
    if fine_iterations is not None:
        settings.max_iterations = int(fine_iterations)
    scene = _scene(volume_mu, fine, device)
    fixed = prepare_image(xray, camera, fine.render).to(scene.device)
    p0 = torch.as_tensor(fine.reference.params(start), dtype=torch.float64)[None]
    out = iterate(fine.net, scene, fixed, p0, settings, use_mask=fine.use_mask, progress=progress,
                  should_stop=should_stop)
    pose = fine.reference.pose(out.params[0].detach().cpu().numpy())
    # never a success alone: L_N is a learned distance whose minimum can lie at a wrong pose (sopi.md: 20 of 20
    # chest cases stopped 2 mm or more off); an intensity step after it gives the verdict
    result = RegistrationResult(world_from_camera=pose, params=reference.params(pose), similarity=-float(out.loss[0]),
                                initial_similarity=-float(out.initial_loss[0]), iterations=out.iterations,
                                wall_time_s=time.perf_counter() - t0, method=FINE_MODEL, success=False,
                                message=f"{out.message}; {FINE_MODEL} alone cannot verify its pose; "
                                        f"{FINE_MODEL}-opt ends with an intensity step that can",
                                reference=reference)
    if polish is None:
        return result
    kw = {k: v for k, v in options.items() if k in INTENSITY_OPTIONS}
    opt = register(volume_mu, xray, camera, pose, reference=reference, method=polish, progress=progress,
                   should_stop=should_stop, device=device, **kw)
    return dataclasses.replace(opt, iterations=out.iterations + opt.iterations, wall_time_s=time.perf_counter() - t0,
                               method=f"{FINE_MODEL}+{polish}", message=f"{FINE_MODEL}: {out.message}; {polish}: "
                                                                        f"{opt.message}")
