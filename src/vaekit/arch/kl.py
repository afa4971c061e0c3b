"""diffusers AutoencoderKL (SD 1.x/2.x, SDXL, SD3, FLUX.1) and AutoencoderKLFlux2 (FLUX.2: the same
Encoder/Decoder, 32 latent channels, maybe a wider decoder; its BatchNorm over patchified latents is the
pipeline's, outside encode/decode): encoder and decoder as stage programs.

Decoder, one row per stage (rows at the stage's output resolution):

    post_quant_conv   1x1                       latent px   (when the config has it)
    conv_in           3x3                       latent px
    mid.resnets.0     norm1+silu+conv1 | norm2+silu+conv2 (+ skip, written over the input)
    mid.attentions.0  K,V of all tokens | queries in bands (+ skip, written over the input)
    mid.resnets.1
    up.{i}.resnets.*  as above, 1x1 shortcut where channels change
    up.{i}.upsample   nearest 2x + 3x3 conv     map px double
    conv_out          norm+silu+3x3 conv        image px

Encoder: conv_in, down.{i}.resnets.*, down.{i}.downsample (zero pad bottom/right by one, 3x3 conv
with stride 2: map px halve), the same mid block, conv_out (norm+silu+3x3), quant_conv (1x1) giving
the moments (mean | logvar) of the latent distribution.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from ..program import AttentionStage, ConvStage, KeyValueStage, Program, Shortcut
from .builder import ProgramBuilder

__all__ = ["program", "whole", "finish", "scale_factor", "decode_program", "encode_program", "attention_query",
           "DOWNSAMPLE_PAD"]

#: diffusers Downsample2D with padding=0 pads one zero row and column at the bottom and right
DOWNSAMPLE_PAD = (0, 1, 0, 1)


def decode_program(vae) -> Program:
    decoder = vae.decoder
    _require(isinstance(decoder.conv_norm_out, nn.GroupNorm), "spatial-norm decoders (MoVQ) are not supported")
    b = ProgramBuilder("decode", vae.config.latent_channels)
    x = b.input
    if vae.post_quant_conv is not None:
        x = _conv(b, "post_quant_conv", x, vae.post_quant_conv)
    x = _conv(b, "conv_in", x, decoder.conv_in)
    x = _mid_block(b, x, decoder.mid_block)
    for i, block in enumerate(decoder.up_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"up.{i}.resnets.{j}", x, resnet)
        for upsampler in block.upsamplers or ():
            _require(upsampler.interpolate and not upsampler.use_conv_transpose and upsampler.norm is None,
                     "only nearest-2x upsamplers")
            x = _conv(b, f"up.{i}.upsample", x, upsampler.conv, upsample=2)
    x = _conv(b, "conv_out", x, decoder.conv_out, norm=decoder.conv_norm_out, act=_act(decoder.conv_act))
    return b.build(output=x)


def encode_program(vae) -> Program:
    encoder = vae.encoder
    b = ProgramBuilder("encode", vae.config.in_channels)
    x = _conv(b, "conv_in", b.input, encoder.conv_in)
    for i, block in enumerate(encoder.down_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"down.{i}.resnets.{j}", x, resnet)
        for down in block.downsamplers or ():
            _require(down.use_conv and down.norm is None and down.conv.stride == (2, 2),
                     "only stride-2 conv downsamplers")
            pad = DOWNSAMPLE_PAD if down.padding == 0 else None  # padding=1 is a plain 'same' conv
            x = _conv(b, f"down.{i}.downsample", x, down.conv, pad=pad)
    x = _mid_block(b, x, encoder.mid_block)
    x = _conv(b, "conv_out", x, encoder.conv_out, norm=encoder.conv_norm_out, act=_act(encoder.conv_act))
    if vae.quant_conv is not None:
        x = _conv(b, "quant_conv", x, vae.quant_conv)
    return b.build(output=x)


def _mid_block(b: ProgramBuilder, x: str, mid: nn.Module) -> str:
    x = _resnet(b, "mid.resnets.0", x, mid.resnets[0])
    for i, attn in enumerate(mid.attentions):
        if attn is not None:
            x = _attention(b, f"mid.attentions.{i}", x, attn)
        x = _resnet(b, f"mid.resnets.{i + 1}", x, mid.resnets[i + 1])
    return x


def _conv(b: ProgramBuilder, name: str, src: str, conv: nn.Conv2d, **options) -> str:
    _check_conv(name, conv, same=options.get("pad") is None)
    return b.conv(name, src, conv, **options)


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module) -> str:
    _require(resnet.time_emb_proj is None and resnet.upsample is None and resnet.downsample is None,
             f"{name}: only plain ResnetBlock2D (no time embedding, no resampling)")
    act = _act(resnet.nonlinearity)
    _check_conv(name, resnet.conv1)
    _check_conv(name, resnet.conv2)
    h = b.conv(f"{name}.conv1", x, resnet.conv1, norm=resnet.norm1, act=act)
    same = resnet.conv_shortcut is None and resnet.conv2.out_channels == b.maps[x].channels
    out = x if same else b.new_map(resnet.conv2.out_channels)
    stage = ConvStage(f"{name}.conv2", h, out, resnet.conv2, norm=resnet.norm2, act=act, skip=x,
                      shortcut=Shortcut.of(resnet.conv_shortcut), out_scale=resnet.output_scale_factor)
    return b.add(stage, norm=resnet.norm2)


def _attention(b: ProgramBuilder, name: str, x: str, attn: nn.Module) -> str:
    _require(attn.group_norm is not None and attn.spatial_norm is None and attn.residual_connection
             and attn.norm_q is None and attn.norm_k is None and not attn.is_cross_attention,
             f"{name}: only the VAE mid-block self-attention (GroupNorm, residual)")
    kv = b.new_map(2 * attn.to_k.out_features)
    b.add(KeyValueStage(f"{name}.kv", x, kv, attn), norm=attn.group_norm)
    return attention_query(b, name, x, kv, attn)


def attention_query(b: ProgramBuilder, name: str, x: str, kv: str, attn) -> str:
    """Pass two of the mid-block attention, written over ``x`` (pass one wrote ``kv``)."""
    return b.add(AttentionStage(f"{name}.query", x, kv, x, attn), norm=attn.group_norm)


def _check_conv(name: str, conv: nn.Conv2d, same: bool = True) -> None:
    k = conv.kernel_size[0]
    padding = (k // 2, k // 2) if same else (0, 0)
    _require(conv.kernel_size == (k, k) and (k % 2 == 1 or not same) and conv.padding == padding
             and conv.stride[0] == conv.stride[1] and conv.dilation == (1, 1) and conv.groups == 1
             and conv.padding_mode == "zeros",
             f"{name}: only square zero-padded convolutions")


def _act(module: nn.Module) -> str:
    _require(isinstance(module, nn.SiLU), f"only SiLU activations are supported, found {type(module).__name__}")
    return "silu"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKL: {message}")


def program(vae, op: str) -> Program:
    return decode_program(vae) if op == "decode" else encode_program(vae)


def whole(vae, op: str, x):
    """The model's own modules, untiled (vae.decode would honour a user's enable_tiling())."""
    if op == "decode":
        if vae.post_quant_conv is not None:
            x = vae.post_quant_conv(x)
        return vae.decoder(x)
    x = vae.encoder(x)
    return vae.quant_conv(x) if vae.quant_conv is not None else x


def finish(vae, op: str, out, sample: bool = False, generator=None):
    """Decode: the image. Encode: the latent distribution's mode, or a sample drawn with ``generator``
    exactly as diffusers draws it."""
    if op == "decode":
        return out
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    dist = DiagonalGaussianDistribution(out)
    return dist.sample(generator=generator) if sample else dist.mode()


def scale_factor(vae) -> int:
    """Image px per latent px."""
    return 2 ** (len(vae.config.block_out_channels) - 1)
