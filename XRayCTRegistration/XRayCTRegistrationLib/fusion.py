"""Pictures of a registration: the X-ray with the DRR overlaid, before and after.

All images are ``[rows, cols]`` attenuation-bright arrays; pictures are 8-bit RGB ``[rows, cols, 3]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from .files import write_atomic
from .xray import to_uint8


def window(image: np.ndarray) -> np.ndarray:
    """Scale an image to [0, 1] between its 1st and 99th percentiles (see :func:`xray.to_uint8`)."""
    return to_uint8(image).astype(np.float32) / 255.0


def overlay(xray: np.ndarray, drr: np.ndarray) -> np.ndarray:
    """Colour fusion, 8-bit RGB ``[rows, cols, 3]``: the DRR in magenta, the X-ray in green.

    Where the two agree the picture is grey; a misaligned DRR shows magenta and green fringes.
    """
    x, d = window(xray), window(drr)
    return (255 * np.stack([d, x, d], axis=-1)).astype(np.uint8)


def before_after(xray: np.ndarray, drr_before: np.ndarray, drr_after: np.ndarray,
                 labels: tuple[str, str, str] = ("X-ray", "before", "after"), zoom: int = 1) -> np.ndarray:
    """Three panels side by side: the X-ray, the overlay at the initial pose, the overlay at the result.

    ``zoom`` enlarges every panel by pixel repetition (for small detectors).
    """
    x = window(xray)
    panels = [np.repeat((255 * x).astype(np.uint8)[..., None], 3, -1), overlay(xray, drr_before),
              overlay(xray, drr_after)]
    if zoom > 1:
        panels = [p.repeat(zoom, axis=0).repeat(zoom, axis=1) for p in panels]
        x = panels[0][..., 0]
    gap = np.full((x.shape[0], 4, 3), 255, np.uint8)
    img = Image.fromarray(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    draw = ImageDraw.Draw(img)
    for k, text in enumerate(labels):
        draw.text((k * (x.shape[1] + 4) + 4, 2), text, fill=(255, 255, 0))
    return np.asarray(img)


def save_rgb(rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB picture to a PNG file atomically (no partial file on failure)."""
    image = sitk.GetImageFromArray(np.asarray(rgb, dtype=np.uint8), isVector=True)
    write_atomic(image, Path(path), compress=False, suffixes=(".png",))
