"""One band of a ConvStage: prologue (norm, act) -> body (upsample, conv with halo, pixel (un)shuffle)
-> epilogue (out norm, shortcut, post).

Bands are NHWC tensors (B, rows, W, C); the conv runs on their NCHW view, which is channels_last
in memory, the fast layout for CPU convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import ConvStage, Shortcut
from .act import activate
from .norm import local_norm, normalize

__all__ = ["conv_band", "apply_shortcut"]


def conv_band(stage: ConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int) -> torch.Tensor:
    """Output rows [r0, r1) of ``stage`` as an NHWC tensor (B, r1 - r0, W, C_out)."""
    a, b = stage.src_rows(r0, r1, src_h)
    x = read(stage.src, a, b)  # (B, b - a, W, C_in)  src px
    slot = _band_buffer(w, x) if isinstance(stage.norm, torch.nn.GroupNorm) and x.dtype == torch.float32 else None
    x = normalize(x, stats.get(stage.src), stage.norm, stage.act, w["norm"], out=slot)  # x may be a stored map's view
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
    out = F.conv2d(x, w["conv"]["weight"], w["conv"].get("bias"), stride=stage.stride, padding=(0, left),
                   groups=stage.conv.groups)  # (B, C_conv, conv rows, W_conv)
    if stage.shuffle != 1:
        out = pixel_shuffle(out, stage.shuffle, stage.order)  # (B, C_out, rows, W)  dst px
    if stage.unshuffle != 1:
        out = pixel_unshuffle(out, stage.unshuffle, stage.order)
    if stage.out_norm is not None:
        out = local_norm(out.permute(0, 2, 3, 1), stage.out_norm, w["out_norm"]).permute(0, 3, 1, 2)
    if stage.skip is not None:
        s0, s1 = stage.shortcut.skip_rows(r0, r1) if stage.shortcut else (r0, r1)
        skip = read(stage.skip, s0, s1).permute(0, 3, 1, 2)  # (B, C_skip, skip rows, W_skip)
        out = out.add_(apply_shortcut(skip, stage.shortcut, w.get("shortcut"), out.shape[0]))
    if stage.out_scale != 1.0:
        out.div_(stage.out_scale)
    return activate(out, stage.post, inplace=True).permute(0, 2, 3, 1)  # (B, rows, W, C_out)


def _band_buffer(w: dict, like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped as ``like`` for the normalized band, one buffer for every band of the stage (kept
    in the stage's tensors, ``w["scratch"]``, which live as long as the stage). A fresh band-sized
    temporary each time is a new mmap whose pages fault (store._bound_heap): 1.9 M faults, 2.5 s of
    kernel time in an SD 1024² decode at 64 MiB (Intel Xeon VM, 2026-12-02)."""
    buf = w.get("scratch")
    if buf is None or buf.numel() < like.numel():
        buf = w["scratch"] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    return buf[: like.numel()].view(like.shape)


def apply_shortcut(skip: torch.Tensor, shortcut: Shortcut | None, weights: dict | None, out_n: int | None = None,
                   samples: int | None = None) -> torch.Tensor:
    """shuffle(mean(repeat(conv(norm(unshuffle(skip)))))) of an NCHW band, each step only where asked. In a
    video, frames are in the batch dimension: ``out_n`` is the output band's (a time shuffle on a first
    chunk keeps each group's last frame), ``samples`` the videos in it (a time unshuffle pads each)."""
    if shortcut is None:
        return skip
    if shortcut.time_unshuffle != 1:  # (B*T, C, ...) -> (B*T/f, C*f, ...), frames in front to whole groups
        f = shortcut.time_unshuffle
        video = skip.unflatten(0, (samples or skip.shape[0], -1))  # (B, T, C, rows, W); unsaid: one frame each
        if shortcut.time_front == "first":  # LTX: the video's first frames again, to whole groups (Kandinsky 5:
            video = torch.cat([video[:, : (-video.shape[1]) % f], video], dim=1)  # a first chunk's f - 1 only)
        else:  # Wan 2.2: zero frames
            video = F.pad(video, (0, 0, 0, 0, 0, 0, (-video.shape[1]) % f, 0))
        skip = video.unflatten(1, (-1, f)).transpose(2, 3).flatten(2, 3).flatten(0, 1)  # (B*T', C*f, rows, W)
    if shortcut.unshuffle != 1:
        skip = pixel_unshuffle(skip, shortcut.unshuffle, shortcut.order)  # (B, C * u^2, rows / u, W / u)
    if shortcut.norm is not None:  # a LayerNorm over each pixel's channels
        norm = weights["norm"]
        skip = F.layer_norm(skip.movedim(1, -1), shortcut.norm.normalized_shape, norm.get("weight"), norm.get("bias"),
                            shortcut.norm.eps).movedim(-1, 1)
    if shortcut.conv is not None:
        skip = F.conv2d(skip, weights["weight"], weights.get("bias"))
    if shortcut.repeat != 1:
        skip = skip.repeat_interleave(shortcut.repeat, dim=1)  # (B, C * r, rows, W)
    if shortcut.mean != 1:
        skip = skip.unflatten(1, (-1, shortcut.mean)).mean(dim=2)  # (B, C / m, rows, W)
    if shortcut.time_shuffle != 1:  # (N, C*f, ...) -> (N*f, C, ...): channels (c, t, rest) into frames
        f, rest = shortcut.time_shuffle, shortcut.shuffle**2
        n = skip.shape[0]
        skip = skip.unflatten(1, (-1, f, rest)).transpose(1, 2).flatten(2, 3).flatten(0, 1)  # (N*f, C*rest, ...)
        if out_n is not None and out_n != n * f:  # a first chunk: each video's first f - 1 frames dropped
            samples = samples or n  # unsaid: one frame per video (Wan's first chunk)
            skip = skip.unflatten(0, (samples, -1))[:, (n * f - out_n) // samples :].flatten(0, 1)
    if shortcut.shuffle != 1:
        skip = pixel_shuffle(skip, shortcut.shuffle, shortcut.order)  # (B, C / s^2, rows * s, W * s)
    if shortcut.tile != 1:
        skip = skip.repeat(1, shortcut.tile, 1, 1)  # (B, C * t, rows, W): channels tiled, not interleaved
    return skip


def pixel_shuffle(x: torch.Tensor, f: int, order: str = "channel") -> torch.Tensor:
    """(B, f*f*C, H, W) -> (B, C, f*H, f*W), the coarse channels in ``order`` (program.SHUFFLE_ORDERS)."""
    if order == "offset":  # (r1, r2, c) -> torch's (c, r1, r2)
        x = x.unflatten(1, (f * f, -1)).transpose(1, 2).flatten(1, 2)
    elif order == "transposed":  # (c, r2, r1) -> (c, r1, r2)
        x = x.unflatten(1, (-1, f, f)).transpose(2, 3).flatten(1, 3)
    return F.pixel_shuffle(x, f)


def pixel_unshuffle(x: torch.Tensor, f: int, order: str = "channel") -> torch.Tensor:
    """(B, C, f*H, f*W) -> (B, f*f*C, H, W), the channels in ``order`` (program.SHUFFLE_ORDERS)."""
    x = F.pixel_unshuffle(x, f)
    if order == "offset":  # torch's (c, r1, r2) -> (r1, r2, c)
        x = x.unflatten(1, (-1, f * f)).transpose(1, 2).flatten(1, 2)
    elif order == "transposed":  # (c, r1, r2) -> (c, r2, r1)
        x = x.unflatten(1, (-1, f, f)).transpose(2, 3).flatten(1, 3)
    return x
