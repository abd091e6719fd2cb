"""Training losses of the initialisation networks."""

from __future__ import annotations

import torch

from .rotations import rotation_from_6d


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of images ``[B, 1, H, W]`` along rows ``[B, 1, H-1, W]`` and columns ``[B, 1, H, W-1]``."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def gradient_difference_loss(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """Gradient difference loss ``[B]`` in [0, 1] of images ``[B, 1, H, W]`` (0 when the gradients agree).

    Per direction ``d``: ``1 - mean(A_d / (A_d + (grad_d fixed - grad_d moving)^2))`` with ``A_d`` the
    variance of ``grad_d fixed`` (Penney et al.'s gradient difference measure turned into a loss);
    the two directions are averaged. Both images should be normalised the same way.
    """
    out = []
    for gf, gm in zip(image_gradients(fixed), image_gradients(moving), strict=True):
        a = gf.var((1, 2, 3), keepdim=True).clamp(min=1e-8)
        out.append(1 - (a / (a + (gf - gm) ** 2)).mean((1, 2, 3)))
    return 0.5 * (out[0] + out[1])


def rotation_loss(rot6d: torch.Tensor, r_true: torch.Tensor) -> torch.Tensor:
    """Mean squared difference ``[B]`` of the nine entries of the predicted and true rotations ``[B, 3, 3]``."""
    return ((rotation_from_6d(rot6d) - r_true) ** 2).mean((1, 2))


def l2_weights(module: torch.nn.Module) -> torch.Tensor:
    """Sum of squares of a module's weights (biases and normalisation parameters excluded)."""
    terms = [(p ** 2).sum() for name, p in module.named_parameters() if p.dim() > 1 and name.endswith("weight")]
    return torch.stack(terms).sum() if terms else torch.zeros(())
