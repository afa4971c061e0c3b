"""DC-AE (diffusers AutoencoderDC): streamed == untiled both ways, for both block families."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderDC

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, budgets_for, relative_error
from vaekit.errors import InputError

_COMMON = dict(latent_channels=8, attention_head_dim=8, encoder_block_out_channels=(8, 16, 32),
               decoder_block_out_channels=(8, 16, 32), encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
               decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"))
CONFIGS = {
    # Sana's dc-ae-f32c32-sana-1.0 shape: multiscale 5x5 q/k/v, stride-2 conv down, nearest-interpolate up
    "sana": {**_COMMON, "encoder_layers_per_block": (1, 1, 2), "decoder_layers_per_block": (1, 1, 2),
             "encoder_qkv_multiscales": ((), (), (5,)), "decoder_qkv_multiscales": ((), (), (5,)),
             "downsample_block_type": "conv", "upsample_block_type": "interpolate",
             "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu"},
    # the f32c32-in/mix, f64, f128 shape: empty first level, pixel (un)shuffle, BatchNorm + ReLU low levels
    "shuffle": {**_COMMON, "encoder_layers_per_block": (0, 1, 2), "decoder_layers_per_block": (0, 2, 2),
                "encoder_qkv_multiscales": ((), (), ()), "decoder_qkv_multiscales": ((), (), ()),
                "downsample_block_type": "pixel_unshuffle", "upsample_block_type": "pixel_shuffle",
                "decoder_norm_types": ("batch_norm", "batch_norm", "rms_norm"), "decoder_act_fns": ("relu", "relu", "silu")},
}


def make_dc(name: str) -> AutoencoderDC:
    torch.manual_seed(0)
    vae = AutoencoderDC(**CONFIGS[name]).eval()
    with torch.no_grad():  # random init leaves norms at 1/0: perturb so every term matters
        for module in vae.modules():
            if "Norm" in type(module).__name__:
                for pname, p in module.named_parameters(recurse=False):
                    p.normal_(1.0 if pname == "weight" else 0.0, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return vae


@pytest.fixture(scope="module", params=list(CONFIGS))
def dc(request):
    return make_dc(request.param)


def test_decode_streamed_equals_untiled(dc):
    z = torch.randn(1, 8, 17, 23, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = dc.decode(z).sample
    assert ref.shape == (1, 3, 68, 92)
    assert_exact_at_every_budget(dc, z, ref)


def test_encode_streamed_equals_untiled(dc):
    x = torch.rand(2, 3, 36, 52, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ref = dc.encode(x).latent
    assert ref.shape == (2, 8, 9, 13)
    assert_exact_at_every_budget(dc, x, ref, "encode")


def test_tiny_maps_take_the_quadratic_path_exactly(dc):
    z = torch.randn(1, 8, 2, 4, generator=torch.Generator().manual_seed(3))  # 8 pixels <= attention_head_dim
    with torch.no_grad():
        ref = dc.decode(z).sample
    assert relative_error(vaekit.decode(dc, z, budgets_for(dc, tuple(z.shape))["smallest"]), ref) <= REL_TOL


def test_the_tolerance_catches_a_one_row_halo_bug(halo_bug):
    """Lose one halo row at every chunk boundary: the exactness check must fail loudly."""
    vae = make_dc("sana")
    z = torch.randn(1, 8, 17, 23, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = vae.decode(z).sample
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    halo_bug()
    assert relative_error(vaekit.decode(vae, z, budget), ref) > 100 * REL_TOL


def test_image_sizes_must_fit_the_unshuffles():
    with pytest.raises(InputError, match="multiples of 4"):
        vaekit.encode(make_dc("shuffle"), torch.zeros(1, 3, 34, 52))
