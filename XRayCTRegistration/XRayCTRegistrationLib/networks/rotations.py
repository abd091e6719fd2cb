"""Rotation representations used by the networks.

The pose parameters ``(rx, ry, rz, tx, ty, tz)`` of ``geometry.ReferenceView`` describe the CT's
motion in the reference-camera frame: rotation ``R = Rx(rx) Ry(ry) Rz(rz)`` about the isocentre,
then the translation ``t`` (mm). Networks predict ``R`` in the continuous 6D representation (its
first two columns, orthonormalised by Gram-Schmidt) and ``t`` divided by the translation range.
"""

from __future__ import annotations

import torch

from ..geometry import euler_xyz


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` from 6D vectors ``[..., 6]`` (two 3-vectors, Gram-Schmidt).

    The vector holds the first column then the second column of the matrix; the third column is
    their cross product, so the result is always orthonormal with determinant +1.
    """
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def sixd_from_rotation(r: torch.Tensor) -> torch.Tensor:
    """The 6D representation ``[..., 6]`` (first column, then second column) of rotations ``[..., 3, 3]``."""
    return torch.cat([r[..., :, 0], r[..., :, 1]], dim=-1)


def euler_from_rotation(r: torch.Tensor) -> torch.Tensor:
    """Angles ``(rx, ry, rz)`` in degrees ``[..., 3]`` with ``Rx(rx) Ry(ry) Rz(rz) = r``.

    Same convention and branch (``|ry| <= 90``) as ``geometry.ReferenceView.params``.
    """
    ry = torch.asin(r[..., 0, 2].clamp(-1.0, 1.0))
    rx = torch.atan2(-r[..., 1, 2], r[..., 2, 2])
    rz = torch.atan2(-r[..., 0, 1], r[..., 0, 0])
    return torch.rad2deg(torch.stack([rx, ry, rz], dim=-1))


def params_to_target(params: torch.Tensor, trans_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Network targets of pose parameters ``[B, 6]`` (degrees, mm).

    Returns ``(rot6d [B, 6], trans [B, 3])`` with ``trans = t / trans_scale`` (``trans_scale`` mm, ``[3]``).
    """
    r = euler_xyz(params[..., :3])
    return sixd_from_rotation(r), params[..., 3:] / trans_scale


def target_to_params(rot6d: torch.Tensor, trans: torch.Tensor, trans_scale: torch.Tensor) -> torch.Tensor:
    """Pose parameters ``[B, 6]`` (degrees, mm) from network outputs; inverse of :func:`params_to_target`."""
    angles = euler_from_rotation(rotation_from_6d(rot6d))
    return torch.cat([angles, trans * trans_scale], dim=-1)


def geodesic_deg(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Angle in degrees ``[...]`` of the rotation ``r1^T r2`` between rotations ``[..., 3, 3]``."""
    m = r1.transpose(-1, -2) @ r2
    cos = ((m.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))
