"""diffusers AutoencoderKLCogVideoX (CogVideoX): its decoder as a stage program over chunks of frames.

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

Its encoder (frame pairs averaged by odd/even runs, chunks of 8 frames) is not streamed yet: encode is
refused.
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
    if op == "encode":
        raise UnsupportedModelError("AutoencoderKLCogVideoX: vaekit streams its decoder; its encoder is not streamed "
                                    "yet: use vae.encode")
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


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module, latents: str, scale: int) -> str:
    """spatial norm1+silu+conv1, spatial norm2+silu+conv2, + x (a 1x1x1 conv where the channels change)."""
    _require(not resnet.use_conv_shortcut and getattr(resnet, "temb_proj", None) is None,
             f"{name}: a 3x3x3 shortcut or a time embedding")
    act = _act(resnet.nonlinearity)
    shortcut = None if resnet.in_channels == resnet.out_channels else Shortcut(conv=resnet.conv_shortcut)
    out = x if shortcut is None else b.new_map(resnet.out_channels)
    conv, options = _cached(resnet.conv1)
    h = b.causal(f"{name}.conv1", x, conv, act=act, **_spatial(resnet.norm1, latents, scale), **options)
    conv, options = _cached(resnet.conv2)
    return b.causal(f"{name}.conv2", h, conv, dst=out, act=act, skip=x, shortcut=shortcut,
                    **_spatial(resnet.norm2, latents, scale), **options)


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
    """Its own chunks: num_latent_frames_batch_size (2) latent frames at a time, the first with the odd one more."""
    size = vae.num_latent_frames_batch_size
    count, extra = max(frames // size, 1), frames % size
    return [min(size + extra, frames)] + [size] * (count - 1)


def whole(vae, op: str, x):
    """The model's own decode: its chunks and caches, untiled."""
    return vae._decode(x).sample


finish = kl.finish


def scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def temporal_factor(vae) -> int:
    return vae.config.temporal_compression_ratio
