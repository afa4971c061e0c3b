"""LTX-2's video VAE (AutoencoderKLLTX2Video): the whole video in one chunk, streamed in rows, equal to
diffusers' own untiled decode and encode; time padded with copies of the first (and last) frame,
borders reflected, frames and pixels folded into channels and back."""

import pytest
import torch
from diffusers import AutoencoderKLLTX2Video

import vaekit
from conftest import REL_TOL, relative_error, zero_borders
from conftest import whole_video_budgets as budgets
from vaekit.errors import InputError

#: LTX-2's structure (spatial, temporal, then two spatiotemporal downsamplers; three residual 2x2x2
#: upsamplers; a reflect-padded decoder that is not causal), narrow, with 2x2 patches
LTX2 = dict(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 16, 16, 16),
            decoder_block_out_channels=(16, 32, 64), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, True),
            decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=False,
            patch_size=2, patch_size_t=1, encoder_causal=True, decoder_causal=False,
            encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="reflect",
            spatial_compression_ratio=16, temporal_compression_ratio=8)  # as LTX-2's config says them
#: LTX-2.3's decoder: four up blocks, a temporal-only and a spatial-only one, no residuals, zero padding
LTX23 = {**LTX2, "decoder_block_out_channels": (16, 32, 32, 64), "decoder_layers_per_block": (1, 1, 1, 1, 1),
         "decoder_spatio_temporal_scaling": (True, True, True, True), "decoder_inject_noise": (False,) * 5,
         "upsample_type": ("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
         "upsample_residual": (False,) * 4, "upsample_factor": (2, 2, 1, 2), "decoder_spatial_padding_mode": "zeros"}


def make(config=LTX2, seed: int = 0, **changes):
    torch.manual_seed(seed)
    return AutoencoderKLLTX2Video(**{**config, **changes}).eval()


@pytest.fixture(scope="module")
def ltx2():
    return make()


Z = torch.randn(1, 8, 3, 5, 7, generator=torch.Generator().manual_seed(0))  # 3 latent frames, odd latent px
X = torch.rand(1, 3, 17, 48, 80, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 1 + 2 * 8 frames


def test_decode_is_exact_at_every_budget(ltx2):
    with torch.no_grad():
        ref = ltx2.decode(Z).sample  # (1, 3, 17, 80, 112): 1 + 8 * 2 frames
        for name, budget in budgets(ltx2, tuple(Z.shape)).items():
            report = vaekit.RunReport()
            out = vaekit.decode(ltx2, Z, budget, report=report)
            assert report.mode == ("whole" if name == "whole" else "stream"), name
            assert out.shape == ref.shape == (1, 3, 17, 80, 112) and relative_error(out, ref) <= REL_TOL, name


@pytest.mark.parametrize("changes", [{"downsample_type": ("conv", "temporal", "spatiotemporal", "spatiotemporal")},
                                     {"decoder_block_out_channels": (16, 32, 32), "upsample_factor": (1, 1, 1),
                                      "upsample_residual": (False,) * 3}], ids=["strided conv", "channels change"])
def test_a_strided_downsampling_conv_and_up_blocks_that_change_channels(changes):
    """Configs no LTX-2 release has, but the class takes (and LTX-Video 0.9 uses): a 3x3x3 conv of stride 2
    downsampling; up blocks that begin with a resnet to their channels (LayerNorm and a 1x1x1 conv)."""
    vae = make(**changes)
    with torch.no_grad():
        for op, x in (("decode", Z), ("encode", X[..., :32, :48])):
            ref = vae.decode(x).sample if op == "decode" else vae.encode(x).latent_dist.mode()
            out = (vaekit.decode if op == "decode" else vaekit.encode)(vae, x, budgets(vae, tuple(x.shape), op)["smallest"])
            assert relative_error(out, ref) <= REL_TOL, op


def test_encode_is_exact_at_every_budget(ltx2):
    with torch.no_grad():
        ref = ltx2.encode(X).latent_dist
        for name, budget in budgets(ltx2, tuple(X.shape), "encode").items():
            report = vaekit.RunReport()
            out = vaekit.encode(ltx2, X, budget, report=report)
            assert report.mode == ("whole" if name == "whole" else "stream"), name
            assert out.shape == ref.mode().shape == (1, 8, 3, 3, 5) and relative_error(out, ref.mode()) <= REL_TOL, name
        low = budgets(ltx2, tuple(X.shape), "encode")["smallest"]
        sample = vaekit.encode(ltx2, X, low, sample=True, generator=torch.Generator().manual_seed(6))
        assert relative_error(sample, ref.sample(torch.Generator().manual_seed(6))) <= REL_TOL  # one log-variance


@pytest.mark.parametrize("config, changes", [(LTX2, {"decoder_causal": True}), (LTX23, {})],
                         ids=["causal-decoder", "ltx-2.3"])
def test_other_decoders_are_exact_at_the_smallest_budget(config, changes):
    vae = make(config, **changes)
    z = torch.randn(2, 8, 2, 3, 5, generator=torch.Generator().manual_seed(3))  # two videos, 2 latent frames
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = vaekit.decode(vae, z, budgets(vae, tuple(z.shape))["smallest"])
    assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL


def test_a_non_causal_encoder_is_exact():
    vae = make(encoder_causal=False)
    x = X[:, :, :9, :32, :48]
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode()
        out = vaekit.encode(vae, x, budgets(vae, tuple(x.shape), "encode")["smallest"])
    assert relative_error(out, ref) <= REL_TOL


@pytest.mark.parametrize("mutation", ["time padding", "reflect border"])
def test_the_time_padding_and_the_border_matter(ltx2, monkeypatch, mutation):
    """Zero frames in time, or zero rows at the border instead of mirrored ones, are far off: the
    exactness tests above would catch either."""
    from vaekit.ops import causal

    if mutation == "time padding":
        monkeypatch.setattr(causal, "_time_pad", lambda stage, inner, front, back, frames: (
            inner[:, :, :front].zero_(), inner[:, :, front + frames :].zero_()))
    else:
        zero_borders(monkeypatch)
    with torch.no_grad():
        ref = ltx2.decode(Z).sample
        out = vaekit.decode(ltx2, Z, budgets(ltx2, tuple(Z.shape))["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def test_frames_the_encoder_cannot_fold_are_refused(ltx2):
    with pytest.raises(InputError, match=r"1 \+ 8k frames"):
        vaekit.encode(ltx2, X[:, :, :12])


def test_apply_streams_the_decode_and_encode(ltx2):
    with torch.no_grad():
        ref_z, ref_x = ltx2.decode(Z).sample, ltx2.encode(X).latent_dist.mode()
        report = vaekit.RunReport()
        try:
            vaekit.apply(ltx2, budget=budgets(ltx2, tuple(Z.shape))["mixed"], report=report)
            out = ltx2.decode(Z, None, return_dict=False)[0]  # as LTX2Pipeline calls it (no timestep)
            assert report.mode == "stream" and relative_error(out, ref_z) <= REL_TOL
            latents = ltx2.encode(X).latent_dist.mode()
            assert relative_error(latents, ref_x) <= REL_TOL
        finally:
            vaekit.unapply(ltx2)


def test_plan_from_shapes_shows_the_frames(ltx2):
    plan = vaekit.plan(ltx2, (1, 8, 16, 22, 40), budget="400MiB")  # the video it returns is 327 MiB
    assert plan.out_shape == (1, 3, 121, 352, 640) and plan.mode == "stream"  # 1 + 8 * 15 frames
    assert plan.peak_bytes <= 400 << 20 and "121" in str(plan)


@pytest.mark.parametrize("suffix", [".npy", ".mp4"])
def test_decode_to_a_file(ltx2, tmp_path, suffix):
    import numpy as np

    path = tmp_path / f"clip{suffix}"
    budget = budgets(ltx2, tuple(Z.shape))["smallest"] + vaekit.plan(ltx2, tuple(Z.shape), None, out=path).writer_bytes
    assert vaekit.decode(ltx2, Z, budget, out=path) == path
    with torch.no_grad():
        ref = ltx2.decode(Z).sample
    if suffix == ".npy":
        assert relative_error(torch.from_numpy(np.load(path)), ref) <= REL_TOL
    else:
        import av

        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 17


def test_cli_decodes_and_plans_ltx2(ltx2, tmp_path, capsys):
    from safetensors.torch import save_file

    from vaekit.cli import main as cli

    ltx2.save_pretrained(tmp_path / "ltx2-vae")
    save_file({"latents": Z.contiguous()}, tmp_path / "z.safetensors")
    budget = str(budgets(ltx2, tuple(Z.shape))["mixed"])
    assert cli(["decode", str(tmp_path / "z.safetensors"), str(tmp_path / "clip.npy"), "--model",
                str(tmp_path / "ltx2-vae"), "--budget", budget, "--quiet", "--dtype", "float32"]) == 0
    assert cli(["plan", "--model", str(tmp_path / "ltx2-vae"), "--size", "112x80", "--frames", "17",
                "--budget", budget]) == 0
    assert "decode 1x8x3x5x7 -> 1x3x17x80x112" in capsys.readouterr().out  # 1 + 8k frames: 3 latent frames


def test_large_weights_go_in_slices_of_output_channels(ltx2, monkeypatch):
    """A conv whose weights pass WEIGHT_SLICE_BYTES runs in slices of output channels (the backend's
    copies of the weights stay small): the same pixels, and the plan counts a slice."""
    from vaekit.ops import causal

    with torch.no_grad():
        ref = ltx2.decode(Z).sample
        budget = budgets(ltx2, tuple(Z.shape))["smallest"]
        monkeypatch.setattr(causal, "WEIGHT_SLICE_BYTES", 16 * 64 * 27 * 4)  # 16 output channels of 64 at a time
        assert causal.slice_channels(ltx2.decoder.mid_block.resnets[0].conv1.conv.weight) == 16
        assert budgets(ltx2, tuple(Z.shape))["smallest"] < budget
        out = vaekit.decode(ltx2, Z, budgets(ltx2, tuple(Z.shape))["smallest"])
    assert relative_error(out, ref) <= REL_TOL


@pytest.fixture(scope="module")
def conditioned():
    """LTX-2 with timestep conditioning and decode noise in three of its four blocks (the per-channel
    noise scales start at zero: perturbed so the noise matters)."""
    vae = make(timestep_conditioning=True, decoder_inject_noise=(True, False, True, True))
    with torch.no_grad():
        for module in vae.modules():
            for name in ("per_channel_scale1", "per_channel_scale2"):
                if getattr(module, name, None) is not None:
                    getattr(module, name).normal_(0, 0.5)
    return vae


def _decode(vae, z, t, seed, budget=None, **kw):
    torch.manual_seed(seed)  # the decode noise comes from the global generator, as in diffusers
    with torch.no_grad():
        return vae.decode(z, t).sample if budget is None else vaekit.decode(vae, z, budget, timestep=t, **kw)


def test_timestep_conditioning_and_decode_noise_are_diffusers_own(conditioned):
    z, t = torch.cat([Z, Z.flip(-1)]), torch.tensor([0.05, 0.5])  # two videos, a timestep each
    ref = _decode(conditioned, z, t, seed=3)
    for name, budget in budgets(conditioned, tuple(z.shape)).items():
        report = vaekit.RunReport()
        out = _decode(conditioned, z, t, 3, budget, report=report)
        assert report.mode == ("whole" if name == "whole" else "stream"), name
        assert relative_error(out, ref) <= REL_TOL, name
    low = budgets(conditioned, tuple(z.shape))["smallest"]
    assert relative_error(_decode(conditioned, z, t, 4, low), ref) > 100 * REL_TOL  # another draw of the noise
    assert relative_error(_decode(conditioned, z, torch.tensor([0.05, 0.05]), 3, low), ref) > 100 * REL_TOL


def test_a_conditioned_decoder_needs_its_timestep(conditioned, ltx2):
    with pytest.raises(InputError, match="timestep-conditioned"):
        vaekit.decode(conditioned, Z, budgets(conditioned, tuple(Z.shape))["smallest"])
    from diffusers import AutoencoderKL

    with pytest.raises(InputError, match="takes no timestep"):
        vaekit.decode(AutoencoderKL(latent_channels=4, block_out_channels=(8,), norm_num_groups=8),
                      torch.randn(1, 4, 4, 4), timestep=0.5)


def test_apply_takes_the_pipelines_timestep(conditioned):
    t = torch.tensor([0.05])
    ref = _decode(conditioned, Z, t, seed=5)
    report = vaekit.RunReport()
    vaekit.apply(conditioned, budget=budgets(conditioned, tuple(Z.shape))["smallest"], report=report)
    try:
        torch.manual_seed(5)
        with torch.no_grad():
            out = conditioned.decode(Z, t, return_dict=False)[0]  # as LTX2Pipeline calls it
        assert report.mode == "stream" and relative_error(out, ref) <= REL_TOL
    finally:
        vaekit.unapply(conditioned)


def ltx2_pipeline(cls, vae):
    """An LTX-2 pipeline around ``vae``: a tiny transformer, text connectors, audio VAE and vocoder
    (diffusers' own test sizes), no text encoder: the tests pass prompt embeddings as it would make them."""
    from diffusers import AutoencoderKLLTX2Audio, FlowMatchEulerDiscreteScheduler, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=vae.config.latent_channels, out_channels=vae.config.latent_channels, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4,
        audio_num_attention_heads=2, audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=1,
        qk_norm="rms_norm_across_heads", caption_channels=PROMPT[0], rope_double_precision=False, rope_type="split")
    connectors = LTX2TextConnectors(
        caption_channels=PROMPT[0], text_proj_in_factor=PROMPT[1], video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=8, video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=None, connector_rope_base_seq_len=32, rope_theta=10000.0,
        rope_double_precision=False, causal_temporal_positioning=False, rope_type="split")
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None, in_channels=2,
        resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height", dropout=0.0,
        mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True, mel_bins=8)
    vocoder = LTX2Vocoder(in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4],
                          upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          leaky_relu_negative_slope=0.1, output_sampling_rate=16000)
    return cls(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=None,
               tokenizer=None, connectors=connectors, transformer=transformer, vocoder=vocoder)


PROMPT = (32, 3)  # the text encoder's hidden size, and its layers + 1 (the embeddings stack every hidden state)


@pytest.mark.parametrize("name, conditioned_vae", [("LTX2Pipeline", False), ("LTX2ImageToVideoPipeline", False),
                                                   ("LTX2Pipeline", True)])
def test_ltx2_pipelines_are_the_same_under_apply(name, conditioned_vae, conditioned):
    import diffusers

    vae = conditioned if conditioned_vae else make()
    pipe = ltx2_pipeline(getattr(diffusers, name), vae)
    embeds = torch.randn(1, 8, PROMPT[0] * PROMPT[1], generator=torch.Generator().manual_seed(0))
    kw = dict(prompt_embeds=embeds, prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), num_inference_steps=2,
              guidance_scale=1.0, audio_guidance_scale=1.0, height=96, width=160, num_frames=17, frame_rate=25.0,
              output_type="pt", decode_timestep=0.05)
    if name == "LTX2ImageToVideoPipeline":
        kw.update(image=torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(1)), image_crf=0)

    def run():
        torch.manual_seed(9)  # the decode noise: the global generator, as in diffusers
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    ref = run()
    shape = (1, 8, 3, 6, 10)  # the pipeline's latents: 3 latent frames of 6x10
    report = vaekit.RunReport()
    budget = max(budgets(vae, shape)["smallest"], budgets(vae, (1, 3, 1, 96, 160), "encode")["smallest"])
    vaekit.apply(pipe, budget, report=report)
    try:
        out = run()
    finally:
        vaekit.unapply(pipe)
    assert report.mode == "stream" and out.shape == ref.shape == (1, 17, 3, 96, 160)
    assert relative_error(out, ref) <= REL_TOL
