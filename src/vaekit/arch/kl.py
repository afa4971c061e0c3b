"""diffusers AutoencoderKL (SD 1.x/2.x, SDXL, SD3, Flux): the decoder as a stage program.

Decoder, one row per stage (rows at the stage's output resolution):

    post_quant_conv   1x1                       latent px   (when the config has it)
    conv_in           3x3                       latent px
    mid.resnets.0     norm1+silu+conv1 | norm2+silu+conv2 (+ skip, written over the input)
    mid.attentions.0  K,V of all tokens | queries in bands (+ skip, written over the input)
    mid.resnets.1
    up.{i}.resnets.*  as above, 1x1 shortcut where channels change
    up.{i}.upsample   nearest 2x + 3x3 conv     map px double
    conv_out          norm+silu+3x3 conv        image px
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..program import AttentionStage, ConvStage, KeyValueStage, Program
from .builder import ProgramBuilder

__all__ = ["decode_program"]


def decode_program(vae) -> Program:
    decoder = vae.decoder
    _require(isinstance(decoder.conv_norm_out, nn.GroupNorm), "spatial-norm decoders (MoVQ) are not supported")
    b = ProgramBuilder("decode", vae.config.latent_channels)
    x = b.input
    if vae.post_quant_conv is not None:
        x = _conv(b, "post_quant_conv", x, vae.post_quant_conv)
    x = _conv(b, "conv_in", x, decoder.conv_in)

    mid = decoder.mid_block
    x = _resnet(b, "mid.resnets.0", x, mid.resnets[0])
    for i, attn in enumerate(mid.attentions):
        if attn is not None:
            x = _attention(b, f"mid.attentions.{i}", x, attn)
        x = _resnet(b, f"mid.resnets.{i + 1}", x, mid.resnets[i + 1])

    for i, block in enumerate(decoder.up_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"up.{i}.resnets.{j}", x, resnet)
        for upsampler in block.upsamplers or ():
            _require(upsampler.interpolate and not upsampler.use_conv_transpose, "only nearest-2x upsamplers")
            x = _conv(b, f"up.{i}.upsample", x, upsampler.conv, upsample=True, scale=2)

    x = _conv(b, "conv_out", x, decoder.conv_out, norm=decoder.conv_norm_out, act=_is_silu(decoder.conv_act))
    return b.build(output=x)


def _conv(b: ProgramBuilder, name, src, conv, *, norm=None, act=False, upsample=False, scale=1) -> str:
    _check_conv(name, conv)
    spec = b.maps[src]
    dst = b.new_map(conv.out_channels, spec.scale * scale)
    return b.add(ConvStage(name, src, dst, conv, norm=norm, act=act, upsample=upsample), norm=norm)


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module) -> str:
    _require(resnet.time_emb_proj is None and resnet.upsample is None and resnet.downsample is None,
             f"{name}: only plain ResnetBlock2D (no time embedding, no resampling)")
    act = _is_silu(resnet.nonlinearity)
    _check_conv(name, resnet.conv1)
    _check_conv(name, resnet.conv2)
    spec = b.maps[x]
    h = b.new_map(resnet.conv1.out_channels, spec.scale)
    b.add(ConvStage(f"{name}.conv1", x, h, resnet.conv1, norm=resnet.norm1, act=act), norm=resnet.norm1)
    same = resnet.conv_shortcut is None and resnet.conv2.out_channels == spec.channels
    out = x if same else b.new_map(resnet.conv2.out_channels, spec.scale)
    stage = ConvStage(f"{name}.conv2", h, out, resnet.conv2, norm=resnet.norm2, act=act, skip=x,
                      shortcut=resnet.conv_shortcut, out_scale=resnet.output_scale_factor)
    return b.add(stage, norm=resnet.norm2)


def _attention(b: ProgramBuilder, name: str, x: str, attn: nn.Module) -> str:
    _require(attn.group_norm is not None and attn.spatial_norm is None and attn.residual_connection
             and attn.norm_q is None and attn.norm_k is None and not attn.is_cross_attention,
             f"{name}: only the VAE mid-block self-attention (GroupNorm, residual)")
    spec = b.maps[x]
    kv = b.new_map(2 * attn.to_k.out_features, spec.scale)
    b.add(KeyValueStage(f"{name}.kv", x, kv, attn), norm=attn.group_norm)
    return b.add(AttentionStage(f"{name}.query", x, kv, x, attn), norm=attn.group_norm)


def _check_conv(name: str, conv: nn.Conv2d) -> None:
    k = conv.kernel_size[0]
    _require(conv.kernel_size == (k, k) and k % 2 == 1 and conv.stride == (1, 1) and conv.padding == (k // 2, k // 2)
             and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros",
             f"{name}: only odd square 'same' convolutions with stride 1")


def _is_silu(module: nn.Module) -> bool:
    _require(isinstance(module, nn.SiLU), f"only SiLU activations are supported, found {type(module).__name__}")
    return True


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKL: {message}")
