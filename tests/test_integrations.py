"""vaekit.apply: tiny diffusers pipelines built from config dicts (prompt_embeds, no tokenizer, no
download) give the same images with their VAE calls going through vaekit, streamed."""

from __future__ import annotations

import logging

import pytest
import torch

import vaekit
from conftest import REL_TOL, make_vae, relative_error, with_and_without_apply
from vaekit.integrations import apply, is_applied, unapply

pytest.importorskip("transformers")  # diffusers pipelines import it

EMB = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(9))


def _sd_pipe(cls_name: str = "StableDiffusionPipeline", in_channels: int = 4):
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    pipe = getattr(diffusers, cls_name)(vae=make_vae("sd"), text_encoder=None, tokenizer=None, unet=unet,
                                        scheduler=diffusers.DDIMScheduler(), safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _same_with_apply(pipe, call, budget="1MiB"):
    ref, out = with_and_without_apply(pipe, call, budget)  # the small budget really streamed
    assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL
    return ref


def _images(output) -> torch.Tensor:
    """A pipeline's ``.images`` as one float tensor, whatever the output_type (PIL images as 0-255)."""
    import numpy as np

    if isinstance(output, list):  # PIL
        output = np.stack([np.asarray(image, dtype=np.float32) for image in output])
    return torch.as_tensor(output)


SD_CALL = dict(prompt_embeds=EMB, num_inference_steps=2, guidance_scale=1.0, height=72, width=88)


@pytest.mark.parametrize("output_type", ["pt", "np", "pil", "latent"])
def test_stable_diffusion_output_types_and_images_per_prompt(output_type):
    pipe = _sd_pipe()
    call = lambda: _images(pipe(**SD_CALL, output_type=output_type, num_images_per_prompt=2,  # noqa: E731
                                generator=torch.Generator().manual_seed(0)).images)
    if output_type == "latent":  # no VAE call at all: identical
        ref, out = with_and_without_apply(pipe, call, "1MiB", streams=False)
        assert torch.equal(out, ref)
        return
    if output_type == "pil":  # 8-bit: at most one level apart where rounding falls either way
        ref, out = with_and_without_apply(pipe, call, "1MiB")
        assert out.shape == ref.shape == (2, 72, 88, 3) and float((out - ref).abs().max()) <= 1
        return
    assert _same_with_apply(pipe, call).shape[0] == 2


def test_stable_diffusion_inpaint_encodes_image_and_masked_image_through_vaekit():
    pipe = _sd_pipe("StableDiffusionInpaintPipeline", in_channels=9)
    g = torch.Generator().manual_seed(1)
    image, mask = torch.rand(1, 3, 72, 88, generator=g), torch.zeros(1, 1, 72, 88)
    mask[..., 20:50, 30:70] = 1
    _same_with_apply(pipe, lambda: pipe(**SD_CALL, image=image, mask_image=mask, strength=0.8, output_type="pt",
                                        generator=torch.Generator().manual_seed(0)).images)


def test_stable_diffusion_txt2img():
    pipe = _sd_pipe()
    _same_with_apply(pipe, lambda: pipe(prompt_embeds=EMB, num_inference_steps=2, guidance_scale=1.0, height=72,
                                        width=88, output_type="pt", generator=torch.Generator().manual_seed(0)).images)


def test_stable_diffusion_img2img_encodes_through_vaekit():
    pipe = _sd_pipe("StableDiffusionImg2ImgPipeline")
    image = torch.rand(1, 3, 72, 88, generator=torch.Generator().manual_seed(1))
    _same_with_apply(pipe, lambda: pipe(prompt_embeds=EMB, image=image, strength=0.6, num_inference_steps=4,
                                        guidance_scale=1.0, output_type="pt",
                                        generator=torch.Generator().manual_seed(0)).images)


def test_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    vae = make_vae("flux", shift_factor=0.1159, scaling_factor=0.3611)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    images = _same_with_apply(pipe, lambda: pipe(prompt_embeds=EMB, pooled_prompt_embeds=pooled, num_inference_steps=2,
                                                 height=48, width=64, output_type="pt", num_images_per_prompt=2,
                                                 generator=torch.Generator().manual_seed(0)).images)
    assert images.shape[0] == 2


def test_sana_with_dc_ae():
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    from test_dc import make_dc

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                                         num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                         cross_attention_dim=16, caption_channels=16, sample_size=8, patch_size=1).eval()
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=make_dc("sana"), transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    emb = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(3))
    _same_with_apply(pipe, lambda: pipe(prompt_embeds=emb, prompt_attention_mask=torch.ones(1, 6), guidance_scale=1.0,
                                        num_inference_steps=2, height=64, width=96, output_type="pt",
                                        use_resolution_binning=False, generator=torch.Generator().manual_seed(0)).images)


def test_return_types_and_exact_unapply(vaes):
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
    from diffusers.models.autoencoders.vae import DecoderOutput

    vae = vaes("sd")
    before = dict(vars(vae))
    z, x = torch.randn(1, 4, 9, 11), torch.rand(1, 3, 36, 44) * 2 - 1
    with torch.no_grad():
        ref_image, ref_mean = vae.decode(z).sample, vae.encode(x).latent_dist.mean
    report = vaekit.RunReport()
    apply(vae, "1MiB", report=report)
    assert is_applied(vae)
    with torch.no_grad():
        out = vae.decode(z)
        assert isinstance(out, DecoderOutput) and relative_error(out.sample, ref_image) <= REL_TOL
        assert isinstance(vae.decode(z, return_dict=False), tuple)
        encoded = vae.encode(x)
        assert isinstance(encoded, AutoencoderKLOutput) and relative_error(encoded.latent_dist.mean, ref_mean) <= REL_TOL
        assert isinstance(vae.encode(x, return_dict=False)[0], type(encoded.latent_dist))
    assert report.mode == "stream"
    apply(vae, "2MiB")  # applying again replaces, it does not stack
    unapply(vae)
    assert not is_applied(vae) and vars(vae).keys() == before.keys()
    assert vae.decode.__func__ is type(vae).decode


def test_enable_tiling_is_honoured_by_exact_streaming(vaes, caplog):
    vae = vaes("sdxl")
    z = torch.randn(1, 4, 20, 24)
    with torch.no_grad():
        ref = vae.decode(z).sample
    vae.enable_tiling()
    vae.tile_latent_min_size, vae.tile_sample_min_size = 8, 16
    report = vaekit.RunReport()
    apply(vae, report=report)
    try:
        with caplog.at_level(logging.INFO, logger="vaekit"), torch.no_grad():
            out1, out2 = vae.decode(z).sample, vae.decode(z).sample
    finally:
        unapply(vae)
        vae.disable_tiling()
    assert report.mode == "stream" and relative_error(out1, ref) <= REL_TOL and torch.equal(out1, out2)
    assert sum("enable_tiling" in r.message for r in caplog.records) == 1  # said once


def test_sdxl():
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8).eval()
    pipe = diffusers.StableDiffusionXLPipeline(vae=make_vae("sdxl"), text_encoder=None, text_encoder_2=None,
                                               tokenizer=None, tokenizer_2=None, unet=unet,
                                               scheduler=diffusers.EulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(4))
    _same_with_apply(pipe, lambda: pipe(prompt_embeds=EMB, pooled_prompt_embeds=pooled, num_inference_steps=2,
                                        guidance_scale=1.0, height=40, width=56, output_type="pt",
                                        generator=torch.Generator().manual_seed(0)).images)


def test_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32).eval()
    vae = make_vae("flux", shift_factor=0.0609, scaling_factor=1.5305)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                    text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(5))
    _same_with_apply(pipe, lambda: pipe(prompt_embeds=EMB, pooled_prompt_embeds=pooled, num_inference_steps=2,
                                        guidance_scale=1.0, height=48, width=64, output_type="pt",
                                        generator=torch.Generator().manual_seed(0)).images)
