"""A ViT decoder's blocks (MiniMax H3), streamed exactly.

Every latent voxel of a video is a token, and a block's attention is over every token of every frame
plus a few register tokens. As for the VAE mid-block's attention (ops/attention.py), pass one writes
K and V of every token into a map (TokenKVStage); pass two takes the queries of a band of rows (all
frames), attends to all keys at once or in key blocks with an online softmax, and finishes the block
(residual, FFN, residual) on the band alone: everything after the attention is per token. The
registers are a few tokens of run state: the block stage reads their keys and values from the state
the previous block left, and at its end puts them through the block too (token_registers).

Bands are (B*F, rows, W, C): a video's frames are consecutive in the batch dimension, so a video's
tokens in diffusers' (frame, row, column) order are a reshape away.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..program import TokenBlockStage, TokenKVStage
from .attention import online_softmax

__all__ = ["token_kv_band", "token_block_band", "token_registers", "vit_weights"]


def vit_weights(stage: TokenKVStage | TokenBlockStage, device, dtype) -> dict[str, torch.Tensor]:
    """The block's tensors on the compute device: projections in the compute dtype; norm weights,
    layer scales and the rotary frequencies in float32, as the model keeps them."""
    block, attn = stage.block, stage.block.attn

    def linear(module, name):
        out = {f"{name}.weight": module.weight.detach().to(device, dtype)}
        if module.bias is not None:
            out[f"{name}.bias"] = module.bias.detach().to(device, dtype)
        return out

    w = {"norm1": block.norm1.weight.detach().to(device, torch.float32),
         "inv_freq": stage.rope.inv_freq.to(device, torch.float32)}
    w |= linear(attn.to_k, "to_k") | linear(attn.to_v, "to_v")
    if isinstance(stage, TokenBlockStage):
        w |= linear(attn.to_q, "to_q") | linear(attn.to_out[0], "to_out")
        w |= linear(block.ff.net[0].proj, "ff_in") | linear(block.ff.net[2], "ff_out")
        w |= {"norm2": block.norm2.weight.detach().to(device, torch.float32),
              "scale1": block.scale1.detach().to(device), "scale2": block.scale2.detach().to(device),
              "registers": stage.registers.tokens.detach().to(device, dtype)}
    return w


def token_kv_band(stage: TokenKVStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int,
                  samples: int | None = None) -> torch.Tensor:
    """Keys (normed, rotated) and values of rows [r0, r1): (B*F, rows, W, 2 * inner)."""
    x = read(stage.src, r0, r1)  # (B*F, rows, W, C)  latent px
    n = _norm(x, w["norm1"], stage.block.norm1.eps, x.dtype)
    k = _rotate(_project(stage, w, "to_k", n), _rotation(w, x.shape[0] // samples, src_h, x.shape[2], r0, r1))
    return torch.cat([k.flatten(-2), _linear(w, "to_v", n)], dim=-1)  # (B*F, rows, W, 2 * inner)


def token_block_band(stage: TokenBlockStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                     dst_h: int, kv_rows: int | None = None, samples: int | None = None) -> torch.Tensor:
    """The block's output for the tokens of rows [r0, r1) of every frame: (B*F, rows, W, C)."""
    x = read(stage.src, r0, r1)  # (B*F, rows, W, C)  latent px
    bf, rows, width, c = x.shape
    n = _norm(x, w["norm1"], stage.block.norm1.eps, x.dtype)
    q = _rotate(_project(stage, w, "to_q", n), _rotation(w, bf // samples, src_h, width, r0, r1))
    q = q.reshape(samples, -1, *q.shape[-2:]).transpose(1, 2)  # (B, heads, F*rows*W, d): a video's tokens
    out = _attend(stage, w, q, read, stats, src_h, kv_rows or src_h, samples)  # (B, heads, F*rows*W, d)
    out = out.transpose(1, 2).reshape(bf, rows, width, -1)  # (B*F, rows, W, inner)  latent px
    return _finish(stage, w, x, out)


def token_registers(stage: TokenBlockStage, w: dict, read, stats: dict, src_h: int, kv_rows: int | None,
                    samples: int) -> torch.Tensor:
    """The registers after the block: (B, R + zeros, C). They sit at position 0: no rotation."""
    x = _registers_in(stage, w, stats, samples)  # (B, R, C)
    n = _norm(x, w["norm1"], stage.block.norm1.eps, x.dtype)
    q = _project(stage, w, "to_q", n).transpose(1, 2)  # (B, heads, R, d)
    out = _attend(stage, w, q, read, stats, src_h, kv_rows or src_h, samples)
    return _finish(stage, w, x, out.transpose(1, 2).flatten(-2))


def _registers_in(stage: TokenBlockStage, w: dict, stats: dict, samples: int) -> torch.Tensor:
    """The registers this block reads: the previous block's, or the model's own then zero tokens."""
    if stage.state_in is not None:
        return stats[("registers", stage.state_in)]
    tokens = w["registers"].expand(samples, -1, -1)  # (B, R, C)
    return torch.cat([tokens, tokens.new_zeros(samples, stage.registers.zeros, tokens.shape[-1])], dim=1)


def _attend(stage: TokenBlockStage, w: dict, q: torch.Tensor, read, stats: dict, src_h: int, kv_rows: int,
            samples: int) -> torch.Tensor:
    """softmax(q K^T / sqrt(d)) V over every token's keys (the map) and the registers' (B, heads, Nq, d)."""
    heads = stage.block.attn.heads
    registers = _registers_in(stage, w, stats, samples)
    n = _norm(registers, w["norm1"], stage.block.norm1.eps, registers.dtype)
    reg_k = _project(stage, w, "to_k", n).transpose(1, 2)  # (B, heads, R, d)
    reg_v = _linear(w, "to_v", n).unflatten(-1, (heads, -1)).transpose(1, 2)

    def keys(k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = read(stage.kv, k0, k1)  # (B*F, rows, W, 2 * inner)
        kv = kv.reshape(samples, -1, kv.shape[-1])  # (B, F*rows*W, 2 * inner): a video's tokens
        k, v = kv.chunk(2, dim=-1)
        return k.unflatten(-1, (heads, -1)).transpose(1, 2), v.unflatten(-1, (heads, -1)).transpose(1, 2)

    if kv_rows >= src_h:  # one call, the tokens' keys then the registers', as the model orders them
        k, v = keys(0, src_h)
        return F.scaled_dot_product_attention(q, torch.cat([k, reg_k], dim=2), torch.cat([v, reg_v], dim=2))

    def blocks():
        for k0 in range(0, src_h, kv_rows):
            yield *keys(k0, min(k0 + kv_rows, src_h)), None
        yield reg_k, reg_v, None

    return online_softmax(q, blocks(), q.shape[-1] ** -0.5).to(q.dtype)


def _finish(stage: TokenBlockStage, w: dict, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """x + to_out(attn) * scale1, then + FFN(norm2(.)) * scale2: per token."""
    x = x + _linear(w, "to_out", attn) * w["scale1"]
    n = _norm(x, w["norm2"], stage.block.norm2.eps, x.dtype)
    hidden, gate = _linear(w, "ff_in", n).chunk(2, dim=-1)  # diffusers' SwiGLU
    return x + _linear(w, "ff_out", hidden * F.silu(gate)) * w["scale2"]


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """The block's RMS norm, in float32 as the model computes it, back in ``dtype``."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight, eps).to(dtype)


def _linear(w: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def _project(stage, w: dict, name: str, n: torch.Tensor) -> torch.Tensor:
    """Queries or keys: projected, split into heads (..., heads, d), each RMS-normed in float32."""
    attn = stage.block.attn
    t = _linear(w, name, n).unflatten(-1, (attn.heads, -1))
    norm = attn.norm_q if name == "to_q" else attn.norm_k
    return F.rms_norm(t.float(), (t.shape[-1],), None, norm.eps).to(t.dtype)


def _rotation(w: dict, frames: int, height: int, width: int, r0: int, r1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (F, rows, W, 1, rot) of rows [r0, r1): each axis's coordinate in [-1, 1) times 2 pi
    times the frequencies, as the model's rotary embedding computes them for every token."""
    freq = w["inv_freq"]
    grids = [2.0 * (torch.arange(0.5, size, dtype=torch.float32, device=freq.device) / size) - 1.0
             for size in (frames, height, width)]
    grids[1] = grids[1][r0:r1]
    position = torch.stack(torch.meshgrid(*grids, indexing="ij"), dim=-1)  # (F, rows, W, 3)
    angles = 2.0 * math.pi * position[..., None] * freq  # (F, rows, W, 3, freqs)
    angles = angles.flatten(-2).tile(2).unsqueeze(-2)  # (F, rows, W, 1, rot)
    return angles.cos(), angles.sin()


def _rotate(t: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The first ``rot`` channels of each head of ``t`` (B*F, rows, W, heads, d) rotated."""
    cos, sin = (r.to(t.dtype) for r in rotation)
    frames, rot = cos.shape[0], cos.shape[-1]
    t = t.unflatten(0, (-1, frames))  # (B, F, rows, W, heads, d)
    t_rot, t_pass = t[..., :rot], t[..., rot:]
    first, second = t_rot.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return torch.cat([t_rot * cos + rotated * sin, t_pass], dim=-1).flatten(0, 1)
