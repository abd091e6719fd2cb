"""Building blocks: convolution + batch norm + activation, squeeze-excitation, MBConv, residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> SiLU`` (the activation can be switched off)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        """Same padding for odd ``kernel``."""
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


class SqueezeExcite(nn.Module):
    """Channel attention: global average pool -> bottleneck MLP -> sigmoid gate per channel."""

    def __init__(self, channels: int, squeeze: int) -> None:
        """``squeeze``: bottleneck width (at least 1)."""
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, squeeze), 1)
        self.fc2 = nn.Conv2d(max(1, squeeze), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, H, W] -> gated ``x``."""
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))
        return x * s


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expand -> depthwise kxk -> squeeze-excite -> 1x1 project (+ skip)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int, se_ratio: float = 0.25) -> None:
        """A residual connection is used when the block keeps the shape (stride 1, ``c_in == c_out``)."""
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBNAct(c_in, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid)
        self.se = SqueezeExcite(mid, int(c_in * se_ratio))
        self.project = ConvBNAct(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, c_in, H, W] -> [B, c_out, H / stride, W / stride]."""
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


EFFICIENTNET_B0_STAGES = (
    # expand, kernel, stride, channels, repeats
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
)
"""The first five MBConv stages of EfficientNet-B0 (the stem before them has 32 channels, stride 2)."""


def scaled_channels(c: int, width: float, divisor: int = 4) -> int:
    """``c * width`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(round(c * width / divisor)) * divisor)


class EfficientBackbone(nn.Module):
    """An EfficientNet-B0-like feature extractor scaled by width and depth multipliers.

    Args:
        in_channels: image channels.
        width: channel multiplier (1.0 is B0).
        depth: repeat multiplier (1.0 is B0; repeats are rounded up).
        output_stride: 8 or 16; with 8 the stride of the fourth stage is dropped so that a 64x64
            input gives an 8x8 feature map.
    """

    def __init__(self, in_channels: int = 1, width: float = 0.5, depth: float = 0.34, output_stride: int = 8) -> None:
        """Stem (3x3, stride 2) and the scaled MBConv stages."""
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        c_prev = scaled_channels(32, width)
        layers: list[nn.Module] = [ConvBNAct(in_channels, c_prev, 3, 2)]
        for index, (expand, kernel, stride, channels, repeats) in enumerate(EFFICIENTNET_B0_STAGES):
            if output_stride == 8 and index == 3:
                stride = 1
            c_out = scaled_channels(channels, width)
            for r in range(max(1, math.ceil(repeats * depth))):
                layers.append(MBConv(c_prev, c_out, expand, kernel, stride if r == 0 else 1))
                c_prev = c_out
        self.features = nn.Sequential(*layers)
        self.out_channels = c_prev
        self.stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, H, W] -> features [B, out_channels, H / stride, W / stride]."""
        return self.features(x)


class ResidualBlock2d(nn.Module):
    """Basic residual block: two 3x3 convolutions with batch norm, ReLU, identity or 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        """A 1x1 strided projection is used on the shortcut when the shape changes."""
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, c_in, H, W] -> [B, c_out, H / stride, W / stride]."""
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))
