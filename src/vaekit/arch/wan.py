"""diffusers AutoencoderKLWan (Wan 2.1 video, and Wan 2.2's residual VAE; Qwen-Image's
AutoencoderKLQwenImage is the 2.1 network on one frame): decoder and encoder as stage programs over
one chunk of frames.

diffusers decodes one latent frame at a time, each causal conv carrying the last two frames of its
input to the next chunk; the program is that chunk, its caches are maps (program.CausalConvStage),
and the runner (run.run_video) feeds it the chunks. Every norm is per pixel (Wan's RMS norm), so
nothing is global except the mid-block attention, over each frame's tokens. One row per block:

    post_quant_conv   1x1x1                                              latent px
    conv_in           3x3x3 causal
    mid               resnet | attention per frame (RMS norm, one 1x1 qkv conv) | resnet
    resnet            norm1+silu+conv1 (3x3x3) | norm2+silu+conv2 (3x3x3) + shortcut(x)
    upsample3d        time conv (3x1x1, 2C: two frames, not on the first chunk) | nearest 2x + 3x3
    upsample2d        nearest 2x + 3x3                                   map px double
    conv_out          norm+silu+3x3x3, clamped to [-1, 1]                image px

The encoder reads chunks of 1, then 4 frames: conv_in, resnets, downsample2d (zero pad right and
bottom, 3x3 stride 2: map px halve), downsample3d (the same, then a time conv of stride 2 over the
frame before and the chunk's, skipped by the first chunk), the mid block, norm+silu+conv_out and
quant_conv (1x1x1), giving the moments (mean | logvar).

Wan 2.2 (``is_residual``, ``patch_size`` 2) adds: 2x2 patches into channels before the encoder and
back after the decoder (identity 1x1 stages that only (un)shuffle); around each down block, the
block input averaged down to the output (AvgDown3D: frames and pixels folded into channels, groups
averaged, a zero frame in front of a one-frame chunk); around each up block, the block input
duplicated up (DupUp3D: channels repeated and unfolded into frames and pixels, the first chunk
keeping one frame). These are Shortcuts of the block's last stage.
"""

from __future__ import annotations

from torch import nn

from ..errors import InputError, UnsupportedModelError
from ..program import AttentionStage, ConvAttention, ConvStage, KeyValueStage, Program, Shortcut
from . import kl
from .builder import ProgramBuilder
from .kl import DOWNSAMPLE_PAD

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), run chunk by chunk (run.run_video)
UPSAMPLE = 2
PATCH_ORDER = "transposed"  #: Wan 2.2's patchify puts a 2x2 patch in channels as (c, column, row)


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _encoder(vae) -> Program:
    enc, patch = vae.encoder, getattr(vae.config, "patch_size", None)
    pixels = enc.conv_in.in_channels // (patch or 1) ** 2  # RGB: Wan 2.2's encoder takes 2x2 patches of them
    b = ProgramBuilder("encode", pixels)
    x = b.input
    if patch:  # Wan 2.2: pixels to channels first, (c, column, row) order
        x = b.add(ConvStage("patchify", x, b.new_map(enc.conv_in.in_channels), _identity(pixels), unshuffle=patch,
                            order=PATCH_ORDER))
    x = b.causal("conv_in", x, _causal(enc.conv_in))
    for i, block in enumerate(enc.down_blocks):
        kind = type(block).__name__
        if kind.endswith("ResidualDownBlock"):
            x = _residual_down(b, f"down.{i}", x, block)
        elif kind.endswith("ResidualBlock"):
            x = _resnet(b, f"down.{i}", x, block)
        elif kind.endswith("Resample"):
            x = _downsample(b, f"down.{i}", x, block)
        else:
            raise UnsupportedModelError(f"{type(vae).__name__}: encoder block {kind} is not supported")
    x = _mid(b, x, enc.mid_block)
    x = b.causal("conv_out", x, _causal(enc.conv_out), norm=enc.norm_out, act="silu")
    x = b.causal("quant_conv", x, _causal(vae.quant_conv))
    return b.build(output=x)


def _downsample(b: ProgramBuilder, name: str, x: str, resample: nn.Module, skip: str | None = None,
                shortcut: Shortcut | None = None) -> str:
    """Zero pad right and bottom, 3x3 stride 2 (each frame); downsample3d then a time conv of stride 2
    over [last frame before ; frames], which the first chunk (one frame) skips, keeping its frame.
    ``skip``/``shortcut``: a residual block's shortcut, added by the last of these stages."""
    _require(resample.mode in ("downsample2d", "downsample3d"), f"{name}: resampling mode {resample.mode}")
    pad, conv = resample.resample
    _require(tuple(pad.padding) == DOWNSAMPLE_PAD and conv.kernel_size == (3, 3) and conv.stride == (2, 2)
             and conv.padding == (0, 0), f"{name}: only zero pad + 3x3 stride-2 downsampling")
    time = resample.mode == "downsample3d" and not _single_frame(resample.time_conv)
    spatial = {} if time else dict(skip=skip, shortcut=shortcut)
    x = b.add(ConvStage(f"{name}.resample", x, b.new_map(conv.out_channels), conv, pad=DOWNSAMPLE_PAD, **spatial))
    if time:
        x = b.causal(f"{name}.time_conv", x, _causal(resample.time_conv), time_stride=2, first="pass_keep",
                     skip=skip, shortcut=shortcut)
    return x


def _residual_down(b: ProgramBuilder, name: str, x: str, block: nn.Module) -> str:
    """Wan 2.2: resnets, a downsampler, + the block input averaged down (AvgDown3D: frames and pixels
    folded into channels, groups of them averaged); without a downsampler the average is the input."""
    avg, block_in = block.avg_shortcut, x
    last = len(block.resnets) - 1
    identity = block.downsampler is None
    _require(not identity or avg.group_size == 1, f"{name}: an averaging shortcut without a downsampler")
    for j, resnet in enumerate(block.resnets):
        x = _resnet(b, f"{name}.resnets.{j}", x, resnet, keep_input=j == 0,
                    skip2=block_in if identity and j == last else None)
    if identity:
        return x
    shortcut = Shortcut(time_unshuffle=avg.factor_t, unshuffle=avg.factor_s, mean=avg.group_size)
    return _downsample(b, f"{name}.downsample", x, block.downsampler, skip=block_in, shortcut=shortcut)


def _decoder(vae) -> Program:
    dec, patch = vae.decoder, getattr(vae.config, "patch_size", None)
    b = ProgramBuilder("decode", vae.config.z_dim)
    x = b.causal("post_quant_conv", b.input, _causal(vae.post_quant_conv))
    x = b.causal("conv_in", x, _causal(dec.conv_in))
    x = _mid(b, x, dec.mid_block)
    for i, block in enumerate(dec.up_blocks):
        dup, block_in = getattr(block, "avg_shortcut", None), x  # Wan 2.2: + the block input duplicated up
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"up.{i}.resnets.{j}", x, resnet, keep_input=dup is not None and j == 0)
        shortcut = None if dup is None else Shortcut(repeat=dup.repeats, time_shuffle=dup.factor_t, shuffle=dup.factor_s)
        for resample in _upsamplers(block):
            x = _upsample(b, f"up.{i}.upsample", x, resample, skip=block_in if dup else None, shortcut=shortcut)
    post = None if patch else "clamp"
    x = b.causal("conv_out", x, _causal(dec.conv_out), norm=dec.norm_out, act="silu", post=post)
    if patch:  # Wan 2.2: channels back to pixels, (c, column, row) order
        channels = dec.conv_out.out_channels
        x = b.add(ConvStage("unpatchify", x, b.new_map(channels // patch**2), _identity(channels), shuffle=patch,
                            order=PATCH_ORDER, post="clamp"))
    return b.build(output=x)


def _upsamplers(block: nn.Module) -> list[nn.Module]:
    """WanUpBlock keeps its upsampler in a list (or none), WanResidualUpBlock on its own (or None)."""
    if getattr(block, "upsamplers", None):
        return list(block.upsamplers)
    return [block.upsampler] if getattr(block, "upsampler", None) is not None else []


def _mid(b: ProgramBuilder, x: str, mid: nn.Module) -> str:
    x = _resnet(b, "mid.resnets.0", x, mid.resnets[0])
    for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:], strict=True)):
        view = ConvAttention(attn.norm, None, None, None, attn.proj, qkv=attn.to_qkv)
        kv = b.new_map(2 * attn.proj.in_channels)
        b.add(KeyValueStage(f"mid.attentions.{i}.kv", x, kv, view))
        x = b.add(AttentionStage(f"mid.attentions.{i}.query", x, kv, x, view))
        x = _resnet(b, f"mid.resnets.{i + 1}", x, resnet)
    return x


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module, keep_input: bool = False,
            skip2: str | None = None) -> str:
    """``keep_input``: write a new map, not over x (a block shortcut reads x later); ``skip2``: add it too."""
    h = b.causal(f"{name}.conv1", x, _causal(resnet.conv1), norm=resnet.norm1, act="silu")
    has_conv = not isinstance(resnet.conv_shortcut, nn.Identity)
    out = b.new_map(resnet.conv2.out_channels) if has_conv or keep_input else x  # else written over x
    shortcut = Shortcut(conv=_causal(resnet.conv_shortcut)) if has_conv else None
    return b.causal(f"{name}.conv2", h, _causal(resnet.conv2), dst=out, norm=resnet.norm2, act="silu", skip=x,
                    shortcut=shortcut, skip2=skip2)


def _upsample(b: ProgramBuilder, name: str, x: str, resample: nn.Module, skip: str | None = None,
              shortcut: Shortcut | None = None) -> str:
    _require(resample.mode in ("upsample2d", "upsample3d"), f"{name}: resampling mode {resample.mode}")
    if resample.mode == "upsample3d" and not _single_frame(resample.time_conv):  # two frames from each: a time
        # conv to 2C, not on the first chunk
        x = b.causal(f"{name}.time_conv", x, _causal(resample.time_conv), time_split=2, first="pass")
    conv = resample.resample[1]
    _require(isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1),
             f"{name}: only nearest 2x + 3x3 conv")
    return b.add(ConvStage(f"{name}.resample", x, b.new_map(conv.out_channels), conv, upsample=UPSAMPLE, skip=skip,
                           shortcut=shortcut))


def _identity(channels: int) -> nn.Conv2d:
    """A 1x1 conv that changes nothing: a stage that only moves pixels and channels (Wan 2.2's patchify)."""
    import torch

    conv = nn.Conv2d(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    return conv


def _causal(conv: nn.Module) -> nn.Module:
    """A WanCausalConv3d: time padding all before (causal), 'same' zero padding in space; or the
    encoder's stride-2 time conv, unpadded (its chunks bring the frame before). Qwen-Image 2.1's convs
    are its 2-D specialization (one frame): a 3-D conv of one time tap over the same weights."""
    if _single_frame(conv):
        kh, kw = conv.kernel_size
        _require(kh == kw and kh % 2 == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                 and tuple(conv._padding) == (kh // 2,) * 4, f"only 'same' padded 2-D convs, got {conv.kernel_size}")
        return _OneTap(conv)
    kt, kh, kw = conv.kernel_size
    pad, st = getattr(conv, "_padding", None), conv.stride[0]
    time_pad = kt - 1 if st == 1 else 0
    _require(kh == kw and kh % 2 == 1 and conv.stride[1:] == (1, 1) and st in (1, 2) and conv.dilation == (1, 1, 1)
             and conv.groups == 1 and pad == (kh // 2, kh // 2, kh // 2, kh // 2, time_pad, 0),
             f"only causal convs with 'same' spatial padding, got kernel {conv.kernel_size} padding {pad}")
    return conv


def _single_frame(conv: nn.Module) -> bool:
    """Qwen-Image 2.1's convs: 2-D, on a video of one frame."""
    return isinstance(conv, nn.Conv2d)


class _OneTap(nn.Module):
    """A 2-D conv seen as the 3-D conv of one time tap that program.CausalConvStage runs: its weights
    with a time axis of 1 (a view, no copy)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation, self.groups = (1, *conv.kernel_size), (1, 1, 1), (1, 1, 1), 1
        self.weight = nn.Parameter(conv.weight.detach().unsqueeze(2), requires_grad=False)  # (C_out, C_in, 1, k, k)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLWan: {message}")


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """Frames per chunk, as diffusers runs them: one latent frame at a time; encoding, the first frame
    alone, then four at a time (frames past the last whole four are not encoded, as in diffusers).
    Qwen-Image 2.1's VAE takes one frame (its convs are 2-D)."""
    if frames != 1 and _single_frame(vae.decoder.conv_in):
        raise InputError(f"a {type(vae).__name__} takes single frames, (B, C, 1, H, W): got {frames} frames")
    return [1] * frames if op == "decode" else [1] + [4] * ((frames - 1) // 4)


def whole(vae, op: str, x):
    """The model's own chunked decode or encode, untiled in space (its decode/encode would honour
    enable_tiling()); encode gives the moments (mean | logvar)."""
    return type(vae)._decode(vae, x).sample if op == "decode" else type(vae)._encode(vae, x)


finish = kl.finish  # encode: the latent distribution's mode, or a sample as diffusers draws it


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.config.scale_factor_temporal
