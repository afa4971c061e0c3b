"""Exactness: vaekit.encode against the untiled diffusers encoder, fp32, odd sizes, every tier."""

from __future__ import annotations

import pytest
import torch

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, budgets_for, relative_error
from vaekit.errors import InputError

#: image sizes that are not multiples of the downsampling factor: the one-sided pad matters
SIZES = [(131, 183), (96, 136)]


def _images(shape, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("config", ["sd", "flux", "noattn"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_streamed_encode_equals_untiled(vaes, config, size):
    vae = vaes(config)
    x = _images((1, 3, *size))
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
    assert_exact_at_every_budget(vae, x, ref, "encode", label=(config, size))


def test_sample_matches_diffusers_with_the_same_generator(vaes):
    vae = vaes("sd")
    x = _images((2, 3, 64, 80))
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    low = budgets_for(vae, tuple(x.shape), "encode")["smallest"]
    out = vaekit.encode(vae, x, low, sample=True, generator=torch.Generator().manual_seed(3))
    assert relative_error(out, ref) <= REL_TOL
    mode = vaekit.encode(vae, x, low)
    assert (out - mode).abs().max() > 1e-3  # a sample, not the mode


def test_encode_then_decode_shapes(vaes):
    vae = vaes("sdxl")
    x = _images((1, 3, 70, 90))
    z = vaekit.encode(vae, x, "4MiB")
    assert z.shape == (1, 4, 35, 45)
    assert vaekit.decode(vae, z, "4MiB").shape == (1, 3, 70, 90)


def test_image_range_and_size_are_checked(vaes):
    vae = vaes("sd")
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        vaekit.encode(vae, torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(InputError, match="too small"):
        vaekit.encode(vae, torch.zeros(1, 3, 2, 2))
    with pytest.raises(InputError, match="3 channels|expects 3"):
        vaekit.encode(vae, torch.zeros(1, 4, 32, 32))


def test_the_tolerance_catches_an_odd_offset_at_a_stride_two_stage(vaes, monkeypatch):
    """Start downsampling chunks one row late: the exactness check must fail loudly."""
    from vaekit.program import ConvStage

    vae = vaes("sd")
    x = _images((1, 3, 131, 183))
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
    conv_rows = ConvStage.conv_rows

    def shifted(self, r0, r1):
        lo, hi = conv_rows(self, r0, r1)
        return (lo + 1, hi + 1) if self.stride == 2 and r0 > 0 else (lo, hi)

    monkeypatch.setattr(ConvStage, "conv_rows", shifted)
    budget = budgets_for(vae, tuple(x.shape), "encode")["smallest"]
    assert relative_error(vaekit.encode(vae, x, budget), ref) > 100 * REL_TOL
