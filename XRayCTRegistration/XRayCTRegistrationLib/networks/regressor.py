"""The patient-specific pose regressor (after Zhang et al.'s self-supervised X-ray/CT registration model).

An EfficientNet-B0-like CNN backbone (scaled down) extracts a feature map from the X-ray; a
regularising autoencoder branch reconstructs the input from that map (its loss constrains the
features to keep the image's structure); a multi-head self-attention block with a learned 2D
positional embedding looks over the map; a rotation head predicts the continuous 6D rotation
representation and a translation head the translation divided by the training range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import ConvBNAct, EfficientBackbone


@dataclass
class RegressorConfig:
    """Architecture of :class:`PoseRegressor`.

    Attributes:
        input_size: side of the square network input, pixels.
        width, depth: EfficientNet width and depth multipliers.
        embed_dim: channels of the feature map seen by attention and the heads.
        heads: attention heads.
        autoencoder: with the regularising decoder branch.
        attention: with self-attention and the 2D positional embedding (else global average pooling).
    """

    input_size: int = 64
    width: float = 0.5
    depth: float = 0.34
    embed_dim: int = 64
    heads: int = 4
    autoencoder: bool = True
    attention: bool = True

    def to_dict(self) -> dict:
        """Plain dictionary (saved in model files)."""
        return asdict(self)


class PositionalEmbedding2d(nn.Module):
    """Learned 2D positional embedding: a row code and a column code, each half the channels, concatenated."""

    def __init__(self, dim: int, height: int, width: int) -> None:
        """``dim`` must be even."""
        super().__init__()
        self.row = nn.Parameter(torch.randn(height, dim // 2) * 0.02)
        self.col = nn.Parameter(torch.randn(width, dim - dim // 2) * 0.02)

    def forward(self, h: int, w: int) -> torch.Tensor:
        """Embedding ``[h * w, dim]`` for an ``h x w`` map (interpolated if the size differs)."""
        row, col = self.row, self.col
        if row.shape[0] != h:
            row = F.interpolate(row.T[None], size=h, mode="linear", align_corners=True)[0].T
        if col.shape[0] != w:
            col = F.interpolate(col.T[None], size=w, mode="linear", align_corners=True)[0].T
        grid = torch.cat([row[:, None, :].expand(h, w, -1), col[None, :, :].expand(h, w, -1)], dim=-1)
        return grid.reshape(h * w, -1)


class AttentionBlock(nn.Module):
    """Pre-norm transformer block over the tokens of a feature map: self-attention then an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        """``dim`` must be divisible by ``heads``."""
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, N, dim]`` -> (tokens ``[B, N, dim]``, attention weights ``[B, N, N]`` averaged over heads)."""
        y = self.norm1(x)
        y, weights = self.attn(y, y, y, need_weights=True)
        x = x + y
        return x + self.mlp(self.norm2(x)), weights


class Decoder(nn.Module):
    """Upsampling decoder from the backbone's feature map to an image of half the input's size."""

    def __init__(self, c_in: int, stride: int) -> None:
        """One x2 upsampling stage per factor of two in ``stride``."""
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(c_in, 32, 1)]
        c = 32
        s = 1
        while 2 * s < stride:
            c_out = max(8, c // 2)
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), ConvBNAct(c, c_out, 3)]
            c, s = c_out, s * 2
        layers.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Features ``[B, C, h, w]`` -> image ``[B, 1, *size]``."""
        y = self.net(f)
        return y if tuple(y.shape[-2:]) == tuple(size) else F.interpolate(y, size=size, mode="bilinear")


class PoseRegressor(nn.Module):
    """X-ray -> pose of the CT, for one patient's CT and one detector geometry.

    ``forward(x)`` takes normalised images ``[B, 1, S, S]`` and returns a dictionary with
    ``rot6d`` ``[B, 6]``, ``trans`` ``[B, 3]`` (translation / range), and, when enabled,
    ``recon`` ``[B, 1, S/2, S/2]`` (autoencoder, the input average-pooled by 2) and ``attention`` ``[B, N, N]``.
    """

    def __init__(self, config: RegressorConfig | None = None) -> None:
        """Build the backbone, the optional decoder and attention, and the two heads."""
        super().__init__()
        self.config = config = config or RegressorConfig()
        self.backbone = EfficientBackbone(1, config.width, config.depth, output_stride=8)
        c = self.backbone.out_channels
        self.neck = ConvBNAct(c, config.embed_dim, 1)
        side = max(1, config.input_size // self.backbone.stride)
        self.decoder = Decoder(c, self.backbone.stride) if config.autoencoder else None
        if config.attention:
            self.pos = PositionalEmbedding2d(config.embed_dim, side, side)
            self.attn = AttentionBlock(config.embed_dim, config.heads)
        d = config.embed_dim
        self.rot_head = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, 6))
        self.trans_head = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, 3))
        with torch.no_grad():  # start at the identity rotation and zero translation
            self.rot_head[-1].weight.mul_(0.01)
            self.rot_head[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))
            self.trans_head[-1].weight.mul_(0.01)
            self.trans_head[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``[B, 1, S, S]`` -> outputs (see the class docstring)."""
        f = self.backbone(x)  # [B, C, h, w]
        out: dict[str, torch.Tensor] = {}
        if self.decoder is not None:
            out["recon"] = self.decoder(f, (x.shape[-2] // 2, x.shape[-1] // 2))
        g = self.neck(f)  # [B, D, h, w]
        b, d, h, w = g.shape
        if self.config.attention:
            tokens = g.flatten(2).transpose(1, 2) + self.pos(h, w)[None]  # [B, h*w, D]
            tokens, weights = self.attn(tokens)
            out["attention"] = weights
            pooled = tokens.mean(1)
        else:
            pooled = g.mean((2, 3))  # [B, D]
        out["rot6d"] = self.rot_head(pooled)
        out["trans"] = self.trans_head(pooled)
        return out
