"""A PointNet-style correspondence weighting network: one sigmoid weight per correspondence.

Each correspondence's feature vector goes through a shared MLP; a max over the (masked) points gives a
global feature, which is appended to every point's own before a second shared MLP ends in a sigmoid.
The weights of a set therefore depend on the whole set (its context), and the points' order does not
matter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class WeightConfig:
    """Architecture of :class:`WeightNet`.

    Attributes:
        features: input features per correspondence.
        width: channels of the point and global features.
    """

    features: int = 8
    width: int = 64

    def to_dict(self) -> dict:
        """Plain dictionary (saved in model files)."""
        return asdict(self)


class WeightNet(nn.Module):
    """``[B, N, F]`` correspondence features (and a ``[B, N]`` mask) -> ``[B, N]`` weights in (0, 1)."""

    def __init__(self, config: WeightConfig | None = None) -> None:
        """Build the two shared MLPs."""
        super().__init__()
        self.config = c = config or WeightConfig()
        self.local = nn.Sequential(nn.Linear(c.features, c.width // 2), nn.ReLU(inplace=True),
                                   nn.Linear(c.width // 2, c.width), nn.ReLU(inplace=True))
        self.out = nn.Sequential(nn.Linear(2 * c.width, c.width), nn.ReLU(inplace=True),
                                 nn.Linear(c.width, c.width // 2), nn.ReLU(inplace=True),
                                 nn.Linear(c.width // 2, 1))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Weights ``[B, N]``; masked-out points (mask False) get 0 and do not enter the global feature."""
        f = self.local(feats)
        if mask is not None:
            g = f.masked_fill(~mask[..., None], float("-inf")).amax(1, keepdim=True)
            g = torch.nan_to_num(g, neginf=0.0)
        else:
            g = f.amax(1, keepdim=True)
        w = torch.sigmoid(self.out(torch.cat([f, g.expand_as(f)], -1))[..., 0])
        return w if mask is None else w * mask
