"""Model configs used by the demo, the benchmark and the tests, and local model loading."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import CheckpointError

__all__ = ["SD_VAE_CONFIG", "SANA_DC_CONFIG", "HUNYUAN_IMAGE_CONFIG", "sd_vae", "sana_dc", "hunyuan_image", "load_model",
           "meta_model"]

#: Stable Diffusion 1.x/2.x VAE architecture (diffusers AutoencoderKL config)
SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=512, scaling_factor=0.18215,
)


def sd_vae(seed: int = 0, **overrides):
    """An SD-architecture AutoencoderKL with seeded random weights (no download)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{**SD_VAE_CONFIG, **overrides}).eval()


#: Sana's DC-AE (mit-han-lab/dc-ae-f32c32-sana-1.0, diffusers AutoencoderDC config): 32x down, 32 latent channels
SANA_DC_CONFIG = dict(
    in_channels=3, latent_channels=32, attention_head_dim=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024), decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=0.41407,
)


def sana_dc(seed: int = 0, **overrides):
    """A Sana-architecture AutoencoderDC with seeded random weights (no download)."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    return AutoencoderDC(**{**SANA_DC_CONFIG, **overrides}).eval()


#: HunyuanImage 2.1's VAE (hunyuanvideo-community/HunyuanImage-2.1-Diffusers, vae/config.json): 32x down, 64 channels
HUNYUAN_IMAGE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=64, block_out_channels=(128, 256, 512, 512, 1024, 1024),
    layers_per_block=2, spatial_compression_ratio=32, sample_size=512, scaling_factor=0.75289,
)


def hunyuan_image(seed: int = 0):
    """A HunyuanImage-2.1-architecture AutoencoderKLHunyuanImage with seeded random weights (no download)."""
    from diffusers import AutoencoderKLHunyuanImage

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanImage(**HUNYUAN_IMAGE_CONFIG).eval()


def _config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a diffusers model folder: it has no config.json")
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_file}: {e}") from None


def _model_class(config: dict, path: Path):
    import diffusers

    name = config.get("_class_name", "AutoencoderKL")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise CheckpointError(f"{path}: unknown model class {name!r} in config.json")
    return cls


def load_model(path, dtype: torch.dtype | None = None):
    """A diffusers VAE folder (config.json + safetensors/bin weights), loaded offline."""
    path = Path(path)
    cls = _model_class(_config(path), path)
    try:
        model = cls.from_pretrained(path, local_files_only=True, torch_dtype=dtype, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot load the model in {path}: {e}") from None
    return model.eval()


def meta_model(path):
    """The model of a diffusers folder built on the meta device from its config alone (for planning)."""
    path = Path(path)
    config = _config(path)
    cls = _model_class(config, path)
    with torch.device("meta"):
        return cls.from_config(config)
