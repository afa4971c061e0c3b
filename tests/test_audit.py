"""audit: every boundary of a pipeline (text encoders -> denoiser -> VAE), on tiny pipelines built
from config dicts with real text-encoder classes from transformers."""

from __future__ import annotations

import pytest
import torch

from conftest import make_vae
from vaekit.audit import audit

transformers = pytest.importorskip("transformers")

TOKENS = dict(vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=0)


def gemma(dtype=torch.bfloat16, norm_weight=None):
    torch.manual_seed(0)
    model = transformers.Gemma2Model(transformers.Gemma2Config(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        head_dim=8, **TOKENS)).eval()
    if norm_weight is not None:  # outputs past float16's range, as a real encoder's can reach
        with torch.no_grad():
            model.norm.weight.fill_(norm_weight)
    return model.to(dtype)


def clip(dtype=torch.float32):
    torch.manual_seed(1)
    return transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
        projection_dim=16, **TOKENS)).eval().to(dtype)


def t5(dtype=torch.float32, ff_scale=1.0):
    torch.manual_seed(2)
    model = transformers.T5EncoderModel(transformers.T5Config(d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                                                              **TOKENS)).eval()
    with torch.no_grad():  # T5's known float16 failure: a feed-forward past 65504, normalized away after
        model.encoder.block[0].layer[1].DenseReluDense.wo.weight.mul_(ff_scale)
    return model.to(dtype)


def sana(text_encoder, transformer_dtype=torch.float16):
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    from test_dc import make_dc

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8,
                                         num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                         cross_attention_dim=16, caption_channels=16, sample_size=8, patch_size=1)
    return SanaPipeline(tokenizer=None, text_encoder=text_encoder, vae=make_dc("sana").to(torch.bfloat16),
                        transformer=transformer.to(transformer_dtype), scheduler=FlowMatchEulerDiscreteScheduler())


def by_name(findings):
    return {f.component: f for f in findings}


def test_the_sana_report_bf16_text_encoder_and_vae_beside_an_fp16_transformer():
    pipe = sana(gemma(torch.bfloat16))
    found = by_name(audit(pipe))
    assert "feeds the float16 transformer" in found["text_encoder"].problem and "reaches" in found["text_encoder"].problem
    assert "denoiser is float16" in found["vae"].problem and not found["transformer"].problem
    assert pipe.text_encoder.dtype == torch.bfloat16  # audit alone changes nothing
    fixed = by_name(audit(pipe, fix=True))
    assert fixed["text_encoder"].fixed.startswith("now float16") and pipe.text_encoder.dtype == torch.float16
    assert fixed["vae"].fixed == "now float32" and pipe.vae.dtype == torch.float32  # DC-AE: no force_upcast=False
    assert not any(f.problem for f in audit(pipe))


def test_an_encoder_that_overflows_float16_is_left_and_put_back_exactly():
    pipe = sana(gemma(torch.bfloat16, norm_weight=2e5))  # embeddings past 65504
    before = {n: t.clone() for n, t in pipe.text_encoder.state_dict().items()}
    found = by_name(audit(pipe, fix=True))["text_encoder"]
    assert "reaches" in found.problem and "e+05" in found.problem
    assert found.fixed.startswith("left bfloat16: in float16 it overflows at norm") and "bfloat16" in found.fixed
    after = pipe.text_encoder.state_dict()
    assert all(after[n].dtype == t.dtype and torch.equal(after[n], t) for n, t in before.items())


def test_sd3_three_encoders_measured_one_by_one():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32).half()
    vae = make_vae("flux")
    vae.register_to_config(force_upcast=False)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                    vae=vae.half(), text_encoder=clip(), tokenizer=None, text_encoder_2=clip(),
                                    tokenizer_2=None, text_encoder_3=t5(ff_scale=1e6), tokenizer_3=None)
    found = by_name(audit(pipe, fix=True))
    assert found["text_encoder"].fixed.startswith("now float16") and found["text_encoder_2"].fixed.startswith("now")
    assert found["text_encoder_3"].fixed.startswith("left float32: in float16 it overflows at encoder.block.0")
    assert pipe.text_encoder_3.dtype == torch.float32 and not found["vae"].problem


def test_narrower_producers_and_matching_dtypes_are_fine():
    pipe = sana(gemma(torch.float16), transformer_dtype=torch.bfloat16)  # float16 values fit bfloat16's range
    assert not by_name(audit(pipe))["text_encoder"].problem
    pipe = sana(gemma(torch.float16))
    pipe.vae.to(torch.float32)  # a VAE wider than the denoiser, where float16 is not known safe for it
    assert not any(f.problem for f in audit(pipe)), audit(pipe)
class _Pipe:
    """What audit reads from a diffusers pipeline: ``components``."""

    def __init__(self, **components):
        self.components = components


def test_audit_flags_and_fixes_a_vae_that_disagrees_with_the_denoiser():
    transformer = torch.nn.Linear(4, 4).half()
    vae = make_vae("noattn").to(torch.bfloat16)
    vae.register_to_config(force_upcast=False)
    pipe = _Pipe(transformer=transformer, vae=vae, scheduler=object())
    findings = {f.component: f for f in audit(pipe)}
    assert set(findings) == {"transformer", "vae"}
    assert "denoiser is float16" in findings["vae"].problem and not findings["transformer"].problem
    assert vae.dtype == torch.bfloat16  # audit alone changes nothing
    fixed = {f.component: f for f in audit(pipe, fix=True)}
    assert fixed["vae"].fixed == "now float16" and vae.dtype == torch.float16
    assert not any(f.problem for f in audit(pipe))


def test_audit_sends_an_fp16_unsafe_vae_to_float32():
    pipe = _Pipe(unet=torch.nn.Linear(4, 4).half(), vae=make_vae("noattn").half())  # SD: force_upcast
    vae_finding = next(f for f in audit(pipe, fix=True) if f.component == "vae")
    assert vae_finding.fixed == "now float32" and pipe.components["vae"].dtype == torch.float32
