"""diffusers AutoencoderDC (DC-AE, Sana's f32c32 and the f64/f128 family): both directions as stage programs.

Every operator is local except the linear attention, which runs as two passes (see
ops/linear_attention.py). Per block:

    ResBlock            conv1 + act | conv2 + norm (RMSNorm or eval BatchNorm) + x, over x
    EfficientViTBlock   attention: sum [v;1]k^T | queries + to_out + RMSNorm + x  (new map: halo 2)
                        GLUMBConv: expand, depthwise 3x3, gate, project, RMSNorm + x  (new map: halo 1)
    DCUpBlock2d         nearest 2x + conv, or conv + pixel shuffle; + pixel_shuffle(repeat(x))
    DCDownBlock2d       stride-2 conv, or conv + pixel unshuffle; + mean(pixel_unshuffle(x))

Decoder: conv_in (+ channel-repeated input), up blocks deepest first, RMSNorm + ReLU + conv_out.
Encoder: conv_in, down blocks, conv_out (+ channel-averaged shortcut). Latents need no sampling.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..program import ConvStage, GLUStage, LinearKVStage, LinearQueryStage, Program, Shortcut
from .builder import ProgramBuilder

__all__ = ["program", "whole", "finish", "scale_factor"]

SHUFFLE = 2  #: every DC-AE resampling block doubles or halves the resolution


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", vae.config.latent_channels)
    repeat = Shortcut(repeat=dec.in_shortcut_repeats) if dec.in_shortcut else None
    x = b.add(ConvStage("conv_in", b.input, b.new_map(dec.conv_in.out_channels), _conv(dec.conv_in),
                        skip=b.input if repeat else None, shortcut=repeat))
    for i in reversed(range(len(dec.up_blocks))):
        for j, block in enumerate(dec.up_blocks[i]):
            x = _block(b, f"up.{i}.{j}", x, block)
    norm, act = dec.norm_out, _act(dec.conv_act)
    if isinstance(dec.conv_out, nn.Conv2d):
        x = b.conv("conv_out", x, _conv(dec.conv_out), norm=norm, act=act)
    else:
        x = _resample(b, "conv_out", x, dec.conv_out, norm=norm, act=act)
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", vae.config.in_channels)
    if isinstance(enc.conv_in, nn.Conv2d):
        x = b.conv("conv_in", b.input, _conv(enc.conv_in))
    else:
        x = _resample(b, "conv_in", b.input, enc.conv_in)
    for i, blocks in enumerate(enc.down_blocks):
        for j, block in enumerate(blocks):
            x = _block(b, f"down.{i}.{j}", x, block)
    mean = Shortcut(mean=enc.out_shortcut_average_group_size) if enc.out_shortcut else None
    out = b.new_map(enc.conv_out.out_channels)
    x = b.add(ConvStage("conv_out", x, out, _conv(enc.conv_out), skip=x if mean else None, shortcut=mean))
    return b.build(output=x)


def _block(b: ProgramBuilder, name: str, x: str, block: nn.Module) -> str:
    kind = type(block).__name__
    if kind == "ResBlock":
        _require(block.norm_type in ("rms_norm", "batch_norm"), f"{name}: norm {block.norm_type!r}")
        h = b.conv(f"{name}.conv1", x, _conv(block.conv1), post=_act(block.nonlinearity))
        return b.add(ConvStage(f"{name}.conv2", h, x, _conv(block.conv2), out_norm=block.norm, skip=x))
    if kind == "EfficientViTBlock":
        return _glu(b, f"{name}.conv_out", _attention(b, f"{name}.attn", x, block.attn), block.conv_out)
    if kind in ("DCUpBlock2d", "DCDownBlock2d"):
        return _resample(b, name, x, block)
    raise UnsupportedModelError(f"AutoencoderDC: {name}: block {kind} is not supported")


def _attention(b: ProgramBuilder, name: str, x: str, attn: nn.Module) -> str:
    _require(attn.norm_type in ("rms_norm", "batch_norm") and type(attn.nonlinearity) is nn.ReLU,
             f"{name}: only ReLU linear attention with RMSNorm or BatchNorm")
    halo = max((m.proj_in.kernel_size[0] // 2 for m in attn.to_qkv_multiscale), default=0)
    state = f"{name}.state"
    b.add(LinearKVStage(f"{name}.kv", x, attn, state, halo))
    out = b.new_map(b.maps[x].channels)  # not over x: the next band needs x's halo rows unchanged
    return b.add(LinearQueryStage(f"{name}.query", x, out, attn, state, halo))


def _glu(b: ProgramBuilder, name: str, x: str, glu: nn.Module) -> str:
    _require(type(glu.nonlinearity) is nn.SiLU and glu.conv_depth.kernel_size == (3, 3),
             f"{name}: only the DC-AE GLUMBConv (SiLU, depthwise 3x3)")
    return b.add(GLUStage(name, x, b.new_map(b.maps[x].channels), glu))


def _resample(b: ProgramBuilder, name: str, x: str, block: nn.Module, **prologue) -> str:
    """DCUpBlock2d or DCDownBlock2d (with or without its shortcut)."""
    conv = _conv(block.conv, strided=True)
    if type(block).__name__ == "DCUpBlock2d":
        _require(not block.interpolate or block.interpolation_mode == "nearest", f"{name}: only nearest upsampling")
        geometry = dict(upsample=SHUFFLE) if block.interpolate else dict(shuffle=SHUFFLE)
        shortcut = Shortcut(repeat=block.repeats, shuffle=SHUFFLE) if block.shortcut else None
        out_channels = conv.out_channels // (1 if block.interpolate else SHUFFLE**2)
    else:
        geometry = dict(unshuffle=SHUFFLE) if block.downsample else {}  # else the conv has stride 2
        shortcut = Shortcut(unshuffle=SHUFFLE, mean=block.group_size) if block.shortcut else None
        out_channels = conv.out_channels * (SHUFFLE**2 if block.downsample else 1)
    dst = b.new_map(out_channels)
    return b.add(ConvStage(name, x, dst, conv, skip=x if shortcut else None, shortcut=shortcut, **geometry,
                           **prologue))


def _conv(conv: nn.Conv2d, strided: bool = False) -> nn.Conv2d:
    k = conv.kernel_size[0]
    _require(conv.kernel_size == (k, k) and k % 2 == 1 and conv.padding == (k // 2, k // 2) and conv.groups == 1
             and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and conv.stride[0] == conv.stride[1]
             and (strided or conv.stride == (1, 1)), "only square zero-padded 'same' convolutions")
    return conv


def _act(module: nn.Module) -> str | None:
    names = {nn.SiLU: "silu", nn.ReLU: "relu", nn.Identity: None}
    _require(type(module) in names, f"activation {type(module).__name__} is not supported (SiLU, ReLU)")
    return names[type(module)]


def check_state(vae) -> None:
    """A BatchNorm in training mode normalizes with the batch's statistics, which no band has: the
    model's state, not its structure, so it is checked at each call (apply takes the model in any mode)."""
    _require(not any(isinstance(m, nn.BatchNorm2d) and m.training for m in vae.modules()),
             "BatchNorm in training mode normalizes with batch statistics: call vae.eval()")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderDC: {message}")


def whole(vae, op: str, x):
    """The model's own modules, untiled (vae.decode would honour enable_tiling())."""
    return vae.decoder(x) if op == "decode" else vae.encoder(x)


def finish(vae, op: str, out, sample: bool = False, generator=None):
    return out  # DC-AE latents are deterministic


def scale_factor(vae) -> int:
    return SHUFFLE ** (len(vae.config.decoder_block_out_channels) - 1)
