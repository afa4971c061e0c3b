"""DC-AE's multiscale ReLU linear attention (diffusers SanaMultiscaleLinearAttention), made exact
for streaming in two passes:

    pass one   S = sum over all tokens of [v; 1] k^T      per (sample, head): (d + 1) x d, float64 sum
    pass two   out = (S q)[:d] / ((S q)[d] + eps)         per query band, then to_out, norm, + x

q, k, v come from the 1x1 projections of x plus, per kernel size, a depthwise conv (``halo`` rows
each side) and a grouped 1x1 of them; both passes recompute them from a band of x with its halo
instead of storing them (three to six times the size of x). Channels are grouped into heads of
3 * d exactly as diffusers reshapes them. Tiny maps (height * width <= d) take diffusers'
quadratic path, over the whole map at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import LinearKVStage, LinearQueryStage
from .norm import local_norm

__all__ = ["linear_kv_band", "linear_query_band"]


def _qkv(stage, w: dict, read, r0: int, r1: int, src_h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiscale q|k|v of rows [r0, r1), grouped per head: (B, heads, 3 * d, rows * W) float32, and
    x's rows [r0, r1) (from the same read: a second read of one map reuses the store's buffer)."""
    attn, halo = stage.attn, stage.halo
    a, b = max(r0 - halo, 0), min(r1 + halo, src_h)
    x = read(stage.src, a, b)  # (B, b - a, W, C)  map px
    qkv = F.linear(x, w["qkv"]["weight"]).permute(0, 3, 1, 2)  # (B, 3 * inner, b - a, W) = cat([q, k, v])
    scales = [qkv[:, :, r0 - a : r1 - a]]
    for proj, pw in zip(attn.to_qkv_multiscale, w["multiscale"], strict=True):
        k = proj.proj_in.kernel_size[0] // 2
        lo, hi = max(r0 - k, 0), min(r1 + k, src_h)
        part = F.pad(qkv[:, :, lo - a : hi - a], (0, 0, k - (r0 - lo), k - (hi - r1)))  # zeros only at the border
        part = F.conv2d(part, pw["in"]["weight"], padding=(0, k), groups=part.shape[1])
        scales.append(F.conv2d(part, pw["out"]["weight"], groups=proj.proj_out.groups))
    out = torch.cat(scales, dim=1)  # (B, 3 * inner * (1 + scales), rows, W)
    bsz, _, rows, width = out.shape
    heads = out.float().reshape(bsz, -1, 3 * attn.attention_head_dim, rows * width)  # (B, heads, 3d, tokens)
    return heads, x[:, r0 - a : r1 - a]


def linear_kv_band(stage: LinearKVStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                   dst_h: int) -> torch.Tensor:
    """This band's share of S: (B, heads, d + 1, d) float64."""
    q, k, v = _qkv(stage, w, read, r0, r1, src_h)[0].chunk(3, dim=2)
    v = F.pad(v, (0, 0, 0, 1), value=1.0)  # (B, heads, d + 1, tokens)
    return (v @ F.relu(k).transpose(-1, -2)).double()


def linear_query_band(stage: LinearQueryStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                      dst_h: int) -> torch.Tensor:
    """Output rows [r0, r1): (B, rows, W, C)."""
    attn = stage.attn
    heads, x = _qkv(stage, w, read, r0, r1, src_h)  # x: (B, rows, W, C)  map px
    bsz, rows, width, _ = x.shape
    if src_h * width > attn.attention_head_dim:
        q, _, _ = heads.chunk(3, dim=2)
        out = stats[stage.state].float() @ F.relu(q)  # (B, heads, d + 1, tokens)
        out = out[:, :, :-1] / (out[:, :, -1:] + attn.eps)
    else:  # diffusers' quadratic path for maps of at most d pixels: over the whole map
        heads, whole = _qkv(stage, w, read, 0, src_h, src_h)
        x = whole[:, r0:r1]
        q, k, v = heads.chunk(3, dim=2)
        scores = F.relu(k).transpose(-1, -2) @ F.relu(q)  # (B, heads, tokens, tokens)
        scores = scores / (scores.sum(dim=2, keepdim=True) + attn.eps)
        out = (v @ scores)[..., r0 * width : r1 * width]
    out = out.to(x.dtype).reshape(bsz, -1, rows, width).permute(0, 2, 3, 1)  # (B, rows, W, inner * (1 + scales))
    out = F.linear(out, w["to_out"]["weight"], w["to_out"].get("bias"))  # (B, rows, W, C)
    out = local_norm(out, attn.norm_out, w["norm_out"])
    return out + x if attn.residual_connection else out
