"""SOPI's composite encoder (stage 2, the iterative fine registration) and its pair of encoders.

The encoder follows SOPI's description (section 2.3), scaled down to train on a few CPU cores:

- **stem**: three 3x3 convolutions at full resolution (each followed by batch norm and an
  activation), then two stride-2 convolutions (1/4 resolution), then one cascade fusion block;
- **assistant branch**: two cascade fusion (CF) blocks, the second at stride 2 (1/8 resolution);
  it extracts the low-level features;
- **composite connection units** (CCU): a 1x1 convolution and a normalisation reduce the assistant's
  channels, then an upsampling to the leader's resolution;
- **leader branch**: two CF blocks; the input of each is its previous feature map concatenated with
  the CCU output of the assistant's block at the same depth, so the leader combines its own
  (higher-level) features with the assistant's low-level ones;
- **embedding**: a 1x1 convolution of the leader's last map, ``[B, embed_channels, S/4, S/4]``.

Normalisation: none by default (``norm="group"`` puts group norms where the paper has
normalisation layers, also batch norm in the CCUs); on the chest CT, 60 training steps took the
direction loss from 2.41 to 1.98 without normalisation and to 2.29 with group norms, so the default
trains faster within this CPU's budget.

A CF block here is two bottleneck units whose 3x3 convolution is a split-attention convolution
(radix 2, as in ResNeSt); the first unit's output is concatenated with the second's (the cascade)
and a 1x1 convolution fuses them; a residual shortcut adds the block's input.

Scaling (the paper's encoder works on 256x256 images on GPUs): ``channels`` = 8 (widths 8, 16,
32), 16 embedding channels at a quarter of the input's side; about 30 000 parameters per encoder.
The default input here is 48x48; ``xrayctreg train --model sopi-fine`` uses 96x96
(:data:`training.FINE_RENDER`).
``composite=False`` drops the assistant branch and the CCUs (the leader alone: the ablation
without the composite encoder). ``shared=True`` uses one encoder for the DRR and the X-ray instead
of SOPI's two (what ``xrayctreg train --model sopi-fine`` trains; see :mod:`sopi_fine`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("none", "group")
"""Normalisation layers of the composite encoder (see :class:`ConvNormAct`)."""


class ConvNormAct(nn.Sequential):
    """``Conv2d -> normalisation -> SiLU`` (the activation can be switched off).

    ``norm="group"``: group normalisation (per image; never batch normalisation, so that the pose
    gradient of one training pair does not depend on the other pairs of its batch and training and
    registration compute the same function). ``norm="none"``: the convolution has a bias instead.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 act: bool = True, norm: str = "none") -> None:
        """Same padding for odd ``kernel``; ``gcd(4, c_out)`` normalisation groups."""
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=norm == "none"),
            nn.GroupNorm(math.gcd(4, c_out), c_out) if norm == "group" else nn.Identity(),
            nn.SiLU(inplace=True) if act else nn.Identity(),
        )


@dataclass
class CompositeConfig:
    """Architecture of :class:`CompositeEncoder` and :class:`FineNet`.

    Attributes:
        input_size: side of the square input image, pixels.
        channels: width of the stem; the branches use 2x and 4x this.
        embed_channels: channels ``C`` of the embedded features.
        composite: with the assistant branch and the composite connections (else the leader alone).
        norm: normalisation layers, ``"none"`` or ``"group"`` (see :class:`ConvNormAct`).
        shared: one encoder for the DRR and the X-ray (a Siamese pair) instead of SOPI's two.
    """

    input_size: int = 48
    channels: int = 8
    embed_channels: int = 16
    composite: bool = True
    norm: str = "none"
    shared: bool = False

    def to_dict(self) -> dict:
        """Plain dictionary (saved in model files)."""
        return asdict(self)


class SplitAttentionConv(nn.Module):
    """3x3 split-attention convolution, radix 2: two grouped paths weighted by a softmax over the radix."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, radix: int = 2, norm: str = "none") -> None:
        """``c_in``, ``c_out``: channels; ``stride`` of the 3x3 convolution."""
        super().__init__()
        self.radix = radix
        self.conv = ConvNormAct(c_in, c_out * radix, 3, stride, groups=radix if c_in % radix == 0 else 1,
                                norm=norm)
        inter = max(4, c_out // 2)
        self.fc1 = nn.Conv2d(c_out, inter, 1)
        self.fc2 = nn.Conv2d(inter, c_out * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, c_in, H, W] -> [B, c_out, H / stride, W / stride]."""
        y = self.conv(x)
        b, c_r, h, w = y.shape
        splits = y.view(b, self.radix, c_r // self.radix, h, w)
        gap = splits.sum(1).mean((2, 3), keepdim=True)  # [B, C, 1, 1]
        att = self.fc2(F.relu(self.fc1(gap))).view(b, self.radix, c_r // self.radix, 1, 1)
        return (splits * att.softmax(1)).sum(1)


class Bottleneck(nn.Module):
    """1x1 reduce -> split-attention 3x3 -> 1x1 expand (no activation at the end)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "none") -> None:
        """Half-width bottleneck."""
        super().__init__()
        mid = max(4, c_out // 2)
        self.body = nn.Sequential(ConvNormAct(c_in, mid, 1, norm=norm), SplitAttentionConv(mid, mid, stride, norm=norm),
                                  ConvNormAct(mid, c_out, 1, act=False, norm=norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, c_in, H, W] -> [B, c_out, H / stride, W / stride]."""
        return self.body(x)


class CFBlock(nn.Module):
    """Cascade fusion block: two bottlenecks in cascade, both outputs fused by a 1x1 convolution, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "none") -> None:
        """``stride`` applies to the first bottleneck and the shortcut."""
        super().__init__()
        self.first = Bottleneck(c_in, c_out, stride, norm)
        self.second = Bottleneck(c_out, c_out, norm=norm)
        self.fuse = ConvNormAct(2 * c_out, c_out, 1, act=False, norm=norm)
        same = stride == 1 and c_in == c_out
        self.shortcut = nn.Identity() if same else ConvNormAct(c_in, c_out, 1, stride, act=False, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, c_in, H, W] -> [B, c_out, H / stride, W / stride]."""
        a = F.silu(self.first(x))
        b = F.silu(self.second(a))
        return F.silu(self.fuse(torch.cat([a, b], 1)) + self.shortcut(x))


class CompositeConnection(nn.Module):
    """Composite connection unit: 1x1 convolution + batch norm (fewer channels), then upsampling."""

    def __init__(self, c_in: int, c_out: int, norm: str = "none") -> None:
        """``c_in`` assistant channels -> ``c_out``."""
        super().__init__()
        self.reduce = ConvNormAct(c_in, c_out, 1, act=False, norm=norm)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``x`` [B, c_in, h, w] -> [B, c_out, *size] (bilinear upsampling when ``size`` differs)."""
        y = self.reduce(x)
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y


class CompositeEncoder(nn.Module):
    """Image ``[B, 1, S, S]`` -> embedded features ``[B, embed_channels, S/4, S/4]`` (see the module docstring)."""

    def __init__(self, config: CompositeConfig | None = None) -> None:
        """Stem, assistant branch, composite connections, leader branch, embedding head."""
        super().__init__()
        self.config = config = config or CompositeConfig()
        c, n = config.channels, config.norm
        self.stem = nn.Sequential(
            ConvNormAct(1, c // 2, 3, norm=n), ConvNormAct(c // 2, c // 2, 3, norm=n),
            ConvNormAct(c // 2, c, 3, norm=n), ConvNormAct(c, 2 * c, 3, 2, norm=n),
            ConvNormAct(2 * c, 2 * c, 3, 2, norm=n), CFBlock(2 * c, 2 * c, norm=n))
        extra = 0
        if config.composite:
            self.assistant = nn.ModuleList([CFBlock(2 * c, 2 * c, norm=n), CFBlock(2 * c, 4 * c, 2, norm=n)])
            self.connections = nn.ModuleList([CompositeConnection(2 * c, c, n), CompositeConnection(4 * c, 2 * c, n)])
            extra = 1
        self.leader = nn.ModuleList([CFBlock(2 * c + extra * c, 2 * c, norm=n),
                                     CFBlock(2 * c + extra * 2 * c, 4 * c, norm=n)])
        self.embed = nn.Conv2d(4 * c, config.embed_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, 1, S, S] -> ``[B, embed_channels, S/4, S/4]``."""
        h = self.stem(x)
        if not self.config.composite:
            for block in self.leader:
                h = block(h)
            return self.embed(h)
        a = h
        for assist, connect, lead in zip(self.assistant, self.connections, self.leader, strict=True):
            a = assist(a)
            h = lead(torch.cat([h, connect(a, tuple(h.shape[-2:]))], 1))
        return self.embed(h)


class FineNet(nn.Module):
    """The fine-registration network: two composite encoders of the same structure, weights not shared.

    Both start from the same random weights (the fixed encoder is a copy of the moving one).
    With ``config.shared`` there is one encoder for both images (a Siamese pair): then ``L_N`` is
    zero where the DRR equals the X-ray, so the distance's minimum lies at the true pose for X-rays
    rendered as the DRRs are.

    ``encode_moving`` embeds the DRR at the current pose, ``encode_fixed`` the X-ray (SOPI Fig. 3).
    """

    def __init__(self, config: CompositeConfig | None = None) -> None:
        """Build both encoders (one with ``config.shared``)."""
        super().__init__()
        self.config = config = config or CompositeConfig()
        self.moving = CompositeEncoder(config)
        if config.shared:
            self.fixed = self.moving
        else:
            self.fixed = CompositeEncoder(config)
            # same start, then trained apart: at initialisation L_N is a distance between the same random
            # features of both images, whose pose gradient already points roughly the right way
            self.fixed.load_state_dict(self.moving.state_dict())

    def encode_moving(self, x: torch.Tensor) -> torch.Tensor:
        """DRR inputs ``[B, 1, S, S]`` -> ``[B, C, S/4, S/4]``."""
        return self.moving(x)

    def encode_fixed(self, x: torch.Tensor) -> torch.Tensor:
        """X-ray inputs ``[B, 1, S, S]`` -> ``[B, C, S/4, S/4]``."""
        return self.fixed(x)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings ``(e_m, e_f)``."""
        return self.moving(moving), self.fixed(fixed)
