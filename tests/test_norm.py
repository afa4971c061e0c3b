from __future__ import annotations

import torch

from vaekit.ops.norm import GroupStats, norm_act


def test_merged_band_statistics_equal_whole_map_statistics():
    x = torch.randn(2, 37, 11, 16) * 3 + 5  # (B, H, W, C), mean far from 0 on purpose
    stats = GroupStats(groups=4)
    for r0, r1 in [(0, 5), (5, 6), (6, 30), (30, 37)]:
        stats.update(x[:, r0:r1])
    mean, var = stats.mean_var()
    grouped = x.double().reshape(2, 37 * 11, 4, 4)
    ref_var, ref_mean = torch.var_mean(grouped, dim=(1, 3), correction=0)
    assert torch.allclose(mean, ref_mean, rtol=0, atol=1e-6)
    assert torch.allclose(var, ref_var, rtol=1e-6, atol=0)


def test_norm_act_matches_group_norm_then_silu():
    x = torch.randn(1, 9, 7, 8)  # (B, H, W, C)
    norm = torch.nn.GroupNorm(2, 8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    stats = GroupStats(2)
    stats.update(x)
    out = norm_act(x, stats.mean_var(), norm, "silu", {"weight": norm.weight.detach(), "bias": norm.bias.detach()})
    ref = torch.nn.functional.silu(norm(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
    assert torch.allclose(out, ref, atol=1e-5)
