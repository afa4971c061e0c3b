"""Memory model and planner: from shapes alone to a Plan (works on a model on the meta device).

Peak memory of a streamed run, stage by stage, is

    resident (the maps kept in the ``device`` tier that are alive during the stage, the output)
  + working  (one chunk: the bands read, the normalized band, the conv output, the skip band ...)

The planner keeps small maps resident (smallest first) while every stage keeps room for a
reasonable chunk, sends the rest a tier down, then gives each stage the most rows that fit.
The executor (``run.py``) follows the plan; ``validate`` checks a plan against a budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import BudgetError
from .ops.causal import slice_channels
from .program import (
    AttentionStage,
    CausalConvStage,
    ConvStage,
    FrameAttentionStage,
    GLUStage,
    KeyValueStage,
    LinearKVStage,
    LinearQueryStage,
    Program,
    TokenBlockStage,
    TokenKVStage,
)
from .units import format_bytes

__all__ = ["StagePlan", "MapPlan", "Plan", "make_plan", "validate", "smallest_budget", "bound_host", "TARGET_ROWS",
           "FIXED_ALLOWANCE", "HOST_SHARE"]

#: rows per chunk the tier assignment keeps room for: below ~32 rows CPU convs lose efficiency
TARGET_ROWS = 32
#: what a measured peak may exceed the plan by, besides 10%: thread pools, kernel caches, allocator slack
FIXED_ALLOWANCE = 32 << 20
#: on CUDA the host tier may take this share of the RAM that is available when planning
HOST_SHARE = 0.8
#: keys per block counted for scaled_dot_product_attention's fused kernels (CPU flash attention,
#: CUDA memory-efficient attention), which never hold the whole score matrix: measured on the CPU,
#: 16384 tokens of width 512 grow the process by 33 MiB where the scores would take 1 GiB
SDPA_KEY_BLOCK = 512
#: conv/attention temporaries are counted at this element size at least (prologue runs in fp32)
PROLOGUE_ITEMSIZE = 4


@dataclass(frozen=True)
class StagePlan:
    """How one stage runs: ``rows`` output rows per chunk (query rows for attention)."""

    name: str
    height: int
    rows: int
    kv_rows: int | None
    working_bytes: int
    resident_bytes: int

    @property
    def chunks(self) -> int:
        return math.ceil(self.height / self.rows)

    @property
    def peak_bytes(self) -> int:
        return self.working_bytes + self.resident_bytes


@dataclass(frozen=True)
class MapPlan:
    """Where one map lives: shape is (B, H, W, C)."""

    name: str
    shape: tuple[int, int, int, int]
    nbytes: int
    tier: str  # device | host | disk | input | output | sink (a file, written band by band)


@dataclass(frozen=True)
class Plan:
    """A printable, checkable schedule (``print(plan)`` shows its table).

    Attributes:
        op: "decode" or "encode".
        mode: "whole" (the model's own forward) or "stream".
        in_shape: the input's shape.
        out_shape: the output's shape.
        dtype: the compute dtype.
        device: the device planned for.
        budget: the budget in bytes (None: the free memory).
        whole_peak_bytes: vaekit's model of the untiled call's peak.
        stages: each stage's rows per chunk and peak.
        maps: each map's size and tier.
        scratch_bytes: the most the disk tier holds at once.
        host_bytes: the most the host tier holds at once (CUDA: maps in pinned host RAM).
        host_budget: what the host tier was allowed (None: unbounded).
        writer_bytes: what the output file's writer holds (an .mp4 encoder's frames), in host RAM.
        runs: a video's chunks or the model's own clips the stages run once each.
    """

    op: str
    mode: str
    in_shape: tuple[int, int, int, int]
    out_shape: tuple[int, int, int, int]
    dtype: str
    device: str
    budget: int | None
    whole_peak_bytes: int
    stages: tuple[StagePlan, ...]
    maps: tuple[MapPlan, ...]
    scratch_bytes: int = 0  # most the disk tier holds at once
    host_bytes: int = 0  # most the host tier holds at once (CUDA: maps in pinned host RAM)
    host_budget: int | None = None  # what the host tier was allowed (None: unbounded)
    writer_bytes: int = 0  # what the output file's writer holds (an .mp4 encoder's frames), in host RAM
    runs: str = ""  # a video's: the chunks or the model's own clips the stages below run once each

    @property
    def peak_bytes(self) -> int:
        """Predicted peak of the activations this run holds (model weights not included); on a CPU
        with the output file's writer, which holds host RAM as the maps do."""
        writer = 0 if self.device.startswith("cuda") else self.writer_bytes
        if self.mode == "whole":
            return self.whole_peak_bytes + writer
        return max(s.peak_bytes for s in self.stages) + writer

    @property
    def chunk_rows(self) -> dict[str, int]:
        return {s.name: s.rows for s in self.stages}

    @property
    def tiers(self) -> dict[str, str]:
        return {m.name: m.tier for m in self.maps}

    def __str__(self) -> str:
        budget = "free memory" if self.budget is None else format_bytes(self.budget)
        lines = [
            f"vaekit plan: {self.op} {_shape(self.in_shape)} -> {_shape(self.out_shape)}  {self.dtype} on {self.device}",
            f"mode {self.mode}   budget {budget}   predicted peak {format_bytes(self.peak_bytes)}"
            f"   (untiled would need {format_bytes(self.whole_peak_bytes)})",
        ]
        if self.runs:
            lines.append(self.runs)
        if self.mode == "stream":
            lines.append("")
            lines.append(f"{'stage':<26}{'rows':>6}{'chunks':>8}{'kv rows':>9}{'working':>12}{'resident':>12}")
            for s in self.stages:
                kv = "" if s.kv_rows is None else str(s.kv_rows)
                lines.append(f"{s.name:<26}{s.rows:>6}{s.chunks:>8}{kv:>9}"
                             f"{format_bytes(s.working_bytes):>12}{format_bytes(s.resident_bytes):>12}")
            lines.append("")
            lines.append(f"{'map':<26}{'shape (B,H,W,C)':>24}{'size':>12}  tier")
            for m in self.maps:
                lines.append(f"{m.name:<26}{str(m.shape):>24}{format_bytes(m.nbytes):>12}  {m.tier}")
            lines.append("")
            if self.host_bytes or self.host_budget is not None:
                allowed = "" if self.host_budget is None else f" of {format_bytes(self.host_budget)} allowed"
                lines.append(f"host RAM tier at most {format_bytes(self.host_bytes)}{allowed}")
            lines.append(f"scratch on disk at most {format_bytes(self.scratch_bytes)}")
        if self.writer_bytes:
            counted = "counted in the peak" if not self.device.startswith("cuda") else "not the GPU's"
            lines.append(f"the output file's writer holds {format_bytes(self.writer_bytes)} of host RAM ({counted})")
        return "\n".join(lines)


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape)


# ---- shapes -------------------------------------------------------------------------------------


def map_shapes(program: Program, in_shape, first: bool = False) -> dict[str, tuple[int, int, int, int]]:
    """Map name -> (B, H, W, C) for an NCHW input of ``in_shape``; for a chunk of video frames,
    (B, C, F, H, W) (``first``: the video's first), the frames of each map join its batch dimension."""
    b, h, w = in_shape[0], *in_shape[-2:]
    sizes = program.sizes(h, w)
    frames = program.frames(in_shape[2] if len(in_shape) == 5 else 1, first)
    return {name: (b * frames[name], *sizes[name], spec.channels) for name, spec in program.maps.items()}


def _nbytes(shape, itemsize: int) -> int:
    return math.prod(shape) * itemsize


def _map_bytes(shapes, itemsize: int, held: dict[str, int] | None = None) -> dict[str, int]:
    """Bytes of each map as stored: all its rows, or the ``held`` rows of a distributed rank's slab."""
    held = held or {}
    return {n: _nbytes((b, held.get(n, h), w, c), itemsize) for n, (b, h, w, c) in shapes.items()}


# ---- working set of one chunk ------------------------------------------------------------------


def working_bytes(stage, shapes, itemsize: int, rows: int, tiers: dict[str, str], kv_rows: int | None = None,
                  samples: int | None = None) -> int:
    """Bytes one chunk of ``rows`` output rows holds on the device while ``stage`` runs it; ``samples``:
    the videos in a chunk of frames (None: as many as frames, the most a causal conv's time padding costs)."""
    total = _chunk_bytes(stage, shapes, itemsize, rows, tiers, kv_rows, samples)
    if stage.dst is not None and tiers.get(stage.dst) == "disk":  # the last band, still being written
        b, _, dst_w, c_out = shapes[stage.dst]
        total += b * rows * dst_w * c_out * itemsize
    return total


def _chunk_bytes(stage, shapes, itemsize: int, rows: int, tiers: dict[str, str], kv_rows: int | None,
                 samples: int | None = None) -> int:
    b, src_h, src_w, c_in = shapes[stage.src]
    _, dst_h, dst_w, c_out = shapes[stage.dst or stage.src]
    temp = max(itemsize, PROLOGUE_ITEMSIZE)

    def read_buffer(name: str, n_rows: int) -> int:  # a view when resident, a copy otherwise
        n, _, width, channels = shapes[name]
        return 0 if tiers.get(name) in ("device", "input") else n * n_rows * width * channels * itemsize

    if isinstance(stage, CausalConvStage):
        n_out = shapes[stage.dst][0]
        c0, c1 = stage.conv_out_rows(0, rows)
        lo, hi = stage.input_rows(c0, c1)  # the conv input's rows (upsampled), hi - lo with the border's padding
        u, videos = stage.upsample, samples or b
        halo_rows = min(hi - lo, src_h * u)  # the rows read, with their halo
        src_rows = halo_rows if u == 1 else min(-(-halo_rows // u) + 1, src_h)
        frames = b * stage.time_upsample  # repeated (a first chunk's first frame once: at most this)
        n_seq = frames + (shapes[stage.cache][0] if stage.cache else 0)  # the chunk's frames after the cached ones
        n_seq += sum(stage.pad_frames) * videos  # and copies of the first and last (LTX)
        normalized = (2 if stage.norm is not None else 1) * b * src_rows * src_w * c_in * temp  # and a temporary
        if stage.spatial_norm is not None:  # the latents upsampled to the band, its scale and shift
            latent_c = shapes[stage.spatial_norm.latents][3]
            normalized += b * src_rows * src_w * (2 * latent_c + 2 * c_in) * temp
        total = read_buffer(stage.src, src_rows) + normalized
        total += read_buffer(stage.cache, halo_rows) if stage.cache else 0
        if u != 1 or stage.time_upsample != 1:  # the upsampled band, and its first step (rows repeated)
            total += (frames + b) * halo_rows * src_w * u * c_in * itemsize
        padded_w = src_w * u + sum(stage.padding[2:])
        total += 3 * n_seq * (hi - lo) * padded_w * c_in * itemsize  # sequence, padded, backend's copy
        total += 3 * n_out * rows * dst_w * c_out * itemsize  # conv output, unfolded frames, sum
        rearranged = stage.shuffle != 1 or stage.unshuffle != 1 or stage.repeat_last
        total += n_out * rows * dst_w * c_out * itemsize if rearranged else 0  # pixel (un)shuffled
        weight = stage.conv.weight
        step = min(slice_channels(weight, itemsize), weight.shape[0])
        total += 2 * weight[0].numel() * step * itemsize  # the backend's copies of the weights (a slice of them)
        total += n_out * rows * dst_w * c_out * itemsize * step // weight.shape[0] if step < weight.shape[0] else 0
        if stage.skip is not None:
            made = stage.shortcut is not None or stage.packing is not None  # a residual computed from the skip
            skip_rows = c1 - c0 if stage.packing else rows  # the packing residual reads the source's rows
            total += read_buffer(stage.skip, skip_rows) + (n_out * rows * dst_w * c_out * itemsize if made else 0)
        return total

    if isinstance(stage, ConvStage):
        f = stage.upsample
        lo, hi = stage.conv_rows(0, rows)
        conv_rows, conv_w = hi - lo, src_w * f + sum(stage.padding[2:])
        in_rows = min(math.ceil(conv_rows / f) + 1, src_h)
        total = read_buffer(stage.src, in_rows)
        total += b * in_rows * src_w * c_in * temp if stage.norm is not None or stage.act else 0
        total += b * conv_rows * conv_w * c_in * itemsize * (2 if f != 1 else 1)  # upsampled / padded copy
        total += 2 * b * rows * dst_w * c_out * itemsize  # conv output + the backend's output reorder
        total += b * rows * dst_w * c_out * temp if stage.shuffle != 1 or stage.unshuffle != 1 or stage.out_norm else 0
        total += 2 * stage.conv.weight.numel() * itemsize  # the backend's reordered copy of the weights
        if stage.skip is not None:
            s0, s1 = stage.shortcut.skip_rows(0, rows) if stage.shortcut else (0, rows)
            total += read_buffer(stage.skip, s1 - s0)
            total += 2 * b * rows * dst_w * c_out * itemsize if stage.shortcut is not None else 0
        return total
    if isinstance(stage, KeyValueStage):
        return read_buffer(stage.src, rows) + b * rows * src_w * (c_in * temp + c_out * itemsize)
    if isinstance(stage, AttentionStage):
        inner = shapes[stage.kv][3] // 2
        kv_rows = kv_rows or src_h
        tokens_q, tokens_k = rows * src_w, kv_rows * src_w
        masked = stage.frames is not None  # across frames: per video, every frame's queries and keys, and a mask
        if masked:
            f = b // (samples or 1)
            b, tokens_q, tokens_k = b // f, tokens_q * f, tokens_k * f
        total = read_buffer(stage.src, rows) + b * tokens_q * c_in * temp  # residual, normalized
        total += tokens_q * tokens_k if masked else 0  # the boolean mask
        total += b * tokens_q * inner * (itemsize * 3 + 4 * 2)  # q, attention out, projection; fp32 q, acc
        total += read_buffer(stage.kv, kv_rows) + b * tokens_k * 2 * inner * 4  # K, V (and fp32 copies)
        if kv_rows >= src_h and not masked:  # one scaled_dot_product_attention: fused, scores a key block at a time
            total += b * tokens_q * min(tokens_k, SDPA_KEY_BLOCK) * 4
        else:  # the online softmax holds scores and their exp for a block of keys, fp32
            total += 2 * b * tokens_q * tokens_k * 4
        return total
    if isinstance(stage, TokenKVStage):  # normed (fp32 and back), K normed in fp32 and rotated, V, both joined
        tokens, inner = b * rows * src_w, c_out // 2
        return read_buffer(stage.src, rows) + tokens * (c_in * (8 + itemsize) + inner * (8 + 6 * itemsize))
    if isinstance(stage, TokenBlockStage):
        return _token_block_bytes(stage, shapes, itemsize, rows, read_buffer, kv_rows, samples)
    if isinstance(stage, FrameAttentionStage):  # residual, normalized (fp32), its frames gathered; q, k, v (and
        # normed), out, its frames scattered, the sum; the scores and their softmax of every pixel's frames, fp32
        band, f = b * rows * src_w * c_in, b // (samples or 1)
        return read_buffer(stage.src, rows) + band * (temp + 9 * itemsize) + 2 * band // 32 * f * 4
    if isinstance(stage, GLUStage):
        hidden = stage.block.conv_point.in_channels
        halo_rows = min(rows + 2 * stage.halo, src_h)
        total = read_buffer(stage.src, halo_rows)
        total += b * halo_rows * src_w * 2 * hidden * itemsize * 2  # expanded, and its padded copy
        total += b * rows * src_w * hidden * itemsize * 4  # depthwise out (2 hidden), gate product
        total += b * rows * src_w * c_in * temp * 3  # projection, norm (fp32), sum
        return total + 2 * sum(p.numel() for p in stage.block.parameters()) * itemsize
    if isinstance(stage, LinearKVStage | LinearQueryStage):
        attn = stage.attn
        inner = attn.to_q.out_features
        scales = len(attn.to_qkv_multiscale)
        halo_rows = min(rows + 2 * stage.halo, src_h)
        if src_h * src_w <= attn.attention_head_dim:  # the quadratic path, over the whole (tiny) map
            halo_rows = rows = src_h
        total = read_buffer(stage.src, halo_rows) + b * halo_rows * src_w * 3 * inner * itemsize * 2  # qkv, padded
        total += b * rows * src_w * 3 * inner * (1 + scales) * (itemsize * (2 * scales + 1) + 4)  # scales, cat, fp32
        total += b * rows * src_w * inner * (1 + scales) * 4 * 2  # S q (fp32) and its normalized copy
        total += b * rows * src_w * c_in * temp * 3  # projection, norm, sum
        return total + sum(p.numel() for p in attn.parameters()) * itemsize
    raise TypeError(f"unknown stage {stage!r}")


def _token_block_bytes(stage: TokenBlockStage, shapes, itemsize: int, rows: int, read_buffer, kv_rows: int | None,
                       samples: int | None) -> int:
    """A band of a ViT block: its queries against a block of keys, then the FFN on the band's tokens."""
    b, src_h, src_w, c = shapes[stage.src]
    inner, heads = shapes[stage.kv][3] // 2, stage.block.attn.heads
    hidden = stage.block.ff.net[2].in_features
    kv_rows = kv_rows or src_h
    videos = samples or 1
    tokens_q, tokens_k = b * rows * src_w, b * kv_rows * src_w  # over all videos
    total = read_buffer(stage.src, rows) + tokens_q * c * (8 + itemsize)  # x, normed in fp32 and back
    total += tokens_q * inner * (8 + 6 * itemsize)  # q: projected, normed in fp32, rotated
    total += read_buffer(stage.kv, kv_rows)
    if kv_rows >= src_h:  # one call: the keys and values joined with the registers', scores a key block at a time
        total += 2 * tokens_k * inner * itemsize + tokens_q * heads * min(tokens_k // videos, SDPA_KEY_BLOCK) * 4
    else:  # the online softmax: fp32 q, accumulator, keys and values; scores and their exp for a block
        total += tokens_q * inner * 8 + 2 * tokens_k * inner * 4 + 2 * tokens_q * heads * (tokens_k // videos) * 4
    total += tokens_q * inner * itemsize * 2  # attention out, heads merged
    total += tokens_q * c * (8 + 4 * itemsize)  # projection, residual, normed (fp32 and back)
    return total + tokens_q * hidden * 4 * itemsize  # FFN: projected (2 hidden), gate's silu, product


def whole_bytes(program: Program, shapes, itemsize: int) -> int:
    """Peak of the untiled forward (the model's own modules): a few full maps alive per layer."""
    peak = 0
    for stage in program.stages:
        src, dst = _nbytes(shapes[stage.src], itemsize), _nbytes(shapes[stage.dst or stage.src], itemsize)
        if isinstance(stage, ConvStage):
            at_conv = src * stage.upsample**2 + (dst if stage.shuffle != 1 or stage.unshuffle != 1 else 0)
            skip = _nbytes(shapes[stage.skip], itemsize) if stage.skip else 0
            held = src if stage.upsample != 1 else 2 * at_conv  # upsample keeps its input; norm+act make two copies
            peak = max(peak, skip + at_conv + held + 2 * dst)
        elif isinstance(stage, AttentionStage):
            peak = max(peak, 6 * src)  # residual, normalized, q, k, v, out (flash-style SDPA keeps no scores)
        elif isinstance(stage, FrameAttentionStage):  # as a band of all rows, and the input
            peak = max(peak, 12 * src)
        elif isinstance(stage, GLUStage):
            peak = max(peak, 14 * src)
        elif isinstance(stage, TokenBlockStage):  # x, q, k, v, rotated copies; the FFN's 4x expansion, twice, gated
            hidden = stage.block.ff.net[2].in_features // shapes[stage.src][3]
            peak = max(peak, (8 + 5 * hidden) * src)  # x, the 8x expansion and its depthwise output, the gated half, out
        elif isinstance(stage, LinearKVStage | LinearQueryStage):
            peak = max(peak, 2 * src + 6 * src * (1 + len(stage.attn.to_qkv_multiscale)))  # qkv, scales, fp32
        elif isinstance(stage, CausalConvStage):  # input, normalized, [cache; input] padded; output, unfolded
            up = stage.upsample**2 * stage.time_upsample  # the conv's input is this much larger
            peak = max(peak, (_nbytes(shapes[stage.skip], itemsize) if stage.skip else 0) + 4 * src * up + 2 * dst)
        else:
            peak = max(peak, 2 * src + dst)
    caches = sum(_nbytes(shapes[name], itemsize) for name, _ in program.caches)  # the model keeps one tail each
    return peak + caches + _nbytes(shapes[program.output], itemsize)


# ---- planning ----------------------------------------------------------------------------------


def _lives(program: Program) -> dict[str, range]:
    """Stages during which each map exists; a video's time caches exist through the whole chunk."""
    first, last = program.first_write(), program.last_use()
    every = range(len(program.stages))
    return {name: every if name in program.persistent else range(max(first[name], 0), last[name] + 1)
            for name in {*last, *program.persistent}}


def assign_tiers(program: Program, shapes, itemsize: int, budget: int, lower: str, sink: bool = False,
                 held: dict[str, int] | None = None, samples: int | None = None) -> dict[str, str]:
    """Keep maps resident, smallest first, while every stage keeps room for TARGET_ROWS rows.
    ``held``: rows of each map stored here (a distributed rank's slabs), if not all."""
    sizes = _map_bytes(shapes, itemsize, held)
    tiers = {name: lower for name in shapes}
    tiers[program.input], tiers[program.output] = "input", "sink" if sink else "output"
    resident = _resident_bytes(program, shapes, itemsize, tiers, held)
    floor = [
        working_bytes(s, shapes, itemsize, min(TARGET_ROWS, shapes[s.dst or s.src][1]), tiers, samples=samples)
        for s in program.stages
    ]
    room = [budget - f for f in floor]
    return _fill(program, sizes, tiers, lower, "device", resident, room)


def bound_host(program: Program, shapes, itemsize: int, tiers: dict[str, str], host_budget: int,
               held: dict[str, int] | None = None) -> dict[str, str]:
    """On CUDA the maps not kept on the device go to host RAM while it holds them (smallest first,
    as for the device), and to disk past that: ``host_budget`` bounds the host maps alive at once."""
    tiers = {name: "disk" if tier == "host" else tier for name, tier in tiers.items()}
    stages = len(program.stages)
    return _fill(program, _map_bytes(shapes, itemsize, held), tiers, "disk", "host", [0] * stages,
                 [host_budget] * stages)


def _fill(program: Program, sizes: dict[str, int], tiers: dict[str, str], source: str, target: str,
          used: list[int], room: list[int]) -> dict[str, str]:
    """Move maps from tier ``source`` to ``target``, smallest first, while at every stage of a map's
    life the bytes ``used`` there plus its size stay within ``room``."""
    lives = _lives(program)
    for name in sorted((n for n in sizes if tiers[n] == source), key=sizes.__getitem__):
        if all(used[i] + sizes[name] <= room[i] for i in lives[name]):
            tiers[name] = target
            for i in lives[name]:
                used[i] += sizes[name]
    return tiers


def _resident_bytes(program: Program, shapes, itemsize: int, tiers: dict[str, str],
                    held: dict[str, int] | None = None) -> list[int]:
    """Resident bytes per stage: device-tier maps alive then, plus input and output."""
    return _alive_bytes(program, _map_bytes(shapes, itemsize, held), tiers, ("device", "input", "output"))


def _alive_bytes(program: Program, sizes: dict[str, int], tiers: dict[str, str], wanted) -> list[int]:
    """Per stage, the bytes of the maps in the ``wanted`` tiers that are alive then."""
    alive = [0] * len(program.stages)
    for name, life in _lives(program).items():
        if tiers[name] in wanted:
            for i in life:
                alive[i] += sizes[name]
    return alive


def _most_rows(fits, limit: int) -> int:
    """Largest r in [1, limit] with fits(r), or 0 if none; ``fits`` is monotone."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def plan_stage(stage, shapes, itemsize: int, tiers, resident: int, budget: int,
               compiled: bool = False, height: int | None = None, samples: int | None = None) -> StagePlan | None:
    """The most rows (and key rows) of ``stage`` that fit next to ``resident``; None if none fit.
    ``height``: the rows this stage computes here (a distributed rank's share), if not all; ``samples``
    as for working_bytes."""
    height = shapes[stage.dst or stage.src][1] if height is None else height
    step = row_step(stage, compiled)
    if height == 0:  # a rank with no rows of this stage
        return StagePlan(stage.name, 0, step, None, 0, resident)
    kv_options = [None]
    if isinstance(stage, AttentionStage | TokenBlockStage):
        kv_options = [height]
        while kv_options[-1] > 1:
            kv_options.append(math.ceil(kv_options[-1] / 2))
    for kv in kv_options:
        rows = step * _most_rows(
            lambda r, kv=kv: resident + working_bytes(stage, shapes, itemsize, r * step, tiers, kv, samples) <= budget,
            math.ceil(height / step))
        if rows:
            work = working_bytes(stage, shapes, itemsize, rows, tiers, kv, samples)
            return StagePlan(stage.name, height, rows, kv, work, resident)
    return None


def row_step(stage, compiled: bool = False) -> int:
    """Chunks of ``stage`` are multiples of this many rows: pixel shuffles make rows in pairs, and
    compiled upsampling stages take even chunks (ops/compiled.py)."""
    step = getattr(stage, "row_multiple", 1)
    return math.lcm(step, 2) if compiled and getattr(stage, "upsample", 1) == 2 else step


def make_plan(program: Program, in_shape, itemsize: int, dtype: str, device: str, budget: int | None,
              *, free_bytes: int | None = None, force_stream: bool = False, compiled: bool = False,
              sink: bool = False, host_budget: int | None = None, held: dict[str, int] | None = None,
              heights: tuple[int, ...] | None = None, first: bool = False, writer_bytes: int = 0) -> Plan:
    """Plan ``program`` on an NCHW input of ``in_shape``.

    ``budget`` None means "what is free" (``free_bytes``). ``sink``: the output goes to a file band by
    band and is never held (tier "sink"). ``host_budget``: on CUDA, the most host RAM the maps below
    the device may take, the rest going to disk (None: unbounded). ``held`` and ``heights``: a
    distributed rank's rows of each map and of each stage (dist.py), if not all. A video program
    plans one chunk of frames, (B, C, F, H, W) (``first``: the video's first chunk). ``writer_bytes``:
    host RAM the output file's writer holds (sinks.writer_bytes); on a CPU it comes out of the budget.
    Raises BudgetError when nothing fits.
    """
    shapes = map_shapes(program, in_shape, first)
    whole = whole_bytes(program, shapes, itemsize)
    limit = budget if budget is not None else free_bytes
    writer = 0 if device.startswith("cuda") else writer_bytes  # on a GPU the writer's RAM is not the budget's
    if limit is not None:
        limit -= writer
    n, out_h, out_w, out_c = shapes[program.output]
    out_shape = (n, out_c, out_h, out_w)
    if len(in_shape) == 5:  # frames apart again
        out_shape = (in_shape[0], out_c, n // in_shape[0], out_h, out_w)
    common = dict(op=program.op, in_shape=tuple(in_shape), out_shape=out_shape,
                  dtype=dtype, device=device, budget=budget, whole_peak_bytes=whole, writer_bytes=writer_bytes)
    if not force_stream and (limit is None or whole <= limit):
        return Plan(mode="whole", stages=(), maps=(), **common)

    lower = "host" if device.startswith("cuda") else "disk"
    tiers = assign_tiers(program, shapes, itemsize, limit, lower, sink, held, samples=in_shape[0])
    if lower == "host" and host_budget is not None:
        tiers = bound_host(program, shapes, itemsize, tiers, host_budget, held)
    stages = []
    resident = _resident_bytes(program, shapes, itemsize, tiers, held)
    for i, stage in enumerate(program.stages):
        height = None if heights is None else heights[i]
        planned = plan_stage(stage, shapes, itemsize, tiers, resident[i], limit, compiled, height, in_shape[0])
        if planned is None:
            smallest = smallest_budget(program, in_shape, itemsize, lower, compiled, sink, first) + writer
            what = "budget" if budget is not None else "free memory"
            raise BudgetError(
                f"{program.op} of {_shape(in_shape)} cannot fit in {format_bytes(limit + writer)} ({what}): stage "
                f"{stage.name} needs more even one row at a time; the smallest budget that fits is "
                f"{format_bytes(smallest)} (budget={smallest})",
                smallest=smallest,
            )
        stages.append(planned)
    sizes = _map_bytes(shapes, itemsize, held)
    maps = tuple(MapPlan(n, shapes[n], sizes[n], tiers[n]) for n in shapes)
    return Plan(mode="stream", stages=tuple(stages), maps=maps, scratch_bytes=_tier_peak(program, maps, "disk"),
                host_bytes=_tier_peak(program, maps, "host"), host_budget=host_budget if lower == "host" else None,
                **common)


def _tier_peak(program: Program, maps, tier: str) -> int:
    """Most bytes ``tier`` holds at once (maps are freed after their last use)."""
    sizes, tiers = {m.name: m.nbytes for m in maps}, {m.name: m.tier for m in maps}
    return max(_alive_bytes(program, sizes, tiers, (tier,)), default=0)


def smallest_budget(program: Program, in_shape, itemsize: int, lower: str = "disk", compiled: bool = False,
                    sink: bool = False, first: bool = False) -> int:
    """The least budget any streamed plan fits in: every map a tier down, one row per chunk."""
    shapes = map_shapes(program, in_shape, first)
    tiers = {name: lower for name in shapes}
    tiers[program.input], tiers[program.output] = "input", "sink" if sink else "output"
    need = 0
    resident = _resident_bytes(program, shapes, itemsize, tiers)
    for i, stage in enumerate(program.stages):
        kv = 1 if isinstance(stage, AttentionStage | TokenBlockStage) else None
        work = working_bytes(stage, shapes, itemsize, row_step(stage, compiled), tiers, kv, in_shape[0])
        need = max(need, resident[i] + work)
    return need


def validate(plan: Plan, budget: int | None) -> None:
    """Raise BudgetError if ``plan`` predicts more than ``budget``."""
    if budget is not None and plan.peak_bytes > budget:
        raise BudgetError(f"plan predicts {format_bytes(plan.peak_bytes)}, over the budget {format_bytes(budget)}")
