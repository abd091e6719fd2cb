"""A PointNet-style correspondence weighting network: one sigmoid weight per correspondence.

Each correspondence's feature vector goes through a shared MLP; a max over the (masked) points gives a
global feature, which is appended to every point's own before a second shared MLP ends in a sigmoid.
The weights of a set therefore depend on the whole set (its context), and the points' order does not
matter.

The point-to-plane solve is blind to a common scale of the weights, so nothing in its loss holds the mean
logit: left free it can drift until every sigmoid underflows to exactly 0 and no correspondence is usable (a
collapse seen in training). With ``centred`` (the default) the logits of each set are centred on their
(masked) mean before the sigmoid: a common shift of them no longer exists, and the set's largest weight is at
least 0.5.
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
        centred: centre each set's logits on their mean before the sigmoid (model files written before this
            option existed read as ``False``, which keeps their weights).
    """

    features: int = 8
    width: int = 64
    centred: bool = True

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
        logit = self.out(torch.cat([f, g.expand_as(f)], -1))[..., 0]  # [B, N]
        if self.config.centred:
            m = torch.ones_like(logit) if mask is None else mask.to(logit.dtype)
            logit = logit - (logit * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
        w = torch.sigmoid(logit)
        return w if mask is None else w * mask
