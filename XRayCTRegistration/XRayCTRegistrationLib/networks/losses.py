"""Training losses of the initialisation networks."""

from __future__ import annotations

import torch

from ..similarity import gradient_difference
from .rotations import rotation_from_6d


def gradient_difference_loss(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Gradient difference loss ``[B]`` in [0, 1) of images ``[B, 1, H, W]`` (0 when the gradients agree).

    One minus the gradient difference measure (``similarity.gradient_difference``) on forward differences,
    without a fitted scale: both images should be normalised the same way.
    """
    return 1 - gradient_difference(moving[:, 0], fixed[:, 0], gradients="forward", fit_scale=False)


def rotation_loss(rot6d: torch.Tensor, r_true: torch.Tensor) -> torch.Tensor:
    """Mean squared difference ``[B]`` of the nine entries of the predicted and true rotations ``[B, 3, 3]``."""
    return ((rotation_from_6d(rot6d) - r_true) ** 2).mean((1, 2))


def l2_weights(module: torch.nn.Module) -> torch.Tensor:
    """Sum of squares of a module's weights (biases and normalisation parameters excluded)."""
    terms = [(p ** 2).sum() for name, p in module.named_parameters() if p.dim() > 1 and name.endswith("weight")]
    return torch.stack(terms).sum() if terms else torch.zeros(())
