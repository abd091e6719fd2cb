"""The one entry point from an X-ray to a registered pose: initialise, then refine.

:func:`register_xray` is what the CLI, the Slicer logic, the demo and the benchmarks call::

    from XRayCTRegistrationLib.pipeline import register_xray
    out = register_xray(ct_hu, xray, camera, init="model.pt", method="opt-lncc")
    out.world_from_camera, out.success, out.to_dict()

1. **Initialise** with a registered ``init`` method (:mod:`registry`): the CT's AP reference view
   (``init=None``), a given pose (a 4x4 ``world_from_camera`` or a pose JSON file), or a trained
   initialiser (a model file from ``xrayctreg train`` or a loaded ``training.Initialiser``).
2. **Refine** with a registered ``refine`` method (``method=``, e.g. ``opt-lncc``), unless
   ``refine=False``.

Several views (biplane): the first X-ray is given as ``xray``/``camera`` and every further one as a
:class:`View` (its image, camera and ``camera0_from_camera``, the fixed pose of its camera in the first
one's frame) in ``views=``. The initialisation uses the first view; the refinement (a ``multi_view``
method) matches all of them with one CT pose, which pins down the depth that one view sees least.

A new method is one module plus one :func:`registry.register_method` call (re-exported here); it
then appears in ``xrayctreg register --method``, in the Slicer module's method list and in the
benchmark's method list. Frames and units follow CONVENTIONS.md: mm, degrees, world RAS, poses
``world_from_camera``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .geometry import Camera, ReferenceView, check_rigid, load_pose
from .names import DEFAULT_METHOD
from .registry import INTENSITY_METHODS, Method, get_method, method_names, register_method
from .volume import Volume, hu_to_mu

__all__ = ["DEFAULT_METHOD", "Initialisation", "Inputs", "PipelineResult", "View", "register_method", "method_names",
           "register_xray"]


@dataclass(frozen=True)
class View:
    """A further X-ray of the same registration (biplane): view ``v`` > 0.

    Attributes:
        image: attenuation-bright X-ray ``[rows, cols]``.
        camera: its detector geometry.
        camera0_from_camera: 4x4 rigid matrix (mm) mapping this view's camera frame to the first view's camera
            frame (CONVENTIONS.md "Several views"): the C-arm's motion between the two exposures.
        mask: similarity weights ``[rows, cols]`` of this X-ray (0 = ignored), or None.
        name: how error messages name the view (a file, a node).
    """

    image: np.ndarray
    camera: Camera
    camera0_from_camera: np.ndarray
    mask: np.ndarray | None = None
    name: str = "view 1"


@dataclass
class Inputs:
    """What every method sees.

    Attributes:
        ct_hu: the CT in HU (world RAS), or None when only its attenuation was given.
        volume_mu: the CT's attenuation (1/mm, :func:`volume.hu_to_mu`), world RAS.
        xray: attenuation-bright X-ray ``[rows, cols]``.
        camera: its detector geometry.
        reference: the view pose parameters are relative to (default: the CT's AP view).
        device: torch device.
        ct_name: how error messages name the CT (a file name, a node name).
        views: the further X-rays of a biplane registration (the first is ``xray``/``camera``).
    """

    ct_hu: Volume | None
    volume_mu: Volume
    xray: np.ndarray
    camera: Camera
    reference: ReferenceView
    device: str = "cpu"
    ct_name: str = "the CT"
    views: tuple[View, ...] = ()


@dataclass
class Initialisation:
    """What an ``init`` method returns.

    Attributes:
        world_from_camera: the initial pose (4x4, world RAS from camera).
        method: how the result JSON names the initialisation (e.g. ``reference``, ``init-model (m.pt)``).
        message: one line saying what was done.
        reference: a view that replaces the inputs' reference for the refinement and the result
            (a trained model's own reference view), or None.
        refine_options: default options of the refinement that follows (callers' options override them).
    """

    world_from_camera: np.ndarray
    method: str
    message: str
    reference: ReferenceView | None = None
    refine_options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """Outcome of :func:`register_xray`.

    Attributes:
        initialisation: the initialisation alone, as a ``registration.RegistrationResult`` (0 iterations;
            its similarity is the refinement's initial similarity, or the NCC of the DRR with the X-ray
            when there was no refinement).
        refinement: the refinement's result (None with ``refine=False``).
        timings: ``initialisation_s``, ``refinement_s`` and ``total_s``, wall-clock seconds.
        views: how many X-rays the refinement matched (1, or 2 for biplane).
    """

    initialisation: Any
    refinement: Any | None
    timings: dict[str, float]
    views: int = 1

    @property
    def result(self) -> Any:
        """The final result: the refinement's, or the initialisation's when there was none."""
        return self.initialisation if self.refinement is None else self.refinement

    @property
    def world_from_camera(self) -> np.ndarray:
        """The final pose, 4x4 world RAS from camera."""
        return np.asarray(self.result.world_from_camera, dtype=np.float64)

    @property
    def params(self) -> np.ndarray:
        """The final pose parameters (degrees, mm) relative to :attr:`reference`."""
        return np.asarray(self.result.params, dtype=np.float64)

    @property
    def reference(self) -> ReferenceView | None:
        """The view the parameters are relative to."""
        return self.result.reference

    @property
    def iterations(self) -> int:
        """Iterations of the refinement (0 without one)."""
        return int(self.result.iterations)

    @property
    def success(self) -> bool:
        """The final result's success flag."""
        return bool(self.result.success)

    def to_dict(self) -> dict:
        """The result JSON of CONVENTIONS.md: the final result's fields, the initialisation and the timings."""
        d = dict(self.result.to_dict())
        init = self.initialisation
        d["initialisation"] = {
            "method": init.method,
            "world_from_camera": np.asarray(init.world_from_camera, dtype=float).tolist(),
            "params": dict(init.to_dict()["params"]),
            "similarity": float(init.similarity),
            "wall_time_s": float(init.wall_time_s),
            "message": init.message,
        }
        d["timings"] = {k: float(v) for k, v in self.timings.items()}
        d["views"] = int(self.views)
        return d


# -- init methods (registered in registry.py) ---------------------------------------------------------------
def init_reference(inputs: Inputs, source: object = None) -> Initialisation:
    """Start from the reference view (the CT's AP view unless the caller gave another)."""
    return Initialisation(inputs.reference.world_from_camera, "reference", "started from the reference view")


def init_pose(inputs: Inputs, source: object) -> Initialisation:
    """Start from a given pose: a 4x4 ``world_from_camera`` or a pose JSON file (or a registration result)."""
    if isinstance(source, (str, Path)):
        return Initialisation(load_pose(source), "pose", f"started from the pose in {source}")
    if source is None:
        raise InputError("init: the 'pose' initialisation needs a pose (4x4 world_from_camera or a pose JSON file)")
    return Initialisation(check_rigid(source, "init"), "pose", "started from the given pose")


def init_model(inputs: Inputs, source: object) -> Initialisation:
    """Start from the pose a trained initialiser predicts (a model file or a loaded ``training.Initialiser``).

    The model must have been trained on this CT (HU voxels and geometry) for this detector geometry, else
    an ``InputError`` says so. The refinement after it uses ``registration.refine_schedule`` by default,
    and the model's reference view.
    """
    from .registration import refine_schedule
    from .training import Initialiser, initialise, load_initialiser

    if isinstance(source, Initialiser):
        model = source
    elif isinstance(source, (str, Path)) and str(source):
        model = load_initialiser(source, device=inputs.device)
    else:
        raise InputError("init: the 'model' initialisation needs a model file (from 'xrayctreg train')")
    if inputs.ct_hu is None:
        raise InputError(f"{model.name}: checking the model against the CT needs the CT in HU; pass ct=")
    model.check_ct(inputs.ct_hu, inputs.ct_name)
    pose = initialise(model, inputs.xray, inputs.camera)
    return Initialisation(pose, f"init-model ({Path(model.name).name})",
                          f"initialised with {model.name} ({model.method})", reference=model.reference,
                          refine_options=refine_schedule(inputs.camera))


# -- the pipeline -------------------------------------------------------------------------------------------
def init_kind(init: object) -> str:
    """The ``init`` method that fits what was given.

    None -> ``reference``; a matrix or a ``.json`` file -> ``pose``; any other file or a loaded
    initialiser -> ``model``.
    """
    if init is None:
        return "reference"
    if isinstance(init, (str, Path)):
        return "pose" if str(init).lower().endswith(".json") else "model"
    if isinstance(init, (np.ndarray, list, tuple)):
        return "pose"
    return "model"


def make_inputs(ct: Volume | None, xray: np.ndarray, camera: Camera, *, volume_mu: Volume | None = None,
                reference: ReferenceView | None = None, device: str = "cpu", ct_name: str = "the CT",
                views: Sequence[View] = ()) -> Inputs:
    """Check and gather the inputs; the attenuation is computed from ``ct`` (HU) unless ``volume_mu`` is given."""
    if ct is None and volume_mu is None:
        raise InputError("ct: give the CT (HU) or its attenuation volume (volume_mu=)")
    if not isinstance(camera, Camera):
        raise InputError(f"camera: expected a Camera, got {type(camera).__name__}")
    for view in views:
        if not isinstance(view, View):
            raise InputError(f"views: expected pipeline.View items, got {type(view).__name__}")
        if not isinstance(view.camera, Camera):
            raise InputError(f"{view.name}: no geometry (expected a Camera, got {type(view.camera).__name__})")
        check_rigid(view.camera0_from_camera, f"{view.name}: camera0_from_camera")
    if volume_mu is None:
        volume_mu = Volume(hu_to_mu(ct.data), ct.ijk_to_ras)
    if reference is None:
        reference = ReferenceView.ap(volume_mu.center, camera.sdd)
    return Inputs(ct, volume_mu, np.asarray(xray), camera, reference, str(device), ct_name, tuple(views))


def view_arguments(method: Method, inputs: Inputs, options: Mapping[str, Any]) -> tuple[Any, Any, dict]:
    """``(xray, camera, options)`` of a refinement: the first view alone, or every view's list for biplane.

    With further views the method must be ``multi_view``; the images, cameras, ``relative_views`` (identity
    first) and masks (``options["mask"]`` for the first view, ``View.mask`` for the others) become lists.
    """
    if not inputs.views:
        return inputs.xray, inputs.camera, dict(options)
    n = 1 + len(inputs.views)
    if not method.multi_view:
        raise InputError(f"method: {method.name} registers one X-ray; for {n} views use one of "
                         f"{', '.join(method_names('refine', multi_view=True))}")
    images = [inputs.xray, *(v.image for v in inputs.views)]
    cameras = [inputs.camera, *(v.camera for v in inputs.views)]
    out = {**options, "relative_views": [np.eye(4), *(np.asarray(v.camera0_from_camera, float) for v in inputs.views)]}
    if out.get("mask") is not None or any(v.mask is not None for v in inputs.views):
        out["mask"] = [out.get("mask"), *(v.mask for v in inputs.views)]
    return images, cameras, out


def register_xray(ct: Volume | None, xray: np.ndarray, camera: Camera, init: object = None,
                  method: str = DEFAULT_METHOD, refine: bool = True, *, init_method: str | None = None,
                  volume_mu: Volume | None = None, reference: ReferenceView | None = None,
                  progress: Callable[[float, str], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, device: str = "cpu", ct_name: str = "the CT",
                  views: Sequence[View] = (), **options: Any) -> PipelineResult:
    """Register an X-ray to a CT: initialise, then refine.

    Args:
        ct: the CT in HU (world RAS); may be None when ``volume_mu`` is given and no trained model is used.
        xray: attenuation-bright X-ray ``[rows, cols]`` (see ``xray.read_xray``).
        camera: its detector geometry.
        init: None (the reference view), a 4x4 ``world_from_camera``, a pose JSON file, a model file from
            ``xrayctreg train`` or a loaded ``training.Initialiser`` (see :func:`init_kind`).
        method: the refinement, a registered ``refine`` method (:func:`registry.method_names`).
        refine: False: the initialisation alone (its similarity is the NCC of the DRR with the X-ray).
        init_method: a registered ``init`` method to use instead of the one :func:`init_kind` picks.
        volume_mu: the CT's attenuation (1/mm) when the caller has it (a cached one keeps its pyramid).
        reference: the view pose parameters are relative to; default the CT's AP view at ``camera.sdd``
            (a trained model's own view replaces it).
        progress: ``progress(fraction in [0, 1], message)`` during the refinement.
        should_stop: polled by the refinement; True stops it (the result says so).
        device: torch device.
        ct_name: how error messages name the CT.
        views: further X-rays (:class:`View`) registered together with ``xray`` (biplane); the refinement must
            be a ``multi_view`` method.
        **options: passed to the refinement method (e.g. ``levels``, ``max_iterations``, ``time_budget_s``).

    Returns:
        A :class:`PipelineResult`.

    Raises:
        InputError: an unknown method, bad inputs, a model trained for another CT or geometry.
    """
    t0 = time.perf_counter()
    refiner = get_method(method, "refine") if refine else None
    for key in ("finish_fit", "ignore_background", "multi_start"):
        if key in options and (refiner is None or refiner.name not in INTENSITY_METHODS):
            raise InputError(f"{key}: only with an intensity method (opt-*) that refines, not {method}"
                             + ("" if refine else " without refinement"))
    initialiser = get_method(init_method or init_kind(init), "init")
    inputs = make_inputs(ct, xray, camera, volume_mu=volume_mu, reference=reference, device=device,
                         ct_name=ct_name, views=views)
    if refiner is not None:
        images, cameras, options = view_arguments(refiner, inputs, options)
    start = initialiser.function()(inputs, init, **initialiser.options)
    ref = start.reference or inputs.reference
    pose = check_rigid(start.world_from_camera, f"init ({initialiser.name})")
    t_init = time.perf_counter() - t0
    if refiner is None:
        initialisation = _initialisation_result(start, pose, ref, t_init, _ncc_at(inputs, pose), start.message)
        return PipelineResult(initialisation, None, _timings(t0, t_init, 0.0))
    t1 = time.perf_counter()
    result = refiner.function()(inputs.volume_mu, images, cameras, pose, reference=ref,
                                progress=progress, should_stop=should_stop, device=device,
                                **{**refiner.options, **({} if refiner.own_schedule else start.refine_options),
                                   **options})
    t_refine = time.perf_counter() - t1
    initialisation = _initialisation_result(start, pose, ref, t_init, float(result.initial_similarity),
                                            start.message)
    return PipelineResult(initialisation, result, _timings(t0, t_init, t_refine), 1 + len(inputs.views))


def _timings(t0: float, t_init: float, t_refine: float) -> dict[str, float]:
    return {"initialisation_s": t_init, "refinement_s": t_refine, "total_s": time.perf_counter() - t0}


def _ncc_at(inputs: Inputs, pose: np.ndarray) -> float:
    """NCC of the full-resolution DRR at ``pose`` with the X-ray."""
    import torch

    from .metrics import image_ncc
    from .projector import Projector

    with torch.no_grad():
        drr = Projector(inputs.volume_mu, inputs.camera, device=inputs.device)(torch.as_tensor(pose)).cpu().numpy()
    return image_ncc(drr, inputs.xray)


UNVERIFIED_INITIALISATION = "an initialisation alone is not verified: refine it for a verdict"
"""What an initialisation's result says: ``success`` is false, since no optimisation checked the pose."""


def _initialisation_result(start: Initialisation, pose: np.ndarray, reference: ReferenceView, seconds: float,
                           similarity: float, message: str):
    """The initialisation as a ``RegistrationResult`` (0 iterations, similarity as given, never a success)."""
    from .registration import RegistrationResult

    return RegistrationResult(world_from_camera=pose, params=reference.params(pose), similarity=similarity,
                              initial_similarity=similarity, iterations=0, wall_time_s=seconds,
                              method=start.method, success=False, message=f"{message}; {UNVERIFIED_INITIALISATION}",
                              reference=reference)
