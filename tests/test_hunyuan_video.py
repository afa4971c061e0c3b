"""HunyuanVideo 1.0's VAE (AutoencoderKLHunyuanVideo): each run (the video, or the model's own
overlapping clips of it, cross-faded) one chunk streamed in rows, equal to diffusers' own default call;
GroupNorm statistics over all of a run's frames, an attention across frames with a causal mask,
upsamplers that repeat pixels and frames (the first frame once) before their conv."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, perturb_norms, relative_error, with_and_without_apply
from conftest import whole_video_budgets as budgets

#: HunyuanVideo 1.0's structure (three spatial and two temporal resamplings, mid-block attention), narrow
SMALL = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
             up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
             norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4)


def make(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return perturb_norms(AutoencoderKLHunyuanVideo(**{**SMALL, **changes}).eval())


@pytest.fixture(scope="module")
def hv():
    return make()


#: 7 latent frames: framewise clips of 5, 4 and 1 latent frames (shorter at the end), odd latent px
Z = torch.randn(2, 4, 7, 5, 7, generator=torch.Generator().manual_seed(0))
#: 29 frames: clips of 17, 17 and 5 frames
X = torch.rand(1, 3, 29, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("op, frames", [("decode", 7), ("decode", 3), ("encode", 29), ("encode", 9)])
def test_exact_at_every_budget(hv, op, frames):
    """In the model's own clips (7 latent frames, 29 frames) and as one run (3, 9)."""
    x = Z[:, :, :frames] if op == "decode" else X[:, :, :frames]
    with torch.no_grad():
        ref = hv.decode(x).sample if op == "decode" else hv.encode(x).latent_dist.mode()
        assert_exact_at_every_budget(hv, x, ref, op, budgets=budgets(hv, tuple(x.shape), op))


def test_framewise_off_is_one_run():
    vae = make()
    vae.use_framewise_decoding = False
    assert vaekit.arch.clips_of(vae, "decode", 7) is None
    with torch.no_grad():
        ref = vae.decode(Z).sample
    assert relative_error(vaekit.decode(vae, Z, budgets(vae, tuple(Z.shape))["smallest"]), ref) <= REL_TOL


@pytest.mark.parametrize("mutation", ["each frame's statistics", "the first frame repeated", "no cross-fade",
                                      "attention over every frame"])
def test_each_part_matters(hv, monkeypatch, mutation):
    """GroupNorms by each frame's statistics, an upsampler that repeats the first frame too, clips laid
    end to end without their cross-fade, or attention without its causal mask: each is far off."""
    from vaekit import clips
    from vaekit.ops import attention, causal

    if mutation == "each frame's statistics":
        program_for = vaekit.arch.program_for
        monkeypatch.setattr("vaekit.api.program_for", lambda vae, op: dataclasses.replace(program_for(vae, op),
                                                                                           frame_stats="each"))
    elif mutation == "the first frame repeated":
        upsampled = causal._upsampled
        monkeypatch.setattr(causal, "_upsampled", lambda stage, x, n, skip, rows, first: upsampled(
            stage, x, n, skip, rows, first) if stage.time_upsample == 1 else upsampled(
            dataclasses.replace(stage, time_upsample=1), x, n, skip, rows, first).repeat_interleave(2, 0)[n:])
    elif mutation == "no cross-fade":
        monkeypatch.setattr(clips, "_blend", lambda a, b, extent: b)
    else:
        monkeypatch.setattr(attention._Frames, "mask", lambda self, keys, device: torch.ones(
            self.f * self.per_frame, self.f * keys, dtype=torch.bool, device=device))
    with torch.no_grad():
        ref = hv.decode(Z).sample
        out = vaekit.decode(hv, Z, budgets(hv, tuple(Z.shape))["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def test_the_pipeline_is_the_same_under_apply():
    """HunyuanVideoPipeline (a tiny transformer, prompt embeddings passed, no text encoders): the
    frames are the same with the VAE streamed."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    vae = make()
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                tokenizer_2=None)
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
              prompt_attention_mask=torch.ones(1, 8, dtype=torch.long), num_inference_steps=2, height=48, width=64,
              num_frames=21, output_type="pt")  # 6 latent frames: framewise clips

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    ref, out = with_and_without_apply(pipe, run, budgets(vae, (1, 4, 6, 6, 8))["smallest"])
    assert out.shape == ref.shape == (1, 21, 3, 48, 64) and relative_error(out, ref) <= REL_TOL


def test_kandinsky5_text_to_video_is_the_same_under_apply():
    """Kandinsky5T2VPipeline decodes with HunyuanVideo 1.0's VAE (diffusers' own test config: fewer time
    upsamplers than its temporal_compression_ratio says, so its clips make fewer frames); a tiny
    transformer, prompt embeddings passed, no text encoders."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5T2VPipeline, Kandinsky5Transformer3DModel

    vae = make(block_out_channels=(32, 64), down_block_types=("HunyuanVideoDownBlock3D",) * 2, latent_channels=16,
               up_block_types=("HunyuanVideoUpBlock3D",) * 2, norm_num_groups=32, mid_block_add_attention=False)
    torch.manual_seed(0)
    transformer = Kandinsky5Transformer3DModel(
        in_visual_dim=16, in_text_dim=32, in_text_dim2=16, time_dim=16, out_visual_dim=16, patch_size=(1, 2, 2),
        model_dim=16, ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(1, 1, 2), visual_cond=False,
        attention_type="regular")
    pipe = Kandinsky5T2VPipeline(transformer=transformer, vae=vae, text_encoder=None, tokenizer=None,
                                 text_encoder_2=None, tokenizer_2=None, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds_qwen=torch.randn(1, 8, 32, generator=g), prompt_embeds_clip=torch.randn(1, 16, generator=g),
              prompt_cu_seqlens=torch.tensor([0, 8], dtype=torch.int32), num_inference_steps=2, guidance_scale=1.0,
              height=32, width=32, num_frames=21, output_type="pt")  # 6 latent frames: framewise clips

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    ref, out = with_and_without_apply(pipe, run, budgets(vae, (1, 16, 6, 4, 4))["smallest"])
    assert out.shape == ref.shape == (1, 13, 3, 16, 16) and relative_error(out, ref) <= REL_TOL
