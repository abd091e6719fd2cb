"""Helpers of the XRayCTRegistration Slicer module that are not the module's classes.

- :mod:`.dependencies`: installs what the library needs on first use (torch through PyTorchUtils).
- :mod:`.training_process`: the out-of-process training (command line, progress lines, a
  ``TrainingProcess`` that drives a ``QProcess``: line buffering, progress, cancel).
- :mod:`.images`: numpy-only helpers (slice view geometry, preview sizes, DICOM geometry attributes,
  the X-ray's conversion to attenuation).

Nothing here imports torch at import time; ``slicer`` and ``qt`` are imported only where a function
needs them, so the helpers can be tested without Slicer.
"""
