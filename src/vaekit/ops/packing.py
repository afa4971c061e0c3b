"""HunyuanVideo 1.5's resamplers (DC-AE's, over frames), for a band of a whole video.

Upsampling, the conv's channels are (t, row, column, c): each frame after the first unpacks into two
frames of twice the rows and columns; a video's first frame unpacks in space alone, (row, column, c')
over twice the channels, and keeps the first half. The residual is the input unpacked the same way,
its channels then repeated (interleaved) up to the output's. Downsampling is the inverse: pairs of
frames after the first pack into channels, the first frame packs in space and its channels are taken
twice; the residual is the input packed the same way, groups of its channels averaged. Without a time
factor every frame goes by space alone. ``packing.py`` keeps every reshape of it in one place.
"""

from __future__ import annotations

import torch

from ..program import CausalConvStage

__all__ = ["pack_output", "pack_residual"]


def pack_output(stage: CausalConvStage, out: torch.Tensor) -> torch.Tensor:
    """The conv's output (B, C, F, rows, W) as the stage's NHWC frames (B*F', rows', W', C_out)."""
    x = out.permute(0, 2, 3, 4, 1)  # (B, F, rows, W, C)
    if stage.packing == "up":
        t = stage.time_shuffle
        if t == 1:
            return _unpack(x, 1).flatten(0, 1)
        first = _unpack(x[:, :1], 1)  # (B, 1, 2rows, 2W, 2 C_out): space alone
        first = first[..., : first.shape[-1] // 2]
        return torch.cat([first, _unpack(x[:, 1:], t)], dim=1).flatten(0, 1)  # (B*(1 + 2(F-1)), ...)
    t = stage.time_unshuffle
    if t == 1:
        return _pack(x, 1).flatten(0, 1)
    first = _pack(x[:, :1], 1)  # (B, 1, rows/2, W/2, 4c): space alone, then its channels twice
    return torch.cat([torch.cat([first, first], dim=-1), _pack(x[:, 1:], t)], dim=1).flatten(0, 1)


def pack_residual(stage: CausalConvStage, skip: torch.Tensor, samples: int) -> torch.Tensor:
    """The residual from the stage's source rows ``skip`` (B*F, rows, W, C): NHWC frames like pack_output's."""
    x = skip.unflatten(0, (samples, -1))  # (B, F, rows, W, C)
    conv_out = stage.conv.out_channels
    out_channels = conv_out // (4 * stage.time_shuffle) if stage.packing == "up" else conv_out * 4 * stage.time_unshuffle
    if stage.packing == "up":
        t = stage.time_shuffle
        if t == 1:  # channels repeated first, then unpacked
            repeats = out_channels * 4 // x.shape[-1]
            return _unpack(x.repeat_interleave(repeats, dim=-1), 1).flatten(0, 1)
        repeats = out_channels * 4 * t // x.shape[-1]
        first = _unpack(x[:, :1], 1).repeat_interleave(repeats // 2, dim=-1)
        rest = _unpack(x[:, 1:], t).repeat_interleave(repeats, dim=-1)
        return torch.cat([first, rest], dim=1).flatten(0, 1)
    t = stage.time_unshuffle
    if t == 1:
        return _mean(_pack(x, 1), out_channels).flatten(0, 1)
    first, rest = _mean(_pack(x[:, :1], 1), out_channels), _mean(_pack(x[:, 1:], t), out_channels)
    return torch.cat([first, rest], dim=1).flatten(0, 1)


def _unpack(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B, F, rows, W, t*2*2*C) channels (t, row, column, c) -> (B, t*F, 2 rows, 2 W, C)."""
    b, f, rows, w, c = x.shape
    x = x.reshape(b, f, rows, w, t, 2, 2, c // (4 * t))
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, f * t, rows * 2, w * 2, c // (4 * t))


def _pack(x: torch.Tensor, t: int) -> torch.Tensor:
    """(B, t*F, 2 rows, 2 W, C) -> (B, F, rows, W, t*2*2*C), channels (t, row, column, c)."""
    b, f, rows, w, c = x.shape
    x = x.reshape(b, f // t, t, rows // 2, 2, w // 2, 2, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, f // t, rows // 2, w // 2, t * 4 * c)


def _mean(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Groups of consecutive channels averaged down to ``channels``."""
    return x.unflatten(-1, (channels, -1)).mean(dim=-1)
