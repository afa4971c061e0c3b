"""FLUX.2's AutoencoderKLFlux2 streams through the KL program: exact both ways, and under apply in the
Flux2 and Flux2Klein pipelines (text-to-image decodes, reference images encode)."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLFlux2

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, perturb_norms, relative_error, with_and_without_apply


def make_flux2(seed: int = 0, latent_channels: int = 4) -> AutoencoderKLFlux2:
    """A small FLUX.2 VAE: a decoder wider than the encoder (decoder_block_out_channels), quant convs."""
    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16), decoder_block_out_channels=(16, 24),
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4)
    return perturb_norms(vae.eval())


def test_decode_and_encode_are_exact_at_every_budget():
    vae = make_flux2()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 9, 7, generator=g)  # odd latent px
    with torch.no_grad():
        assert_exact_at_every_budget(vae, z, vae.decode(z).sample, "decode", "flux2")
        x = torch.rand(2, 3, 26, 38, generator=g) * 2 - 1  # image px, batch 2
        assert_exact_at_every_budget(vae, x, vae.encode(x).latent_dist.mode(), "encode", "flux2")


def test_the_batchnorm_stays_the_pipelines():
    vae = make_flux2()
    before = {k: v.clone() for k, v in vae.bn.state_dict().items()}
    vaekit.apply(vae, "1MiB")
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 5, 5))
    assert all(torch.equal(before[k], v) for k, v in vae.bn.state_dict().items())


def _pipe(name: str):
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                          guidance_embeds=name == "Flux2Pipeline").eval()
    pipe = getattr(diffusers, name)(scheduler=FlowMatchEulerDiscreteScheduler(), vae=make_flux2(), text_encoder=None,
                                    tokenizer=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["Flux2Pipeline", "Flux2KleinPipeline"])
def test_pipelines_are_the_same_under_apply(name):
    from PIL import Image

    pipe = _pipe(name)
    emb, negative = torch.randn(2, 1, 6, 16, generator=torch.Generator().manual_seed(2))
    if name == "Flux2KleinPipeline":  # classifier-free guidance: its negative embeddings too (no text encoder here)
        more_inputs = {"negative_prompt_embeds": negative, "guidance_scale": 4.0}
    else:
        more_inputs = {}
    reference = Image.fromarray((np.random.default_rng(0).random((72, 88, 3)) * 255).astype(np.uint8))

    def call(**more):
        return pipe(prompt_embeds=emb, num_inference_steps=2, height=48, width=64, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **more_inputs, **more).images

    for more in ({}, {"image": [reference]}):  # text to image (decode), and with a reference image (encode too)
        ref, out = with_and_without_apply(pipe, lambda more=more: call(**more), "1MiB")
        assert out.shape == ref.shape == (1, 3, 48, 64) and relative_error(out, ref) <= REL_TOL
