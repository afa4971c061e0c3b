"""The TAESD family of tiny autoencoders (madebyollin/taesd), built from their original ``.pth`` weights.

Each network is written as data below, one row per layer; the layers are an ``nn.Sequential`` in
that order, so the upstream state-dict keys ("0.weight", "3.conv.0.weight", "4.pool.1.weight")
line up. Images are [-1, 1] at this module's boundary (the diffusers convention, as
``AutoencoderTiny``); the networks themselves see [0, 1]. Latents need no scaling factor.

    variant   latent ch  scale  notes
    taesd          4       8    SD 1.x/2.x latents
    taesdxl        4       8    SDXL latents (same architecture as taesd)
    taesd3        16       8    SD3 latents
    taef1         16       8    FLUX.1 latents (same architecture as taesd3)
    taef2         32       8    FLUX.2 latents; mid blocks add a GroupNorm "pool" branch
    taesana       32      32    Sana (DC-AE f32c32) latents; wider decoder, two stride-2 stem convs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["VARIANTS", "Variant", "TinyAutoencoder", "Block", "Clamp", "encoder_layers", "decoder_layers"]

WIDTH = 64  #: channels of the 8x networks
POOL_WIDTH = 256  #: channels inside the GroupNorm pool branch
POOL_GROUPS = 4


@dataclass(frozen=True)
class Variant:
    name: str
    latent_channels: int
    scale: int  # image px per latent px
    pooled: bool = False  # TAEF2: GroupNorm pool branch in the mid blocks


VARIANTS = {v.name: v for v in (
    Variant("taesd", 4, 8), Variant("taesdxl", 4, 8), Variant("taesd3", 16, 8), Variant("taef1", 16, 8),
    Variant("taef2", 32, 8, pooled=True), Variant("taesana", 32, 32),
)}


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """ReLU(conv-relu-conv-relu-conv(x) + skip(x)), after x + pool(x) in the pooled variant."""

    def __init__(self, n_in: int, n_out: int, pooled: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooled:
            self.pool = nn.Sequential(nn.Conv2d(n_in, POOL_WIDTH, 1, bias=False), nn.GroupNorm(POOL_GROUPS, POOL_WIDTH),
                                      nn.ReLU(), nn.Conv2d(POOL_WIDTH, n_in, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, stride=stride, bias=bias)


# ---- the networks as rows ------------------------------------------------------------------------
# ("conv", n_in, n_out[, stride, bias]) | ("relu",) | ("clamp",) | ("block", n, pooled) | ("up",)


def _encoder_rows(v: Variant) -> list[tuple]:
    if v.scale == 32:
        rows = [("conv", 3, 32, 2), ("relu",), ("conv", 32, WIDTH, 2), ("relu",), ("block", WIDTH, False)]
    else:
        rows = [("conv", 3, WIDTH), ("block", WIDTH, False)]
    for level in range(3):
        pooled = v.pooled and level == 2  # the last three blocks, at the latent resolution
        rows += [("conv", WIDTH, WIDTH, 2, False)] + [("block", WIDTH, pooled)] * 3
    return rows + [("conv", WIDTH, v.latent_channels)]


def _decoder_rows(v: Variant) -> list[tuple]:
    widths = (256, 128, 64, 64, 64, 64) if v.scale == 32 else (WIDTH,) * 4
    rows = [("clamp",), ("conv", v.latent_channels, widths[0]), ("relu",)]
    for level, (n, n_next) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        pooled = v.pooled and level == 0  # the first three blocks, at the latent resolution
        rows += [("block", n, pooled)] * 3 + [("up",), ("conv", n, n_next, 1, False)]
    return rows + [("block", widths[-1], False), ("conv", widths[-1], 3)]


def _layers(rows: list[tuple]) -> nn.Sequential:
    make = {"conv": lambda n_in, n_out, stride=1, bias=True: _conv(n_in, n_out, stride, bias),
            "relu": nn.ReLU, "clamp": Clamp, "block": lambda n, pooled: Block(n, n, pooled),
            "up": lambda: nn.Upsample(scale_factor=2)}
    return nn.Sequential(*(make[kind](*args) for kind, *args in rows))


def encoder_layers(variant: str) -> nn.Sequential:
    return _layers(_encoder_rows(VARIANTS[variant]))


def decoder_layers(variant: str) -> nn.Sequential:
    return _layers(_decoder_rows(VARIANTS[variant]))


class TinyAutoencoder(nn.Module):
    """A TAESD-family encoder and/or decoder; either may be None when only one ``.pth`` was loaded."""

    def __init__(self, variant: str, encoder: bool = True, decoder: bool = True):
        super().__init__()
        self.variant = VARIANTS[variant]
        self.encoder = encoder_layers(variant) if encoder else None
        self.decoder = decoder_layers(variant) if decoder else None

    @property
    def latent_channels(self) -> int:
        return self.variant.latent_channels

    @property
    def scale_factor(self) -> int:
        return self.variant.scale

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> latents (untiled)."""
        return self.encoder(images.add(1).div(2))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> [-1, 1] images (untiled)."""
        return self.decoder(latents).mul(2).sub(1)
