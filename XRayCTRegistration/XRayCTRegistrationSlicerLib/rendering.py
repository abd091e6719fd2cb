"""DRR rendering for the Slicer module: samples per ray for previews, and a renderer that keeps its projector."""

from __future__ import annotations

import numpy as np

DEVICES = ("auto", "cpu", "cuda")
"""Device choices of the module: ``auto`` is CUDA when torch sees a GPU, else the CPU."""


def resolveDevice(choice: str) -> str:
    """The torch device of a choice of :data:`DEVICES`; ``cuda`` without a GPU is an ``InputError``."""
    import torch
    from XRayCTRegistrationLib.errors import InputError
    from XRayCTRegistrationLib.projector import resolve_device

    if choice not in DEVICES:
        raise InputError(f"device: {choice!r} is not one of {', '.join(DEVICES)}")
    if choice == "auto":
        return str(resolve_device(choice))
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("device: cuda chosen but torch sees no CUDA GPU; choose cpu or auto")
    return choice


def samplesPerRay(volume, maxSize: int | None, previewSize: int) -> int:
    """Samples per ray: one per voxel along the longest chord, halved (and capped) for previews.

    A render is a preview when ``maxSize`` is at most ``previewSize`` pixels.
    """
    from XRayCTRegistrationLib.projector import samples_for

    if maxSize and maxSize <= previewSize:
        return int(min(256, samples_for(volume, 2.0)))
    return int(min(1024, samples_for(volume, 1.0)))


class DrrRenderer:
    """Renders DRRs of one attenuation volume; the projector is reused while the volume, camera and samples stay.

    Only the last projector is kept: volumes are large.
    """

    def __init__(self) -> None:
        self._key = None
        self._projector = None

    def render(self, volume, camera, worldFromCamera: np.ndarray, nSamples: int) -> np.ndarray:
        """DRR ``[rows, cols]`` (float32, line integrals) of ``volume`` at ``worldFromCamera`` (4x4, world RAS)."""
        import torch
        from XRayCTRegistrationLib.projector import Projector

        key = (id(volume), tuple(sorted(camera.to_dict().items())), int(nSamples))
        if key != self._key:
            self._projector, self._key = Projector(volume, camera, n_samples=int(nSamples)), key
        with torch.no_grad():
            return self._projector(torch.as_tensor(worldFromCamera, dtype=torch.float32)).numpy()
