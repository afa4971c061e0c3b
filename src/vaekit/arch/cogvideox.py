"""diffusers AutoencoderKLCogVideoX (CogVideoX): decoder and encoder as stage programs over chunks of frames.

diffusers' default decode runs 2 latent frames at a time (the first chunk takes an odd one more),
through causal 3x3x3 convs that carry the last 2 frames of each chunk's input to the next (a time
cache; copies of the first frame before the first chunk), zero-padded in space. Its norms are spatial
norms: a GroupNorm with the statistics of the chunk's frames, scaled and shifted by the chunk's
latents nearest-upsampled to the map; in a run of an odd number of frames the first frame is taken
alone, both there and by its upsamplers, which repeat pixels (and frames) before a 2-D 3x3 conv. So
the chunks are the model's own, run in turn with the caches between them, and rows stream in each.
One row per block:

    conv_in           3x3x3                                                       latent px
    mid               resnets: spatial norm1+silu+conv1 | spatial norm2+silu+conv2 + x (a 1x1x1 conv
                      where the channels change)
    up                resnets; an upsampler: pixels repeated 2x2 (and frames 2x, the first alone in an
                      odd run), then 3x3 on each frame
    conv_out          spatial norm+silu+3x3x3                                     image px

Its encoder runs in chunks of 8 frames (the first with what is left more) the same way: causal convs
with the time cache, GroupNorms of the chunk's frames, downsamplers that average pairs of frames (the
first alone in an odd run) and take a 2-D 3x3 conv of stride 2 after a zero row and column (the
average taken after the per-frame conv here: the same, to rounding), then the moments.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..program import Program, Shortcut, SpatialNorm
from . import kl
from .builder import ProgramBuilder
from .wan import _OneTap

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), in the model's own chunks with time caches between them


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", enc.conv_in.conv.in_channels, frame_stats="all")  # a chunk's frames' statistics
    conv, options = _cached(enc.conv_in)
    x = b.causal("conv_in", b.input, conv, **options)
    for i, block in enumerate(enc.down_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"down.{i}.resnets.{j}", x, resnet)
        for j, down in enumerate(block.downsamplers or []):
            _require(down.conv.kernel_size == (3, 3) and down.conv.stride == (2, 2) and down.conv.padding == (0, 0),
                     f"down_blocks.{i}: its downsampler's conv {down.conv}")
            x = b.causal(f"down.{i}.downsample.{j}", x, _OneTap(down.conv), stride=2, pad=(0, 1, 0, 1),
                         time_pool=2 if down.compress_time else 1, first_alone="odd")  # pairs of frames averaged
    for j, resnet in enumerate(enc.mid_block.resnets):
        x = _resnet(b, f"mid.resnets.{j}", x, resnet)
    conv, options = _cached(enc.conv_out)
    x = b.causal("conv_out", x, conv, norm=enc.norm_out, act=_act(enc.conv_act), **options)
    if vae.quant_conv is not None:
        x = b.causal("quant_conv", x, vae.quant_conv)
    return b.build(output=x)  # the moments (mean | log-variance)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", dec.conv_in.conv.in_channels, frame_stats="all")  # a chunk's frames' statistics
    latents = b.input
    if vae.post_quant_conv is not None:
        latents = b.causal("post_quant_conv", b.input, vae.post_quant_conv)
    conv, options = _cached(dec.conv_in)
    x, scale = b.causal("conv_in", latents, conv, **options), 1
    for j, resnet in enumerate(dec.mid_block.resnets):
        x = _resnet(b, f"mid.resnets.{j}", x, resnet, latents, scale)
    for i, block in enumerate(dec.up_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"up.{i}.resnets.{j}", x, resnet, latents, scale)
        for j, up in enumerate(block.upsamplers or []):
            _require(up.conv.kernel_size == (3, 3) and up.conv.stride == (1, 1) and up.conv.padding == (1, 1),
                     f"up_blocks.{i}: its upsampler's conv {up.conv}")
            x = b.causal(f"up.{i}.upsample.{j}", x, _OneTap(up.conv), upsample=2,
                         time_upsample=2 if up.compress_time else 1, first_alone="odd")
            scale *= 2
    conv, options = _cached(dec.conv_out)
    x = b.causal("conv_out", x, conv, act=_act(dec.conv_act), **_spatial(dec.norm_out, latents, scale), **options)
    return b.build(output=x)


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module, latents: str | None = None,
            scale: int = 1) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x (a 1x1x1 conv where the channels change); the decoder's
    norms are spatial norms with the ``latents``."""
    _require(not resnet.use_conv_shortcut and getattr(resnet, "temb_proj", None) is None,
             f"{name}: a 3x3x3 shortcut or a time embedding")
    act = _act(resnet.nonlinearity)
    shortcut = None if resnet.in_channels == resnet.out_channels else Shortcut(conv=resnet.conv_shortcut)
    out = x if shortcut is None else b.new_map(resnet.out_channels)
    norm1, norm2 = ((_spatial(n, latents, scale) if latents is not None else {"norm": _group(n)})
                    for n in (resnet.norm1, resnet.norm2))
    conv, options = _cached(resnet.conv1)
    h = b.causal(f"{name}.conv1", x, conv, act=act, **norm1, **options)
    conv, options = _cached(resnet.conv2)
    return b.causal(f"{name}.conv2", h, conv, dst=out, act=act, skip=x, shortcut=shortcut, **norm2, **options)


def _group(norm: nn.Module) -> nn.GroupNorm:
    _require(isinstance(norm, nn.GroupNorm), f"norm {type(norm).__name__}")
    return norm


def _spatial(norm: nn.Module, latents: str, scale: int) -> dict:
    """A CogVideoXSpatialNorm3D as stage options: its GroupNorm (the chunk's frames), scaled and shifted by
    the latents (the first frame alone in an odd run)."""
    _require(isinstance(getattr(norm, "norm_layer", None), nn.GroupNorm), f"norm {type(norm).__name__}")
    return {"norm": norm.norm_layer, "spatial_norm": SpatialNorm(latents, norm.conv_y.conv, norm.conv_b.conv, scale),
            "first_alone": "odd"}


def _cached(causal: nn.Module) -> tuple[nn.Conv3d, dict]:
    """A CogVideoXCausalConv3d (its cached mode): the time cache, copies of the first frame before the
    first chunk; zeros in space ('same')."""
    conv = causal.conv
    kt, kh, kw = conv.kernel_size
    _require(causal.pad_mode != "replicate" and kh == kw and kh % 2 == 1 and conv.stride == (1, 1, 1)
             and conv.padding == (0, kh // 2, kw // 2) and conv.dilation == (1, 1, 1) and conv.groups == 1,
             f"only cached causal convs, got kernel {conv.kernel_size}")
    return conv, {"first_pad": "copies"}


def _act(module: nn.Module) -> str:
    _require(isinstance(module, nn.SiLU), f"activation {type(module).__name__}")
    return "silu"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLCogVideoX: {message}")


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """Its own chunks: num_latent_frames_batch_size (2) latent frames at a time (encoding,
    num_sample_frames_batch_size: 8 frames), the first with what is left more."""
    size = vae.num_latent_frames_batch_size if op == "decode" else vae.num_sample_frames_batch_size
    count, extra = max(frames // size, 1), frames % size
    return [min(size + extra, frames)] + [size] * (count - 1)


def whole(vae, op: str, x):
    """The model's own decode, or its encode's moments: its chunks and caches, untiled."""
    return vae._decode(x).sample if op == "decode" else vae._encode(x)


finish = kl.finish


def scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def temporal_factor(vae) -> int:
    return vae.config.temporal_compression_ratio
