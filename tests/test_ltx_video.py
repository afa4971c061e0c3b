"""LTX-Video 0.9.x's VAE (AutoencoderKLLTXVideo): the LTX family of arch/ltx2.py, the whole video in one
chunk streamed in rows, equal to diffusers' own untiled call. What 0.9 has that LTX-2 has not: resnets
that change channels (a 1x1x1 conv of LayerNorm(x) as the shortcut), 0.9.0's strided 3x3x3
downsampling convs, and 0.9.1's timestep conditioning and decode noise with residual upsamplers."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLLTXVideo

import vaekit
from conftest import REL_TOL, relative_error, with_and_without_apply
from conftest import whole_video_budgets as budgets

#: LTX-Video 0.9.0's structure, narrow: channels that change between blocks, strided-conv downsampling in
#: two blocks, 2x2 patches, a causal encoder and a decoder that is not causal
V090 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 16, 16, 24),
            decoder_block_out_channels=(8, 16, 16, 24), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=2,
            patch_size_t=1, encoder_causal=True, decoder_causal=False)
#: 0.9.1: timestep conditioning, decode noise in three blocks, residual upsamplers that halve channels
V091 = {**V090, "decoder_block_out_channels": (16, 32, 64), "decoder_layers_per_block": (1, 1, 1, 1),
        "decoder_spatio_temporal_scaling": (True, True, True), "decoder_inject_noise": (True, True, True, False),
        "upsample_residual": (True, True, True), "upsample_factor": (2, 2, 2), "timestep_conditioning": True,
        "block_out_channels": (8, 8, 8, 8), "spatio_temporal_scaling": (True, True, True, False),
        "layers_per_block": (1, 1, 1, 1)}
#: 0.9.5: its down blocks fold space and time into channels (spatial, temporal, spatiotemporal)
V095 = {**V091, "down_block_types": ("LTXVideo095DownBlock3D",) * 4, "block_out_channels": (8, 8, 16, 16, 16),
        "layers_per_block": (1, 1, 1, 1, 1), "spatio_temporal_scaling": (True, True, True, True),
        "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"), "patch_size": 1}


def make(config=V090, seed: int = 0):
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(**config).eval()
    with torch.no_grad():  # the noise scales start at zero: perturbed so the noise matters
        for module in vae.modules():
            for name in ("per_channel_scale1", "per_channel_scale2"):
                if getattr(module, name, None) is not None:
                    getattr(module, name).normal_(0, 0.5)
    return vae


@pytest.fixture(scope="module", params=["0.9.0", "0.9.1", "0.9.5"])
def version(request):
    return request.param, make({"0.9.0": V090, "0.9.1": V091, "0.9.5": V095}[request.param])


def _inputs(vae):
    """Two videos' latents of 2 frames of odd size, and a video of 1 + (temporal factor) frames the
    encoder takes, of odd latent size."""
    g = torch.Generator().manual_seed(0)
    f, t = vaekit.arch.scale_factor(vae), vaekit.arch.temporal_factor(vae)
    z = torch.randn(2, 8, 2, 3, 5, generator=g)
    x = torch.rand(1, 3, 1 + t, 3 * f, 5 * f, generator=g) * 2 - 1
    return z, x


def _decode(vae, z, budget=None, seed=3, **kw):
    t = torch.tensor([0.05, 0.5]) if vae.config.timestep_conditioning else None  # a timestep per video
    torch.manual_seed(seed)  # the decode noise comes from the global generator, as in diffusers
    with torch.no_grad():
        return vae.decode(z, t).sample if budget is None else vaekit.decode(vae, z, budget, timestep=t, **kw)


def test_decode_and_encode_are_exact_at_every_budget(version):
    name, vae = version
    z, x = _inputs(vae)
    ref = _decode(vae, z)
    for label, budget in budgets(vae, tuple(z.shape)).items():
        report = vaekit.RunReport()
        out = _decode(vae, z, budget, report=report)
        assert report.mode == ("whole" if label == "whole" else "stream"), (name, label)
        assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL, (name, label)
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
        for label, budget in budgets(vae, tuple(x.shape), "encode").items():
            out = vaekit.encode(vae, x, budget)
            assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL, (name, "encode", label)


def test_the_layer_normed_shortcut_matters(monkeypatch):
    """0.9.0's channel-changing resnets: their shortcut without its LayerNorm is far off."""
    from vaekit.ops import causal

    vae = make(V090)
    z, _ = _inputs(vae)
    ref = _decode(vae, z)
    shortcut = causal.apply_shortcut
    monkeypatch.setattr(causal, "apply_shortcut", lambda skip, s, w, *a: shortcut(
        skip, s if s is None else dataclasses.replace(s, norm=None), w, *a))
    out = _decode(vae, z, budgets(vae, tuple(z.shape))["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def ltx_pipeline(cls, vae):
    """An LTX-Video pipeline around ``vae``: a tiny transformer (diffusers' own test size), no text
    encoder: the tests pass prompt embeddings as it would make them."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                             num_layers=1, caption_channels=32)
    return cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
               transformer=transformer)


@pytest.mark.parametrize("name, config", [("LTXPipeline", "0.9.1"), ("LTXImageToVideoPipeline", "0.9.0")])
def test_pipelines_are_the_same_under_apply(name, config):
    import diffusers

    vae = make({"0.9.0": V090, "0.9.1": V091}[config])
    pipe = ltx_pipeline(getattr(diffusers, name), vae)
    f, (height, width) = vaekit.arch.scale_factor(vae), (64, 96)  # its image-to-video takes multiples of 32
    kw = dict(prompt_embeds=torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0)),
              prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), num_inference_steps=2, guidance_scale=1.0,
              height=height, width=width, num_frames=9, output_type="pt", decode_timestep=0.05,
              decode_noise_scale=0.025)
    if name == "LTXImageToVideoPipeline":
        kw.update(image=torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(1)))

    def run():
        torch.manual_seed(9)  # the decode noise: the global generator, as in diffusers
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    frames = 1 + 8 // vaekit.arch.temporal_factor(vae)
    budget = max(budgets(vae, (1, 8, frames, height // f, width // f))["smallest"],
                 budgets(vae, (1, 3, 1, height, width), "encode")["smallest"])
    ref, out = with_and_without_apply(pipe, run, budget)
    assert out.shape == ref.shape == (1, 9, 3, height, width) and relative_error(out, ref) <= REL_TOL
