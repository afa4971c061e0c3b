"""Precision policy: one dtype for the VAE, chosen once (``audit.py`` checks a whole pipeline's dtypes).

    device                              VAE dtype
    CPU                                 float32
    CUDA, capability >= 8.0             bfloat16  (real bf16 units; torch.cuda.is_bf16_supported()
                                                   also answers yes on GPUs that emulate it)
    CUDA, older                         float16 when the VAE is fp16-safe (config force_upcast False),
                                        else float32

The NaN/Inf guard that recovers from an overflowing stage lives in the executor (run.py).
"""

from __future__ import annotations

import torch

from .errors import PrecisionError

__all__ = ["choose_dtype", "bf16_units", "fp16_safe", "check_dtype"]

def bf16_units(device: torch.device | str) -> bool:
    """True where the device computes bf16 natively: any CPU (emulated but correct), CUDA capability 8.0+."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def fp16_safe(vae) -> bool:
    """diffusers' own flag: ``force_upcast`` False means the VAE was trained to stay in fp16 range."""
    config = getattr(vae, "config", None)
    return config is not None and getattr(config, "force_upcast", True) is False


def choose_dtype(vae, device: torch.device | str) -> torch.dtype:
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    if bf16_units(device):
        return torch.bfloat16
    return torch.float16 if fp16_safe(vae) else torch.float32


def check_dtype(dtype: torch.dtype, device: torch.device | str) -> None:
    """PrecisionError for a dtype the device cannot run well: bf16 without bf16 units."""
    if dtype == torch.bfloat16 and not bf16_units(device):
        cap = ".".join(map(str, torch.cuda.get_device_capability(torch.device(device))))
        raise PrecisionError(f"bfloat16 on {device} (compute capability {cap}) is emulated: use float16 for an "
                             "fp16-safe VAE, else float32 (vaekit.precision.choose_dtype picks for you)")
