"""One band of a ConvStage: prologue (norm + act) -> body (upsample, conv with halo) -> epilogue (skip add).

Bands are NHWC tensors (B, rows, W, C); the conv runs on their NCHW view, which is channels_last
in memory, the fast layout for CPU convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import ConvStage
from .norm import norm_act

__all__ = ["input_rows", "conv_band"]


def input_rows(stage, r0: int, r1: int, src_h: int, dst_h: int) -> tuple[int, int]:
    """Rows [a, b) of ``stage.src`` needed for output rows [r0, r1) (halo included, clipped)."""
    factor = 2 if stage.upsample else 1
    lo, hi = max(r0 - stage.halo, 0), min(r1 + stage.halo, dst_h)  # at conv resolution
    return lo // factor, min(-(-hi // factor), src_h)


def conv_band(stage: ConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int) -> torch.Tensor:
    """Output rows [r0, r1) of ``stage`` as an NHWC tensor (B, r1 - r0, W, C_out)."""
    a, b = input_rows(stage, r0, r1, src_h, dst_h)
    x = read(stage.src, a, b)  # (B, b - a, W, C_in)  map px
    if stage.norm is not None:
        x = norm_act(x, stats[stage.src], stage.norm, stage.act, w["norm"])
    x = x.permute(0, 3, 1, 2)  # (B, C_in, rows, W), channels_last in memory
    lo, hi = r0 - stage.halo, r1 + stage.halo  # conv-input rows wanted, may run past the border
    if stage.upsample:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # rows [2a, 2b) at dst resolution
        a, b = 2 * a, 2 * b
    x = x[:, :, max(lo, 0) - a : min(hi, dst_h) - a]
    top, bottom = max(-lo, 0), max(hi - dst_h, 0)
    if top or bottom:  # zero padding only at the true image border, halo rows elsewhere
        x = F.pad(x, (0, 0, top, bottom))
    out = F.conv2d(x, w["conv"]["weight"], w["conv"].get("bias"), padding=(0, stage.halo))
    if stage.skip is not None:
        skip = read(stage.skip, r0, r1).permute(0, 3, 1, 2)  # (B, C_skip, rows, W)
        if stage.shortcut is not None:
            skip = F.conv2d(skip, w["shortcut"]["weight"], w["shortcut"].get("bias"))
        out.add_(skip)
    if stage.out_scale != 1.0:
        out.div_(stage.out_scale)
    return out.permute(0, 2, 3, 1)  # (B, rows, W, C_out)
