"""The planner: from shapes alone, honest about memory, clear when nothing fits."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import AutoencoderKL

import vaekit
from vaekit.arch import program_for
from vaekit.errors import BudgetError, InputError
from vaekit.models import SD_VAE_CONFIG
from vaekit.plan import FIXED_ALLOWANCE, _most_rows, assign_tiers, map_shapes
from vaekit.units import format_bytes, parse_bytes


@pytest.fixture(scope="module")
def meta_sd():
    with torch.device("meta"):
        return AutoencoderKL(**SD_VAE_CONFIG)


def test_plans_a_meta_model_from_shapes_alone(meta_sd):
    plan = vaekit.plan(meta_sd, (1, 4, 512, 512), "4GiB")
    assert plan.mode == "stream"
    assert plan.out_shape == (1, 3, 4096, 4096)
    assert plan.peak_bytes <= parse_bytes("4GiB")
    text = str(plan)
    assert "mode stream" in text and "up.3.resnets.2.conv2" in text and "disk" in text


def test_plan_is_frozen(meta_sd):
    plan = vaekit.plan(meta_sd, (1, 4, 64, 64), "64MiB")
    with pytest.raises(AttributeError):
        plan.mode = "whole"


def test_whole_when_it_fits(meta_sd):
    plan = vaekit.plan(meta_sd, (1, 4, 64, 64), "8GiB")
    assert plan.mode == "whole" and plan.stages == ()


def test_budget_error_names_the_smallest_budget_that_fits(meta_sd):
    with pytest.raises(BudgetError) as info:
        vaekit.plan(meta_sd, (1, 4, 128, 128), "8MiB")
    smallest = info.value.smallest
    assert smallest and smallest > parse_bytes("8MiB")
    assert "smallest budget that fits is" in str(info.value) and str(smallest) in str(info.value)
    assert vaekit.plan(meta_sd, (1, 4, 128, 128), smallest).peak_bytes <= smallest
    with pytest.raises(BudgetError):
        vaekit.plan(meta_sd, (1, 4, 128, 128), smallest - 1)


def test_every_stage_fits_the_budget(meta_sd):
    for budget in ("96MiB", "768MiB", "1.5GiB"):
        plan = vaekit.plan(meta_sd, (1, 4, 128, 128), budget)
        assert all(s.peak_bytes <= parse_bytes(budget) for s in plan.stages)


def test_tiers_all_device_with_room_and_all_lower_without(meta_sd):
    program = program_for(meta_sd, "decode")
    shapes = map_shapes(program, (1, 4, 64, 64))
    roomy = assign_tiers(program, shapes, 4, 1 << 40, "disk")
    tight = assign_tiers(program, shapes, 4, 1, "disk")
    inner = [n for n in shapes if n not in (program.input, program.output)]
    assert all(roomy[n] == "device" for n in inner)
    assert all(tight[n] == "disk" for n in inner)
    assert assign_tiers(program, shapes, 4, 1, "host")[inner[0]] == "host"


def test_cuda_plans_put_what_host_ram_cannot_hold_on_disk(meta_sd):
    shape = (1, 4, 512, 512)  # a 4096² decode, 8 GiB GPU: 12 GiB of maps leave the device
    unbounded = vaekit.plan(meta_sd, shape, "8GiB", device="cuda", dtype=torch.float16, host_budget="1TiB")
    bounded = vaekit.plan(meta_sd, shape, "8GiB", device="cuda", dtype=torch.float16, host_budget="6GiB")
    assert unbounded.scratch_bytes == 0 and unbounded.host_bytes > parse_bytes("6GiB")
    assert 0 < bounded.host_bytes <= parse_bytes("6GiB") and bounded.scratch_bytes > 0
    assert {m.tier for m in bounded.maps} >= {"device", "host", "disk"}
    assert bounded.tiers.keys() == unbounded.tiers.keys()
    assert all(bounded.tiers[n] == "device" for n, t in unbounded.tiers.items() if t == "device")  # the GPU is the same
    assert "host RAM tier at most" in str(bounded) and "6.0 GiB allowed" in str(bounded)


def test_cpu_plans_have_no_host_tier(meta_sd):
    plan = vaekit.plan(meta_sd, (1, 4, 128, 128), "96MiB", host_budget="1GiB")
    assert plan.host_bytes == 0 and plan.host_budget is None and "host" not in plan.tiers.values()


def test_three_tiers_run_exactly(vaes):
    """The executor with maps on all three tiers (a CUDA plan, run on the CPU) gives the untiled pixels."""
    from conftest import REL_TOL, relative_error, untiled
    from vaekit.plan import make_plan
    from vaekit.run import execute

    vae = vaes("sd")
    z = torch.randn(1, 4, 40, 56, generator=torch.Generator().manual_seed(3))
    program = program_for(vae, "decode")
    roomy = make_plan(program, tuple(z.shape), 4, "float32", "cuda", 12 << 20, force_stream=True)
    host = roomy.host_bytes // 2
    plan = make_plan(program, tuple(z.shape), 4, "float32", "cuda", 12 << 20, force_stream=True, host_budget=host)
    assert {"device", "host", "disk"} <= set(plan.tiers.values()) and plan.host_bytes <= host
    with torch.inference_mode():
        assert relative_error(execute(program, plan, z), untiled(vae, z)) <= REL_TOL


def test_most_rows_is_the_largest_that_fits():
    assert _most_rows(lambda r: r <= 37, 100) == 37
    assert _most_rows(lambda r: True, 100) == 100
    assert _most_rows(lambda r: False, 100) == 0


@pytest.mark.parametrize("text,expected", [
    ("768MiB", 768 * 2**20), ("2GiB", 2 * 2**30), ("1.5GB", 1_500_000_000), ("4096", 4096), (1024, 1024),
    ("16 kib", 16384),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1GiB", "0", "3 parsecs", True])
def test_parse_bytes_rejects_with_a_typed_error(bad):
    with pytest.raises(InputError, match="size|budget|positive"):
        parse_bytes(bad)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(768 * 2**20) == "768.0 MiB"
    assert format_bytes(1.5 * 2**30) == "1.5 GiB"


MEASURE = textwrap.dedent("""
    import json, sys, torch, vaekit
    from diffusers import AutoencoderDC, AutoencoderKL
    from vaekit.measure import PeakMemory
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, op, budget = sys.argv[1:]
    if model == "kl":
        vae = AutoencoderKL(block_out_channels=(64, 128, 128), layers_per_block=1, norm_num_groups=32,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    else:  # Sana's block types at a third of the width
        vae = AutoencoderDC(latent_channels=32, attention_head_dim=32, encoder_block_out_channels=(32, 64, 128, 256),
                            decoder_block_out_channels=(32, 64, 128, 256),
                            encoder_block_types=("ResBlock",) * 2 + ("EfficientViTBlock",) * 2,
                            decoder_block_types=("ResBlock",) * 2 + ("EfficientViTBlock",) * 2,
                            encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                            encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)),
                            downsample_block_type="conv", upsample_block_type="interpolate")
    vae = vae.eval()
    run = vaekit.decode if op == "decode" else vaekit.encode
    factor = vaekit.arch.scale_factor(vae)
    x = torch.randn(1, 4 if model == "kl" else 32, 96, 96) if op == "decode" else torch.rand(1, 3, 512, 512) * 2 - 1
    small = x[..., :16, :16] if op == "decode" else x[..., :8 * factor, :8 * factor]
    run(vae, small, budget)  # kernels and thread pools loaded before measuring
    plan = vaekit.plan(vae, tuple(x.shape), budget, op=op)
    with PeakMemory() as mem:
        run(vae, x, budget)
    print(json.dumps({"predicted": plan.peak_bytes, "measured": mem.growth, "mode": plan.mode}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from Linux /proc")
@pytest.mark.parametrize("model,op,budget", [
    ("kl", "decode", "48MiB"), ("kl", "decode", "160MiB"), ("kl", "encode", "48MiB"),
    ("dc", "decode", "64MiB"), ("dc", "encode", "64MiB"),
])
def test_measured_peak_stays_within_the_plan(model, op, budget):
    """Fresh process; measured = peak RSS growth. Allowed: +10% plus FIXED_ALLOWANCE (documented)."""
    result = subprocess.run([sys.executable, "-c", MEASURE, model, op, budget], capture_output=True, text=True,
                            check=True)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["mode"] == "stream"
    assert row["measured"] <= 1.10 * row["predicted"] + FIXED_ALLOWANCE, row
    assert row["measured"] >= 0.5 * row["predicted"], row  # the model is not wildly pessimistic either
