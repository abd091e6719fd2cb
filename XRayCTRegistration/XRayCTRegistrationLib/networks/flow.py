"""A small recurrent all-pairs optical-flow network (RAFT-like) between a DRR and an X-ray.

Shared convolutional features of both images at 1/4 resolution, an all-pairs correlation volume with a
two-level pyramid, and one update operator (a convolutional GRU with shared weights) applied
``iterations`` times: each application looks up the correlation around the current flow and predicts a
residual. The flow is upsampled bilinearly to the input resolution. Flow channels: ``(d_col, d_row)`` in
input pixels, the displacement from a DRR pixel to its match in the X-ray. Small enough to train on a CPU.

With ``patch > 0`` a second, fixed correlation volume sits beside the learned one: the normalised
cross-correlation of ``patch x patch`` image patches centred on the feature cells (block matching at the
feature stride). Its soft-argmax at the finest level is the initial flow, and the update operator starts as
zero (its last layer is initialised to zero): the untrained network is a block matcher, and a short CPU
training spends its steps on refining that flow rather than on learning to match from scratch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class FlowConfig:
    """Architecture of :class:`FlowNet`.

    Attributes:
        features: channels of the matching features.
        hidden: channels of the GRU state (and of the context features).
        radius: correlation lookup radius, feature pixels (a ``(2 r + 1)^2`` window per pyramid level).
        levels: correlation pyramid levels.
        iterations: default number of update iterations.
        patch: side (pixels, even, at least 4) of the fixed NCC patches of the second correlation volume;
            0: none.
    """

    features: int = 32
    hidden: int = 32
    radius: int = 3
    levels: int = 2
    iterations: int = 6
    patch: int = 0

    def to_dict(self) -> dict:
        """Plain dictionary (saved in model files)."""
        return asdict(self)


def _encoder(c_out: int) -> nn.Sequential:
    """Three convolutions, two strided: ``[B, 1, H, W] -> [B, c_out, H / 4, W / 4]``."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, 2, 2), nn.InstanceNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, 2, 1), nn.InstanceNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, c_out, 3, 1, 1))


MATCH_TEMPERATURE = 0.02
"""Softmax temperature (NCC units) of the patch-matching initial flow."""


def patch_descriptors(image: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-mean, unit-norm ``size x size`` patches centred on the 4-pixel cells: ``[B, size^2, H / 4, W / 4]``.

    The image is extended by replicating its border pixels.
    The dot product of two descriptors is the normalised cross-correlation of the patches (0 for a flat one).
    """
    b, _, h, w = image.shape
    pad = (size - 4) // 2
    p = F.unfold(F.pad(image, (pad,) * 4, mode="replicate"), size, stride=4)
    p = p - p.mean(1, keepdim=True)
    p = p / p.norm(dim=1, keepdim=True).clamp(min=1e-6)
    return p.reshape(b, size * size, h // 4, w // 4)


class ConvGRU(nn.Module):
    """A convolutional GRU cell (3x3)."""

    def __init__(self, hidden: int, inputs: int) -> None:
        """``hidden`` state channels, ``inputs`` input channels."""
        super().__init__()
        self.zr = nn.Conv2d(hidden + inputs, 2 * hidden, 3, padding=1)
        self.q = nn.Conv2d(hidden + inputs, hidden, 3, padding=1)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One update of the state ``h`` with the input ``x``."""
        z, r = torch.sigmoid(self.zr(torch.cat([h, x], 1))).chunk(2, 1)
        q = torch.tanh(self.q(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q


class FlowNet(nn.Module):
    """Recurrent flow from ``image1`` (the DRR) to ``image2`` (the X-ray); see the module's docstring."""

    def __init__(self, config: FlowConfig | None = None) -> None:
        """Build the encoders and the update operator."""
        super().__init__()
        self.config = c = config or FlowConfig()
        if c.patch and (c.patch < 4 or c.patch % 2):
            raise ValueError(f"FlowConfig.patch: 0 or an even size of at least 4, got {c.patch}")
        self.fnet = _encoder(c.features)
        self.cnet = _encoder(2 * c.hidden)
        corr_ch = c.levels * (2 if c.patch else 1) * (2 * c.radius + 1) ** 2
        self.motion = nn.Sequential(nn.Conv2d(corr_ch + 2, 64, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(64, 48, 3, padding=1), nn.ReLU(inplace=True))
        self.gru = ConvGRU(c.hidden, 48 + 2 + c.hidden)
        self.head = nn.Sequential(nn.Conv2d(c.hidden, 64, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(64, 2, 3, padding=1))
        if c.patch:  # the untrained network returns the patch-matching flow unchanged
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def _pyramid(self, f1: torch.Tensor, f2: torch.Tensor, p1: torch.Tensor | None = None,
                 p2: torch.Tensor | None = None) -> list[torch.Tensor]:
        """All-pairs correlation ``[B * h * w, C, h_l, w_l]`` per level (C = 2 with the patch NCC)."""
        b, ch, h, w = f1.shape
        corr = torch.einsum("bci,bcj->bij", f1.flatten(2), f2.flatten(2)) / ch ** 0.5
        if p1 is not None:
            ncc = torch.einsum("bci,bcj->bij", p1.flatten(2), p2.flatten(2))
            corr = torch.stack([corr, ncc], 2)  # [B, h * w, 2, h * w]
        corr = corr.reshape(b * h * w, -1, h, w)
        out = [corr]
        for _ in range(self.config.levels - 1):
            corr = F.avg_pool2d(corr, 2, 2)
            out.append(corr)
        return out

    def _lookup(self, pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Correlation windows around ``coords`` ``[B, 2, h, w]`` (x, y in feature pixels): ``[B, C, h, w]``."""
        b, _, h, w = coords.shape
        r = self.config.radius
        d = torch.arange(-r, r + 1, dtype=coords.dtype, device=coords.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        delta = torch.stack([dx, dy], -1).reshape(1, 2 * r + 1, 2 * r + 1, 2)
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for lvl, corr in enumerate(pyramid):
            pts = centre / 2 ** lvl + delta
            hl, wl = corr.shape[-2:]
            grid = torch.stack([2 * pts[..., 0] / max(wl - 1, 1) - 1, 2 * pts[..., 1] / max(hl - 1, 1) - 1], -1)
            win = F.grid_sample(corr, grid, align_corners=True, padding_mode="zeros")
            out.append(win.reshape(b, h, w, -1))
        return torch.cat(out, -1).permute(0, 3, 1, 2)

    def _match(self, pyramid: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
        """The initial flow ``[B, 2, h, w]`` (feature pixels) from the patch NCC alone; no learnable weights.

        The soft-argmax (temperature :data:`MATCH_TEMPERATURE`) of each cell's NCC window at the finest level
        (displacements up to ``radius`` cells); the coarser levels are left to the update operator.
        """
        r = self.config.radius
        d = torch.arange(-r, r + 1, dtype=base.dtype, device=base.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        p = torch.softmax(self._lookup([pyramid[0][:, 1:]], base) / MATCH_TEMPERATURE, 1)  # [B, (2r+1)^2, h, w]
        return torch.stack([(p * dx.reshape(1, -1, 1, 1)).sum(1), (p * dy.reshape(1, -1, 1, 1)).sum(1)], 1)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iterations: int | None = None
                ) -> list[torch.Tensor]:
        """Flows ``[B, 2, H, W]`` (input pixels) after each update; images ``[B, 1, H, W]``, H and W divisible by 4."""
        c = self.config
        f1, f2 = self.fnet(image1), self.fnet(image2)
        if c.patch:
            pyramid = self._pyramid(f1, f2, patch_descriptors(image1, c.patch), patch_descriptors(image2, c.patch))
        else:
            pyramid = self._pyramid(f1, f2)
        h, ctx = self.cnet(image1).split(c.hidden, 1)
        h, ctx = torch.tanh(h), torch.relu(ctx)
        b, _, hh, ww = f1.shape
        ys, xs = torch.meshgrid(torch.arange(hh, dtype=f1.dtype, device=f1.device),
                                torch.arange(ww, dtype=f1.dtype, device=f1.device), indexing="ij")
        base = torch.stack([xs, ys])[None].expand(b, -1, -1, -1)
        flow = self._match(pyramid, base) if c.patch else torch.zeros_like(base)
        out = []
        for _ in range(iterations or c.iterations):
            flow = flow.detach()
            corr = self._lookup(pyramid, base + flow)
            m = self.motion(torch.cat([corr, flow], 1))
            h = self.gru(h, torch.cat([m, flow, ctx], 1))
            flow = flow + self.head(h)
            out.append(4 * F.interpolate(flow, scale_factor=4, mode="bilinear", align_corners=False))
        return out
