"""diffusers AutoencoderKLMochi (Mochi 1): its decoder as a stage program over the whole video.

diffusers' default decode runs every frame at once (framewise decoding is off): causal 3x3x3 convs
padded by repeating (copies of the first frame in front, the edge rows and columns), GroupNorms with
each frame's statistics, and up blocks that unfold channels into frames and pixels; the first
temporal factor - 1 frames of the result are then dropped. So the program's one chunk is the whole
video and its rows stream; the drop is the model's own cut (clips: one clip, its first frames left
out). With framewise decoding on, the model decodes 2 latent frames at a time, each alone (its
replicate padding takes no cache): clips of 2. One row per block:

    conv_in           1x1x1                                                       latent px
    block_in          resnets: norm1+silu+conv1 | norm2+silu+conv2 + x
    up                resnets; a linear layer per pixel to (t, c, row, column) channels, unfolded into
                      t frames of s x s pixels
    block_out         resnets
    proj_out          silu + a linear layer per pixel                             image px

Its encoder (Fourier features, attention in its down blocks) is not streamed yet: encode is refused.
"""

from __future__ import annotations

from torch import nn

from ..clips import Clips
from ..errors import UnsupportedModelError
from ..program import Program
from . import kl
from .builder import LinearConv, ProgramBuilder, frames_first, repeat_padded

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "clips", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), run as one chunk (or the model's framewise clips)
CAUSAL = {"time_pad": "first", "border": "replicate"}  #: how every 3x3x3 conv of it is padded


def program(vae, op: str) -> Program:
    if op == "encode":
        raise UnsupportedModelError("AutoencoderKLMochi: vaekit streams its decoder; its encoder (Fourier "
                                    "features, attention in its down blocks) is not streamed yet: use vae.encode")
    dec = vae.decoder
    b = ProgramBuilder("decode", dec.conv_in.in_channels)
    x = b.causal("conv_in", b.input, dec.conv_in)
    x = _resnets(b, "block_in", x, dec.block_in)
    for i, block in enumerate(dec.up_blocks):
        x = _resnets(b, f"up.{i}", x, block)
        t, s = block.temporal_expansion, block.spatial_expansion
        order = frames_first(block.proj.out_features // (t * s * s), t, s * s)  # its (c, t, row, column) channels
        x = b.causal(f"up.{i}.proj", x, LinearConv(block.proj, order), time_split=t, shuffle=s)
    x = _resnets(b, "block_out", x, dec.block_out)
    x = b.causal("proj_out", x, LinearConv(dec.proj_out), act=_act(dec.nonlinearity))  # image px
    return b.build(output=x)


def _resnets(b: ProgramBuilder, name: str, x: str, block: nn.Module) -> str:
    """norm1+silu+conv1, norm2+silu+conv2, + x: written over x."""
    _require(all(a is None for a in getattr(block, "attentions", [])), f"{name}: attention in a decoder block")
    for j, resnet in enumerate(block.resnets):
        act = _act(resnet.nonlinearity)
        h = b.causal(f"{name}.resnets.{j}.conv1", x, _conv(resnet.conv1), norm=_norm(resnet.norm1), act=act,
                     **CAUSAL)
        x = b.causal(f"{name}.resnets.{j}.conv2", h, _conv(resnet.conv2), dst=x, norm=_norm(resnet.norm2), act=act,
                     skip=x, **CAUSAL)
    return x


def _conv(causal: nn.Module) -> nn.Conv3d:
    """A CogVideoXCausalConv3d in Mochi's "replicate" mode: padded by repeating, copies of the first frame in front."""
    conv = repeat_padded(causal)
    _require(conv is not None, f"only causal convs padded by repeating, got {causal.conv}")
    return conv


def _norm(norm: nn.Module) -> nn.GroupNorm:
    """A MochiChunkedGroupNorm3D: a GroupNorm of each frame (its chunks are of frames: the same statistics)."""
    _require(isinstance(norm.norm_layer, nn.GroupNorm), f"norm {type(norm).__name__}")
    return norm.norm_layer


def _act(module: nn.Module) -> str:
    _require(isinstance(module, nn.SiLU), f"activation {type(module).__name__}")
    return "silu"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"AutoencoderKLMochi: {message}")


def clips(vae, op: str, frames: int) -> Clips:
    """The model's own runs: the whole video, or (framewise decoding) num_latent_frames_batch_size
    latent frames at a time, each alone; then its first temporal factor - 1 frames dropped, if the
    video has that many (drop_last_temporal_frames)."""
    ratio = vae.temporal_compression_ratio
    size = vae.num_latent_frames_batch_size if vae.use_framewise_decoding else frames
    windows = tuple((i, min(i + size, frames)) for i in range(0, frames, size))
    total = frames * ratio
    drop = ratio - 1 if vae.drop_last_temporal_frames and total >= ratio else 0
    return Clips(windows=windows, keep=(0, size * ratio), keep_first=(drop, size * ratio), frames=total - drop)


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk: a run's frames at once (its replicate padding takes no time cache)."""
    return [frames]


def whole(vae, op: str, x):
    """The model's own decoder on a run, untiled (its decode would honour enable_tiling())."""
    return vae.decoder(x)[0]


finish = kl.finish


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.temporal_compression_ratio
