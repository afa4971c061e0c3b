"""The element-wise functions a stage applies before its conv or after its skip add (program.ACTIVATIONS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["activate", "fourier_features"]


def activate(x: torch.Tensor, name: str | None, inplace: bool = False) -> torch.Tensor:
    """Apply one of program.ACTIVATIONS; ``inplace`` when ``x`` is a temporary the caller owns."""
    if name is None:
        return x
    if name == "silu":
        return F.silu(x, inplace=inplace)
    if name == "relu":
        return x.relu_() if inplace else x.relu()
    if name == "tanh_clamp":
        return torch.tanh(x / 3) * 3
    if name == "from_signed":
        return x.add_(1).div_(2) if inplace else x.add(1).div(2)
    if name == "clamp":
        return x.clamp_(-1, 1) if inplace else x.clamp(-1, 1)
    if name == "to_signed":
        return x.mul_(2).sub_(1) if inplace else x.mul(2).sub(1)
    if name == "fourier":
        return fourier_features(x)
    raise ValueError(f"unknown activation {name!r}")


def fourier_features(x: torch.Tensor, start: int = 6, stop: int = 8) -> torch.Tensor:
    """Mochi's FourierFeatures of a channels-last band, computed as diffusers computes them (float32):
    [x, sin(w x), cos(w x)] with w = 2^k * 2 pi for k in [start, stop), each channel's frequencies side
    by side."""
    dtype, x = x.dtype, x.float()
    freqs = torch.arange(start, stop, dtype=torch.float32, device=x.device)
    w = (torch.pow(2.0, freqs) * (2 * torch.pi)).repeat(x.shape[-1])  # (C * freqs,)
    h = w * x.repeat_interleave(stop - start, dim=-1)  # (..., C * freqs)
    return torch.cat([x, torch.sin(h), torch.cos(h)], dim=-1).to(dtype)
