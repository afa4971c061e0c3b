"""diffusers AutoencoderKLHunyuanVideo (HunyuanVideo 1.0): decoder and encoder as stage programs over a
video, or over each of the model's own clips.

diffusers' default call is framewise: a video longer than 4 latent frames (16 frames to encode) goes in
overlapping clips of 5 latent frames, 3 apart (17 frames, 12 apart), each run alone, each clip after
the first without its first frame and cross-faded into the one before (clips). Within a run every
frame is convolved at once: causal 3x3x3 convs padded by repeating (copies of the first frame in
front, edge rows and columns), GroupNorms whose statistics span all the run's frames (its 5-D
GroupNorm), and a mid-block attention over every frame's tokens, each frame seeing its own and those
of the frames before (a causal mask). So a run is one chunk and its rows stream. One row per block:

    post_quant_conv   1x1x1                                                       latent px
    conv_in           3x3x3
    mid               resnet | attention across frames (causal) | resnet
    resnet            norm1+silu+conv1 | norm2+silu+conv2 + x (a 1x1x1 conv where the channels change)
    up                resnets; an upsampler: nearest 2x in space (and in time, the first frame once), 3x3x3
    conv_out          norm+silu+3x3x3                                              image px

The encoder mirrors it: conv_in, down blocks (resnets, a 3x3x3 conv of stride 2 in space and in time
where it compresses time), the mid block, norm+silu+conv_out, quant_conv 1x1x1: the moments.
"""

from __future__ import annotations

from torch import nn

from ..clips import Clips
from ..errors import UnsupportedModelError
from ..program import AttentionStage, KeyValueStage, Program, Shortcut
from . import kl
from .builder import ProgramBuilder, repeat_padded

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "clips", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), run whole or in the model's own clips, each one chunk
CAUSAL = {"time_pad": "first", "border": "replicate"}  #: how every 3x3x3 conv of it is padded


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", vae.post_quant_conv.in_channels, frame_stats="all")
    x = b.causal("post_quant_conv", b.input, vae.post_quant_conv)
    x = b.causal("conv_in", x, _conv(dec.conv_in), **CAUSAL)
    x = _mid(b, x, dec.mid_block)
    for i, block in enumerate(dec.up_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"up.{i}.resnets.{j}", x, resnet)
        for j, up in enumerate(block.upsamplers or []):
            t, h, w = up.upsample_factor
            _require(h == w and int(h) == h and int(t) == t, f"up_blocks.{i}: an upsampling by {up.upsample_factor}")
            x = b.causal(f"up.{i}.upsample.{j}", x, _conv(up.conv), upsample=int(h), time_upsample=int(t), **CAUSAL)
    x = b.causal("conv_out", x, _conv(dec.conv_out), norm=dec.conv_norm_out, act=_act(dec.conv_act), **CAUSAL)
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", enc.conv_in.conv.in_channels, frame_stats="all")
    x = b.causal("conv_in", b.input, _conv(enc.conv_in), **CAUSAL)
    for i, block in enumerate(enc.down_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"down.{i}.resnets.{j}", x, resnet)
        for j, down in enumerate(block.downsamplers or []):
            conv = _conv(down.conv, strided=True)
            st, sh, _ = conv.stride
            x = b.causal(f"down.{i}.downsample.{j}", x, conv, time_stride=st, stride=sh, **CAUSAL)
    x = _mid(b, x, enc.mid_block)
    x = b.causal("conv_out", x, _conv(enc.conv_out), norm=enc.conv_norm_out, act=_act(enc.conv_act), **CAUSAL)
    x = b.causal("quant_conv", x, vae.quant_conv)  # the moments (mean | log-variance)
    return b.build(output=x)


def _mid(b: ProgramBuilder, x: str, mid: nn.Module) -> str:
    x = _resnet(b, "mid.resnets.0", x, mid.resnets[0])
    for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:], strict=True)):
        if attn is not None:  # over every frame's tokens: each frame sees its own and those of the frames before
            kv = b.new_map(2 * attn.inner_dim)
            b.add(KeyValueStage(f"mid.attentions.{i}.kv", x, kv, attn), norm=attn.group_norm)
            x = b.add(AttentionStage(f"mid.attentions.{i}.query", x, kv, x, attn, frames="causal"),
                      norm=attn.group_norm)
        x = _resnet(b, f"mid.resnets.{i + 1}", x, resnet)
    return x


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x (through a 1x1x1 conv where the channels change)."""
    act = _act(resnet.nonlinearity)
    h = b.causal(f"{name}.conv1", x, _conv(resnet.conv1), norm=resnet.norm1, act=act, **CAUSAL)
    shortcut = None if resnet.conv_shortcut is None else Shortcut(conv=resnet.conv_shortcut.conv)
    out = x if shortcut is None else b.new_map(resnet.conv2.conv.out_channels)  # else written over x
    return b.causal(f"{name}.conv2", h, _conv(resnet.conv2), dst=out, norm=resnet.norm2, act=act, skip=x,
                    shortcut=shortcut, **CAUSAL)


def _conv(causal: nn.Module, strided: bool = False) -> nn.Conv3d:
    """A HunyuanVideoCausalConv3d's Conv3d: padded by repeating, copies of the first frame in front;
    stride 1, or (downsamplers) 2 in space and 1 or 2 in time."""
    conv = repeat_padded(causal, ((1, 2, 2), (2, 2, 2)) if strided else ((1, 1, 1),))
    _require(conv is not None, f"only causal convs padded by repeating, got {causal.conv}")
    return conv


def _act(module: nn.Module) -> str:
    _require(isinstance(module, nn.SiLU), f"activation {type(module).__name__}")
    return "silu"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLHunyuanVideo: {message}")


def clips(vae, op: str, frames: int) -> Clips | None:
    """The model's own clips (use_framewise_decoding/encoding, on by default), as its
    _temporal_tiled_decode/_encode lays them out, or None when it runs the video whole: windows of
    min + 1 frames, stride apart (the last ones shorter); the first clip keeps stride + 1 frames, the
    others the stride after their first, their first (min - stride) frames cross-faded into the clip before."""
    ratio = vae.temporal_compression_ratio  # the config's, as the model's clips count with it
    least, stride = vae.tile_sample_min_num_frames, vae.tile_sample_stride_num_frames  # in frames
    if op == "decode":
        least, stride = least // ratio, stride // ratio  # in latent frames
        fade, total = vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames, (frames - 1) * ratio + 1
        step = vae.tile_sample_stride_num_frames  # output frames kept per clip
        framewise = vae.use_framewise_decoding
    else:
        fade, total, step = least // ratio - stride // ratio, (frames - 1) // ratio + 1, stride // ratio
        framewise = vae.use_framewise_encoding
    if not framewise or frames <= least:
        return None
    windows = tuple((i, min(i + least + 1, frames)) for i in range(0, frames, stride))
    run = program(vae, op)  # each clip's frames as its network makes them: by its time resamplers, which a config
    # may have fewer of than its temporal_compression_ratio says (diffusers' own test configs)
    made = [run.frames(stop - start, first=True)[run.output] for start, stop in windows]
    kept = sum(max(min(step + 1, n) - (0 if k == 0 else 1), 0) for k, n in enumerate(made))
    return Clips(windows=windows, keep=(1, step + 1), keep_first=(0, step + 1), frames=min(total, kept), fade=fade)


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk: the model convolves every frame of a run (the video, or a clip of it) at once."""
    return [frames]


def whole(vae, op: str, x):
    """The model's own modules on a run (the video, or a clip), untiled; encode gives the moments."""
    return vae.decoder(vae.post_quant_conv(x)) if op == "decode" else vae.quant_conv(vae.encoder(x))


finish = kl.finish


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.temporal_compression_ratio
