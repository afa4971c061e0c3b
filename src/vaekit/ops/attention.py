"""Exact single-image self-attention (the VAE mid-block), streamed.

Pass one writes K and V of every token into one map. Pass two takes queries a band of rows at a
time; when all keys fit, it is one ``scaled_dot_product_attention`` call; otherwise keys come in
blocks of rows and an online softmax (running max and sum, as in flash attention) keeps the result
exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..program import AttentionStage, KeyValueStage
from .norm import normalize

__all__ = ["kv_band", "attention_band"]


def kv_band(stage: KeyValueStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int):
    """Keys and values of rows [r0, r1): (B, rows, W, 2 * inner)."""
    x = normalize(read(stage.src, r0, r1), stats.get(stage.src), stage.attn.group_norm, None, w["norm"])
    return F.linear(x, w["kv"]["weight"], w["kv"]["bias"])  # (B, rows, W, 2 * inner)


def attention_band(stage: AttentionStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int,
                   kv_rows: int | None = None) -> torch.Tensor:
    """Attention output plus residual for query rows [r0, r1): (B, rows, W, C)."""
    attn = stage.attn
    residual = read(stage.src, r0, r1)  # (B, rows, W, C)  latent px
    b, rows, width, c = residual.shape
    x = normalize(residual, stats.get(stage.src), attn.group_norm, None, w["norm"])
    q = _heads(F.linear(x, w["to_q"]["weight"], w["to_q"].get("bias")), attn.heads)  # (B, heads, rows*W, d)
    kv_rows = kv_rows or src_h
    if kv_rows >= src_h:
        k, v = _split_kv(read(stage.kv, 0, src_h), attn.heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        out = _online_softmax(q, stage.kv, read, src_h, kv_rows, attn.heads, attn.scale)
    out = out.transpose(1, 2).reshape(b, rows, width, -1)  # (B, rows, W, inner)
    out = F.linear(out.to(residual.dtype), w["to_out"]["weight"], w["to_out"].get("bias"))
    out = out + residual
    if attn.rescale_output_factor != 1.0:
        out.div_(attn.rescale_output_factor)
    return out


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, rows, width, inner = t.shape
    return t.reshape(b, rows * width, heads, inner // heads).transpose(1, 2)  # (B, heads, tokens, d)


def _split_kv(kv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    inner = kv.shape[-1] // 2
    return _heads(kv[..., :inner], heads), _heads(kv[..., inner:], heads)


def _online_softmax(q, kv_map: str, read, src_h: int, kv_rows: int, heads: int, scale: float) -> torch.Tensor:
    """softmax(q K^T * scale) V over key blocks, in fp32, with a running max and sum per query."""
    q = q.float() * scale
    running_max = torch.full(q.shape[:-1], float("-inf"), device=q.device)  # (B, heads, Nq)
    running_sum = torch.zeros_like(running_max)
    acc = torch.zeros(*q.shape[:-1], q.shape[-1], device=q.device)  # (B, heads, Nq, d)
    for k0 in range(0, src_h, kv_rows):
        k, v = _split_kv(read(kv_map, k0, min(k0 + kv_rows, src_h)), heads)
        scores = q @ k.float().transpose(-1, -2)  # (B, heads, Nq, Nk)
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        correction = torch.exp(running_max - new_max)
        scores.sub_(new_max.unsqueeze(-1)).exp_()
        running_sum.mul_(correction).add_(scores.sum(dim=-1))
        acc.mul_(correction.unsqueeze(-1)).add_(scores @ v.float())
        running_max = new_max
    return acc / running_sum.unsqueeze(-1)
