"""diffusers AutoencoderKLLTX2Video (LTX-2 and LTX-2.x) and AutoencoderKLLTXVideo (LTX-Video 0.9.x):
decoder and encoder as stage programs over the whole video.

diffusers' default call runs every frame at once, each 3x3x3 conv padded in time with copies of the
first frame (the causal encoder) or of the first and the last (the decoder, not causal). So the
program's one chunk is the whole video (chunk_frames) and rows are what stream: every band holds all
its rows' frames, and nothing in time is cut. Every norm is per pixel (an RMS norm over channels, no
affine; a LayerNorm on a shortcut) and there is no attention: nothing is global. One row per block:

    conv_in           3x3x3                                                  latent px
    mid               resnets
    resnet            norm1+silu+conv1 | norm2+silu+conv2 + x (+ a 1x1x1 conv of LayerNorm(x) where the
                      channels change: LTX-Video 0.9's up blocks begin with one)
    upsample          3x3x3 to 8C/u channels, depth to space (c, t, row, column): 2x frames less the
                      first, 2x rows and columns; + the input the same way, channels tiled u times
    conv_out          norm+silu+3x3x3, unpatchify 4x4 (c, column, row)           image px

    patchify          4x4 pixels into channels (c, column, row)                  image px
    conv_in           3x3x3
    down              resnets; a downsampler: [first frame ; frames], 3x3x3, space (and time) to depth
                      (c, t, row, column) + the same of its input, groups of channels averaged (LTX-Video
                      0.9.0: a 3x3x3 conv of stride 2 in time and space; then a resnet to the next channels)
    mid               resnets
    conv_out          norm+silu+3x3x3 to C+1: the last (the log-variance) repeated for every channel

The decoder's spatial padding is "reflect" in LTX-2 ("zeros" in LTX-2.3 and LTX-Video 0.9), the
encoder's "zeros". From LTX-Video 0.9.1 on, the decoder may take a timestep (its norms scaled and
shifted per video) and add noise after its convs (conditioning).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError
from ..program import ConvStage, Program, Shortcut
from . import kl
from .builder import ProgramBuilder
from .wan import PATCH_ORDER, _identity

__all__ = ["program", "whole", "conditioning", "finish", "scale_factor", "temporal_factor", "chunk_frames", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), run as one chunk (run.run_video)
BORDERS = {"zeros": "zeros", "reflect": "reflect"}  #: Conv3d padding modes -> CausalConvStage.border


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    _require(dec.patch_size_t == 1, f"temporal patches (patch_size_t={dec.patch_size_t})")
    b = ProgramBuilder("decode", dec.conv_in.in_channels)
    pad = _time_pad(dec)  # LTX-2's decode(z) runs `causal or is_causal`: the config's
    conv, options = _conv(dec.conv_in, pad)
    x = b.causal("conv_in", b.input, conv, **options)
    x = _resnets(b, "mid", x, dec.mid_block.resnets, pad)
    for i, block in enumerate(dec.up_blocks):
        if block.conv_in is not None:  # LTX-Video 0.9: a resnet to the block's channels first
            _require(block.conv_in.scale_shift_table is None and block.conv_in.per_channel_scale1 is None,
                     f"up_blocks.{i}: a conditioned or noisy resnet that changes its channels (the model's own "
                     "decode fails on it)")
            x = _resnet(b, f"up.{i}.conv_in", x, block.conv_in, pad)
        for j, up in enumerate(block.upsamplers or []):
            x = _upsample(b, f"up.{i}.upsample.{j}", x, up, pad)
        x = _resnets(b, f"up.{i}", x, block.resnets, pad)
    conv, options = _conv(dec.conv_out, pad)
    x = b.causal("conv_out", x, conv, norm=dec.norm_out, act=_act(dec.conv_act), shuffle=dec.patch_size,
                 order=PATCH_ORDER, modulated=dec.time_embedder is not None, **options)  # channels to pixels: image px
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    _require(enc.patch_size_t == 1, f"temporal patches (patch_size_t={enc.patch_size_t})")
    p, pixels = enc.patch_size, enc.conv_in.in_channels // enc.patch_size**2
    b = ProgramBuilder("encode", pixels)
    x = b.input
    if p > 1:  # pixels to channels first, (c, column, row) order
        x = b.add(ConvStage("patchify", x, b.new_map(enc.conv_in.in_channels), _identity(pixels), unshuffle=p,
                            order=PATCH_ORDER))
    pad = _time_pad(enc)
    conv, options = _conv(enc.conv_in, pad)
    x = b.causal("conv_in", x, conv, **options)
    for i, block in enumerate(enc.down_blocks):
        x = _resnets(b, f"down.{i}", x, block.resnets, pad)
        for j, down in enumerate(block.downsamplers or []):
            x = _downsample(b, f"down.{i}.downsample.{j}", x, down, pad)
        if getattr(block, "conv_out", None) is not None:  # LTX-Video 0.9.0: a resnet to the next channels
            x = _resnet(b, f"down.{i}.conv_out", x, block.conv_out, pad)
    x = _resnets(b, "mid", x, enc.mid_block.resnets, pad)
    conv, options = _conv(enc.conv_out, pad)
    x = b.causal("conv_out", x, conv, norm=enc.norm_out, act=_act(enc.conv_act), repeat_last=conv.out_channels - 2,
                 **options)  # the moments (mean | log-variance, one channel repeated)
    return b.build(output=x)


def _time_pad(coder: nn.Module) -> str:
    """Copies of the first frame in front (causal), or of the first and the last (not causal)."""
    causal = coder.is_causal if hasattr(coder, "is_causal") else coder.conv_in.is_causal  # LTX-Video 0.9: its convs'
    return "first" if causal else "edges"


def _resnets(b: ProgramBuilder, name: str, x: str, resnets: nn.ModuleList, pad: str) -> str:
    for j, resnet in enumerate(resnets):
        x = _resnet(b, f"{name}.resnets.{j}", x, resnet, pad)
    return x


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module, pad: str) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x: written over x; where the channels change (LTX-Video
    0.9), + a 1x1x1 conv of LayerNorm(x) into a new map. A timestep-conditioned decoder's norms are
    modulated (conditioning), and with decode noise each conv's output gets its noise."""
    act, modulated = _act(resnet.nonlinearity), resnet.scale_shift_table is not None
    shortcut, out = None, x
    if resnet.conv_shortcut is not None:  # a 1x1x1 conv (LTX-2: a plain Conv3d; LTX-Video 0.9: a causal one's)
        conv = getattr(resnet.conv_shortcut, "conv", resnet.conv_shortcut)
        _require(conv.kernel_size == (1, 1, 1) and conv.stride == (1, 1, 1), f"{name}: a shortcut conv {conv}")
        shortcut = Shortcut(conv=conv, norm=resnet.norm3)
        out = b.new_map(conv.out_channels)
    conv, options = _conv(resnet.conv1, pad)
    h = b.causal(f"{name}.conv1", x, conv, norm=resnet.norm1, act=act, modulated=modulated,
                 noise_scale=resnet.per_channel_scale1, **options)
    conv, options = _conv(resnet.conv2, pad)
    return b.causal(f"{name}.conv2", h, conv, dst=out, norm=resnet.norm2, act=act, skip=x, shortcut=shortcut,
                    modulated=modulated, noise_scale=resnet.per_channel_scale2, **options)


def _upsample(b: ProgramBuilder, name: str, x: str, up: nn.Module, pad: str) -> str:
    """conv to (c, t, row, column) channels, depth to space, the first frame dropped; + the input the
    same way with its channels tiled (``residual``)."""
    st, sh, sw = up.stride
    _require(sh == sw, f"{name}: an upsampler of stride {up.stride}")
    shortcut = Shortcut(time_shuffle=st, shuffle=sh, tile=st * sh * sw // up.upscale_factor) if up.residual else None
    conv, options = _conv(up.conv, pad)
    return b.causal(name, x, conv, time_shuffle=st, shuffle=sh, skip=x if up.residual else None, shortcut=shortcut,
                    **options)


def _downsample(b: ProgramBuilder, name: str, x: str, down: nn.Module, pad: str) -> str:
    """[first st-1 frames ; frames] through a 3x3x3 conv, then space and time to depth (c, t, row,
    column); + the same sequence to depth, groups of ``group_size`` channels averaged."""
    if not hasattr(down, "group_size"):  # LTX-Video 0.9.0's downsample_type "conv": a 3x3x3 conv of stride 2
        conv, options = _conv(down, pad)
        return b.causal(name, x, conv, **options)
    st, sh, sw = down.stride
    _require(sh == sw, f"{name}: a downsampler of stride {down.stride}")
    shortcut = Shortcut(time_unshuffle=st, time_front="first", unshuffle=sh, mean=down.group_size)
    conv, options = _conv(down.conv, pad)
    return b.causal(name, x, conv, time_unshuffle=st, unshuffle=sh, skip=x, shortcut=shortcut, **options)


def _conv(causal: nn.Module, pad: str) -> tuple[nn.Conv3d, dict]:
    """An LTX(2)VideoCausalConv3d's Conv3d, and the stage options of its padding: ``pad`` in time (the
    caller's causal flag), its own mode in space; LTX-Video 0.9.0's strided convs (stride 2 in time and
    space) say their strides."""
    conv = causal.conv
    k, (st, sh, sw) = conv.kernel_size, conv.stride
    _require(k[1] == k[2] and k[1] % 2 == 1 and k[0] % 2 == 1 and sh == sw and (st, sh) in ((1, 1), (2, 2))
             and conv.dilation == (1, 1, 1) and conv.groups == 1 and conv.padding == (0, k[1] // 2, k[2] // 2)
             and conv.padding_mode in BORDERS,
             f"only convs with 'same' spatial padding of stride 1 or 2, got kernel {k}, stride {conv.stride}, "
             f"padding {conv.padding} ({conv.padding_mode})")
    strides = {} if st == 1 else {"time_stride": st, "stride": sh}
    return conv, {"time_pad": pad, "border": BORDERS[conv.padding_mode], **strides}


def _act(module: nn.Module) -> str:
    _require(isinstance(module, nn.SiLU), f"activation {type(module).__name__}")
    return "silu"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"LTX video VAE: {message}")


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk: diffusers' default call convolves all frames at once (not causally, in the decoder)."""
    return [frames]


def whole(vae, op: str, x, timestep=None):
    """The model's own decoder or encoder, untiled (its decode/encode would honour enable_tiling() and
    framewise decoding); encode gives the moments (mean | logvar)."""
    return vae.decoder(x, timestep) if op == "decode" else vae.encoder(x)


def conditioning(vae, program: Program, op: str, x: torch.Tensor, timestep=None) -> dict:
    """What a decode takes beside the latents ``x``, made once per call, as diffusers makes it: each
    modulated norm's (scale, shift) per video and channel, from ``timestep`` through the blocks' time
    embedders (timestep_conditioning); each noisy conv's (rows, W) noise, drawn from the global generator
    in the order diffusers draws it (decoder_inject_noise)."""
    out: dict = {}
    if op != "decode":
        return out
    dec, b = vae.decoder, x.shape[0]
    if dec.time_embedder is not None:
        if timestep is None:
            raise InputError(f"this {type(vae).__name__} decoder is timestep-conditioned: pass timestep= (the "
                             "pipeline's decode_timestep, e.g. 0.05), as vae.decode(latents, timestep) takes it")
        temb = torch.as_tensor(timestep, dtype=x.dtype, device=x.device).flatten()
        temb = (temb.expand(b) if temb.numel() == 1 else temb) * dec.timestep_scale_multiplier
        for name, block in [("mid", dec.mid_block)] + [(f"up.{i}", blk) for i, blk in enumerate(dec.up_blocks)]:
            if block.time_embedder is not None:
                emb = _embed(block.time_embedder, temb, b, x.dtype).unflatten(1, (4, -1))  # (B, 4, C)
                for j, resnet in enumerate(block.resnets):
                    shift1, scale1, shift2, scale2 = (emb + resnet.scale_shift_table[None]).unbind(1)
                    out["modulation", f"{name}.resnets.{j}.conv1"] = scale1, shift1
                    out["modulation", f"{name}.resnets.{j}.conv2"] = scale2, shift2
        shift, scale = (_embed(dec.time_embedder, temb, b, x.dtype).unflatten(1, (2, -1))
                        + dec.scale_shift_table[None]).unbind(1)
        out["modulation", "conv_out"] = scale, shift
    sizes = program.sizes(*x.shape[-2:])
    for stage in program.stages:
        if getattr(stage, "noise_scale", None) is not None:
            out["noise", stage.name] = torch.randn(sizes[stage.dst], device=x.device, dtype=x.dtype)  # (H, W)
    return out


def _embed(embedder: nn.Module, temb: torch.Tensor, b: int, dtype) -> torch.Tensor:
    return embedder(timestep=temb, resolution=None, aspect_ratio=None, batch_size=b, hidden_dtype=dtype).view(b, -1)


finish = kl.finish  # encode: the latent distribution's mode, or a sample as diffusers draws it


def scale_factor(vae) -> int:
    """Image px per latent px, from the decoder's structure: the config's spatial_compression_ratio
    counts temporal-only downsamplers too when it is not given (LTX-2's says 32 itself)."""
    return vae.decoder.patch_size * math.prod(up.stride[1] for up in _upsamplers(vae))


def temporal_factor(vae) -> int:
    return math.prod(up.stride[0] for up in _upsamplers(vae))


def _upsamplers(vae) -> list[nn.Module]:
    return [up for block in vae.decoder.up_blocks for up in (block.upsamplers or [])]

