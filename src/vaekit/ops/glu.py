"""One band of DC-AE's GLUMBConv (the feed-forward half of an EfficientViT block); local, halo 1.

    h = silu(conv_inverted(x))          1x1, C -> 2 * hidden         rows + halo
    h = conv_depth(h)                   depthwise 3x3                rows
    h = h[:hidden] * silu(h[hidden:])   gated
    out = norm(conv_point(h)) + x       1x1, hidden -> C, RMSNorm
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import GLUStage
from .norm import local_norm

__all__ = ["glu_band"]


def glu_band(stage: GLUStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int) -> torch.Tensor:
    """Output rows [r0, r1): (B, rows, W, C)."""
    halo = stage.halo
    a, b = max(r0 - halo, 0), min(r1 + halo, src_h)
    x = read(stage.src, a, b)  # (B, b - a, W, C)  map px
    h = F.linear(x, w["inverted"]["weight"], w["inverted"].get("bias"))  # (B, b - a, W, 2 * hidden)
    h = F.silu(h, inplace=True).permute(0, 3, 1, 2)  # (B, 2 * hidden, b - a, W)
    top, bottom = halo - (r0 - a), halo - (b - r1)
    if top or bottom:  # the depthwise conv pads zeros only at the true border
        h = F.pad(h, (0, 0, top, bottom))
    h = F.conv2d(h, w["depth"]["weight"], w["depth"].get("bias"), padding=(0, halo), groups=h.shape[1])
    h, gate = h.chunk(2, dim=1)  # (B, hidden, rows, W) each
    h = h * F.silu(gate)
    out = F.conv2d(h, w["point"]["weight"], w["point"].get("bias")).permute(0, 2, 3, 1)  # (B, rows, W, C)
    if stage.block.norm is not None:
        out = local_norm(out, stage.block.norm, w["norm"])
    if stage.block.residual_connection:
        out = out + x[:, r0 - a : r1 - a]
    return out
