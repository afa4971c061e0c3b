"""Executes a Plan. The loop is the schedule: for each stage, load its weights, then for each
chunk compute a band and store it, collecting the statistics the next GroupNorm needs. A chunk that
runs out of memory takes the next rung of the recovery ladder (recovery.py) and is retried."""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import nn

from .arch import family
from .errors import PrecisionError
from .ops.attention import attention_band, frame_attention_band, kv_band
from .ops.causal import causal_conv_band, causal_first_band
from .ops.compiled import compiled_causal_band, compiled_conv_band
from .ops.conv import conv_band
from .ops.glu import glu_band
from .ops.linear_attention import linear_kv_band, linear_query_band
from .ops.norm import GroupStats
from .ops.vit import token_block_band, token_kv_band, token_registers, vit_weights
from .plan import Plan
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
from .recovery import Event, Ladder, RunReport, free_caches, is_oom
from .store import Store

__all__ = ["execute", "run_video", "run_whole", "stage_weights"]


#: called before every chunk's compute (None: nothing); vaekit.testing swaps it to inject failures
BEFORE_CHUNK = None
#: largest finite float16: a band beyond it cannot be stored in a float16 map
FP16_MAX = torch.finfo(torch.float16).max


def execute(program: Program, plan: Plan, x: torch.Tensor, *, scratch_dir: str | os.PathLike | None = None,
            progress=None, report: RunReport | None = None, compiled: bool = False, sink=None,
            peers=None, store: Store | None = None, first: bool = False, conditions: dict | None = None
            ) -> torch.Tensor | None:
    """Run ``program`` on NCHW ``x`` (already on the compute device, in the compute dtype) by ``plan``.
    ``compiled``: conv stages run through torch.compile graphs shared by every image size (plan with
    ``compiled=True`` too: their chunks must be even where they upsample). ``sink``: the output's bands
    go there (sinks.py) as they are made, and nothing is returned. ``peers``: this rank's
    ``dist.Peers`` in a distributed run: it computes and holds only its rows (dist.py), and ``x`` is
    its slab of the input's rows. A video program runs one chunk of frames, ``x`` (B, C, F, H, W), in
    ``store``, which holds the time caches across chunks (run_video); ``first``: the video's first.
    ``conditions``: what the model's call adds from outside the input, made once per call by its family
    (``conditioning``: LTX's timestep modulation and decode noise), keyed as the stages read them."""
    report = report if report is not None else RunReport()
    with contextlib.nullcontext(store) if store is not None else Store(x.device, scratch_dir) as store:
        run = _Run(program, plan, x, store, report, compiled, sink, peers, first)
        run.stats.update(conditions or {})
        for i, (stage, sp) in enumerate(zip(program.stages, plan.stages, strict=True)):
            run.alloc(stage)
            weights = stage_weights(stage, x.device, run.dtype)  # load
            on_rows = None if progress is None else (lambda done, total, i=i: progress(i, done, total))
            run.stats.update(run.stage(i, stage, sp, weights, on_rows))  # compute and store, chunk by chunk
            run.share(i, stage)  # distributed: the rows other ranks hold of what this stage wrote
            run.release(i, stage)
        if peers is not None and run.output is not None:
            peers.share_output(run.output, len(program.stages) - 1)
    report.tiers = run.tiers
    return run.output


class _Run:
    """The state of one execution: the store, statistics, where maps live, the compute dtype."""

    def __init__(self, program: Program, plan: Plan, x: torch.Tensor, store: Store, report: RunReport,
                 compiled: bool = False, sink=None, peers=None, first: bool = False):
        self.program, self.store, self.report, self.sink, self.peers = program, store, report, sink, peers
        compiled_kernels = {ConvStage: compiled_conv_band, CausalConvStage: compiled_causal_band}
        self.kernels = {**_KERNELS, **compiled_kernels} if compiled else dict(_KERNELS)
        self.eager = dict(_KERNELS)  # a band recomputed in float32 (upcast)
        self.first = first
        self.samples = x.shape[0] if x.dim() == 5 else None  # the videos of a chunk of frames
        if x.dim() == 5:  # a chunk of frames: the causal convs are told the videos in it, and if it is the first
            for kernels in (self.kernels, self.eager):
                kernels[CausalConvStage] = functools.partial(_video_chunk, kernels[CausalConvStage], x.shape[0], first)
        self.compiled = compiled
        self.shapes = {m.name: m.shape for m in plan.maps}
        self.tiers = dict(plan.tiers)  # the recovery ladder may move maps down
        self.last_use = program.last_use()
        self.stats: dict = {}  # GroupNorm statistics by map, attention states by name, the call's conditions
        self.dtype, self.device, self.output = x.dtype, x.device, None  # dtype turns float32 after an overflow
        self.out_dtype = x.dtype  # the result stays in the model's dtype
        self.ladder = Ladder(store, self.tiers, "host" if x.device.type == "cuda" else "disk", report,
                             {m.name: m.nbytes for m in plan.maps}, plan.host_budget)
        if x.dim() == 5:  # a chunk of frames, into the batch dimension: (B*F, h, w, C)  input px
            store.maps[program.input] = x.permute(0, 2, 3, 4, 1).flatten(0, 1)
        else:
            store.maps[program.input] = x.permute(0, 2, 3, 1)  # (B, h, w, C)  input px, a view
        if peers is not None:  # a rank is given the input rows its stages read
            store.row0[program.input] = peers.layout.slabs[program.input][peers.rank][0]

    def alloc(self, stage) -> None:
        if stage.dst == self.program.output and self.sink is not None:
            return  # written to the sink band by band, never held
        if stage.dst == self.program.output and self.output is None:
            b, out_h, out_w, out_c = self.shapes[stage.dst]
            self.output = torch.empty(b, out_c, out_h, out_w, dtype=self.out_dtype, device=self.device)  # output px
            self.store.maps[stage.dst] = self.output.permute(0, 2, 3, 1)  # written band by band through this view
        elif stage.dst is not None and stage.dst not in self.store.maps:
            b, h, w, c = self.shapes[stage.dst]
            lo, hi = (0, h) if self.peers is None else self.peers.layout.slabs[stage.dst][self.peers.rank]
            self.store.alloc(stage.dst, (b, hi - lo, w, c), self.dtype, self.tiers[stage.dst], row0=lo)

    def read(self, name: str, r0: int, r1: int) -> torch.Tensor:
        band = self.store.read(name, r0, r1)
        return band if band.dtype == self.dtype else band.to(self.dtype)  # maps written before an upcast

    def release(self, i: int, stage) -> None:
        keep = {self.program.output} | self.program.persistent  # time caches outlive the chunk
        for name in [n for n, last in self.last_use.items() if last == i and n not in keep]:
            self.store.free(name)
            self.stats.pop(name, None)
        if isinstance(stage, LinearQueryStage):
            self.stats.pop(stage.state, None)
        self.store.end_stage()

    def share(self, i: int, stage) -> None:
        """Distributed: send this rank's new rows of the stage's map to the ranks holding them, and
        take theirs, in one dtype (float32 on every rank once one rank had to upcast)."""
        if self.peers is None:
            return
        if getattr(stage, "cache_out", None) is not None and not (self.first and stage.first == "pass"):
            self.peers.exchange(self.store, i, stage.cache_out)  # a video's next time cache: its halo rows
        if stage.dst is None or stage.dst == self.program.output:
            return
        if self.peers.widest(self.store.maps[stage.dst].dtype) != self.store.maps[stage.dst].dtype:
            self.store.retype(stage.dst, torch.float32)
            self.dtype = torch.float32
        self.peers.exchange(self.store, i, stage.dst)

    def stage(self, i: int, stage, sp, weights, on_rows) -> dict:
        """Every chunk of one stage (of this rank's rows), resuming at a failed chunk after an
        out-of-memory error. Returns what the stage gathered: the next GroupNorm's statistics, or a
        reduction's state (over every rank's rows in a distributed run)."""
        src_h, dst_h = self.shapes[stage.src][1], self.shapes[stage.dst or stage.src][1]
        collector = GroupStats(stage.stats_groups) if stage.stats_groups else None
        first, end = (0, dst_h) if self.peers is None else self.peers.layout.parts[i][self.peers.rank]
        rows, kv_rows, total, r0 = sp.rows, sp.kv_rows, None, first
        while r0 < end:
            r1 = min(r0 + rows, end)
            if self.compiled and end - r1 == 1 and r1 - r0 > 2:
                r1 -= 1  # no one-row last chunk: torch.compile specializes sizes of 1 (a new graph)
            error = None
            try:
                if BEFORE_CHUNK is not None:
                    BEFORE_CHUNK()
                band = _compute(stage, weights, self.read, self.stats, r0, r1, src_h, dst_h, kv_rows, self.kernels,
                                self.samples)
                band, tail = band if isinstance(band, tuple) else (band, None)  # a causal conv's new cache rows
            except Exception as e:  # only out-of-memory is handled; anything else goes up as it is
                if not is_oom(e):
                    raise
                error = e.with_traceback(None)  # drop the frames: they hold the failed chunk's tensors
            if error is not None:
                weights.pop("scratch", None)  # a band buffer sized for the chunk that did not fit
                rows, kv_rows = self.ladder.step(stage, r0, r1, rows, kv_rows, error)
                continue
            if self.dtype != torch.float32 and not bool(torch.isfinite(band).all()):
                band, weights = self.upcast(stage, r0, r1, src_h, dst_h, kv_rows, weights)
            if tail is not None:
                self.store.write(stage.cache_out, r0, tail)
            if stage.dst is None:  # a reduction: sums a state over the bands, writes no map
                total = band if total is None else total.add_(band)
            elif stage.dst == self.program.output and self.sink is not None:
                self.sink.write(r0, band)
            else:
                if collector is not None:  # per frame, or per video over all its frames (frame_stats "all");
                    # before the store takes the band: its disk writer then runs beside the next band's conv,
                    # not beside this short pass, which it slowed 3x on 2 cores (Intel Xeon, 2026-12-02)
                    all_frames = self.samples is not None and self.program.frame_stats == "all"
                    collector.update(band.unflatten(0, (self.samples, -1)).flatten(1, 2) if all_frames else band)
                self.store.write(stage.dst, r0, band)
            if on_rows is not None:
                on_rows((r1 - first) * dst_h // (end - first), dst_h)  # this rank's share, scaled to the stage
            r0 = r1
        if isinstance(stage, TokenBlockStage):  # the registers through the block, once every band has read them
            registers = token_registers(stage, weights, self.read, self.stats, src_h, kv_rows, self.samples)
            return {("registers", stage.name): registers}
        if self.peers is not None:
            if stage.dst is None:
                return {stage.state: self.peers.sum_state(total)}
            return {stage.dst: self.peers.merge_stats(collector)} if collector is not None else {}
        if stage.dst is None:
            return {stage.state: total}
        return {stage.dst: collector.mean_var()} if collector is not None else {}

    def upcast(self, stage, r0: int, r1: int, src_h: int, dst_h: int, kv_rows, weights):
        """A band overflowed in float16/bfloat16: recompute it in float32. When the float32 values do
        not fit the map's dtype either, the rest of the run continues in float32. Returns the band
        and the weights to go on with."""
        dtype, self.dtype = self.dtype, torch.float32
        band = _compute(stage, stage_weights(stage, self.device, torch.float32), self.read, self.stats, r0, r1,
                        src_h, dst_h, kv_rows, self.eager, self.samples)
        band = band[0] if isinstance(band, tuple) else band
        if not bool(torch.isfinite(band).all()):
            raise PrecisionError(f"stage {stage.name} overflows even in float32 (rows {r0}-{r1}): the input "
                                 "or the weights are out of range")
        fits = dtype == torch.bfloat16 or float(band.abs().max()) <= FP16_MAX
        if fits:
            self.dtype = dtype
            action = f"recomputed in float32 ({_name(dtype)} overflowed)"
        else:  # from here on float32: this map and every later one
            if stage.dst is not None and stage.dst != self.program.output:
                self.store.retype(stage.dst, torch.float32)
            weights = stage_weights(stage, self.device, torch.float32)
            action = f"{_name(dtype)} cannot hold these values: float32 from here on"
        self.report.upcasts.append(Event(stage.name, (r0, r1), action))
        return band.to(self.dtype if fits else band.dtype), weights


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_KERNELS = {ConvStage: conv_band, KeyValueStage: kv_band, GLUStage: glu_band, LinearKVStage: linear_kv_band,
            LinearQueryStage: linear_query_band, CausalConvStage: causal_conv_band}


def _video_chunk(kernel, samples: int, first: bool, stage: CausalConvStage, *args):
    """A causal conv's band of a chunk of ``samples`` videos; on a video's first chunk, resamplers that
    say so pass it through (program.CausalConvStage.first)."""
    if first and stage.first:
        return causal_first_band(stage, *args)
    return kernel(stage, *args, samples=samples, first=first)


def _compute(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows, kernels=None, samples=None):
    if isinstance(stage, AttentionStage):
        return attention_band(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows, samples)
    if isinstance(stage, TokenBlockStage):
        return token_block_band(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows, samples)
    if isinstance(stage, TokenKVStage):
        return token_kv_band(stage, weights, read, stats, r0, r1, src_h, dst_h, samples)
    if isinstance(stage, FrameAttentionStage):
        return frame_attention_band(stage, weights, read, stats, r0, r1, src_h, dst_h, samples)
    return (kernels or _KERNELS)[type(stage)](stage, weights, read, stats, r0, r1, src_h, dst_h)


def _params(module: nn.Module | None, device, dtype) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    # no copy when the model is already on the compute device in the compute dtype
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    out = {name: p.detach().to(device=device, dtype=dtype) for name, p in tensors if p.is_floating_point()}
    if isinstance(module, nn.GroupNorm) and not module.affine:
        out = {"weight": torch.ones(module.num_channels, device=device, dtype=dtype),
               "bias": torch.zeros(module.num_channels, device=device, dtype=dtype)}
    return out


def stage_weights(stage, device, dtype) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors ``stage`` needs, moved to the compute device once per stage."""
    def params(module):
        return _params(module, device, dtype)

    if isinstance(stage, ConvStage | CausalConvStage):
        shortcut = _as_2d(params(stage.shortcut.conv if stage.shortcut else None))
        if stage.shortcut is not None and stage.shortcut.norm is not None:
            shortcut["norm"] = params(stage.shortcut.norm)
        if isinstance(stage, CausalConvStage):
            noise = {} if stage.noise_scale is None else {"scale": stage.noise_scale.detach().to(device, dtype)}
            sn = stage.spatial_norm
            spatial = {} if sn is None else {"y": _as_linear(params(sn.conv_y)), "b": _as_linear(params(sn.conv_b))}
            return {"conv": params(stage.conv), "norm": params(stage.norm), "shortcut": shortcut, "noise_scale": noise,
                    "spatial_norm": spatial}
        return {"conv": _as_2d(params(stage.conv)), "norm": params(stage.norm), "out_norm": params(stage.out_norm),
                "shortcut": shortcut}
    if isinstance(stage, TokenKVStage | TokenBlockStage):
        return vit_weights(stage, device, dtype)
    if isinstance(stage, FrameAttentionStage):
        attn = stage.attn
        return {"norm": params(stage.norm), **{p: params(getattr(attn, p)) for p in ("to_q", "to_k", "to_v")},
                "to_out": params(attn.to_out[0])}
    if isinstance(stage, GLUStage):
        block = stage.block
        return {"inverted": _as_linear(params(block.conv_inverted)), "depth": params(block.conv_depth),
                "point": params(block.conv_point), "norm": params(block.norm)}
    if isinstance(stage, LinearKVStage | LinearQueryStage):
        attn = stage.attn
        qkv = torch.cat([params(attn.to_q)["weight"], params(attn.to_k)["weight"], params(attn.to_v)["weight"]])
        return {"qkv": {"weight": qkv}, "to_out": params(attn.to_out), "norm_out": params(attn.norm_out),
                "multiscale": [{"in": params(m.proj_in), "out": params(m.proj_out)} for m in attn.to_qkv_multiscale]}
    attn = stage.attn  # diffusers Attention (linear projections) or program.ConvAttention (1x1 convs)
    norm = _params(attn.group_norm, device, dtype)
    if getattr(attn, "qkv", None) is not None:  # one conv for q, k, v: its thirds
        qkv = _as_linear(params(attn.qkv))
        q, k, v = ({name: t.chunk(3)[i] for name, t in qkv.items()} for i in range(3))
        if isinstance(stage, KeyValueStage):
            return {"norm": norm, "kv": {"weight": torch.cat([k["weight"], v["weight"]]),
                                         "bias": torch.cat([_bias(k), _bias(v)])}}
        return {"norm": norm, "to_q": q, "to_out": _as_linear(params(attn.to_out[0]))}
    if isinstance(stage, KeyValueStage):
        k, v = _as_linear(params(attn.to_k)), _as_linear(params(attn.to_v))
        return {"norm": norm, "kv": {"weight": torch.cat([k["weight"], v["weight"]]),
                                     "bias": torch.cat([_bias(k), _bias(v)])}}
    return {"norm": norm, "to_q": _as_linear(params(attn.to_q)), "to_out": _as_linear(params(attn.to_out[0]))}


def _as_2d(conv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 3-D conv with one time tap (Wan's kernel-1 convs) as the 2-D conv it is, frame by frame."""
    if conv.get("weight") is not None and conv["weight"].dim() == 5:
        return {**conv, "weight": conv["weight"].squeeze(2)}
    return conv


def _as_linear(conv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 1x1 conv's weights as a linear layer's, for NHWC bands (a linear layer's stay as they are)."""
    return {**conv, "weight": conv["weight"].flatten(1)}


def _bias(linear: dict[str, torch.Tensor]) -> torch.Tensor:
    return linear["bias"] if "bias" in linear else linear["weight"].new_zeros(linear["weight"].shape[0])


def run_video(program: Program, plans: tuple[Plan, Plan], x: torch.Tensor, chunks: list[int], emit, *,
              scratch_dir=None, report: RunReport | None = None, progress=None, peers=None,
              compiled: bool = False, conditions: dict | None = None, plan_for=None) -> None:
    """Run a video program chunk by chunk along time: ``x`` (B, C, F, H, W) in chunks of ``chunks``
    frames, the first by ``plans[0]``, the rest by ``plans[1]``; ``emit(f0, frames)`` takes each chunk's
    output frames (B, C_out, F', H', W') as they are made. The causal convs' time caches are maps of one
    store for the whole video, zeros before the first chunk, on the tiers the plan gave them: memory is
    bounded by the chunk, not by the number of frames. ``progress(stage, rows_done, rows_total)`` counts
    the stages of every chunk in turn. ``compiled``, ``conditions``: as for execute, for every chunk.
    ``plan_for(frames)``: the plan of a later chunk whose frames are not plans[1]'s (a shorter last one)."""
    report = report if report is not None else RunReport()
    with Store(x.device, scratch_dir) as store:
        shapes, tiers = {m.name: m.shape for m in plans[1].maps}, plans[1].tiers
        for name in program.persistent:
            n, h, w, c = shapes[name]
            lo, hi = (0, h) if peers is None else peers.layout.slabs[name][peers.rank]  # a rank: its slab
            store.alloc(name, (n, hi - lo, w, c), x.dtype, tiers[name], row0=lo)
            store.zero(name)
        t0 = o0 = 0
        for k, frames in enumerate(chunks):
            first = k == 0
            def told(i: int, done: int, total: int, k: int = k) -> None:  # this chunk's stage i, counted over all
                progress(k * len(program.stages) + i, done, total)

            plan = plans[0] if first else plans[1]
            if not first and plan.in_shape[2] != frames:
                plan = plan_for(frames)
            y = execute(program, plan, x[:, :, t0 : t0 + frames], store=store, first=first,
                        scratch_dir=scratch_dir, report=report, peers=peers, compiled=compiled,
                        progress=None if progress is None else told, conditions=conditions)  # (B*F', C_out, H', W')
            y = y.unflatten(0, (x.shape[0], -1)).transpose(1, 2)  # (B, C_out, F', H', W')
            emit(o0, y)
            for stage in program.stages:  # the tails written this chunk become the caches of the next
                if getattr(stage, "cache_out", None) and not (first and stage.first == "pass"):
                    store.swap(stage.cache, stage.cache_out)
            t0, o0 = t0 + frames, o0 + y.shape[2]


def run_whole(vae, op: str, x: torch.Tensor, report: RunReport, **call) -> torch.Tensor | None:
    """The model's own modules, untiled; None when they run out of memory (the caller streams). ``call``:
    the call's own arguments the model takes beside the input (LTX's timestep)."""
    error = None
    try:
        out = family(vae).whole(vae, op, x, **call)
    except Exception as e:  # only out-of-memory is handled; anything else goes up as it is
        if not is_oom(e):
            raise
        error = e.with_traceback(None)  # drop the frames: they hold the failed run's tensors
    if error is None:
        if x.dtype == torch.float32 or bool(torch.isfinite(out).all()):
            return out
        del out  # float16/bfloat16 overflow: streaming recomputes the overflowing bands in float32
        report.upcasts.append(Event("whole", (0, x.shape[2]), f"the untiled {op} overflowed {x.dtype}: streaming"))
        return None
    free_caches(x.device)
    report.retries.append(Event("whole", (0, x.shape[2]), f"the untiled {op} ran out of memory ({error}): streaming"))
    return None

