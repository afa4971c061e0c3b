"""diffusers AutoencoderKLHunyuanImage (HunyuanImage 2.1: 32x down, 64 latent channels): both
directions as stage programs.

Like AutoencoderKL (GroupNorm of 32 groups, SiLU, one mid-block attention), with its resolution changed
by channel-to-space moves whose shortcuts skip the conv; their pixel (un)shuffles order channels
offset-major, (r1, r2, c), not torch's (c, r1, r2). One row per block:

    conv_in            3x3                                  + repeat_interleave(z)            latent px
    mid                resnet | attention (K,V | queries, 1x1-conv projections) | resnet
    resnet             norm1+silu+conv1 | norm2+silu+conv2 + x, written over x
    Upsample           3x3 conv to 4C', shuffle 2x         + shuffle(repeat_interleave(x))   map px double
    Downsample         3x3 conv to C'/4, unshuffle 2x      + mean of groups(unshuffle(x))    map px halve
    decoder conv_out   norm+silu+3x3                                                          image px
    encoder conv_out   norm+silu+3x3                        + mean of channel groups(x)       the moments
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..program import ConvAttention, ConvStage, KeyValueStage, Program, Shortcut
from . import kl
from .builder import ProgramBuilder

__all__ = ["program", "whole", "finish", "scale_factor"]

SHUFFLE = 2
ORDER = "offset"  #: HunyuanImage's resamplers reshape (B, r1, r2, C, h, w): offset-major channels


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", vae.config.latent_channels)
    x = b.add(ConvStage("conv_in", b.input, b.new_map(dec.conv_in.out_channels), _conv(dec.conv_in),
                        skip=b.input, shortcut=Shortcut(repeat=dec.repeat)))
    x = _mid(b, x, dec.mid_block)
    for i, block in enumerate(dec.up_blocks):
        x = _block(b, f"up.{i}", x, block)
    x = b.conv("conv_out", x, _conv(dec.conv_out), norm=dec.norm_out, act="silu")
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", vae.config.in_channels)
    x = b.conv("conv_in", b.input, _conv(enc.conv_in))
    for i, block in enumerate(enc.down_blocks):
        x = _block(b, f"down.{i}", x, block)
    x = _mid(b, x, enc.mid_block)
    out = b.new_map(enc.conv_out.out_channels)
    stage = ConvStage("conv_out", x, out, _conv(enc.conv_out), norm=enc.norm_out, act="silu", skip=x,
                      shortcut=Shortcut(mean=enc.group_size))
    return b.build(output=b.add(stage, norm=enc.norm_out))


def _mid(b: ProgramBuilder, x: str, mid: nn.Module) -> str:
    x = _block(b, "mid.resnets.0", x, mid.resnets[0])
    for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:], strict=True)):
        x = _attention(b, f"mid.attentions.{i}", x, attn)
        x = _block(b, f"mid.resnets.{i + 1}", x, resnet)
    return x


def _block(b: ProgramBuilder, name: str, x: str, block: nn.Module) -> str:
    kind = type(block).__name__
    if kind == "HunyuanImageResnetBlock":
        _require(block.conv_shortcut is None, f"{name}: a channel-changing resnet")  # its forward cannot run
        act = kl._act(block.nonlinearity)
        h = b.conv(f"{name}.conv1", x, _conv(block.conv1), norm=block.norm1, act=act)
        return b.add(ConvStage(f"{name}.conv2", h, x, _conv(block.conv2), norm=block.norm2, act=act, skip=x),
                     norm=block.norm2)
    if kind == "HunyuanImageUpsample":
        channels = block.conv.out_channels // SHUFFLE**2
        shortcut = Shortcut(repeat=block.repeats, shuffle=SHUFFLE, order=ORDER)
        return b.add(ConvStage(name, x, b.new_map(channels), _conv(block.conv), shuffle=SHUFFLE, order=ORDER,
                               skip=x, shortcut=shortcut))
    if kind == "HunyuanImageDownsample":
        channels = block.conv.out_channels * SHUFFLE**2
        shortcut = Shortcut(unshuffle=SHUFFLE, mean=block.group_size, order=ORDER)
        return b.add(ConvStage(name, x, b.new_map(channels), _conv(block.conv), unshuffle=SHUFFLE, order=ORDER,
                               skip=x, shortcut=shortcut))
    raise UnsupportedModelError(f"AutoencoderKLHunyuanImage: {name}: block {kind} is not supported")


def _attention(b: ProgramBuilder, name: str, x: str, attn: nn.Module) -> str:
    view = ConvAttention(attn.norm, _conv(attn.to_q), _conv(attn.to_k), _conv(attn.to_v), _conv(attn.proj))
    kv = b.new_map(2 * attn.to_k.out_channels)
    b.add(KeyValueStage(f"{name}.kv", x, kv, view), norm=attn.norm)
    return kl.attention_query(b, name, x, kv, view)


def _conv(conv: nn.Conv2d) -> nn.Conv2d:
    kl._check_conv("AutoencoderKLHunyuanImage", conv)
    return conv


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLHunyuanImage: {message}")


def whole(vae, op: str, x):
    """The model's own modules, untiled (vae.decode would honour enable_tiling())."""
    return vae.decoder(x) if op == "decode" else vae.encoder(x)


finish = kl.finish  # encode: the latent distribution's mode, or a sample as diffusers draws it


def scale_factor(vae) -> int:
    return vae.config.spatial_compression_ratio
