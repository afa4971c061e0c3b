"""One band of a CausalConvStage: a 3-D conv over a chunk of frames, with the frames before it taken
from the stage's time cache (Wan) or made by copying the first (and last) frame (LTX-2, HunyuanVideo
1.5, whose one chunk is the whole video); then its output rearranged as the model's resamplers do.

Maps hold frames in the batch dimension: a band is (B * F, rows, W, C), each sample's F frames
consecutive; the cache band is (B * T, rows, W, C) with T = cache_frames. The sequence the conv sees
is [cache ; band] along time, as diffusers' feat_cache concatenation makes it, or [copies ; band ;
copies], as the whole-video models pad it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..program import CausalConvStage
from .act import activate
from .conv import apply_shortcut, pixel_shuffle, pixel_unshuffle
from .norm import normalize
from .packing import pack_output, pack_residual

__all__ = ["causal_conv_band", "slice_channels", "WEIGHT_SLICE_BYTES"]


def causal_conv_band(stage: CausalConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                     dst_h: int, *, samples: int | None = None, first: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output rows [r0, r1) of ``stage`` (B * F_out, rows, W, C_out), and rows [r0, r1) of the new
    cache tail (B * T, rows, W, C_in), or None when the stage has no cache. ``samples``: the videos in
    the band (B); ``first``: the band is of a video's first chunk."""
    c0, c1 = stage.conv_out_rows(r0, r1)  # the conv's output rows, before a pixel (un)shuffle
    lo, hi = stage.input_rows(c0, c1)  # its input's rows, the border's padding outside [0, height)
    u = stage.upsample
    a, b = max(lo, 0), min(hi, src_h * u)
    copies = stage.copies_first(first)  # the first chunk's frames after copies of the first, not the cache
    cache = None if stage.cache is None or copies else read(stage.cache, a, b)  # (B*T, b-a, W, C): frames before
    x = read(stage.src, a // u, -(-b // u))  # (B*F, rows, W, C)  src px
    n = cache.shape[0] // stage.cache_frames if cache is not None else samples or x.shape[0]  # videos
    zq = None if stage.spatial_norm is None else _latents(stage, w, read, a // u, -(-b // u), n, first, x.shape[0])
    past = stage.cache_frames if cache is not None else 0
    front, back = stage.pad_frames if not copies else (stage.time_kernel - 1, 0)  # copies, zeros (no cache)
    top, bottom, (_, _, left, right) = a - lo, hi - b, stage.padding  # padding rows at the image border only
    # The conv's input: [cache ; frames] in time, padded in space, (B, C, T+F, rows', W') channels_last_3d:
    # in memory (B, T+F, rows', W', C), the frames' own NHWC order, so filling it and reading the output
    # (B, C, F', rows, W), NHWC frames too, are block copies and views, not transposes.
    def conv_input(frames: int, width: int, channels: int):  # x5, and its frames' rows without the padding
        shape5 = (n, channels, past + front + frames + back, b - a + top + bottom, width + left + right)
        x5 = torch.empty(shape5, dtype=x.dtype, device=x.device, memory_format=conv_layout(shape5, w["conv"]["weight"]))
        return x5, x5[:, :, :, top : top + b - a, left : left + width]

    frames, x5, slot = x.shape[0] // n, None, None
    if (u == 1 and zq is None and not stage.modulated and stage.act != "fourier"  # the prologue keeps its shape
            and stage.upsampled_frames(frames, first) == frames):
        x5, inner = conv_input(frames, x.shape[2], x.shape[3])  # the prologue writes into it: no copy after
        slot = _nhwc(inner[:, :, past + front : past + front + frames])
    x = _prologue(stage, w, stats, x, n, zq, slot)
    if slot is None:
        x = _upsampled(stage, x, n, a - a // u * u, b - a, first)  # (B*F', b-a, W*u, C)  the conv's input px
        frames = x.shape[0] // n
        if x5 is None:
            x5, inner = conv_input(frames, x.shape[2], x.shape[3])
        inner[:, :, past + front : past + front + frames] = x.unflatten(0, (n, frames)).permute(0, 4, 1, 2, 3)
    if cache is not None:
        inner[:, :, :past] = cache.unflatten(0, (n, past)).permute(0, 4, 1, 2, 3)
    _time_pad(stage, inner, front, back, frames)
    _border(x5, (left, right), top, bottom, stage.border)
    tail = cache_tail(stage, x5, c0 - a + top, c1 - a + top)
    out = conv3d(stage, w, x5)  # (B, split*C_out, F', rows, W)
    if stage.noise_scale is not None:  # LTX's decode noise: one (rows, W) map for every video, frame, channel
        noise = stats[("noise", stage.name)][c0:c1]  # (rows, W)
        out += (noise[None] * w["noise_scale"]["scale"].view(-1, 1, 1))[None, :, None]  # (1, C, 1, rows, W)
    out = _pooled(stage, out, first) if stage.time_pool != 1 else out
    out = _rearrange(stage, out, first)  # (B*F_out, rows, W, C_out)
    return activate(_residuals(stage, w, read, r0, r1, out, n), stage.post, inplace=True), tail


def _pooled(stage: CausalConvStage, out: torch.Tensor, first: bool) -> torch.Tensor:
    """The conv's output frames (B, C, F, rows, W) averaged in groups of time_pool, a first frame alone
    where the stage takes it alone (CogVideoX's encoder: in a run of an odd number of frames). Its
    per-frame conv commutes with the average: the model's average-then-conv, to rounding."""
    f, frames = stage.time_pool, out.shape[2]
    alone = frames == 1 or stage.alone(frames, first)  # one frame stays as it is
    rest = out[:, :, 1:] if alone else out
    pooled = rest[:, :, : rest.shape[2] // f * f].unflatten(2, (-1, f)).mean(dim=3)  # (B, C, F', rows, W)
    return torch.cat([out[:, :, :1], pooled], dim=2) if alone else pooled


def _upsampled(stage: CausalConvStage, x: torch.Tensor, n: int, skip: int, rows: int, first: bool) -> torch.Tensor:
    """The band (B*F, rows, W, C) as the conv sees it: pixels in u x u blocks, then ``rows`` rows from
    ``skip`` on; each frame repeated t times, a video's first once on its first chunk (nearest-neighbour,
    as F.interpolate; CausalConvStage.upsampled_frames)."""
    u, t = stage.upsample, stage.time_upsample
    if u != 1:
        x = x.repeat_interleave(u, dim=1)[:, skip : skip + rows].repeat_interleave(u, dim=2)  # (B*F, rows, W*u, C)
    frames = x.shape[0] // n
    if stage.upsampled_frames(frames, first) != frames:
        video = x.unflatten(0, (n, -1)).repeat_interleave(t, dim=1)  # (B, F*t, rows, W, C)
        x = (video[:, t - 1 :] if stage.alone(frames, first) else video).flatten(0, 1)
    return x


def _latents(stage: CausalConvStage, w: dict, read, r0: int, r1: int, n: int, first: bool, band: int):
    """A spatial norm's scale and shift for source rows [r0, r1) of ``band`` frames (n videos): the
    latents nearest-upsampled to the band (scale x in space; in time as F.interpolate to the frames, a
    first chunk's first frame from the first latent frame alone) through conv_y and conv_b."""
    norm, frames = stage.spatial_norm, band // n
    s = norm.scale
    z = read(norm.latents, r0 // s, -(-r1 // s))  # (B*T, rows_z, W_z, Cz)  latent px
    z = z.repeat_interleave(s, dim=1)[:, r0 - r0 // s * s : r0 - r0 // s * s + r1 - r0].repeat_interleave(s, dim=2)
    t = z.shape[0] // n
    if stage.alone(frames, first) and frames > 1 and t > 1:  # the first frame alone, the rest from the rest
        index = [0] + [1 + i * (t - 1) // (frames - 1) for i in range(frames - 1)]
    else:
        index = [i * t // frames for i in range(frames)]
    z = z.unflatten(0, (n, t))[:, index].flatten(0, 1)  # (B*F, rows, W, Cz)
    scale = F.linear(z, w["spatial_norm"]["y"]["weight"], w["spatial_norm"]["y"].get("bias"))
    return scale, F.linear(z, w["spatial_norm"]["b"]["weight"], w["spatial_norm"]["b"].get("bias"))


def conv_layout(shape5, weight: torch.Tensor) -> torch.memory_format:
    """The memory format of a band's conv input: channels-last-3d (the frames' own NHWC order: filling it
    and reading the output are block copies), unless the weights outweigh the band. oneDNN then copies
    the weights into the input's layout on every call; with a plain (NCDHW) input it reorders them only
    as the untiled model's call does (LTX-2's latent-resolution convs: 1.0 s of 12.4 s in copies at 96 MiB)."""
    return torch.channels_last_3d if math.prod(shape5) >= weight.numel() else torch.contiguous_format


def _nhwc(frames5: torch.Tensor) -> torch.Tensor | None:
    """Frames (B, C, F, rows, W) of a conv's input as an NHWC band (B*F, rows, W, C) that writes into
    them, or None where that is no view (several videos, beside other frames: B and F do not merge)."""
    try:
        return frames5.permute(0, 2, 3, 4, 1).view(-1, *frames5.shape[3:], frames5.shape[1])
    except RuntimeError:
        return None


def _prologue(stage: CausalConvStage, w: dict, stats: dict, x: torch.Tensor, n: int, zq=None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """act(norm(x)); for a ``modulated`` stage act(norm(x) * (1 + scale) + shift) with the run's
    per-video, per-channel (scale, shift) (LTX's timestep conditioning); with a spatial norm,
    act(norm(x) * y + b), ``zq`` the (y, b) of the band's latents (Kandinsky 5). ``out``: the frames'
    slot of the conv's input, written in the norm's last pass (a plain stage's only)."""
    if out is not None:
        return normalize(x, stats.get(stage.src), stage.norm, stage.act, w["norm"], inplace=False, out=out)
    if zq is not None:
        y, b = zq
        return activate(normalize(x, stats.get(stage.src), stage.norm, None, w["norm"]) * y + b, stage.act,
                        inplace=True)
    if not stage.modulated:  # a GroupNorm's statistics are each frame's, or a video's (B*F or B of them)
        return normalize(x, stats.get(stage.src), stage.norm, stage.act, w["norm"])
    scale, shift = stats[("modulation", stage.name)]  # (B, C) each
    x = normalize(x, None, stage.norm, None, w["norm"]).unflatten(0, (n, -1))  # (B, F, rows, W, C)
    x = x * (1 + scale[:, None, None, None]) + shift[:, None, None, None]
    return activate(x.flatten(0, 1), stage.act, inplace=True)


def _time_pad(stage: CausalConvStage, inner: torch.Tensor, front: int, back: int, frames: int) -> None:
    """Copies of the first frame (or zeros: time_pad "zeros") in the ``front`` frames of the conv's
    input (B, C, T, rows, W), and of the last in the ``back`` ones. A time unshuffle's frames in front
    are the video's own first f - 1, the frames before them copies of its first (LTX's causal padding
    of that sequence)."""
    lead = stage.lead_frames  # the video's first frames, just before its own (LTX)
    if lead:
        inner[:, :, front - lead : front] = inner[:, :, front : front + lead]
    if front - lead and stage.time_pad == "zeros":
        inner[:, :, : front - lead].zero_()
    elif front - lead:
        inner[:, :, : front - lead] = inner[:, :, front - lead : front - lead + 1]
    if back:
        inner[:, :, front + frames :] = inner[:, :, front + frames - 1 : front + frames]


def _rearrange(stage: CausalConvStage, out: torch.Tensor, first: bool) -> torch.Tensor:
    """The conv's output (B, C, F', rows, W) as the stage's NHWC frames (B*F_out, rows, W, C_out):
    frames split from or folded into channels, pixels (un)shuffled, the last channel repeated."""
    if stage.packing:  # HunyuanVideo 1.5's resamplers
        return pack_output(stage, out)
    if stage.time_split != 1:  # (split, c): frames side by side in the channels (Wan's temporal upsampler)
        out = out.unflatten(1, (stage.time_split, -1)).permute(0, 3, 1, 4, 5, 2)  # (B, F', split, rows, W, C)
    elif stage.time_unshuffle != 1:  # (c, t): groups of f frames into channels
        f = stage.time_unshuffle
        out = out.unflatten(2, (-1, f)).permute(0, 2, 4, 5, 1, 3).flatten(4, 5)  # (B, F'/f, rows, W, C*f)
    elif stage.time_shuffle != 1:  # (c, t, rest): channels into f frames each, the first chunk drops f - 1
        f, rest = stage.time_shuffle, stage.shuffle**2
        out = out.unflatten(1, (-1, f, rest)).permute(0, 4, 2, 5, 6, 1, 3).flatten(5, 6).flatten(1, 2)
        out = out[:, f - 1 :] if first else out  # (B, F'*f - drop, rows, W, C*rest)
    else:
        out = out.permute(0, 2, 3, 4, 1)  # (B, F', rows, W, C)
    out = out.flatten(0, -4)  # (B*F_out, rows, W, C)
    if stage.shuffle != 1 or stage.unshuffle != 1:
        nchw = out.permute(0, 3, 1, 2)
        nchw = pixel_shuffle(nchw, stage.shuffle, stage.order) if stage.shuffle != 1 else nchw
        nchw = pixel_unshuffle(nchw, stage.unshuffle, stage.order) if stage.unshuffle != 1 else nchw
        out = nchw.permute(0, 2, 3, 1)  # dst px
    if stage.repeat_last:
        out = torch.cat([out, out[..., -1:].expand(*out.shape[:-1], stage.repeat_last)], dim=-1)
    return out


def cache_tail(stage: CausalConvStage, x5: torch.Tensor, lo: int, hi: int) -> torch.Tensor | None:
    """The stage's next time cache, rows [lo, hi) of the conv input ``x5`` (B, C, T+F, rows', W'): its
    last frames, without the width padding; None when the stage keeps no cache."""
    if stage.cache is None or stage.cache_out is None:
        return None
    _, _, left, right = stage.padding
    band = x5[:, :, -stage.cache_frames :, lo:hi, left : x5.shape[4] - right]  # (B, C, T, rows, W)
    return band.permute(0, 2, 3, 4, 1).flatten(0, 1)  # (B*T, rows, W, C)


#: most bytes of a conv's weights one oneDNN call takes: larger ones go in slices of output channels, so
#: the backend's reordered copies (two: to the input's layout, then its blocked format) stay this small.
#: LTX-2's upsampler conv has 432 MiB of float32 weights; its untiled decode holds one copy of them.
WEIGHT_SLICE_BYTES = 16 << 20


def conv3d(stage: CausalConvStage, w: dict, x5: torch.Tensor) -> torch.Tensor:
    """The stage's conv on its (B, C, T+F, rows', W') channels_last_3d input: (B, split*C_out, F', rows, W).

    On the CPU, oneDNN directly: PyTorch's heuristic takes it for conv3d only when the product of the first
    four sizes is large, and with a band's few rows there it fell back to im2col (5x the memory, 2x the
    time). Elsewhere (cuDNN) the plain call. Weights over WEIGHT_SLICE_BYTES go in slices of output
    channels (each output channel is its own sum: the same values), written into one output."""
    weight, bias = w["conv"]["weight"], w["conv"].get("bias")
    step = slice_channels(weight)
    if step >= weight.shape[0]:
        return _conv3d(stage, x5, weight, bias)
    out = None
    for c0 in range(0, weight.shape[0], step):
        part = _conv3d(stage, x5, weight[c0 : c0 + step], None if bias is None else bias[c0 : c0 + step])
        if out is None:
            out = torch.empty((part.shape[0], weight.shape[0], *part.shape[2:]), dtype=part.dtype, device=part.device,
                              memory_format=conv_layout(x5.shape, weight))
        out[:, c0 : c0 + step] = part
        del part
    return out


def slice_channels(weight: torch.Tensor, itemsize: int | None = None) -> int:
    """Output channels per oneDNN call for ``weight`` (all of them when it is small): a multiple of 16.
    ``itemsize``: of the compute dtype, if not the weight's (a plan of a model on the meta device)."""
    itemsize = itemsize or weight.element_size()
    per_channel = weight[0].numel() * itemsize
    if weight.shape[0] * per_channel <= WEIGHT_SLICE_BYTES:
        return weight.shape[0]
    return max(16, WEIGHT_SLICE_BYTES // per_channel // 16 * 16)


def _conv3d(stage: CausalConvStage, x5: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    if x5.device.type == "cpu" and x5.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available():
        return torch.mkldnn_convolution(x5, weight, bias, [0, 0, 0], [stage.time_stride, stage.stride, stage.stride],
                                        [1, 1, 1], 1)
    return F.conv3d(x5, weight, bias, stride=(stage.time_stride, stage.stride, stage.stride))


def shortcut_band(stage: CausalConvStage, w: dict, read, r0: int, r1: int, out_n: int,
                  samples: int) -> torch.Tensor | None:
    """shortcut(skip) for output rows [r0, r1), NHWC (``out_n`` frames of ``samples`` videos); None
    without a skip."""
    if stage.skip is None:
        return None
    if stage.packing:  # the source's rows behind the output's, rearranged as the conv's output
        return pack_residual(stage, read(stage.skip, *stage.conv_out_rows(r0, r1)), samples)
    s0, s1 = stage.shortcut.skip_rows(r0, r1) if stage.shortcut else (r0, r1)
    skip = read(stage.skip, s0, s1).permute(0, 3, 1, 2)  # (B*F, C_skip, skip rows, W_skip)
    return apply_shortcut(skip, stage.shortcut, w.get("shortcut"), out_n, samples).permute(0, 2, 3, 1)


def _residuals(stage: CausalConvStage, w: dict, read, r0: int, r1: int, out: torch.Tensor, samples: int):
    """out + shortcut(skip) + skip2, for NHWC bands of frames."""
    skip = shortcut_band(stage, w, read, r0, r1, out.shape[0], samples)
    if skip is not None:
        out = out + skip
    if stage.skip2 is not None:
        out = out + read(stage.skip2, r0, r1)
    return out


def _border(x5: torch.Tensor, columns: tuple[int, int], top: int, bottom: int, mode: str) -> None:
    """Fill the spatial padding of the conv input (B, C, T, rows', W'): ``columns`` (left, right),
    ``top``/``bottom`` rows, as F.pad's ``mode`` fills them: zeros, the edge row and column repeated
    ("replicate"), or the rows and columns mirrored about the border ("reflect"; rows first, then columns
    over every row: corners as F.pad makes them)."""
    left, right = columns
    width = x5.shape[4]
    if mode == "replicate":  # the edge row and column repeated
        rows = x5.shape[3]
        if top:
            x5[:, :, :, :top] = x5[:, :, :, top : top + 1]
        if bottom:
            x5[:, :, :, rows - bottom :] = x5[:, :, :, rows - bottom - 1 : rows - bottom]
        if left:
            x5[..., :left] = x5[..., left : left + 1]
        if right:
            x5[..., width - right :] = x5[..., width - right - 1 : width - right]
        return
    if mode == "zeros":
        if left:
            x5[..., :left].zero_()
        if right:
            x5[..., width - right :].zero_()
        if top:
            x5[:, :, :, :top].zero_()
        if bottom:
            x5[:, :, :, -bottom:].zero_()
        return
    rows = x5.shape[3]
    for i in range(top):  # padding row top-1-i mirrors row top+1+i
        x5[:, :, :, top - 1 - i].copy_(x5[:, :, :, top + 1 + i])
    for i in range(bottom):
        x5[:, :, :, rows - bottom + i].copy_(x5[:, :, :, rows - bottom - 2 - i])
    for i in range(left):
        x5[..., left - 1 - i].copy_(x5[..., left + 1 + i])
    for i in range(right):
        x5[..., width - right + i].copy_(x5[..., width - right - 2 - i])


def causal_first_band(stage: CausalConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                      dst_h: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The stage on a video's first chunk when it says ``first``: its input passes unchanged (Wan's
    resamplers skip their time conv there); with "pass_keep" the cache takes the input's last frames."""
    x = read(stage.src, r0, r1).clone()  # (B*F, rows, W, C); a copy: a read may be a buffer the next read reuses,
    # while the write of this band to a disk map is still in flight
    n = read(stage.cache, r0, r0 + 1).shape[0] // stage.cache_frames  # samples
    tail = x.unflatten(0, (n, -1))[:, -stage.cache_frames :].flatten(0, 1) if stage.first == "pass_keep" else None
    return _residuals(stage, w, read, r0, r1, x, n), tail  # tail: (B*T, rows, W, C)
