"""Shared helper for arch/ files: append stages, name maps, and route GroupNorm statistics."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..program import CausalConvStage, ConvStage, MapSpec, Program, Stage

__all__ = ["ProgramBuilder", "LinearConv", "frames_first", "repeat_padded"]


class ProgramBuilder:
    """Builds a Program stage by stage.

    When a stage normalizes its source with a GroupNorm, the builder tells the stage that wrote
    that source to collect the statistics for it.
    """

    def __init__(self, op: str, in_channels: int, frame_stats: str = "each"):
        self.op, self.frame_stats = op, frame_stats
        self.maps: dict[str, MapSpec] = {}
        self.stages: list[Stage] = []
        self._writer: dict[str, int] = {}
        self.caches: list[tuple[str, str]] = []
        self.input = self.new_map(in_channels, name="input")

    def new_map(self, channels: int, name: str | None = None) -> str:
        name = name or f"m{len(self.maps)}"
        self.maps[name] = MapSpec(name, channels)
        return name

    def add(self, stage: Stage, norm: nn.Module | None = None) -> str:
        """Append ``stage``; ``norm`` is the norm it applies to its source, if any (a GroupNorm needs
        statistics from the stage that writes the source)."""
        if isinstance(norm, nn.GroupNorm):
            writer = self._writer.get(stage.src)
            if writer is None:
                raise UnsupportedModelError(f"{stage.name}: GroupNorm on the program input is not supported")
            previous = self.stages[writer]
            if previous.stats_groups not in (None, norm.num_groups):
                raise UnsupportedModelError(f"{stage.name}: two GroupNorms with different groups read one map")
            self.stages[writer] = dataclasses.replace(previous, stats_groups=norm.num_groups)
        if stage.dst is not None:
            self._writer[stage.dst] = len(self.stages)
        self.stages.append(stage)
        return stage.dst

    def conv(self, name: str, src: str, conv: nn.Conv2d, **options) -> str:
        """Append a ConvStage from ``src`` into a new map; options are ConvStage fields."""
        dst = self.new_map(conv.out_channels)
        return self.add(ConvStage(name, src, dst, conv, **options), norm=options.get("norm"))

    def causal(self, name: str, src: str, conv: nn.Module, dst: str | None = None, **options) -> str:
        """Append a CausalConvStage from ``src`` into ``dst`` (default: a new map); a conv with more
        than one time tap, padded by the time cache (Wan), gets its cache: a pair of maps named after
        the stage."""
        dst = dst or self.new_map(self._causal_channels(conv, options))
        cache = cache_out = None
        if conv.kernel_size[0] > 1 and options.get("time_pad", "cache") == "cache":
            cache = self.new_map(conv.in_channels, name=f"{name}.cache")
            cache_out = self.new_map(conv.in_channels, name=f"{name}.cache_out")
            self.caches.append((cache, cache_out))
        return self.add(CausalConvStage(name, src, dst, conv, cache, cache_out, **options), norm=options.get("norm"))

    @staticmethod
    def _causal_channels(conv: nn.Module, options: dict) -> int:
        """Channels a CausalConvStage writes: its conv's, through the output's rearrangements."""
        folded = options.get("time_unshuffle", 1) * options.get("unshuffle", 1) ** 2
        unfolded = options.get("time_split", 1) * options.get("time_shuffle", 1) * options.get("shuffle", 1) ** 2
        return conv.out_channels * folded // unfolded + options.get("repeat_last", 0)

    def build(self, output: str) -> Program:
        return Program(self.op, self.input, output, dict(self.maps), tuple(self.stages), tuple(self.caches),
                       self.frame_stats)


class LinearConv(nn.Module):
    """A linear layer per token (MiniMax H3's, Mochi's) seen as the 1x1x1 conv that a CausalConvStage
    runs: its weights a view; with ``order``, its output channels reordered (a copy)."""

    def __init__(self, linear: nn.Linear, order: torch.Tensor | None = None):
        super().__init__()
        weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        if order is not None:
            weight, bias = weight[order.to(weight.device)], None if bias is None else bias[order.to(bias.device)]
        self.in_channels, self.out_channels = linear.in_features, linear.out_features
        self.kernel_size, self.stride, self.dilation, self.groups = (1, 1, 1), (1, 1, 1), (1, 1, 1), 1
        self.weight = nn.Parameter(weight[:, :, None, None, None], requires_grad=False)  # (C_out, C_in, 1, 1, 1)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)


def frames_first(channels: int, frames: int, pixels: int) -> torch.Tensor:
    """The order that takes a depth-to-space layer's output channels from (c, t, pixel) to (t, c, pixel):
    the order CausalConvStage unfolds them, frames (time_split) then pixels (a pixel shuffle)."""
    return torch.arange(channels * frames * pixels).view(channels, frames, pixels).transpose(0, 1).flatten()


def repeat_padded(causal: nn.Module, strides=((1, 1, 1),)) -> nn.Conv3d | None:
    """The Conv3d of a causal conv padded by repeating (HunyuanVideo 1.0 and 1.5, Mochi: F.pad "replicate"
    by its time_causal_padding): copies of the first frame in front, the edge rows and columns; one of
    ``strides``. None when it is not such a conv."""
    conv = causal.conv
    kt, kh, kw = conv.kernel_size
    padded = (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0)
    same = kh == kw and kh % 2 == 1 and conv.padding == (0, 0, 0) and conv.dilation == (1, 1, 1) and conv.groups == 1
    repeats = getattr(causal, "pad_mode", None) == "replicate" and tuple(causal.time_causal_padding) == padded
    return conv if same and repeats and conv.stride in strides else None
