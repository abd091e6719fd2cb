"""Names shared by the library, the CLI and the Slicer module, defined once.

This module imports nothing (no numpy, no torch), so the Slicer module can read it before the
library's dependencies are installed. Registration and initialisation method names live in
:mod:`registry`, which is torch-free too.
"""

PARAM_NAMES = ("rx", "ry", "rz", "tx", "ty", "tz")
"""Pose parameters, degrees (rx, ry, rz) and mm (tx, ty, tz); see CONVENTIONS.md."""

XRAY_KINDS = ("auto", "attenuation", "intensity")
"""What an X-ray's grey levels are: ``attenuation`` = bone bright, as a DRR; ``intensity`` = raw detector
intensities (air bright), converted with ``-log(I / I0)``; ``auto`` = decided by ``xray.air_is_bright``."""

INITIALISER_METHODS = ("regressor", "rtpi")
"""Learned initialiser kinds that ``training.train`` knows (``xrayctreg train --model``)."""

FINE_MODEL = "sopi-fine"
"""SOPI's learned fine registration (stage 2), trained by ``training.train``; used by ``--method sopi-fine``."""

REFINER_MODELS = ("ppc", FINE_MODEL)
"""Learned refinement methods that ``training.train`` also trains (``xrayctreg train --model ppc`` or
``sopi-fine``); their model file is given to the refine method (``xrayctreg register --method ppc --model
FILE``, likewise ``sopi-fine``), not to ``--init-model``."""

MODEL_KINDS = (*INITIALISER_METHODS, *REFINER_MODELS)
"""Every model kind ``training.train`` knows (``xrayctreg train --model``)."""

DEFAULT_METHOD = "opt-lncc"
"""The registration method used when none is named: the most accurate on the chest CT benchmark
(``benchmarks/results/registration.md``)."""
