"""diffusers AutoencoderKLMochi (Mochi 1): its decoder and encoder as stage programs over the whole video.

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

Its encoder runs every frame at once too (diffusers has no framewise encoding for it), one row per block:

    proj_in           Fourier features of each pixel (x, sin, cos at two frequencies), a linear layer
    block_in          resnets
    down              a conv of kernel = stride (t, s, s), copies of the first frame in front; then per
                      layer a resnet and (add_attention_block) attention over time: each pixel's frames
                      attend to those before, after a GroupNorm of each frame (FrameAttentionStage)
    block_out         resnets and attention
    proj_out          norm_out + silu + a linear layer per pixel to mean and log-variance   latent px
"""

from __future__ import annotations

from torch import nn

from ..clips import Clips
from ..errors import UnsupportedModelError
from ..program import FrameAttentionStage, Program
from . import kl
from .builder import LinearConv, ProgramBuilder, frames_first, repeat_padded

__all__ = ["program", "whole", "finish", "scale_factor", "temporal_factor", "chunk_frames", "clips", "VIDEO"]

VIDEO = True  #: inputs are (B, C, frames, H, W), run as one chunk (or the model's framewise clips)
CAUSAL = {"time_pad": "first", "border": "replicate"}  #: how every 3x3x3 conv of it is padded


def program(vae, op: str) -> Program:
    if op == "encode":
        return _encoder(vae)
    dec = vae.decoder
    b = ProgramBuilder("decode", dec.conv_in.in_channels)
    x = b.causal("conv_in", b.input, dec.conv_in)
    x = _resnets(b, "block_in", x, dec.block_in)
    for i, block in enumerate(dec.up_blocks):
        x = _resnets(b, f"up.{i}", x, block)
        t, s = block.temporal_expansion, block.spatial_expansion
        if getattr(block, "drops_first_frames", False):  # genmo's (ComfyUI's): unfolded, then its first t - 1 dropped
            x = b.causal(f"up.{i}.proj", x, LinearConv(block.proj), time_shuffle=t, shuffle=s)  # (c, t, row, col)
            continue
        order = frames_first(block.proj.out_features // (t * s * s), t, s * s)  # its (c, t, row, column) channels
        x = b.causal(f"up.{i}.proj", x, LinearConv(block.proj, order), time_split=t, shuffle=s)
    x = _resnets(b, "block_out", x, dec.block_out)
    x = b.causal("proj_out", x, LinearConv(dec.proj_out), act=_act(dec.nonlinearity))  # image px
    return b.build(output=x)


def _encoder(vae) -> Program:
    enc = vae.encoder
    fourier = enc.fourier_features
    _require((fourier.start, fourier.stop, fourier.step) == (6, 8, 1), "Fourier features other than 2^6, 2^7")
    b = ProgramBuilder("encode", enc.proj_in.in_features // 5)  # image px; 5 features a channel
    x = b.causal("proj_in", b.input, LinearConv(enc.proj_in), act="fourier")
    x = _resnets(b, "block_in", x, enc.block_in)
    for i, block in enumerate(enc.down_blocks):
        t, s = block.temporal_expansion, block.spatial_expansion
        x = b.causal(f"down.{i}.conv_in", x, _patches(block.conv_in, t, s), time_pad="first", border="replicate",
                     stride=s, time_stride=t, pad=(0, 0, 0, 0))
        x = _resnets(b, f"down.{i}", x, block)
    x = _resnets(b, "block_out", x, enc.block_out)
    return b.build(output=b.causal("proj_out", x, LinearConv(enc.proj_out), norm=_norm(enc.norm_out),
                                   act=_act(enc.nonlinearity)))  # latent px: mean and log-variance


def _resnets(b: ProgramBuilder, name: str, x: str, block: nn.Module) -> str:
    """Per layer norm1+silu+conv1, norm2+silu+conv2, + x, and (the encoder's) attention over time; each
    written over x."""
    attentions = getattr(block, "attentions", [None] * len(block.resnets))
    for j, (resnet, attn) in enumerate(zip(block.resnets, attentions, strict=True)):
        act = _act(resnet.nonlinearity)
        h = b.causal(f"{name}.resnets.{j}.conv1", x, _conv(resnet.conv1), norm=_norm(resnet.norm1), act=act,
                     **CAUSAL)
        x = b.causal(f"{name}.resnets.{j}.conv2", h, _conv(resnet.conv2), dst=x, norm=_norm(resnet.norm2), act=act,
                     skip=x, **CAUSAL)
        if attn is not None:
            _require(b.op == "encode", f"{name}: attention in a decoder block")
            _require(attn.rescale_output_factor == 1 and not attn.residual_connection
                     and type(attn.norm_q).__name__ == "LpNorm", f"{name}: attention other than Mochi's")
            norm = _norm(block.norms[j])
            b.add(FrameAttentionStage(f"{name}.attentions.{j}", x, x, attn, norm), norm=norm)
    return x


def _conv(causal: nn.Module) -> nn.Conv3d:
    """A CogVideoXCausalConv3d in Mochi's "replicate" mode: padded by repeating, copies of the first frame in front."""
    conv = repeat_padded(causal)
    _require(conv is not None, f"only causal convs padded by repeating, got {causal.conv}")
    return conv


def _patches(causal: nn.Module, t: int, s: int) -> nn.Conv3d:
    """A down block's CogVideoXCausalConv3d: kernel = stride = (t, s, s), t - 1 copies of the first frame in front."""
    conv = causal.conv
    ok = conv.kernel_size == conv.stride == (t, s, s) and conv.padding == (0, 0, 0) and conv.groups == 1
    ok = ok and getattr(causal, "pad_mode", None) == "replicate" and tuple(causal.time_causal_padding) == (
        0, 0, 0, 0, t - 1, 0)
    _require(ok, f"a downsampling conv other than patches of kernel = stride, got {conv}")
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


def clips(vae, op: str, frames: int) -> Clips | None:
    """The model's own decode runs: the whole video, or (framewise decoding) num_latent_frames_batch_size
    latent frames at a time, each alone; then its first temporal factor - 1 frames dropped, if the
    video has that many (drop_last_temporal_frames). It encodes the whole video: None."""
    if op == "encode":
        return None
    ratio = vae.temporal_compression_ratio
    size = vae.num_latent_frames_batch_size if vae.use_framewise_decoding else frames
    windows = tuple((i, min(i + size, frames)) for i in range(0, frames, size))
    total = sum(_frames_made(vae, b - a) for a, b in windows)
    drop = ratio - 1 if vae.drop_last_temporal_frames and total >= ratio else 0
    made = _frames_made(vae, size)
    return Clips(windows=windows, keep=(0, made), keep_first=(drop, made), frames=total - drop)


def _frames_made(vae, latent_frames: int) -> int:
    """Frames the decoder makes of a run: each up block unfolds t per frame (genmo's then drops t - 1)."""
    for block in vae.decoder.up_blocks:
        t = block.temporal_expansion
        latent_frames = latent_frames * t - (t - 1 if getattr(block, "drops_first_frames", False) else 0)
    return latent_frames


def chunk_frames(vae, op: str, frames: int) -> list[int]:
    """One chunk: a run's frames at once (its replicate padding takes no time cache)."""
    return [frames]


def whole(vae, op: str, x):
    """The model's own decoder or encoder on a run, untiled (its decode and encode would honour enable_tiling())."""
    return vae.decoder(x)[0] if op == "decode" else vae.encoder(x)[0]


finish = kl.finish


def scale_factor(vae) -> int:
    return vae.spatial_compression_ratio


def temporal_factor(vae) -> int:
    return vae.temporal_compression_ratio
