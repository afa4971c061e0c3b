"""One band of a ConvStage: prologue (norm, act) -> body (upsample, conv with halo) -> epilogue (skip, post).

Bands are NHWC tensors (B, rows, W, C); the conv runs on their NCHW view, which is channels_last
in memory, the fast layout for CPU convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import ConvStage
from .act import activate
from .norm import norm_act

__all__ = ["conv_band"]


def conv_band(stage: ConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int) -> torch.Tensor:
    """Output rows [r0, r1) of ``stage`` as an NHWC tensor (B, r1 - r0, W, C_out)."""
    a, b = stage.src_rows(r0, r1, src_h)
    x = read(stage.src, a, b)  # (B, b - a, W, C_in)  src px
    if stage.norm is not None:
        x = norm_act(x, stats[stage.src], stage.norm, stage.act, w["norm"])
    else:
        x = activate(x, stage.act)  # not in place: x may be a view of a stored map
    x = x.permute(0, 3, 1, 2)  # (B, C_in, rows, W), channels_last in memory
    f = stage.upsample
    if f != 1:
        x = F.interpolate(x, scale_factor=float(f), mode="nearest")  # rows [f*a, f*b) at conv resolution
        a, b = f * a, f * b
    lo, hi = stage.conv_rows(r0, r1)  # may run past [0, conv_h): the border padding
    conv_h = src_h * f
    x = x[:, :, max(lo, 0) - a : min(hi, conv_h) - a]
    top, bottom, left, right = stage.padding
    top, bottom = max(-lo, 0), max(hi - conv_h, 0)
    if top or bottom or left != right:  # zero rows only at the true image border, halo rows elsewhere
        x = F.pad(x, (left, right, top, bottom))
        left = right = 0
    out = F.conv2d(x, w["conv"]["weight"], w["conv"].get("bias"), stride=stage.stride, padding=(0, left))
    if stage.skip is not None:
        skip = read(stage.skip, r0, r1).permute(0, 3, 1, 2)  # (B, C_skip, rows, W)  dst px
        if stage.shortcut is not None:
            skip = F.conv2d(skip, w["shortcut"]["weight"], w["shortcut"].get("bias"))
        out.add_(skip)
    if stage.out_scale != 1.0:
        out.div_(stage.out_scale)
    return activate(out, stage.post, inplace=True).permute(0, 2, 3, 1)  # (B, rows, W, C_out)
