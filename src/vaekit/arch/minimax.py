"""diffusers AutoencoderKLMiniMaxH3 (MiniMax H3): its ViT decoder as a stage program over one clip.

The decoder is a transformer, not a CNN: every latent voxel is a token, four learned register tokens
and a zero token follow them (all at position 0), and 36 blocks of full self-attention run over every
token of every frame of a clip, with a 3-axis rotary embedding. diffusers' default call decodes the
latents in clips of 7 latent frames, 5 apart, each alone; of each clip's 28 frames it keeps 17 and
cross-fades the last 5 into the next clip's first (clips): vaekit runs each clip as a video of its
own and puts its frames where the model does (clips.py). In a clip, rows stream: each block is two
stages, keys and values of every token, then the queries of a band of rows against all of them (in
key blocks when they do not fit), the rest of the block per token (ops/vit.py). One row per step:

    post_quant_conv   1x1x1                                                      latent px
    proj_in           a linear layer per token: latent channels to the model's width
    blocks            keys and values | queries, attention, residual, FFN, residual (x 36)
    proj_out          LayerNorm, a linear layer per token to (t, c, row, column) channels, unfolded
                      into 4 frames of 16x16 pixels each                             image px

The encoder is a causal CNN over clips of 17 frames, each encoded alone (its latents end to end,
the last 3 dropped; a single frame is its own clip). Every conv is padded in time with zero frames in
front (one chunk per clip: no time cache) and in space by mirroring; GroupNorms take each frame's
statistics; downsamplers mirror one row and column after the map, then a 3x3x3 conv of stride 2 in
space (and in time where they compress time):

    conv_in           3x3x3                                                       image px
    down              resnets (norm1+silu+conv1 | norm2+silu+conv2 + x, a 1x1x1 conv where the
                      channels change); a downsampler
    conv_out          norm+silu+3x3x3, then quant_conv 1x1x1: the moments           latent px

The model ships with spatial tiling on (its released frames are blended tiles); vaekit's reference
is its untiled call (``disable_tiling()``), and ``apply`` leaves a model with tiling on to its own
call.
"""

from __future__ import annotations

from torch import nn

from ..clips import Clips
from ..errors import InputError, UnsupportedModelError
from ..program import Program, Registers, Shortcut, TokenBlockStage, TokenKVStage
from . import kl
from .builder import LinearConv, ProgramBuilder, frames_first

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "clips", "own_tiles",
           "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), in the model's own clips, each run as one chunk
#: its pixels, as its pipeline makes them: ImageNet-normalized RGB over [0, 1], (x - mean) / std
PIXELS = ((-0.485 / 0.229, (1 - 0.406) / 0.225),  # the lowest channel's 0 and the highest's 1
          "ImageNet-normalized RGB: (x - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225) for x in [0, 1]")


def program(vae, op: str) -> Program:
    return _decoder(vae) if op == "decode" else _encoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", vae.post_quant_conv.in_channels)
    x = b.causal("post_quant_conv", b.input, vae.post_quant_conv)
    x = b.causal("proj_in", x, LinearConv(dec.proj_in))  # a token per latent voxel: (B*F, h, w, dim)
    registers, state = Registers(dec.register_tokens, zeros=1), None  # the registers, then one zero token
    for i, block in enumerate(dec.transformer_blocks):
        attn = block.attn
        _require(attn.use_bias and not isinstance(block.ff.net[0].proj, nn.Identity), f"block {i}'s layout")
        kv = b.new_map(2 * attn.heads * attn.dim_head)
        b.add(TokenKVStage(f"blocks.{i}.kv", x, kv, block, dec.rope))
        b.add(TokenBlockStage(f"blocks.{i}", x, kv, x, block, dec.rope, registers, state_in=state))  # over x
        state = f"blocks.{i}"
    order = frames_first(dec.out_channels, dec.patch_size_t, dec.patch_size**2)  # proj_out's (c, t, row, column)
    x = b.causal("proj_out", x, LinearConv(dec.proj_out, order), norm=dec.norm_out, time_split=dec.patch_size_t,
                 shuffle=dec.patch_size)  # tokens to 4 frames of 16x16 pixels: image px
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    b = ProgramBuilder("encode", enc.conv_in.in_channels)
    x = b.causal("conv_in", b.input, enc.conv_in, **_padding(enc.conv_in))
    for i, block in enumerate(enc.down_blocks):
        for j, resnet in enumerate(block.resnets):
            x = _resnet(b, f"down.{i}.resnets.{j}", x, resnet)
        for j, down in enumerate(block.downsamplers or []):
            _require(down.spatial_stride == 2, f"down_blocks.{i}: a downsampler of spatial stride {down.spatial_stride}")
            conv = down.conv  # its input padded by one row and column after (bottom, right), mirrored
            x = b.causal(f"down.{i}.downsample.{j}", x, conv, **_padding(conv, border=down.spatial_padding_mode),
                         stride=2, pad=(0, 1, 0, 1), time_stride=conv.stride[0])
    x = b.causal("conv_out", x, enc.conv_out, norm=_norm(enc.norm_out), act="silu", **_padding(enc.conv_out))
    x = b.causal("quant_conv", x, vae.quant_conv)  # the moments (mean | log-variance)
    return b.build(output=x)


def _resnet(b: ProgramBuilder, name: str, x: str, resnet: nn.Module) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x (through a 1x1x1 conv where the channels change)."""
    h = b.causal(f"{name}.conv1", x, resnet.conv1, norm=_norm(resnet.norm1), act="silu", **_padding(resnet.conv1))
    shortcut = None if resnet.conv_shortcut is None else Shortcut(conv=resnet.conv_shortcut)
    out = x if shortcut is None else b.new_map(resnet.out_channels)  # else written over x
    return b.causal(f"{name}.conv2", h, resnet.conv2, dst=out, norm=_norm(resnet.norm2), act="silu", skip=x,
                    shortcut=shortcut, **_padding(resnet.conv2))


def _padding(conv: nn.Conv3d, border: str | None = None) -> dict:
    """A MiniMaxH3VideoCausalConv3d's padding as CausalConvStage options: zero frames in front (its
    temporal padding, kernel - 1 of them), its spatial padding mode at the border."""
    kt, kh, kw = conv.kernel_size
    pad = getattr(conv, "spatial_padding", 0)
    _require(kh == kw and conv.padding == (0, 0, 0) and conv.dilation == (1, 1, 1) and conv.groups == 1
             and getattr(conv, "temporal_padding", 0) == kt - 1 and pad in (0, kh // 2),
             f"only causal convs with 'same' spatial padding, got kernel {conv.kernel_size}")
    _require(conv.stride[1:] == (1, 1) or border is not None, f"a conv of stride {conv.stride}")
    mode = border or getattr(conv, "spatial_padding_mode", "zeros")
    _require(mode in ("zeros", "reflect", "replicate"), f"spatial padding mode {mode!r}")
    return {"time_pad": "zeros" if kt > 1 else "cache", "border": mode}


def _norm(norm: nn.GroupNorm) -> nn.GroupNorm:
    _require(isinstance(norm, nn.GroupNorm) and norm.affine, f"norm {type(norm).__name__}")
    return norm  # each frame's statistics: its GroupNorm folds frames into the batch


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLMiniMaxH3: {message}")


def clips(vae, op: str, frames: int) -> Clips:
    """The model's own clips of a video of ``frames`` (_encode_clips, _decode_clips)."""
    return _decode_clips(vae, frames) if op == "decode" else _encode_clips(vae, frames)


def _encode_clips(vae, frames: int) -> Clips:
    """As its _encode: one frame alone; else clips of clip_length frames after copies of the last
    frame, their latents end to end less the last token_drop."""
    if frames == 1:
        return Clips(windows=((0, 1),), keep=(0, 1), frames=1)
    length = vae.config.clip_length
    encoder = _encoder(vae)
    latents = encoder.frames(length, first=True)[encoder.output]  # a clip's latent frames
    pad = (-frames) % length
    count = (frames + pad) // length
    if count * latents <= vae.config.token_drop:
        raise InputError(f"a {type(vae).__name__} encodes clips of {length} frames and drops the last "
                         f"{vae.config.token_drop} latent frames: {frames} frames leave none")
    return Clips(windows=tuple((k * length, (k + 1) * length) for k in range(count)), keep=(0, latents),
                 frames=count * latents - vae.config.token_drop, pad=pad)


def _decode_clips(vae, frames: int) -> Clips:
    """The model's own clips of ``frames`` latent frames, as its _decode lays them out: windows of
    tokens_chunk_size + token_overlap latent frames, tokens_chunk_size apart, after copies of the last
    latent frame; of each clip's frames, a chunk less its frame_pre_padding kept, the next chunk's
    (the overlap) cross-faded into the next clip; the frames the copies made cut at the end."""
    size, drop, ratio = vae.tokens_chunk_size, vae.config.token_drop, vae.temporal_compression_ratio
    chunk, pre = size * ratio, vae.frame_pre_padding

    def count(t: int) -> int:  # clips of t latent frames
        return (t + drop + (-(t + drop)) % size) // size - int(drop > 0)

    if count(frames) < 1:
        least = next(t for t in range(1, 2 * size + 2) if count(t) > 0)
        raise InputError(f"a {type(vae).__name__} decodes clips of {size + vae.token_overlap} latent frames, "
                         f"{size} apart: give it at least {least} latent frames, got {frames}")
    pad = (-(frames + drop)) % size
    length, fade = size + vae.token_overlap, vae.frame_overlap if drop > 0 else 0  # fade: a clip's last frames
    n = count(frames)
    total = n * (chunk - pre) + fade
    tail_frames = vae.config.clip_length % ratio  # a chunk's last latent frame covers this many frames, if not 0
    cut = sum(tail_frames if tail_frames and (frames + k) % size == 0 else ratio for k in range(pad))
    return Clips(windows=tuple((k * size, k * size + length) for k in range(n)), keep=(pre, chunk),
                 frames=total - cut, pad=pad, fade=fade, tail=True)


def own_tiles(vae, op: str, shape: tuple[int, ...]) -> bool:
    """Whether the model's own call cuts frames of this ``shape`` into tiles: with use_tiling on (its
    default) and frames larger than a tile, its blended tiles are its output, which apply leaves to it.
    With one tile its tiled call is its untiled one."""
    if not vae.use_tiling or len(shape) != 5:
        return False
    ratio = vae.spatial_compression_ratio if op == "decode" else 1
    return shape[3] * ratio > vae.tile_sample_min_height or shape[4] * ratio > vae.tile_sample_min_width


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk per clip: the decoder attends over all of a clip's frames, the encoder pads each clip
    with zero frames (no time cache)."""
    return [frames]


def whole(vae, op: str, x):
    """The model's own modules on one clip, untiled."""
    return vae.decoder(vae.post_quant_conv(x)) if op == "decode" else vae.quant_conv(vae.encoder(x))


finish = kl.finish


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.temporal_compression_ratio
