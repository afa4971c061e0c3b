"""``vaekit examples make DIR``: the small models and files the docs' examples name, made offline.

    sd-vae/          AutoencoderKL (SD's architecture, narrow: 32-64 channels, 3 levels)
    wan-vae/         AutoencoderKLWan (Wan 2.1's, 8 base channels)
    ltx2-vae/        AutoencoderKLLTX2Video (LTX-2's 32x and 8x compression, 128 latent channels)
    hunyuan15-vae/   AutoencoderKLHunyuanVideo15 (its 16x and 4x compression)
    minimax-vae/     AutoencoderKLMiniMaxH3 (16x and 4x)
    sd-pipeline/     StableDiffusionPipeline: sd-vae, a small UNet, a CLIP text encoder and a tokenizer
                     of bytes (no vocabulary file to download)
    latents.pt       SD latents (1, 4, 24, 20)
    photo.png        scikit-image's astronaut at 96x96

Seeded random weights of the real classes (saved with ``save_pretrained``): the examples run exactly as
they would on the released models, small enough for a laptop's CPU; the pictures they make are not
meaningful. ``tests/test_docs.py`` makes its folder with this, so the docs and the tests agree.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["make", "MODELS"]

#: folder -> (diffusers class, config); each seeded, its norms perturbed so every term matters
MODELS = {
    "sd-vae": ("AutoencoderKL", dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4,
                                     norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 3,
                                     up_block_types=("UpDecoderBlock2D",) * 3)),
    "wan-vae": ("AutoencoderKLWan", dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)),
    "ltx2-vae": ("AutoencoderKLLTX2Video", dict(
        in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(8, 16, 16, 16),
        decoder_block_out_channels=(16, 32, 64), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True), upsample_factor=(2, 2, 2), timestep_conditioning=False,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False, encoder_spatial_padding_mode="zeros",
        decoder_spatial_padding_mode="reflect", spatial_compression_ratio=32, temporal_compression_ratio=8)),
    "hunyuan15-vae": ("AutoencoderKLHunyuanVideo15", dict(latent_channels=32, block_out_channels=(8, 16, 16, 32, 64),
                                                          layers_per_block=1, spatial_compression_ratio=16,
                                                          temporal_compression_ratio=4)),
    "minimax-vae": ("AutoencoderKLMiniMaxH3", dict(latent_channels=24, block_out_channels=(8, 8, 16, 16),
                                                   layers_per_block=1, spatial_downsample_factors=(2, 2, 2, 2),
                                                   temporal_downsample_factors=(1, 2, 2, 1), norm_num_groups=4,
                                                   decoder_num_layers=2, decoder_num_attention_heads=2,
                                                   decoder_attention_head_dim=16, decoder_ffn_mult=2)),
}


def model(name: str, seed: int = 0):
    """The seeded model of ``MODELS[name]``."""
    import diffusers

    cls, config = MODELS[name]
    torch.manual_seed(seed)
    vae = getattr(diffusers, cls)(**config).eval()
    with torch.no_grad():  # random init leaves norms at 1/0 and MiniMax H3's layer scales at 0
        for module in vae.modules():
            if cls == "AutoencoderKLMiniMaxH3":
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
            elif hasattr(module, "gamma"):
                module.gamma.normal_(1.0, 0.2)
    if hasattr(vae, "disable_tiling"):
        vae.disable_tiling()  # MiniMax H3 ships with tiling on: the examples compare to the untiled call
    return vae


def _tokenizer():
    """A CLIP tokenizer with no merges: every byte's character, alone or ending a word (514 tokens)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": i + len(chars) for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def sd_pipeline():
    """A StableDiffusionPipeline of sd-vae, a small UNet and a CLIP text encoder: it takes prompts."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8).eval()
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id)).eval()
    pipe = diffusers.StableDiffusionPipeline(vae=model("sd-vae"), text_encoder=text_encoder, tokenizer=tokenizer,
                                             unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False, steps_offset=1),
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make(folder) -> list[Path]:
    """Write every example model and file into ``folder`` (made if missing); returns what was written."""
    from ..extras import require
    from ..io import output_folder

    folder = output_folder(folder, "the examples (DIR)")
    require("transformers", "the example pipeline's text encoder")
    data = require("skimage.data", "the example photo")
    import diffusers
    import transformers
    from PIL import Image

    diffusers.utils.logging.set_verbosity_error()  # their notes on a made-up config are not the user's concern
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    written = []
    for name in MODELS:
        model(name).save_pretrained(folder / name)
        written.append(folder / name)
    sd_pipeline().save_pretrained(folder / "sd-pipeline")
    torch.save(torch.randn(1, 4, 24, 20, generator=torch.Generator().manual_seed(0)), folder / "latents.pt")
    Image.fromarray(data.astronaut()).resize((96, 96)).save(folder / "photo.png")
    return [*written, folder / "sd-pipeline", folder / "latents.pt", folder / "photo.png"]
