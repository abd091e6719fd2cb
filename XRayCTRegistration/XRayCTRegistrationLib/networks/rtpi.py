"""SOPI's Rigid Transformation Parameter Initialisation module (RTPI).

An asymmetric dual-branch encoder: the CT branch runs two 3D convolution blocks over the
(downsampled) CT and flattens the result to 2D by folding the depth axis (the anterior-posterior
axis, the AP view's viewing direction) into the channels; the X-ray branch runs 2D convolutions
to the same spatial size. The two maps are concatenated along the channels and a localisation
net of four residual blocks regresses each pose parameter with its own head (parameter-specific
regression). Outputs are the six pose parameters divided by the training range.

The CT is fixed for a patient-specific model, so it is stored in the module as a buffer
(``volume`` ``[1, 1, D, D, D]``, normalised) and ``forward`` takes only the X-ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBNAct, ResidualBlock2d


@dataclass
class RTPIConfig:
    """Architecture of :class:`RTPI`.

    Attributes:
        input_size: side of the square X-ray input, pixels.
        volume_size: side of the cubic CT input, voxels.
        channels_3d: channels of the two 3D convolution blocks.
        channels_2d: channels of the X-ray branch's output.
        loc_channels: channels of the localisation net.
    """

    input_size: int = 64
    volume_size: int = 32
    channels_3d: int = 8
    channels_2d: int = 64
    loc_channels: int = 64

    def to_dict(self) -> dict:
        """Plain dictionary (saved in model files)."""
        return asdict(self)


class ConvBlock3d(nn.Sequential):
    """Two 3x3x3 convolutions (the first strided by 2) with batch norm and ReLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        """Halves each spatial size."""
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
        )


class RTPI(nn.Module):
    """CT + X-ray -> the six pose parameters (divided by the range), one head per parameter."""

    def __init__(self, config: RTPIConfig | None = None) -> None:
        """Build both branches, the localisation net and the six heads."""
        super().__init__()
        self.config = config = config or RTPIConfig()
        v = config.volume_size
        self.register_buffer("volume", torch.zeros(1, 1, v, v, v))
        c3 = config.channels_3d
        self.branch3d = nn.Sequential(ConvBlock3d(1, c3), ConvBlock3d(c3, c3))
        c2 = config.channels_2d
        self.branch2d = nn.Sequential(ConvBNAct(1, c2 // 4, 3, 2), ConvBNAct(c2 // 4, c2 // 2, 3, 2),
                                      ConvBNAct(c2 // 2, c2, 3, 2))
        c_cat = c2 + c3 * (v // 4)
        c = config.loc_channels
        self.localisation = nn.Sequential(
            ResidualBlock2d(c_cat, c), ResidualBlock2d(c, c),
            ResidualBlock2d(c, 2 * c, 2), ResidualBlock2d(2 * c, 2 * c))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * c, 32), nn.ReLU(inplace=True), nn.Linear(32, 1)) for _ in range(6))
        with torch.no_grad():
            for head in self.heads:
                head[-1].weight.mul_(0.01)
                head[-1].bias.zero_()

    def set_volume(self, volume: torch.Tensor) -> None:
        """Store the CT input: attenuation ``[K, J, I]`` (any size), resampled to the cube and normalised."""
        v = self.config.volume_size
        x = F.adaptive_avg_pool3d(volume.to(self.volume)[None, None], (v, v, v))
        x = (x - x.mean()) / x.std().clamp(min=1e-8)
        self.volume.copy_(x)

    def volume_features(self, h: int, w: int) -> torch.Tensor:
        """The CT branch flattened to 2D: ``[1, C * J', h, w]`` (the A-P axis J folded into the channels)."""
        f = self.branch3d(self.volume)  # [1, C, K', J', I']
        _, c, k, j, i = f.shape
        f = f.permute(0, 1, 3, 2, 4).reshape(1, c * j, k, i)
        return F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``[B, 1, S, S]`` -> ``{"params": [B, 6]}`` (pose parameters / range)."""
        g = self.branch2d(x)  # [B, C2, h, w]
        b, _, h, w = g.shape
        f = self.volume_features(h, w).expand(b, -1, -1, -1)
        z = self.localisation(torch.cat([g, f], dim=1)).mean((2, 3))  # [B, 2c]
        return {"params": torch.cat([head(z) for head in self.heads], dim=1)}
