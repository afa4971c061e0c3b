"""diffusers AutoencoderKLKVAEVideo (Kandinsky 5's video VAE): decoder and encoder as stage programs over
chunks of frames.

diffusers' default call runs a video in chunks (17 frames, then 16 at a time, the last with what is
left; decoding, the latent frames of those: 5, then 4), through causal convs that carry the last frames
of each chunk's input to the next (a time cache), the first chunk padded with copies of its first
frame instead; space is padded by repeating the edge rows and columns. Its GroupNorms take the
statistics of each chunk's frames (its 5-D GroupNorm of a chunk); the decoder's are spatial norms,
scaled and shifted by the chunk's latents upsampled to the map (a first chunk's first frame from the
first latent frame alone). So the chunks are the model's own, run in turn with the caches between
them, and rows stream in each. One row per block:

    conv_in           3x3x3                                                       latent px
    mid               two resnets: norm1+silu+conv1 | norm2+silu+conv2 + x (a 1x1x1 conv where the
                      channels change), their norms spatial
    up                resnets; an upsampler: compressing time, frames repeated (a video's first once) then
                      3x1x1 + the repeated frames; pixels repeated 2x2 then 1x3x3 (rows and columns
                      mirrored) + the repeated pixels; then 1x1x1
    conv_out          spatial norm+silu+3x3x3                                     image px

    conv_in           3x3x3                                                       image px
    down              resnets; a downsampler: 1x3x3 of stride 2 in space (rows and columns mirrored) + the
                      2x2 pixels averaged; then, compressing time, 3x1x1 of stride 2 in time + pairs of
                      frames averaged (a video's first frame alone); then 1x1x1
    mid               two resnets
    conv_out          norm+silu+3x3x3: the latents (its sample half; the model's log-variance is zeros)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError
from ..program import Program, Shortcut, SpatialNorm
from . import kl
from .builder import ProgramBuilder

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), in the model's own chunks with time caches between them
SEGMENT = 16  #: frames per chunk after the first (of 17), as its _encode splits them


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    _require(not dec.mid.block_1.norm1.add_conv, "spatial norms with their own conv (add_conv)")
    b = ProgramBuilder("decode", dec.conv_in.conv.in_channels, frame_stats="all")
    conv, options = _cached(dec.conv_in)
    x, scale = b.causal("conv_in", b.input, conv, **options), 1
    x = _resnet(b, "mid.block_1", x, dec.mid.block_1, scale)
    x = _resnet(b, "mid.block_2", x, dec.mid.block_2, scale)
    for i in reversed(range(len(dec.up))):
        level = dec.up[i]
        for j, block in enumerate(level.block):
            x = _resnet(b, f"up.{i}.block.{j}", x, block, scale)
        if hasattr(level, "upsample"):
            x, scale = _upsample(b, f"up.{i}.upsample", x, level.upsample), scale * 2
    conv, options = _cached(dec.conv_out)
    norm, spatial = _spatial(b, dec.norm_out, scale)
    x = b.causal("conv_out", x, conv, norm=norm, spatial_norm=spatial, act="silu", **options)
    return b.build(output=x)


def _upsample(b: ProgramBuilder, name: str, x: str, up: nn.Module) -> str:
    """Compressing time: frames repeated (a video's first once), 3x1x1 + the repeated frames. Space:
    pixels repeated 2x2, 1x3x3 (rows and columns mirrored) + the repeated pixels. Then 1x1x1."""
    _require(up.factor == 2, f"{name}: an upsampling by {up.factor}")
    if up.temporal_compress:
        conv, options = _cached(up.temporal_conv)
        x = b.causal(f"{name}.temporal", x, conv, time_upsample=2, skip=x, shortcut=Shortcut(repeat=2, time_shuffle=2),
                     **options)  # the residual: the frames repeated as the conv's input (time_shuffle's first-chunk rule)
    conv = up.spatial_conv
    _require(conv.kernel_size == (1, 3, 3) and conv.stride == (1, 1, 1) and conv.padding == (0, 1, 1)
             and conv.padding_mode == "reflect", f"{name}: its spatial conv {conv}")
    x = b.causal(f"{name}.spatial", x, conv, upsample=2, border="reflect", skip=x,
                 shortcut=Shortcut(repeat=4, shuffle=2))  # the residual: each pixel in a 2x2 block
    return b.causal(f"{name}.linear", x, up.linear)


def _spatial(b: ProgramBuilder, norm: nn.Module, scale: int) -> tuple[nn.GroupNorm, SpatialNorm]:
    """A KVAECachedSpatialNorm3D: its GroupNorm (each chunk's statistics), scaled and shifted by the latents."""
    return _norm(norm.norm_layer), SpatialNorm(b.input, norm.conv_y, norm.conv_b, scale)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", enc.conv_in.conv.in_channels, frame_stats="all")  # a chunk's frames' statistics
    conv, options = _cached(enc.conv_in)
    x = b.causal("conv_in", b.input, conv, **options)
    for i, level in enumerate(enc.down):
        for j, block in enumerate(level.block):
            x = _resnet(b, f"down.{i}.block.{j}", x, block)
        if hasattr(level, "downsample"):
            x = _downsample(b, f"down.{i}.downsample", x, level.downsample)
    x = _resnet(b, "mid.block_1", x, enc.mid.block_1)
    x = _resnet(b, "mid.block_2", x, enc.mid.block_2)
    conv, options = _cached(enc.conv_out)
    x = b.causal("conv_out", x, _SampleHalf(conv), norm=_norm(enc.norm_out), act="silu", **options)
    return b.build(output=x)


def _resnet(b: ProgramBuilder, name: str, x: str, block: nn.Module, scale: int | None = None) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x (a 1x1x1 conv where the channels change): over x, or a new
    map. In the decoder (``scale``: its map's pixels per latent pixel) the norms are spatial norms."""
    _require(not block.use_conv_shortcut, f"{name}: a 3x3x3 shortcut")
    shortcut = Shortcut(conv=block.nin_shortcut) if hasattr(block, "nin_shortcut") else None
    out = x if shortcut is None else b.new_map(block.out_channels)
    (norm1, spatial1), (norm2, spatial2) = ((_norm(n), None) if scale is None else _spatial(b, n, scale)
                                            for n in (block.norm1, block.norm2))
    conv, options = _cached(block.conv1)
    h = b.causal(f"{name}.conv1", x, conv, norm=norm1, spatial_norm=spatial1, act="silu", **options)
    conv, options = _cached(block.conv2)
    return b.causal(f"{name}.conv2", h, conv, dst=out, norm=norm2, spatial_norm=spatial2, act="silu", skip=x,
                    shortcut=shortcut, **options)


def _downsample(b: ProgramBuilder, name: str, x: str, down: nn.Module) -> str:
    """Space: 1x3x3 of stride 2, rows and columns mirrored, + the 2x2 pixels averaged. Time (if it
    compresses time): 3x1x1 of stride 2 + pairs of frames averaged, a video's first frame alone. Then 1x1x1."""
    conv = down.spatial_conv
    _require(down.factor == 2 and conv.kernel_size == (1, 3, 3) and conv.stride == (1, 2, 2)
             and conv.padding == (0, 1, 1) and conv.padding_mode == "reflect", f"{name}: its spatial conv {conv}")
    x = b.causal(f"{name}.spatial", x, conv, stride=2, border="reflect", skip=x, shortcut=Shortcut(unshuffle=2, mean=4))
    if down.temporal_compress:
        conv, options = _cached(down.temporal_conv)
        x = b.causal(f"{name}.temporal", x, conv, skip=x, shortcut=Shortcut(time_unshuffle=2, time_front="first",
                                                                              mean=2), **options)
    return b.causal(f"{name}.linear", x, down.linear)


def _cached(causal: nn.Module) -> tuple[nn.Conv3d, dict]:
    """A KVAECachedCausalConv3d's conv and its padding as stage options: in time the cache (copies of
    the first frame before a video's first chunk), in space the edge rows and columns repeated."""
    conv = causal.conv
    kt, kh, kw = conv.kernel_size
    st = conv.stride[0]
    _require(kh == kw and kh % 2 == 1 and conv.stride[1:] == (1, 1) and st in (1, 2) and conv.padding == (0, 0, 0)
             and conv.dilation == (1, 1, 1) and conv.groups == 1 and causal.time_pad == kt - 1,
             f"only causal convs, got kernel {conv.kernel_size}, stride {conv.stride}")
    return conv, {"first_pad": "copies", "border": "replicate", "time_stride": st}


def _norm(norm: nn.Module) -> nn.GroupNorm:
    """A KVAECachedGroupNorm: its GroupNorm, of each chunk's frames."""
    _require(isinstance(getattr(norm, "norm_layer", None), nn.GroupNorm), f"norm {type(norm).__name__}")
    return norm.norm_layer


class _SampleHalf(nn.Module):
    """The encoder's last conv as the model's encode uses it: its first half of channels (the sample),
    then zeros for the log-variance (weights and bias of zero: the moments it returns, exactly)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        half = conv.out_channels // 2
        weight, bias = conv.weight.detach(), conv.bias.detach()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation, self.groups = conv.kernel_size, conv.stride, conv.dilation, 1
        self.weight = nn.Parameter(torch.cat([weight[:half], torch.zeros_like(weight[half:])]), requires_grad=False)
        self.bias = nn.Parameter(torch.cat([bias[:half], torch.zeros_like(bias[half:])]), requires_grad=False)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLKVAEVideo: {message}")


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """Its own chunks: 17 frames, then 16 at a time, the last with what is left (1 + t k frames:
    each later chunk a whole number of the temporal factor); decoding, the latent frames of those."""
    t = vae.config.temporal_compress_times
    if op == "decode":
        return [-(-f // t) for f in chunk_frames(vae, "encode", 1 + t * (frames - 1))]
    if (frames - 1) % t:
        raise InputError(f"an AutoencoderKLKVAEVideo encodes 1 + {t}k frames (1, {1 + t}, {1 + 2 * t}, ...): got "
                         f"{frames}")
    chunks, left = [SEGMENT + 1], frames - SEGMENT - 1
    while left > 0:
        chunks.append(SEGMENT)
        left -= SEGMENT
    chunks[-1] += left
    return chunks


def whole(vae, op: str, x):
    """The model's own decode, or its encode as the moments (sample | zeros): its chunks and caches."""
    if op == "decode":
        return vae._decode(x)
    h = vae._encode(x)
    return torch.cat([h, torch.zeros_like(h)], dim=1)


finish = kl.finish  # the latent distribution (its log-variance zero): its mode is the sample half


def scale_factor(vae) -> int:
    return 2 ** (len(vae.config.ch_mult) - 1)


def temporal_factor(vae) -> int:
    return vae.config.temporal_compress_times
