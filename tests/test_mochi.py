"""Mochi 1's VAE (AutoencoderKLMochi): its decoder over the whole video (or, framewise, the model's own
runs of 2 latent frames) streamed in rows, equal to diffusers' own decode; copies of the first frame in
front, edge rows and columns repeated, each frame's GroupNorm statistics, channels unfolded into frames
and pixels, the first frames dropped as the model drops them. Its encoder too: Fourier features, convs
of kernel = stride, and attention over each pixel's frames (causal), equal to diffusers' own encode."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLMochi

import vaekit
from conftest import (
    REL_TOL,
    assert_exact_at_every_budget,
    perturb_norms,
    relative_error,
    with_and_without_apply,
    zero_borders,
)
from conftest import whole_video_budgets as budgets

#: Mochi's structure (three up blocks unfolding 1, 2 and 3 frames and 2x2 pixels), narrow
SMALL = dict(in_channels=15, out_channels=3, latent_channels=4, encoder_block_out_channels=(32,) * 4,
             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1), act_fn="silu")


def make(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return perturb_norms(AutoencoderKLMochi(**{**SMALL, **changes}).eval())


@pytest.fixture(scope="module")
def mochi():
    return make()


Z = torch.randn(2, 4, 3, 5, 7, generator=torch.Generator().manual_seed(0))  # 3 latent frames: 13 frames


@pytest.mark.parametrize("framewise", [False, True])
def test_decode_is_exact_at_every_budget(framewise):
    vae = make()
    vae.use_framewise_decoding = framewise  # runs of 2 latent frames, each alone
    with torch.no_grad():
        ref = vae.decode(Z).sample  # (2, 3, 6 * 3 - 5, 40, 56)
        assert ref.shape == (2, 3, 13, 40, 56)
        assert_exact_at_every_budget(vae, Z, ref, budgets=budgets(vae, tuple(Z.shape)))


@pytest.mark.parametrize("mutation", ["zero border", "all frames' statistics"])
def test_the_border_and_each_frames_statistics_matter(mochi, monkeypatch, mutation):
    if mutation == "zero border":
        zero_borders(monkeypatch)
    else:
        program_for = vaekit.arch.program_for
        monkeypatch.setattr("vaekit.api.program_for", lambda vae, op: dataclasses.replace(program_for(vae, op),
                                                                                           frame_stats="all"))
    with torch.no_grad():
        ref = mochi.decode(Z).sample
        out = vaekit.decode(mochi, Z, budgets(mochi, tuple(Z.shape))["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def _video(frames: int, h: int, w: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, frames, h, w, generator=torch.Generator().manual_seed(frames)) * 2 - 1


@pytest.mark.parametrize("frames, h, w", [(13, 40, 56), (10, 24, 40), (1, 40, 56)])
def test_encode_is_exact_at_every_budget(mochi, frames, h, w):
    """Whole runs of 6k + 1 frames and of others (the model floors), and one frame (its attention then
    projects the values alone)."""
    x = _video(frames, h, w)
    with torch.no_grad():
        ref = mochi.encode(x).latent_dist.mode()
    assert ref.shape == (2, 4, 1 + (frames - 1) // 6, h // 8, w // 8)
    assert_exact_at_every_budget(mochi, x, ref, "encode", budgets=budgets(mochi, tuple(x.shape), "encode"))


@pytest.mark.parametrize("mutation", ["attention not causal", "other frequencies", "all frames' statistics"])
def test_the_encoders_causal_attention_features_and_statistics_matter(mochi, monkeypatch, mutation):
    import vaekit.ops.act as act
    import vaekit.ops.attention as attention

    if mutation == "attention not causal":  # in vaekit's kernel only (the model's own stays causal)
        functional = torch.nn.functional

        class NotCausal:
            def __getattr__(self, name):
                return getattr(functional, name)

            @staticmethod
            def scaled_dot_product_attention(*args, is_causal=False, **kwargs):
                return functional.scaled_dot_product_attention(*args, **kwargs)

        monkeypatch.setattr(attention, "F", NotCausal())
    elif mutation == "other frequencies":
        features = act.fourier_features
        monkeypatch.setattr(act, "fourier_features", lambda x: features(x, 5, 7))
    else:
        program_for = vaekit.arch.program_for
        monkeypatch.setattr("vaekit.api.program_for", lambda vae, op: dataclasses.replace(program_for(vae, op),
                                                                                           frame_stats="all"))
    x = _video(13, 40, 56)
    with torch.no_grad():
        ref = mochi.encode(x).latent_dist.mode()
        out = vaekit.encode(mochi, x, budgets(mochi, tuple(x.shape), "encode")["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def test_encode_under_apply_and_compiled(mochi):
    x = _video(7, 24, 40, batch=1)
    with torch.no_grad():
        ref, out = with_and_without_apply(mochi, lambda: mochi.encode(x).latent_dist.mode(),
                                          budgets(mochi, tuple(x.shape), "encode")["smallest"])
        assert relative_error(out, ref) <= REL_TOL
        compiled = vaekit.encode(mochi, x, budgets(mochi, tuple(x.shape), "encode")["mixed"], compile=True)
    assert relative_error(compiled, ref) <= REL_TOL


def test_the_pipeline_is_the_same_under_apply():
    """MochiPipeline (a tiny transformer, prompt embeddings passed, no text encoder)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(0)
    transformer = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                          pooled_projection_dim=16, in_channels=12, out_channels=None,
                                          qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
                                          activation_fn="swiglu", max_sequence_length=16)
    transformer.pos_frequencies.data = transformer.pos_frequencies.new_full(transformer.pos_frequencies.shape, 0)
    vae = make(latent_channels=12)
    pipe = MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    kw = dict(prompt_embeds=torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(0)),
              prompt_attention_mask=torch.ones(1, 16, dtype=torch.long), num_inference_steps=2, guidance_scale=1.0,
              height=32, width=48, num_frames=13, output_type="pt")

    def run():
        return pipe(**kw, generator=torch.Generator().manual_seed(0)).frames

    ref, out = with_and_without_apply(pipe, run, budgets(vae, (1, 12, 3, 4, 6))["smallest"])
    assert out.shape == ref.shape == (1, 13, 3, 32, 48) and relative_error(out, ref) <= REL_TOL


def test_comfyuis_computation_streams_exactly_too():
    """The model as the ComfyUI bridge sets it (genmo's computation): up blocks that drop their first t - 1
    frames as they unfold them, no drop at the end, an encoder attention that is not causal. Exact both
    ways, and not diffusers' video (test_comfyui.py compares it with ComfyUI's own)."""
    from vaekit.integrations.comfyui_bridges import _unfold_then_drop

    vae, ref_vae = make(), make()
    vae.drop_last_temporal_frames = False
    for block in vae.decoder.up_blocks:
        block.__class__ = _unfold_then_drop()
    for block in (*vae.encoder.down_blocks, vae.encoder.block_out):
        for attn in block.attentions:
            attn.is_causal = False
    x = _video(13, 40, 56)
    with torch.no_grad():
        ref = vae.decode(Z).sample
        assert ref.shape == (2, 3, 13, 40, 56) and relative_error(ref, ref_vae.decode(Z).sample) > 100 * REL_TOL
        assert_exact_at_every_budget(vae, Z, ref, budgets=budgets(vae, tuple(Z.shape)))
        ref = vae.encode(x).latent_dist.mode()
        assert relative_error(ref, ref_vae.encode(x).latent_dist.mode()) > 100 * REL_TOL
        assert_exact_at_every_budget(vae, x, ref, "encode", budgets=budgets(vae, tuple(x.shape), "encode"))
