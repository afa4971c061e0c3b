"""One band of a CausalConvStage: a causal 3-D conv over a chunk of frames, with the frames before it
taken from the stage's time cache.

Maps hold frames in the batch dimension: a band is (B * F, rows, W, C), each sample's F frames
consecutive; the cache band is (B * T, rows, W, C) with T = cache_frames. The sequence the conv sees
is [cache ; band] along time, as diffusers' feat_cache concatenation makes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import CausalConvStage
from .act import activate
from .conv import apply_shortcut
from .norm import normalize

__all__ = ["causal_conv_band"]


def causal_conv_band(stage: CausalConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                     dst_h: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output rows [r0, r1) of ``stage`` (B * F_out, rows, W, C_out), and rows [r0, r1) of the new
    cache tail (B * T, rows, W, C_in), or None when the stage has no cache."""
    halo = stage.halo
    a, b = max(r0 - halo, 0), min(r1 + halo, src_h)
    x = normalize(read(stage.src, a, b), None, stage.norm, stage.act, w["norm"])  # (B*F, b-a, W, C)  src px
    if stage.cache is None:  # a time kernel of 1: every frame on its own
        seq = x.unsqueeze(1)  # (B*F, 1, b-a, W, C)
    else:
        cache = read(stage.cache, a, b)  # (B*T, b-a, W, C)
        n = cache.shape[0] // stage.cache_frames  # samples
        seq = torch.cat([cache.unflatten(0, (n, -1)), x.unflatten(0, (n, -1))], dim=1)  # (B, T+F, b-a, W, C)
    tail = None
    if stage.cache_out is not None:
        tail = seq[:, -stage.cache_frames :, r0 - a : r1 - a].flatten(0, 1)  # (B*T, rows, W, C)
    top, bottom = halo - (r0 - a), halo - (b - r1)  # zero rows at the image border only
    x5 = F.pad(seq.permute(0, 4, 1, 2, 3), (halo, halo, top, bottom))  # (B, C, T+F, rows', W')
    out = F.conv3d(x5, w["conv"]["weight"], w["conv"].get("bias"), stride=(stage.time_stride, 1, 1))
    split = stage.time_split  # (B, split*C_out, F_out, rows, W): split frames side by side in channels
    out = out.unflatten(1, (split, -1)).permute(0, 3, 1, 4, 5, 2).flatten(0, 2)  # (B*F_out*split, rows, W, C_out)
    if stage.skip is not None:
        skip = read(stage.skip, r0, r1).permute(0, 3, 1, 2)  # (B*F, C_skip, rows, W)
        out = out + apply_shortcut(skip, stage.shortcut, w.get("shortcut")).permute(0, 2, 3, 1)
    return activate(out, stage.post, inplace=True), tail


def causal_first_band(stage: CausalConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                      dst_h: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stage on a video's first chunk when it says ``first``: its input passes unchanged (Wan's
    resamplers skip their time conv there); with "pass_keep" the cache takes the input's last frames."""
    x = read(stage.src, r0, r1)  # (B*F, rows, W, C)
    if stage.first != "pass_keep":
        return x, None
    n = read(stage.cache, r0, r0 + 1).shape[0] // stage.cache_frames  # samples
    return x, x.unflatten(0, (n, -1))[:, -stage.cache_frames :].flatten(0, 1)  # (B*T, rows, W, C)
