"""Exactness: vaekit.decode against the untiled diffusers decode, fp32, odd sizes, every tier."""

from __future__ import annotations

import pytest
import torch

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, budgets_for, relative_error, untiled
from vaekit.program import AttentionStage

SIZES = [(40, 56), (33, 47)]


@pytest.mark.parametrize("config", ["sd", "sdxl", "flux", "noattn"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_streamed_equals_untiled(vaes, config, size):
    vae = vaes(config)
    z = torch.randn(1, vae.config.latent_channels, *size, generator=torch.Generator().manual_seed(1))
    assert_exact_at_every_budget(vae, z, untiled(vae, z), label=(config, size))


def test_smallest_budget_uses_disk_and_many_chunks(vaes):
    vae = vaes("sd")
    shape = (1, 4, 40, 56)
    plan = vaekit.plan(vae, shape, budgets_for(vae, shape)["smallest"])
    tiers = set(plan.tiers.values())
    assert "disk" in tiers
    assert max(s.chunks for s in plan.stages) > 10


def test_mixed_budget_keeps_some_maps_resident(vaes):
    vae = vaes("sd")
    shape = (1, 4, 40, 56)
    plan = vaekit.plan(vae, shape, budgets_for(vae, shape)["mixed"])
    assert {"device", "disk"} <= set(plan.tiers.values())


@pytest.mark.parametrize("config", ["sd", "flux"])
def test_batch_of_two_normalizes_per_sample(vaes, config):
    vae = vaes(config)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, vae.config.latent_channels, 33, 47, generator=g)
    z[1] *= 3  # different statistics per sample: a shared GroupNorm would be visibly wrong
    ref = untiled(vae, z)
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    out = vaekit.decode(vae, z, budget)
    assert relative_error(out[0], ref[0]) <= REL_TOL
    assert relative_error(out[1], ref[1]) <= REL_TOL


def test_key_chunked_attention_is_exact(vaes):
    vae = vaes("sd")
    z = torch.randn(1, 4, 40, 56, generator=torch.Generator().manual_seed(3))
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    plan = vaekit.plan(vae, tuple(z.shape), budget)
    program = vaekit.arch.program_for(vae, "decode")
    attention = [p for s, p in zip(program.stages, plan.stages, strict=True) if isinstance(s, AttentionStage)]
    assert attention and all(p.kv_rows < p.height for p in attention)  # the online-softmax path runs
    assert relative_error(vaekit.decode(vae, z, budget), untiled(vae, z)) <= REL_TOL


def test_the_tolerance_catches_a_one_row_halo_bug(vaes, halo_bug):
    """Lose one halo row at every chunk boundary: the exactness check must fail loudly."""
    vae = vaes("sd")
    z = torch.randn(1, 4, 40, 56, generator=torch.Generator().manual_seed(4))
    ref = untiled(vae, z)
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    halo_bug()
    assert relative_error(vaekit.decode(vae, z, budget), ref) > 100 * REL_TOL


def test_whole_mode_ignores_user_tiling(vaes):
    vae = vaes("sdxl")
    z = torch.randn(1, 4, 40, 56, generator=torch.Generator().manual_seed(5))
    ref = untiled(vae, z)
    vae.enable_tiling()
    try:
        vae.tile_latent_min_size, vae.tile_sample_min_size = 16, 32
        assert relative_error(vaekit.decode(vae, z), ref) <= REL_TOL
    finally:
        vae.disable_tiling()


def test_progress_callback_sees_every_stage(vaes):
    vae = vaes("noattn")
    z = torch.randn(1, 4, 16, 16)
    seen = set()
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    vaekit.decode(vae, z, budget, progress=lambda stage, done, total: seen.add(stage))
    assert seen == set(range(len(vaekit.plan(vae, tuple(z.shape), budget).stages)))


def test_progress_off_a_terminal_is_a_few_lines(vaes):
    """stderr captured (CI, notebooks): one line per tenth of the rows, no carriage-return redraws (#14)."""
    import io

    from vaekit.progress import STEPS, progress_callback

    vae = vaes("sd")
    z = torch.randn(1, 4, 33, 47)
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    plan = vaekit.plan(vae, tuple(z.shape), budget)
    log = io.StringIO()
    with progress_callback(True, plan, stream=log) as callback:
        vaekit.decode(vae, z, budget, progress=callback)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 1 <= len(lines) <= STEPS
    assert lines[-1].startswith("vaekit decode: 100% (") and "rows/s" in lines[-1]
