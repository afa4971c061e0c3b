"""ConvStage bands through ``torch.compile``, one graph per kind of stage for every image size.

What varies with the chunk's position (which rows exist, where the border padding goes) is settled
eagerly: the band is read with its halo, rows outside the image are zero rows and a row mask says
which rows are real. What the compiled body sees is then the same computation for every chunk and
every resolution: prologue (GroupNorm as a precomputed scale and shift, activation) times the mask,
nearest upsampling, the conv, pixel (un)shuffle, out norm, shortcut, post. Shapes are dynamic
(``dynamic=True``), so a new width or chunk height reuses the graph; upsampling stages run in chunks
of even rows so the halo offset after upsampling is the same for every chunk.

Graphs are cached by the stage's static configuration (the "kind"): stages of one kind share a graph
whatever their channels. The weights are inputs, not constants.

A video's CausalConvStage (ops/causal.py) is compiled the same way: one graph makes the conv's input
([time cache ; act(norm(band))], zero padded, in the conv3d layout) in one pass, the conv stays
eager, a second graph unfolds its output and adds the residuals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..program import CausalConvStage, ConvStage, Shortcut
from .act import activate
from .causal import cache_tail, causal_conv_band, conv3d, shortcut_band
from .conv import apply_shortcut, conv_band, pixel_shuffle, pixel_unshuffle
from .norm import group_scale_shift, l2_norm, pixel_norm

__all__ = ["compiled_conv_band", "compiled_causal_band", "compilable", "kind_of", "MIN_RECOMPILE_LIMIT"]

#: dynamo keeps this many graphs per code object; every kind of stage is one (vaekit raises the limit)
MIN_RECOMPILE_LIMIT = 64

_GRAPHS: dict[tuple, object] = {}


@dataclass(frozen=True)
class _Kind:
    """Everything static about a ConvStage's band computation."""

    norm: str  # "group" | "rms" | "batch" | ""
    eps: float
    act: str | None
    upsample: int
    stride: int
    left: int
    right: int
    groups: int
    shuffle: int
    unshuffle: int
    out_norm: str
    out_eps: float
    shortcut: tuple | None
    out_scale: float
    post: str | None
    order: str


def _norm_name(norm: nn.Module | None) -> str:
    if norm is None:
        return ""
    return {"GroupNorm": "group", "BatchNorm2d": "batch"}.get(type(norm).__name__, "rms")


def kind_of(stage: ConvStage) -> _Kind:
    sc = stage.shortcut
    shortcut = None if stage.skip is None else (
        () if sc is None else (sc.conv is not None, sc.unshuffle, sc.repeat, sc.mean, sc.shuffle, sc.order))
    _, _, left, right = stage.padding
    return _Kind(_norm_name(stage.norm), getattr(stage.norm, "eps", 0.0), stage.act, stage.upsample, stage.stride,
                 left, right, stage.conv.groups, stage.shuffle, stage.unshuffle, _norm_name(stage.out_norm),
                 getattr(stage.out_norm, "eps", 0.0), shortcut, stage.out_scale, stage.post, stage.order)


def _prologue(kind: _Kind, x, mask, scale, shift, norm_w):
    """NHWC band with halo rows -> the conv's NCHW input: norm, activation, mask, upsampling, padding."""
    if kind.norm == "group":  # float32 arithmetic, the band's dtype out (as norm_act): the conv's weights are in it
        x = activate(torch.addcmul(shift, x, scale), kind.act, inplace=True).to(x.dtype)
    elif kind.norm:
        x = activate(pixel_norm(x, kind.norm == "batch", kind.eps, norm_w), kind.act, inplace=True)
    else:
        x = activate(x, kind.act)
    x = (x * mask).permute(0, 3, 1, 2)  # (B, C, rows, W); rows outside the image are zeros again
    if kind.upsample != 1:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = x[:, :, 1 : x.shape[2] - 1]  # even chunks: the halo starts one row into the first pair
    if kind.left != kind.right:
        x = F.pad(x, (kind.left, kind.right, 0, 0))
    return x.contiguous(memory_format=torch.channels_last)


def _epilogue(kind: _Kind, shortcut: Shortcut | None, out, out_norm_w, skip):
    """The conv's NCHW output -> the NHWC band: pixel (un)shuffle, out norm, + skip, scale, post.
    ``shortcut`` is the kind's conv-free shortcut (a conv shortcut was applied to ``skip`` eagerly)."""
    if kind.shuffle != 1:
        out = pixel_shuffle(out, kind.shuffle, kind.order)
    if kind.unshuffle != 1:
        out = pixel_unshuffle(out, kind.unshuffle, kind.order)
    if kind.out_norm:
        out = pixel_norm(out.permute(0, 2, 3, 1), kind.out_norm == "batch", kind.out_eps, out_norm_w).permute(0, 3, 1, 2)
    if kind.shortcut is not None:
        out = out + apply_shortcut(skip, shortcut, None)
    if kind.out_scale != 1.0:
        out = out / kind.out_scale
    return activate(out, kind.post, inplace=True).permute(0, 2, 3, 1)


def _graphs(kind: _Kind):
    """The compiled prologue and epilogue of this kind (the conv between them stays eager: its
    backend choice depends on sizes, which would make a graph per size)."""
    if kind not in _GRAPHS:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, MIN_RECOMPILE_LIMIT)

        def prologue(x, mask, scale, shift, norm_w):
            return _prologue(kind, x, mask, scale, shift, norm_w)

        spec = kind.shortcut  # (has conv, unshuffle, repeat, mean, shuffle, order), () identity, None no skip
        shortcut = Shortcut(None, *spec[1:]) if spec and not spec[0] else None

        def epilogue(out, out_norm_w, skip):
            return _epilogue(kind, shortcut, out, out_norm_w, skip)

        _GRAPHS[kind] = torch.compile(prologue, dynamic=True), torch.compile(epilogue, dynamic=True)
    return _GRAPHS[kind]


def compilable(stage) -> bool:
    """ConvStages whose upsampling (if any) is 2x before a 3x3 'same' conv: every one vaekit builds,
    except those with a video's time (un)shuffle in their shortcut or Wan's norm (they run eagerly)."""
    sc = stage.shortcut if isinstance(stage, ConvStage) else None
    in_time = sc is not None and (sc.time_shuffle != 1 or sc.time_unshuffle != 1)
    wan_norm = hasattr(getattr(stage, "norm", None), "gamma") or hasattr(getattr(stage, "out_norm", None), "gamma")
    return isinstance(stage, ConvStage) and not in_time and not wan_norm and (stage.upsample == 1 or (
        stage.upsample == 2 and stage.kernel == 3 and stage.stride == 1 and stage.padding[:2] == (1, 1)))


def compiled_conv_band(stage: ConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                       dst_h: int) -> torch.Tensor:
    """conv_band's contract, computed by the compiled graph of the stage's kind."""
    if not compilable(stage):
        return conv_band(stage, w, read, stats, r0, r1, src_h, dst_h)
    kind = kind_of(stage)
    lo, hi = stage.conv_rows(r0, r1)  # conv-input rows, past the border where the padding is
    a, b = ((lo - 1) // 2, (hi + 1) // 2) if kind.upsample == 2 else (lo, hi)  # even r0: whole pairs of rows
    x = read(stage.src, max(a, 0), min(b, src_h))  # (B, rows, W, C)  src px
    top, bottom = max(-a, 0), max(b - src_h, 0)
    mask = torch.ones(1, b - a, 1, 1, dtype=x.dtype, device=x.device)
    if top or bottom:
        x = F.pad(x, (0, 0, 0, 0, top, bottom))  # zero rows past the border; the mask zeroes them after the prologue
        mask[:, :top] = 0
        mask[:, mask.shape[1] - bottom :] = 0
    scale = shift = None
    if kind.norm == "group":
        scale, shift = group_scale_shift(stats[stage.src], stage.norm.eps, w["norm"], x.shape[0], x.shape[3])
    skip = None
    if stage.skip is not None:
        s0, s1 = stage.shortcut.skip_rows(r0, r1) if stage.shortcut else (r0, r1)
        # the skip is the source itself in DC-AE's resampling blocks: a second read would reuse the store's buffer
        skip = x[:, s0 - a : s1 - a] if stage.skip == stage.src else read(stage.skip, s0, s1)
    # dense inputs: a band of a resident map is a view with the whole map's strides, and the graphs
    # would otherwise guard on (and recompile for) those strides
    x, skip = _dense(x), None if skip is None else _dense(skip).permute(0, 3, 1, 2)  # skip: NCHW view
    if skip is not None and stage.shortcut is not None and stage.shortcut.conv is not None:
        skip = apply_shortcut(skip, stage.shortcut, w["shortcut"])  # a conv: eager, as the main conv
    prologue, epilogue = _graphs(kind)
    x = prologue(x, mask, scale, shift, None if kind.norm in ("", "group") else w["norm"])
    left = kind.left if kind.left == kind.right else 0
    out = F.conv2d(x, w["conv"]["weight"], w["conv"].get("bias"), stride=kind.stride, padding=(0, left),
                   groups=kind.groups)
    return epilogue(out, w["out_norm"] or None, skip)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of a fresh tensor (``contiguous()`` keeps odd strides of size-1 dims)."""
    b, rows, w, c = t.shape
    return t if t.stride() == (rows * w * c, w * c, c, 1) else t.clone(memory_format=torch.contiguous_format)


# ---- a video's causal 3-D conv -------------------------------------------------------------------------


@dataclass(frozen=True)
class _CausalKind:
    """Everything static about a CausalConvStage's band computation."""

    norm: bool  # Wan's L2 norm with gamma (and bias)
    act: str | None
    halo: int
    past: int  # cache frames: 0 without a cache
    split: int
    residual: bool
    skip2: bool
    post: str | None


def _causal_prologue(kind: _CausalKind, x, mask, cache, norm_w):
    """[cache ; act(norm(x))] as the conv3d input: (B, C, T+F, rows, W + 2 halo) in channels_last_3d.
    ``x`` (B*F, rows, W, C) and ``cache`` (B*T, rows, W, C) have zero rows past the image border."""
    if kind.norm:
        x = activate(l2_norm(x, norm_w), kind.act, inplace=True) * mask  # rows past the border: zeros again
    else:
        x = activate(x, kind.act)
    n = x.shape[0] if cache is None else cache.shape[0] // kind.past  # samples
    seq = x.unflatten(0, (n, -1))  # (B, F, rows, W, C)
    if cache is not None:
        seq = torch.cat([cache.unflatten(0, (n, kind.past)), seq], dim=1)  # (B, T+F, rows, W, C)
    seq = F.pad(seq.permute(0, 4, 1, 2, 3), (kind.halo, kind.halo))  # (B, C, T+F, rows, W')
    return seq.contiguous(memory_format=torch.channels_last_3d)


def _causal_epilogue(kind: _CausalKind, out, skip, skip2):
    """The conv's (B, split*C, F', rows, W) output -> (B*F'*split, rows, W, C) + residuals, post."""
    out = out.unflatten(1, (kind.split, -1)).permute(0, 3, 1, 4, 5, 2).flatten(0, 2)
    if kind.residual:
        out = out + skip
    if kind.skip2:
        out = out + skip2
    return activate(out, kind.post, inplace=True)


def _causal_graphs(kind: _CausalKind):
    if kind not in _GRAPHS:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, MIN_RECOMPILE_LIMIT)

        def prologue(x, mask, cache, norm_w):
            return _causal_prologue(kind, x, mask, cache, norm_w)

        def epilogue(out, skip, skip2):
            return _causal_epilogue(kind, out, skip, skip2)

        _GRAPHS[kind] = torch.compile(prologue, dynamic=True), torch.compile(epilogue, dynamic=True)
    return _GRAPHS[kind]


def compiled_causal_band(stage: CausalConvStage, w: dict, read, stats: dict, r0: int, r1: int, src_h: int,
                         dst_h: int, *, samples: int | None = None, first: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """causal_conv_band's contract, through the compiled graphs of the stage's kind. What varies with
    the band's place (zero rows at the image border) is settled eagerly, so every band and every
    size is the same computation. Wan's stages only: LTX's (time padding by copies, reflected borders,
    rearranged outputs, a pixel norm) run eagerly."""
    if not _graphs_take(stage):
        return causal_conv_band(stage, w, read, stats, r0, r1, src_h, dst_h, samples=samples, first=first)
    halo, past = stage.halo, (0 if stage.cache is None else stage.cache_frames)
    a, b = max(r0 - halo, 0), min(r1 + halo, src_h)
    top, bottom = halo - (r0 - a), halo - (b - r1)  # zero rows at the image border only
    x = read(stage.src, a, b)  # (B*F, rows, W, C)  src px
    cache = None if stage.cache is None else read(stage.cache, a, b)  # (B*T, rows, W, C)
    mask = torch.ones(1, b - a + top + bottom, 1, 1, dtype=x.dtype, device=x.device)
    if top or bottom:
        x = F.pad(x, (0, 0, 0, 0, top, bottom))
        cache = None if cache is None else F.pad(cache, (0, 0, 0, 0, top, bottom))
        mask[:, :top] = 0
        mask[:, mask.shape[1] - bottom :] = 0
    kind = _CausalKind(stage.norm is not None, stage.act, halo, past, stage.time_split, stage.skip is not None,
                       stage.skip2 is not None, stage.post)
    prologue, epilogue = _causal_graphs(kind)
    n = x.shape[0] if cache is None else cache.shape[0] // past  # samples (without a cache, every frame is one)
    # One video per graph call, each from tensors of its own: the graphs are made on one video, and given two
    # at once (or a slice of a batch), the epilogue's graph wrote the second one wrong (torch 2.13's inductor;
    # found by the differential fuzzer, test_wan.py). A stage without a time cache takes all frames at once.
    parts = 1 if cache is None else n
    xs, caches = x.chunk(parts), ((None,) * parts if cache is None else cache.chunk(parts))
    x5s = [prologue(_dense(xi), mask, None if ci is None else _dense(ci), w["norm"] or None).contiguous(
        memory_format=torch.channels_last_3d) for xi, ci in zip(xs, caches, strict=True)]  # no copy: made so
    tails = [cache_tail(stage, x5, r0 - a + top, r1 - a + top) for x5 in x5s]
    outs = [conv3d(stage, w, x5) for x5 in x5s]  # each (n / parts, split*C, F', rows, W)
    del x5s
    # the shortcut stays eager: a conv, and time (un)shuffles that count samples
    skip = shortcut_band(stage, w, read, r0, r1, n * outs[0].shape[2] * stage.time_split, n)
    skip2 = None if stage.skip2 is None else read(stage.skip2, r0, r1)
    skips = (None,) * parts if skip is None else skip.chunk(parts)
    skips2 = (None,) * parts if skip2 is None else skip2.chunk(parts)
    bands = [epilogue(out, None if s is None else _dense(s), None if s2 is None else _dense(s2))
             for out, s, s2 in zip(outs, skips, skips2, strict=True)]
    return _per_sample(bands), None if tails[0] is None else _per_sample(tails)


#: the CausalConvStage fields the causal graphs compute, with any value (norm and shortcut within what
#: _graphs_take allows); every other field must keep its default, the plain Wan kind
_GRAPH_FIELDS = frozenset({"name", "src", "dst", "conv", "cache", "cache_out", "norm", "act", "skip", "shortcut",
                           "time_split", "time_stride", "first", "post", "skip2", "stats_groups"})


def _graphs_take(stage: CausalConvStage) -> bool:
    """Whether the causal graphs compute ``stage``: Wan's kinds (a time cache with zeros before a video's
    first chunk, 'same' zero borders, L2 norm, no rearranged or pooled output, no conditioning). A stage
    that sets any other option runs eagerly, so an option added later is never computed as if absent
    (Kandinsky 5's and CogVideoX's caches that start from copies of the first frame once were: the graphs
    padded zeros)."""
    plain = all(getattr(stage, f.name) is f.default or getattr(stage, f.name) == f.default
                for f in dataclasses.fields(stage) if f.name not in _GRAPH_FIELDS)
    return (plain and (stage.norm is None or hasattr(stage.norm, "gamma"))
            and (stage.shortcut is None or stage.shortcut.norm is None))


def _per_sample(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts' results as one batch: the only one as it is, else copied into one tensor (no second
    copy of the whole beside the parts, as torch.cat would make)."""
    if len(parts) == 1:
        return parts[0]
    whole = torch.empty((sum(p.shape[0] for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype,
                        device=parts[0].device)
    start = 0
    for part in parts:
        whole[start : start + part.shape[0]] = part
        start += part.shape[0]
    return whole
