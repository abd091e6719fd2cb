"""The method registry: every registration (refinement) and initialisation method, by name.

A method is one module plus one call to :func:`register_method`. The CLI's ``--method`` choices,
the Slicer module's method list and the benchmark's method list all read :func:`method_names`, so a
registered method appears in all of them. This module imports nothing heavy (no numpy, no torch):
a method's function may be given as a ``"package.module:function"`` string, imported on first use.

Calling conventions (all lengths mm, poses ``world_from_camera`` 4x4 in world RAS):

- ``kind="refine"``: ``fn(volume_mu, xray, camera, init_world_from_camera, *, reference, progress,
  should_stop, device, **options) -> result`` (a ``multi_view`` method also takes a list of X-rays, a list of
  cameras and ``relative_views=[camera0_from_camera_v, ...]``, see ``pipeline.View``) where ``result`` has at
  least ``world_from_camera``,
  ``params``, ``similarity``, ``initial_similarity``, ``iterations``, ``wall_time_s``, ``method``,
  ``success``, ``message`` and ``to_dict()`` (e.g. :class:`registration.RegistrationResult`).
- ``kind="init"``: ``fn(inputs, source) -> pipeline.Initialisation``; ``inputs`` is a
  :class:`pipeline.Inputs` (CT, X-ray, camera, reference, device), ``source`` what the caller gave
  as ``init`` (a pose, a model file, ...).

See :func:`pipeline.register_xray` for the entry point that runs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import InputError
from .names import DEFAULT_METHOD

KINDS = ("refine", "init")
"""Kinds of methods: ``refine`` optimises a pose from a start, ``init`` gives a start."""


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: its name (``--method NAME``).
        kind: ``"refine"`` or ``"init"``.
        spec: the function, or ``"package.module:function"`` imported on first use.
        options: keyword arguments always passed to the function (callers' options override them).
        description: one line for help texts.
        needs_model: the method needs a trained model file (``--model``).
        multi_view: the method takes several X-rays (lists of images and cameras and ``relative_views``).
        own_schedule: the method sets its own levels (``levels``, ``max_iterations`` mean something else to it,
            nothing, or its final intensity step runs on the registration's default levels): a learned
            initialiser's refinement schedule (``pipeline.Initialisation.refine_options``) is not passed to it.
    """

    name: str
    kind: str
    spec: Callable | str
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    needs_model: bool = False
    multi_view: bool = False
    own_schedule: bool = False

    def function(self) -> Callable:
        """The method's function (imports its module when the spec is a string)."""
        if callable(self.spec):
            return self.spec
        module, _, attr = self.spec.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, dict[str, Method]] = {kind: {} for kind in KINDS}


def register_method(name: str, fn: Callable | str, *, kind: str = "refine", description: str = "",
                    replace: bool = False, needs_model: bool = False, multi_view: bool = False,
                    own_schedule: bool = False, **options: Any) -> Method:
    """Register a method under ``name``; returns it.

    Args:
        name: the name users give (``--method NAME``); letters, digits, ``-`` and ``_``.
        fn: the function (see the module's calling conventions) or ``"package.module:function"``.
        kind: ``"refine"`` (default) or ``"init"``.
        description: one line shown in help texts.
        replace: allow replacing a method of the same name and kind (else an ``InputError``).
        needs_model: the method needs a trained model file (benchmarks that train nothing leave it out).
        multi_view: the method registers several X-rays at once (biplane; see ``pipeline.View``).
        own_schedule: see :class:`Method`.
        **options: keyword arguments bound to every call (e.g. the similarity of a generic optimiser).
    """
    if kind not in KINDS:
        raise InputError(f"register_method: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise InputError(f"register_method: bad method name {name!r} (letters, digits, '-' and '_' only)")
    if not (callable(fn) or (isinstance(fn, str) and ":" in fn)):
        raise InputError(f"register_method: {name}: give a function or 'package.module:function', got {fn!r}")
    if name in _REGISTRY[kind] and not replace:
        raise InputError(f"register_method: a {kind} method named {name!r} is already registered")
    method = Method(name, kind, fn, MappingProxyType(dict(options)), description, needs_model, multi_view,
                    own_schedule)
    _REGISTRY[kind][name] = method
    return method


def unregister_method(name: str, kind: str = "refine") -> None:
    """Remove a registered method (tests use it to clean up)."""
    _REGISTRY[kind].pop(name, None)


def method_names(kind: str = "refine", needs_model: bool | None = None,
                 multi_view: bool | None = None) -> tuple[str, ...]:
    """Names of the registered methods of a kind, in registration order.

    With ``needs_model`` given, only the methods that need a trained model file (True) or only those that do not;
    with ``multi_view`` given, only the methods that register several X-rays at once (True) or only the others.
    """
    if kind not in KINDS:
        raise InputError(f"method_names: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return tuple(n for n, m in _REGISTRY[kind].items() if (needs_model is None or m.needs_model == needs_model)
                 and (multi_view is None or m.multi_view == multi_view))


def get_method(name: str, kind: str = "refine") -> Method:
    """The method registered as ``name``; ``InputError`` lists the choices when there is none."""
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        what = "method" if kind == "refine" else "init"
        raise InputError(f"{what}: unknown {kind} method {name!r}; choose one of "
                         f"{', '.join(_REGISTRY.get(kind, {}))}") from None


def check_method_model(method: str, model: object, option: str = "--model") -> None:
    """Raise :class:`InputError` unless the refinement ``method`` and its trained model file agree.

    Checked before any work, by the CLI (``register --method M --model FILE``) and the Slicer module: a
    ``needs_model`` method needs a model (a file path, or an already loaded model object); a method that takes
    none must get none; a model given as a path must be a readable file. ``option`` names the model in the
    messages (``--model``, or the Slicer field's label). Whether the file holds the right kind of model is
    checked when the method loads it.
    """
    m = get_method(method, "refine")
    if m.needs_model and not model:
        raise InputError(f"{option}: method {method} needs a model file (train one with 'xrayctreg train')")
    if model and not m.needs_model:
        raise InputError(f"{option}: method {method} takes no model file; give none, or choose one of "
                         f"{', '.join(method_names('refine', needs_model=True))}")
    if isinstance(model, (str, PathLike)):
        path = Path(model)
        if path.is_dir():
            raise InputError(f"{option}: {path}: is a folder, not a model file")
        if not path.is_file():
            raise InputError(f"{option}: {path}: model file not found")
        try:
            path.open("rb").close()
        except OSError as e:
            raise InputError(f"{option}: {path}: model file cannot be read ({e.strerror})") from None


def describe(kind: str = "refine") -> str:
    """``name (description), ...`` of a kind's methods, for help texts; the default method is marked."""
    parts = []
    for m in _REGISTRY[kind].values():
        label = m.name + (" (default)" if kind == "refine" and m.name == DEFAULT_METHOD else "")
        parts.append(f"{label}: {m.description}" if m.description else label)
    return "; ".join(parts)


# -- the built-in methods ----------------------------------------------------------------------------------
_INTENSITY = {
    "opt-ncc": "normalised cross-correlation",
    "opt-mncc": "multiscale NCC (global and patches)",
    "opt-lncc": "local NCC over patches",
    "opt-gc": "gradient correlation",
    "opt-ngi": "normalised gradient information",
    "opt-gd": "gradient difference",
}
"""The intensity-based methods of :func:`registration.register` (its ``METHODS``), in the order offered."""
INTENSITY_METHODS = tuple(_INTENSITY)
"""Names of the intensity-based refine methods (the ones ``finish_fit`` can end)."""
for _name, _text in _INTENSITY.items():
    register_method(_name, f"{__package__}.registration:register", kind="refine", method=_name, multi_view=True,
                    description=f"intensity-based, maximises {_text}")

register_method("reference", f"{__package__}.pipeline:init_reference", kind="init",
                description="the CT's AP reference view")
register_method("pose", f"{__package__}.pipeline:init_pose", kind="init",
                description="a given pose (4x4 world_from_camera or a pose JSON file)")
register_method("model", f"{__package__}.pipeline:init_model", kind="init",
                description="the prediction of a trained initialiser (model file from 'xrayctreg train')")
register_method("dppc", f"{__package__}.dppc:register_dppc", kind="refine", own_schedule=True,
                description="point-to-plane correspondences from NCC patch matching (classical DPPC)")
register_method("dppc-opt", f"{__package__}.dppc:register_dppc", kind="refine", final="opt-lncc", own_schedule=True,
                description="dppc, then an opt-lncc intensity step")
register_method("ppc", f"{__package__}.ppc_learned:register_ppc", kind="refine", needs_model=True, own_schedule=True,
                description="learned point-to-plane: recurrent flow + PointNet weights (needs --model)")
register_method("ppc-opt", f"{__package__}.ppc_learned:register_ppc", kind="refine", needs_model=True,
                final="opt-lncc", own_schedule=True,
                description="ppc, then an opt-lncc intensity step (needs --model)")

register_method("search-opt", f"{__package__}.search:register_search", kind="refine",
                description=f"an in-plane search of the start (rotations and shifts by FFT correlation), then "
                            f"{DEFAULT_METHOD}")

# SOPI's learned fine registration (stage 2); needs a model from 'xrayctreg train --model sopi-fine'
register_method("sopi-fine", f"{__package__}.sopi_refine:register_sopi_fine", kind="refine", needs_model=True,
                own_schedule=True,
                description="SOPI's learned fine registration on embedded features (needs --model from "
                            "'train --model sopi-fine')")
# its intensity step runs on the registration's own levels: after RTPI + sopi-fine the finer level of a learned
# initialiser's schedule doubled the time (about 2 against 0.9 s) for no fewer failures (sopi.md, "SOPI + opt on
# the registration's own levels")
register_method("sopi-fine-opt", f"{__package__}.sopi_refine:register_sopi_fine", kind="refine", needs_model=True,
                polish=DEFAULT_METHOD, own_schedule=True,
                description=f"sopi-fine, then {DEFAULT_METHOD} from its result (needs --model)")
register_method("dicom", f"{__package__}.carm:init_dicom", kind="init",
                description="the C-arm angles of the X-ray's DICOM attributes (PositionerPrimaryAngle, "
                            "PositionerSecondaryAngle, DistanceSourceToPatient) about the CT's centre")
