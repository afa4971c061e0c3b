"""HunyuanVideo 1.5's VAE (AutoencoderKLHunyuanVideo15): the whole video in one chunk, streamed in rows,
equal to diffusers' own untiled decode and encode; convs padded by repeating (the first frame in front,
the edge rows and columns), the mid block's attention across frames with a causal mask, resamplers that
pack pixels and pairs of frames into channels with the first frame alone."""

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15

import vaekit
from conftest import REL_TOL, relative_error, zero_borders
from conftest import whole_video_budgets as budgets
from vaekit.arch import program_for
from vaekit.errors import InputError

#: HunyuanVideo 1.5's structure (two temporal and three spatial resamplings, an attention in the mid
#: block), narrow
SMALL = dict(latent_channels=8, block_out_channels=(8, 16, 32, 32), layers_per_block=1, spatial_compression_ratio=8,
             temporal_compression_ratio=4)


def make(seed: int = 0, **changes):
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(**{**SMALL, **changes}).eval()
    with torch.no_grad():
        for module in vae.modules():  # the RMS norms' gamma starts at 1: perturb so every term matters
            if hasattr(module, "gamma"):
                module.gamma.normal_(1.0, 0.2)
    return vae


@pytest.fixture(scope="module")
def hv15():
    return make()


Z = torch.randn(1, 8, 3, 5, 7, generator=torch.Generator().manual_seed(0))  # 3 latent frames, odd latent px
X = torch.rand(1, 3, 9, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 1 + 4 * 2 frames


@pytest.mark.parametrize("op", ["decode", "encode"])
def test_exact_at_every_budget(hv15, op):
    x = Z if op == "decode" else X
    with torch.no_grad():
        ref = hv15.decode(x).sample if op == "decode" else hv15.encode(x).latent_dist.mode()
        for name, budget in budgets(hv15, tuple(x.shape), op).items():
            report = vaekit.RunReport()
            out = (vaekit.decode if op == "decode" else vaekit.encode)(hv15, x, budget, report=report)
            assert report.mode == ("whole" if name == "whole" else "stream"), (op, name)
            assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL, (op, name)


@pytest.mark.parametrize("mutation", ["attention within each frame", "zero border"])
def test_the_causal_attention_and_the_border_matter(hv15, monkeypatch, mutation):
    """Attention within each frame only, or zero rows at the border instead of repeated ones, are far
    off: the exactness test above would catch either."""
    from vaekit.ops import attention

    if mutation == "attention within each frame":
        monkeypatch.setattr(attention._Frames, "mask", lambda self, keys, device: (
            torch.arange(self.f, device=device).repeat_interleave(keys)[None, :]
            == torch.arange(self.f, device=device).repeat_interleave(self.per_frame)[:, None]))
    else:
        zero_borders(monkeypatch)
    with torch.no_grad():
        ref = hv15.decode(Z).sample
        out = vaekit.decode(hv15, Z, budgets(hv15, tuple(Z.shape))["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def test_frames_the_encoder_cannot_pack_are_refused(hv15):
    with pytest.raises(InputError, match=r"1 \+ 4k frames"):
        vaekit.encode(hv15, X[:, :, :8])


def test_apply_streams_the_decode_and_encode(hv15):
    with torch.no_grad():
        ref_z, ref_x = hv15.decode(Z).sample, hv15.encode(X).latent_dist.mode()
        report = vaekit.RunReport()
        vaekit.apply(hv15, budget=budgets(hv15, tuple(Z.shape))["smallest"], report=report)
        try:
            out = hv15.decode(Z, return_dict=False)[0]
            assert report.mode == "stream" and relative_error(out, ref_z) <= REL_TOL
            assert relative_error(hv15.encode(X).latent_dist.mode(), ref_x) <= REL_TOL
        finally:
            vaekit.unapply(hv15)


def test_a_batch_is_each_video_as_the_model_decodes_it_alone(hv15):
    """diffusers' own attention fails on a batch of two (its causal mask is (B, N, N) where SDPA wants
    (B, 1, N, N)); vaekit decodes a batch as the model decodes each video alone."""
    z = torch.cat([Z, Z.flip(-1)])
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            hv15.decode(z)
        ref = torch.cat([hv15.decode(z[:1]).sample, hv15.decode(z[1:]).sample])
        out = vaekit.decode(hv15, z, budgets(hv15, tuple(z.shape))["smallest"])
    assert relative_error(out, ref) <= REL_TOL


@pytest.mark.parametrize("kv_rows", [1, 2, None])
def test_attention_across_frames_in_key_blocks(hv15, kv_rows):
    """The mid block's attention, queries a band of rows at a time against keys in blocks of rows (the
    online softmax) or all at once, equals the model's own block on the whole video."""
    from vaekit.ops.attention import attention_band, kv_band
    from vaekit.program import AttentionStage, KeyValueStage
    from vaekit.run import stage_weights

    stages = program_for(hv15, "decode").stages
    kv_stage = next(s for s in stages if isinstance(s, KeyValueStage))
    query = next(s for s in stages if isinstance(s, AttentionStage))
    x = torch.randn(1, 32, 3, 5, 7, generator=torch.Generator().manual_seed(5))  # (B, C, F, H, W)
    with torch.no_grad():
        ref = hv15.decoder.mid_block.attentions[0](x)
        maps = {kv_stage.src: x.permute(0, 2, 3, 4, 1).flatten(0, 1)}  # (B*F, H, W, C)
        read = lambda name, a, b: maps[name][:, a:b]  # noqa: E731
        maps[kv_stage.dst] = kv_band(kv_stage, stage_weights(kv_stage, "cpu", torch.float32), read, {}, 0, 5, 5, 5)
        w = stage_weights(query, "cpu", torch.float32)
        bands = [attention_band(query, w, read, {}, r0, min(r0 + 2, 5), 5, 5, kv_rows, samples=1) for r0 in (0, 2, 4)]
    out = torch.cat(bands, dim=1).unflatten(0, (1, 3)).permute(0, 4, 1, 2, 3)
    assert relative_error(out, ref) <= REL_TOL


def test_hunyuan_video15_pipeline_is_the_same_under_apply(hv15):
    """HunyuanVideo15Pipeline around the small VAE, a tiny transformer (diffusers' own test sizes) and
    no text encoders: the test passes both prompt embeddings as they would make them."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel
    from diffusers.guiders import ClassifierFreeGuidance

    torch.manual_seed(0)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * 8 + 1, out_channels=8, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=32,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v")
    pipe = HunyuanVideo15Pipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=hv15,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=None,
                                  tokenizer_2=None, guider=ClassifierFreeGuidance(guidance_scale=1.0))
    g = torch.Generator().manual_seed(0)
    kw = dict(prompt_embeds=torch.randn(1, 6, 16, generator=g), prompt_embeds_mask=torch.ones(1, 6),
              prompt_embeds_2=torch.randn(1, 4, 32, generator=g), prompt_embeds_mask_2=torch.ones(1, 4),
              num_inference_steps=2, height=40, width=56, num_frames=9, output_type="pt")
    ref = pipe(**kw, generator=torch.Generator().manual_seed(1)).frames
    report = vaekit.RunReport()
    vaekit.apply(pipe, budgets(hv15, (1, 8, 3, 5, 7))["smallest"], report=report)
    try:
        out = pipe(**kw, generator=torch.Generator().manual_seed(1)).frames
    finally:
        vaekit.unapply(pipe)
    assert report.mode == "stream" and out.shape == ref.shape == (1, 9, 3, 40, 56)
    assert relative_error(out, ref) <= REL_TOL


def test_compile_runs_these_stages_eagerly_and_exactly(hv15):
    """compile=True: the compiled graphs are Wan's kinds; HunyuanVideo 1.5's and LTX-2's stages run
    eagerly under it, with the same pixels."""
    with torch.no_grad():
        ref = hv15.decode(Z).sample
        out = vaekit.decode(hv15, Z, budgets(hv15, tuple(Z.shape))["mixed"], compile=True)
    assert relative_error(out, ref) <= REL_TOL
