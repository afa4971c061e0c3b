"""Tiny autoencoders: diffusers AutoencoderTiny and the TAESD family, streamed == whole, both ways."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import AutoencoderTiny

import vaekit
from conftest import BUILTIN_DIR, REL_TOL, TAESD_DIR, budgets_for, needs_taesana, relative_error
from vaekit.taesd import TinyAutoencoder

TINY_CONFIG = dict(encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(16, 16, 16),
                   num_encoder_blocks=(1, 2, 2), num_decoder_blocks=(2, 2, 1), latent_channels=4)


@pytest.fixture(scope="module")
def diffusers_tiny():
    torch.manual_seed(0)
    return AutoencoderTiny(**TINY_CONFIG).eval()


def _check_both_ways(vae, whole_decode, whole_encode, latent_shape, image_shape):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(*latent_shape, generator=g)
    x = torch.rand(*image_shape, generator=g) * 2 - 1
    with torch.no_grad():
        ref_dec, ref_enc = whole_decode(z), whole_encode(x)
    for name, budget in budgets_for(vae, latent_shape, "decode").items():
        assert relative_error(vaekit.decode(vae, z, budget), ref_dec) <= REL_TOL, ("decode", name)
    for name, budget in budgets_for(vae, image_shape, "encode").items():
        out = vaekit.encode(vae, x, budget)
        assert out.shape == ref_enc.shape
        assert relative_error(out, ref_enc) <= REL_TOL, ("encode", name)


def test_diffusers_autoencoder_tiny(diffusers_tiny):
    vae = diffusers_tiny
    _check_both_ways(vae, lambda z: vae.decode(z).sample, lambda x: vae.encode(x).latents, (1, 4, 21, 27),
                     (1, 3, 83, 101))


@pytest.mark.parametrize("variant", ["taesd", "taef2", "taesana"])
def test_taesd_family_random_weights(variant):
    torch.manual_seed(0)
    vae = TinyAutoencoder(variant).eval()
    for module in vae.modules():  # random init leaves GroupNorm affine at 1/0: make it matter
        if isinstance(module, torch.nn.GroupNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.2)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
    c, f = vae.latent_channels, vae.scale_factor
    latent = (1, c, 5, 7) if f == 32 else (1, c, 13, 19)
    _check_both_ways(vae, vae.decode, vae.encode, latent, (1, 3, latent[2] * f - 3, latent[3] * f + 5))


def test_decoder_only_model_cannot_encode():
    from vaekit.errors import InputError

    vae = TinyAutoencoder("taesd", encoder=False)
    with pytest.raises(InputError, match="no encoder"):
        vaekit.encode(vae, torch.zeros(1, 3, 64, 64))


def _astronaut() -> torch.Tensor:
    from skimage.data import astronaut

    return torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 512, 512) in [-1, 1]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(-1, 1) - b) / 2).square().mean())  # on the [0, 1] scale
    return 10 * math.log10(1 / mse)


def test_real_taef2_round_trip_streamed_equals_whole():
    vae = vaekit.load(BUILTIN_DIR / "taef2_encoder.pth", BUILTIN_DIR / "taef2_decoder.pth")
    x = _astronaut()
    with torch.no_grad():
        whole_z = vae.encode(x)
        whole_x = vae.decode(whole_z)
    z = vaekit.encode(vae, x, "24MiB")
    assert vaekit.plan(vae, tuple(x.shape), "24MiB", op="encode").mode == "stream"
    assert relative_error(z, whole_z) <= REL_TOL
    out = vaekit.decode(vae, whole_z, "24MiB")
    assert vaekit.plan(vae, tuple(whole_z.shape), "24MiB").mode == "stream"
    assert relative_error(out, whole_x) <= REL_TOL
    assert _psnr(out, x) > 30  # the trained weights really reconstruct the photo (31.2 dB upstream)


@needs_taesana
def test_real_taesana_encoder_streamed_equals_whole():
    vae = vaekit.load(TAESD_DIR / "taesana_encoder.pth")
    x = _astronaut()[:, :, :416, :352]
    with torch.no_grad():
        ref = vae.encode(x)
    assert ref.shape == (1, 32, 13, 11)
    assert relative_error(vaekit.encode(vae, x, "6MiB"), ref) <= REL_TOL
