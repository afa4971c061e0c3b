"""Executes a Plan. The loop is the schedule: for each stage, load its weights, then for each
chunk compute a band and store it, collecting the statistics the next GroupNorm needs."""

from __future__ import annotations

import os

import torch
from torch import nn

from .ops.attention import attention_band, kv_band
from .ops.conv import conv_band
from .ops.glu import glu_band
from .ops.linear_attention import linear_kv_band, linear_query_band
from .ops.norm import GroupStats
from .plan import Plan
from .program import AttentionStage, ConvStage, GLUStage, KeyValueStage, LinearKVStage, LinearQueryStage, Program
from .store import Store

__all__ = ["execute", "stage_weights"]


def execute(program: Program, plan: Plan, x: torch.Tensor, *, scratch_dir: str | os.PathLike | None = None,
            progress=None) -> torch.Tensor:
    """Run ``program`` on NCHW ``x`` (already on the compute device, in the compute dtype) by ``plan``."""
    tiers, shapes = plan.tiers, {m.name: m.shape for m in plan.maps}
    last_use = program.last_use()
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    b = x.shape[0]
    output = None
    with Store(x.device, scratch_dir) as store:
        store.maps[program.input] = x.permute(0, 2, 3, 1)  # (B, h, w, C)  latent px, a view
        for i, (stage, sp) in enumerate(zip(program.stages, plan.stages, strict=True)):
            if stage.dst is None:  # a reduction: sums a state over the bands, writes no map
                pass
            elif stage.dst == program.output and output is None:
                _, out_h, out_w, out_c = shapes[stage.dst]
                output = torch.empty(b, out_c, out_h, out_w, dtype=x.dtype, device=x.device)  # image px
                store.maps[stage.dst] = output.permute(0, 2, 3, 1)  # written band by band through this view
            elif stage.dst not in store.maps:
                store.alloc(stage.dst, shapes[stage.dst], x.dtype, tiers[stage.dst])
            weights = stage_weights(stage, x.device, x.dtype)  # load
            collector = GroupStats(stage.stats_groups) if stage.stats_groups else None
            src_h, dst_h = shapes[stage.src][1], shapes[stage.dst or stage.src][1]
            total = None
            for r0 in range(0, dst_h, sp.rows):
                r1 = min(r0 + sp.rows, dst_h)
                band = _compute(stage, weights, store.read, stats, r0, r1, src_h, dst_h, sp.kv_rows)  # compute
                if stage.dst is None:
                    total = band if total is None else total.add_(band)
                    continue
                store.write(stage.dst, r0, band)  # store
                if collector is not None:
                    collector.update(band)
                if progress is not None:
                    progress(i, r1, dst_h)
            if collector is not None:
                stats[stage.dst] = collector.mean_var()
            if stage.dst is None:
                stats[stage.state] = total
            for name in [n for n, last in last_use.items() if last == i and n != program.output]:
                store.free(name)
                stats.pop(name, None)
            if isinstance(stage, LinearQueryStage):
                stats.pop(stage.state, None)
            store.end_stage()
    return output


_KERNELS = {ConvStage: conv_band, KeyValueStage: kv_band, GLUStage: glu_band, LinearKVStage: linear_kv_band,
            LinearQueryStage: linear_query_band}


def _compute(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows):
    if isinstance(stage, AttentionStage):
        return attention_band(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows)
    return _KERNELS[type(stage)](stage, weights, read, stats, r0, r1, src_h, dst_h)


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

    if isinstance(stage, ConvStage):
        return {"conv": params(stage.conv), "norm": params(stage.norm), "out_norm": params(stage.out_norm),
                "shortcut": params(stage.shortcut.conv if stage.shortcut else None)}
    if isinstance(stage, GLUStage):
        block = stage.block
        return {"inverted": _as_linear(params(block.conv_inverted)), "depth": params(block.conv_depth),
                "point": params(block.conv_point), "norm": params(block.norm)}
    if isinstance(stage, LinearKVStage | LinearQueryStage):
        attn = stage.attn
        qkv = torch.cat([params(attn.to_q)["weight"], params(attn.to_k)["weight"], params(attn.to_v)["weight"]])
        return {"qkv": {"weight": qkv}, "to_out": params(attn.to_out), "norm_out": params(attn.norm_out),
                "multiscale": [{"in": params(m.proj_in), "out": params(m.proj_out)} for m in attn.to_qkv_multiscale]}
    attn = stage.attn
    norm = _params(attn.group_norm, device, dtype)
    if isinstance(stage, KeyValueStage):
        k, v = _params(attn.to_k, device, dtype), _params(attn.to_v, device, dtype)
        return {"norm": norm, "kv": {"weight": torch.cat([k["weight"], v["weight"]]),
                                     "bias": torch.cat([_bias(k), _bias(v)])}}
    return {"norm": norm, "to_q": _params(attn.to_q, device, dtype), "to_out": _params(attn.to_out[0], device, dtype)}


def _as_linear(conv: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 1x1 conv's weights as a linear layer's, for NHWC bands."""
    return {**conv, "weight": conv["weight"].flatten(1)}


def _bias(linear: dict[str, torch.Tensor]) -> torch.Tensor:
    return linear["bias"] if "bias" in linear else linear["weight"].new_zeros(linear["weight"].shape[0])
