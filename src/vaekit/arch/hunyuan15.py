"""diffusers AutoencoderKLHunyuanVideo15 (HunyuanVideo 1.5): decoder and encoder as stage programs over
the whole video.

diffusers' default call runs every frame at once. Each 3x3x3 conv is causal, padded by repeating: in
time, copies of the first frame in front; in space, the edge rows and columns. Norms are per pixel
(an RMS norm with gamma). The mid block's attention is over every frame's tokens, each frame seeing
its own and those of the frames before (a causal mask). So the program's one chunk is the whole video
and rows are what stream: every band holds all its rows' frames. One row per block:

    conv_in           3x3x3 + the latents' channels repeated                  latent px
    mid               resnet | attention across frames (causal) | resnet
    resnet            norm1+silu+conv1 | norm2+silu+conv2 + shortcut(x)
    upsample          3x3x3 to 8C' (or 4C'), unpacked (t, row, column, c): the first frame by space
                      alone; + the input unpacked the same way, channels repeated (ops/packing.py)
    conv_out          norm+silu+3x3x3                                          image px

The encoder mirrors it: conv_in, down blocks (resnets, a downsampler packing pixels and pairs of
frames into channels, + the input packed, channel groups averaged), the mid block, then
norm+silu+conv_out + the mid block's output with its channel groups averaged: the moments.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..program import AttentionStage, ConvAttention, KeyValueStage, Program, Shortcut
from . import kl
from .builder import ProgramBuilder, repeat_padded

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), run as one chunk (run.run_video)
CAUSAL = {"time_pad": "first", "border": "replicate"}  #: how every conv of it is padded


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", dec.conv_in.conv.in_channels)
    conv = _conv(dec.conv_in)
    x = b.causal("conv_in", b.input, conv, skip=b.input, shortcut=Shortcut(repeat=dec.repeat), **CAUSAL)
    x = _mid(b, x, dec.mid_block)
    for i, block in enumerate(dec.up_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"up.{i}.resnets.{j}", x, resnet)
        for j, up in enumerate(block.upsamplers or []):
            t = 2 if up.add_temporal_upsample else 1
            x = b.causal(f"up.{i}.upsample.{j}", x, _conv(up.conv), packing="up", time_shuffle=t, shuffle=2, skip=x,
                         **CAUSAL)
    x = b.causal("conv_out", x, _conv(dec.conv_out), norm=dec.norm_out, act=_act(dec.conv_act), **CAUSAL)
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", enc.conv_in.conv.in_channels)
    x = b.causal("conv_in", b.input, _conv(enc.conv_in), **CAUSAL)
    for i, block in enumerate(enc.down_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"down.{i}.resnets.{j}", x, resnet)
        for j, down in enumerate(block.downsamplers or []):
            t = 2 if down.add_temporal_downsample else 1
            x = b.causal(f"down.{i}.downsample.{j}", x, _conv(down.conv), packing="down", time_unshuffle=t,
                         unshuffle=2, skip=x, **CAUSAL)
    x = _mid(b, x, enc.mid_block)
    x = b.causal("conv_out", x, _conv(enc.conv_out), norm=enc.norm_out, act=_act(enc.conv_act), skip=x,
                 shortcut=Shortcut(mean=enc.group_size), **CAUSAL)  # + the mid output's channel groups averaged
    return b.build(output=x)


def _mid(b: ProgramBuilder, x: str, mid: nn.Module) -> str:
    x = _resnet(b, "mid.resnets.0", x, mid.resnets[0])
    for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:], strict=True)):
        if attn is not None:  # across frames: each frame's tokens see their frame's and those of the frames before
            view = ConvAttention(attn.norm, attn.to_q, attn.to_k, attn.to_v, attn.proj_out)
            kv = b.new_map(2 * attn.in_channels)
            b.add(KeyValueStage(f"mid.attentions.{i}.kv", x, kv, view))
            x = b.add(AttentionStage(f"mid.attentions.{i}.query", x, kv, x, view, frames="causal"))
        x = _resnet(b, f"mid.resnets.{i + 1}", x, resnet)
    return x


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x (through a 1x1x1 conv where the channels change)."""
    act = _act(resnet.nonlinearity)
    h = b.causal(f"{name}.conv1", x, _conv(resnet.conv1), norm=resnet.norm1, act=act, **CAUSAL)
    shortcut = Shortcut.of(resnet.conv_shortcut)
    out = x if shortcut is None else b.new_map(resnet.conv2.conv.out_channels)  # else written over x
    return b.causal(f"{name}.conv2", h, _conv(resnet.conv2), dst=out, norm=resnet.norm2, act=act, skip=x,
                    shortcut=shortcut, **CAUSAL)


def _conv(causal: nn.Module) -> nn.Conv3d:
    """A HunyuanVideo15CausalConv3d's Conv3d: padded by repeating, the first frame in front in time."""
    conv = repeat_padded(causal)
    _require(conv is not None, f"only causal stride-1 convs padded by repeating, got {causal.conv}")
    return conv


def _act(module: nn.Module) -> str:
    _require(isinstance(module, nn.SiLU), f"activation {type(module).__name__}")
    return "silu"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLHunyuanVideo15: {message}")


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk: diffusers' default call convolves all frames at once."""
    return [frames]


def whole(vae, op: str, x):
    """The model's own decoder or encoder, untiled (its decode/encode would honour enable_tiling());
    encode gives the moments (mean | logvar)."""
    return vae.decoder(x) if op == "decode" else vae.encoder(x)


finish = kl.finish  # encode: the latent distribution's mode, or a sample as diffusers draws it


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.temporal_compression_ratio
