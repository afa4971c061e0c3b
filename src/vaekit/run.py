"""Executes a Plan. The loop is the schedule: for each stage, load its weights, then for each
chunk compute a band and store it, collecting the statistics the next GroupNorm needs."""

from __future__ import annotations

import os

import torch
from torch import nn

from .ops.attention import attention_band, kv_band
from .ops.conv import conv_band
from .ops.norm import GroupStats
from .plan import Plan
from .program import AttentionStage, ConvStage, KeyValueStage, Program
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
            if stage.dst == program.output and output is None:
                _, out_h, out_w, out_c = shapes[stage.dst]
                output = torch.empty(b, out_c, out_h, out_w, dtype=x.dtype, device=x.device)  # image px
                store.maps[stage.dst] = output.permute(0, 2, 3, 1)  # written band by band through this view
            elif stage.dst not in store.maps:
                store.alloc(stage.dst, shapes[stage.dst], x.dtype, tiers[stage.dst])
            weights = stage_weights(stage, x.device, x.dtype)  # load
            collector = GroupStats(stage.stats_groups) if stage.stats_groups else None
            src_h, dst_h = shapes[stage.src][1], shapes[stage.dst][1]
            for r0 in range(0, dst_h, sp.rows):
                r1 = min(r0 + sp.rows, dst_h)
                band = _compute(stage, weights, store.read, stats, r0, r1, src_h, dst_h, sp.kv_rows)  # compute
                store.write(stage.dst, r0, band)  # store
                if collector is not None:
                    collector.update(band)
                if progress is not None:
                    progress(i, r1, dst_h)
            if collector is not None:
                stats[stage.dst] = collector.mean_var()
            for name in [n for n, last in last_use.items() if last == i and n != program.output]:
                store.free(name)
                stats.pop(name, None)
            store.end_stage()
    return output


def _compute(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows):
    if isinstance(stage, ConvStage):
        return conv_band(stage, weights, read, stats, r0, r1, src_h, dst_h)
    if isinstance(stage, KeyValueStage):
        return kv_band(stage, weights, read, stats, r0, r1, src_h, dst_h)
    if isinstance(stage, AttentionStage):
        return attention_band(stage, weights, read, stats, r0, r1, src_h, dst_h, kv_rows)
    raise TypeError(f"unknown stage {stage!r}")


def _params(module: nn.Module | None, device, dtype) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    # no copy when the model is already on the compute device in the compute dtype
    out = {name: p.detach().to(device=device, dtype=dtype) for name, p in module.named_parameters(recurse=False)}
    if isinstance(module, nn.GroupNorm) and not module.affine:
        out = {"weight": torch.ones(module.num_channels, device=device, dtype=dtype),
               "bias": torch.zeros(module.num_channels, device=device, dtype=dtype)}
    return out


def stage_weights(stage, device, dtype) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors ``stage`` needs, moved to the compute device once per stage."""
    if isinstance(stage, ConvStage):
        return {"conv": _params(stage.conv, device, dtype), "norm": _params(stage.norm, device, dtype),
                "shortcut": _params(stage.shortcut, device, dtype)}
    attn = stage.attn
    norm = _params(attn.group_norm, device, dtype)
    if isinstance(stage, KeyValueStage):
        k, v = _params(attn.to_k, device, dtype), _params(attn.to_v, device, dtype)
        return {"norm": norm, "kv": {"weight": torch.cat([k["weight"], v["weight"]]),
                                     "bias": torch.cat([_bias(k), _bias(v)])}}
    return {"norm": norm, "to_q": _params(attn.to_q, device, dtype), "to_out": _params(attn.to_out[0], device, dtype)}


def _bias(linear: dict[str, torch.Tensor]) -> torch.Tensor:
    return linear["bias"] if "bias" in linear else linear["weight"].new_zeros(linear["weight"].shape[0])
