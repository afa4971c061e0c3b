"""Exact self-attention (the VAE mid-block; in a video, per frame or across frames), streamed.

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

__all__ = ["kv_band", "attention_band", "frame_attention_band", "online_softmax"]


def kv_band(stage: KeyValueStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int):
    """Keys and values of rows [r0, r1): (B, rows, W, 2 * inner)."""
    x = normalize(read(stage.src, r0, r1), stats.get(stage.src), stage.attn.group_norm, None, w["norm"])
    return F.linear(x, w["kv"]["weight"], w["kv"]["bias"])  # (B, rows, W, 2 * inner)


def attention_band(stage: AttentionStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int,
                   kv_rows: int | None = None, samples: int | None = None) -> torch.Tensor:
    """Attention output plus residual for query rows [r0, r1): (B, rows, W, C). ``samples``: the videos
    of a band of frames (B * F in the batch), for attention across frames."""
    attn = stage.attn
    residual = read(stage.src, r0, r1)  # (B, rows, W, C)  latent px
    b, rows, width, c = residual.shape
    x = normalize(residual, stats.get(stage.src), attn.group_norm, None, w["norm"])
    q = _heads(F.linear(x, w["to_q"]["weight"], w["to_q"].get("bias")), attn.heads)  # (B, heads, rows*W, d)
    frames = None if stage.frames is None else _Frames(b // samples, rows * width)
    q = q if frames is None else frames.join(q)  # (B, heads, F*rows*W, d): every frame's tokens
    kv_rows = kv_rows or src_h
    if kv_rows >= src_h:
        k, v = _split_kv(read(stage.kv, 0, src_h), attn.heads, frames)
        mask = None if frames is None else frames.mask(src_h * width, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    else:
        out = _online_softmax(q, stage.kv, read, src_h, kv_rows, attn.heads, attn.scale, frames, width)
    out = out if frames is None else frames.split(out)  # (B*F, heads, rows*W, d)
    out = out.transpose(1, 2).reshape(b, rows, width, -1)  # (B, rows, W, inner)
    out = F.linear(out.to(residual.dtype), w["to_out"]["weight"], w["to_out"].get("bias"))
    out = out + residual
    if attn.rescale_output_factor != 1.0:
        out.div_(attn.rescale_output_factor)
    return out


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, rows, width, inner = t.shape
    return t.reshape(b, rows * width, heads, inner // heads).transpose(1, 2)  # (B, heads, tokens, d)


def _split_kv(kv: torch.Tensor, heads: int, frames=None) -> tuple[torch.Tensor, torch.Tensor]:
    inner = kv.shape[-1] // 2
    k, v = _heads(kv[..., :inner], heads), _heads(kv[..., inner:], heads)
    return (k, v) if frames is None else (frames.join(k), frames.join(v))


class _Frames:
    """Tokens of a band of ``f`` frames per video, ``per_frame`` query tokens each, joined into one
    sequence per video (frame-major), with the causal mask across frames."""

    def __init__(self, f: int, per_frame: int):
        self.f, self.per_frame = f, per_frame

    def join(self, t: torch.Tensor) -> torch.Tensor:
        """(B*F, heads, T, d) -> (B, heads, F*T, d)."""
        return t.unflatten(0, (-1, self.f)).transpose(1, 2).flatten(2, 3)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, heads, F*T, d) -> (B*F, heads, T, d)."""
        return t.unflatten(2, (self.f, -1)).transpose(1, 2).flatten(0, 1)

    def mask(self, keys_per_frame: int, device) -> torch.Tensor:
        """(F*T_q, F*T_k) booleans: a query sees the keys of its frame and of the frames before."""
        q = torch.arange(self.f, device=device).repeat_interleave(self.per_frame)
        k = torch.arange(self.f, device=device).repeat_interleave(keys_per_frame)
        return k[None, :] <= q[:, None]


def _online_softmax(q, kv_map: str, read, src_h: int, kv_rows: int, heads: int, scale: float, frames=None,
                    width: int = 0) -> torch.Tensor:
    """softmax(q K^T * scale) V over key blocks of ``kv_rows`` rows. Across frames, a query's first
    frame's keys are in every block: no row of a block is wholly masked."""
    def blocks():
        for k0 in range(0, src_h, kv_rows):
            k1 = min(k0 + kv_rows, src_h)
            k, v = _split_kv(read(kv_map, k0, k1), heads, frames)
            yield k, v, None if frames is None else frames.mask((k1 - k0) * width, q.device)

    return online_softmax(q, blocks(), scale)


def online_softmax(q: torch.Tensor, blocks, scale: float) -> torch.Tensor:
    """softmax(q K^T * scale) V, K and V given as ``blocks`` of (k, v, mask or None), in fp32, with a
    running max and sum per query (as flash attention does): exact whatever the blocks."""
    q = q.float() * scale
    running_max = torch.full(q.shape[:-1], float("-inf"), device=q.device)  # (B, heads, Nq)
    running_sum = torch.zeros_like(running_max)
    acc = torch.zeros(*q.shape[:-1], q.shape[-1], device=q.device)  # (B, heads, Nq, d)
    for k, v, mask in blocks:
        scores = q @ k.float().transpose(-1, -2)  # (B, heads, Nq, Nk)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        new_max = torch.maximum(running_max, scores.amax(dim=-1))
        correction = torch.exp(running_max - new_max)
        scores.sub_(new_max.unsqueeze(-1)).exp_()
        running_sum.mul_(correction).add_(scores.sum(dim=-1))
        acc.mul_(correction.unsqueeze(-1)).add_(scores @ v.float())
        running_max = new_max
    return acc / running_sum.unsqueeze(-1)


def frame_attention_band(stage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int, dst_h: int,
                         samples: int) -> torch.Tensor:
    """Rows [r0, r1) of a FrameAttentionStage: each pixel's frames attend to each other (causally, as the
    attention says), as diffusers' MochiVaeAttnProcessor2_0 computes it; + src. (B * F, rows, W, C)."""
    attn = stage.attn
    residual = read(stage.src, r0, r1)  # (B * F, rows, W, C)  map px
    n, rows, width, c = residual.shape
    f = n // samples  # frames of each video
    x = normalize(residual, stats.get(stage.src), stage.norm, None, w["norm"])
    x = x.view(samples, f, rows, width, c).permute(0, 2, 3, 1, 4).reshape(-1, f, c)  # (pixels, F, C): a sequence each
    if f == 1:  # as diffusers: one frame attends to itself alone, its value projected
        out = F.linear(x, w["to_v"]["weight"], w["to_v"].get("bias"))
    else:
        q, k, v = (F.linear(x, w[p]["weight"], w[p].get("bias")) for p in ("to_q", "to_k", "to_v"))
        q, k, v = (t.view(t.shape[0], f, attn.heads, -1).transpose(1, 2) for t in (q, k, v))  # (pixels, heads, F, d)
        q, k = F.normalize(q, dim=-1, eps=attn.norm_q.eps), F.normalize(k, dim=-1, eps=attn.norm_k.eps)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=attn.is_causal)
        out = out.transpose(1, 2).reshape(-1, f, attn.heads * out.shape[-1]).to(q.dtype)  # (pixels, F, inner)
    out = F.linear(out, w["to_out"]["weight"], w["to_out"].get("bias"))  # (pixels, F, C)
    out = out.view(samples, rows, width, f, c).permute(0, 3, 1, 2, 4).reshape(n, rows, width, c)
    return out.add_(residual)
