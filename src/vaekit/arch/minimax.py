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

The model ships with spatial tiling on (its released frames are blended tiles); vaekit's reference
is its untiled call (``disable_tiling()``), and ``apply`` leaves a model with tiling on to its own
call. The encoder (a causal CNN over 17-frame clips) is not streamed yet: encode is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..clips import Clips
from ..errors import InputError, UnsupportedModelError
from ..program import Program, Registers, TokenBlockStage, TokenKVStage
from . import kl
from .builder import ProgramBuilder

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "clips", "VIDEO",
           "OWN_TILING"]

VIDEO = True  #: inputs are (B, C, frames, H, W), in the model's own clips, each run as one chunk
OWN_TILING = True  #: with use_tiling on (its default), its tiles are its output: apply leaves them to it


def program(vae, op: str) -> Program:
    if op == "encode":
        raise UnsupportedModelError("AutoencoderKLMiniMaxH3: vaekit streams its decoder; its encoder (a causal "
                                    "CNN over 17-frame clips) is not streamed yet: use vae.encode")
    return _decoder(vae)


def _decoder(vae) -> Program:
    dec = vae.decoder
    b = ProgramBuilder("decode", vae.post_quant_conv.in_channels)
    x = b.causal("post_quant_conv", b.input, vae.post_quant_conv)
    x = b.causal("proj_in", x, _Linear3d(dec.proj_in))  # a token per latent voxel: (B*F, h, w, dim)
    registers, state = Registers(dec.register_tokens, zeros=1), None  # the registers, then one zero token
    for i, block in enumerate(dec.transformer_blocks):
        attn = block.attn
        _require(attn.use_bias and not isinstance(block.ff.net[0].proj, nn.Identity), f"block {i}'s layout")
        kv = b.new_map(2 * attn.heads * attn.dim_head)
        b.add(TokenKVStage(f"blocks.{i}.kv", x, kv, block, dec.rope))
        b.add(TokenBlockStage(f"blocks.{i}", x, kv, x, block, dec.rope, registers, state_in=state))  # over x
        state = f"blocks.{i}"
    x = b.causal("proj_out", x, _Linear3d(dec.proj_out, _frames_first(dec)), norm=dec.norm_out,
                 time_split=dec.patch_size_t, shuffle=dec.patch_size)  # tokens to 4 frames of 16x16 pixels: image px
    return b.build(output=x)


def _frames_first(dec: nn.Module) -> torch.Tensor:
    """proj_out's outputs reordered from the model's (c, t, row, column) to (t, c, row, column): the
    order CausalConvStage unfolds frames from (time_split), then pixels (a pixel shuffle)."""
    c, t, p = dec.out_channels, dec.patch_size_t, dec.patch_size
    return torch.arange(c * t * p * p).view(c, t, p * p).transpose(0, 1).flatten()


class _Linear3d(nn.Module):
    """A linear layer per token seen as the 1x1x1 conv that program.CausalConvStage runs (its weights
    a view; with ``order``, its output channels reordered, a copy)."""

    def __init__(self, linear: nn.Linear, order: torch.Tensor | None = None):
        super().__init__()
        weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        if order is not None:
            weight, bias = weight[order.to(weight.device)], None if bias is None else bias[order.to(bias.device)]
        self.in_channels, self.out_channels = linear.in_features, linear.out_features
        self.kernel_size, self.stride, self.dilation, self.groups = (1, 1, 1), (1, 1, 1), (1, 1, 1), 1
        self.weight = nn.Parameter(weight[:, :, None, None, None], requires_grad=False)  # (C_out, C_in, 1, 1, 1)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLMiniMaxH3: {message}")


def clips(vae, op: str, frames: int) -> Clips:
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
    length = size + vae.token_overlap
    tail = (chunk + pre, min(2 * chunk, length * ratio)) if drop > 0 else None
    n = count(frames)
    total = n * (chunk - pre) + (tail[1] - tail[0] if tail else 0)
    tail_frames = vae.config.clip_length % ratio  # a chunk's last latent frame covers this many frames, if not 0
    cut = sum(tail_frames if tail_frames and (frames + k) % size == 0 else ratio for k in range(pad))
    return Clips(length=length, starts=tuple(k * size for k in range(n)), keep=(pre, chunk), frames=total - cut,
                 pad=pad, tail=tail, fade=vae.frame_overlap)


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk per clip: the decoder attends over all of a clip's frames."""
    return [frames]


def whole(vae, op: str, x):
    """The model's own modules on one clip, untiled."""
    return vae.decoder(vae.post_quant_conv(x))


finish = kl.finish


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.temporal_compression_ratio
