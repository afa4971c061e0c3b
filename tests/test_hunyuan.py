"""HunyuanImage 2.1's AutoencoderKLHunyuanImage: streamed == untiled both ways at every budget, and under apply."""

import pytest
import torch
from diffusers import AutoencoderKLHunyuanImage

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, budgets_for, perturb_norms, relative_error


def make_hunyuan(seed: int = 0) -> AutoencoderKLHunyuanImage:
    """Three levels (4x): channel-matching up/downsamplers of both group sizes; 32-group norms as the model's."""
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
                                    layers_per_block=1, spatial_compression_ratio=4, sample_size=64)
    return perturb_norms(vae.eval())


@pytest.fixture(scope="module")
def vae():
    return make_hunyuan()


def test_decode_is_exact_at_every_budget(vae):
    z = torch.randn(2, 4, 11, 7, generator=torch.Generator().manual_seed(0))  # odd latent px, batch 2
    with torch.no_grad():
        assert_exact_at_every_budget(vae, z, vae.decode(z).sample, "decode", "hunyuan")


def test_encode_is_exact_at_every_budget(vae):
    x = torch.rand(1, 3, 44, 36, generator=torch.Generator().manual_seed(1)) * 2 - 1  # image px
    with torch.no_grad():
        assert_exact_at_every_budget(vae, x, vae.encode(x).latent_dist.mode(), "encode", "hunyuan")


def test_the_channel_order_of_the_shuffles_matters(vae, monkeypatch):
    """Run with torch's channel order instead: far off, so the test above would catch an order bug."""
    from vaekit.arch import hunyuan

    z = torch.randn(1, 4, 23, 17, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(hunyuan, "ORDER", "channel")
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    assert vaekit.plan(vae, tuple(z.shape), budget).mode == "stream"
    with torch.no_grad():
        assert relative_error(vaekit.decode(vae, z, budget), vae.decode(z).sample) > 1e-2


def test_apply_streams_and_changes_nothing(vae):
    z = torch.randn(1, 4, 21, 19, generator=torch.Generator().manual_seed(3))
    x = torch.rand(1, 3, 84, 76, generator=torch.Generator().manual_seed(4)) * 2 - 1
    budget = max(budgets_for(vae, tuple(z.shape))["smallest"], budgets_for(vae, tuple(x.shape), "encode")["smallest"])
    with torch.no_grad():
        ref_image, ref_latents = vae.decode(z).sample, vae.encode(x).latent_dist.mode()
        report = vaekit.RunReport()
        vaekit.apply(vae, budget, report=report)
        try:
            image, latents = vae.decode(z).sample, vae.encode(x).latent_dist.mode()
        finally:
            vaekit.unapply(vae)
    assert report.mode == "stream"
    assert relative_error(image, ref_image) <= REL_TOL and relative_error(latents, ref_latents) <= REL_TOL


def test_compiled_decode_is_exact(vae):
    z = torch.randn(1, 4, 13, 9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = vaekit.decode(vae, z, budgets_for(vae, tuple(z.shape), compiled=True)["smallest"], compile=True)
        assert relative_error(out, vae.decode(z).sample) <= REL_TOL


def test_hunyuanimage_pipeline_is_the_same_under_apply():
    from diffusers import AdaptiveProjectedMixGuidance, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline
    from diffusers import HunyuanImageTransformer2DModel as Transformer

    from conftest import with_and_without_apply

    torch.manual_seed(0)
    transformer = Transformer(in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8, num_layers=1,
                              num_single_layers=1, num_refiner_layers=1, patch_size=(1, 1), text_embed_dim=32,
                              text_embed_2_dim=32, rope_axes_dim=(4, 4)).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64, 64),
                                    layers_per_block=1, scaling_factor=0.476986, spatial_compression_ratio=8,
                                    sample_size=128).eval()
    pipe = HunyuanImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), vae=vae, text_encoder=None,
                                tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer,
                                guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=2),
                                ocr_guider=AdaptiveProjectedMixGuidance(adaptive_projected_guidance_start_step=3))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(2)
    (emb, neg), (emb_2, neg_2) = torch.randn(2, 1, 5, 32, generator=g), torch.randn(2, 1, 4, 32, generator=g)
    mask, mask_2 = torch.ones(1, 5, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)
    embeddings = dict(prompt_embeds=emb, prompt_embeds_mask=mask, prompt_embeds_2=emb_2, prompt_embeds_mask_2=mask_2,
                      negative_prompt_embeds=neg, negative_prompt_embeds_mask=mask, negative_prompt_embeds_2=neg_2,
                      negative_prompt_embeds_mask_2=mask_2)  # no text encoders: classifier-free guidance's too

    def call():
        return pipe(**embeddings, num_inference_steps=2, height=128, width=96, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    ref, out = with_and_without_apply(pipe, call, "1500KiB")
    assert out.shape == ref.shape == (1, 3, 128, 96) and relative_error(out, ref) <= REL_TOL
