"""A VAE written as data: the maps it produces and the stages that produce them.

A *map* is one activation tensor of the network (channels, and its size relative to the
input). A *stage* reads one map in bands of rows (plus a halo) and writes another. Stages end
where a global operator needs the whole previous map: every GroupNorm and every attention.
A stage that feeds a GroupNorm collects that norm's statistics on the way out.

Programs are built from the model's modules (``arch/``) but planned from shapes alone, so a
model on the meta device is enough to plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from torch import nn

__all__ = ["MapSpec", "ConvStage", "KeyValueStage", "AttentionStage", "Program", "Stage"]


@dataclass(frozen=True)
class MapSpec:
    """One activation map: ``channels`` at ``scale`` times the program input's height and width."""

    name: str
    channels: int
    scale: Fraction

    def hw(self, in_h: int, in_w: int) -> tuple[int, int]:
        """(height, width) of this map for an input of in_h x in_w."""
        return int(in_h * self.scale), int(in_w * self.scale)


@dataclass(frozen=True, eq=False)
class ConvStage:
    """dst = shortcut(skip) + conv(upsample?(act?(norm?(src)))), then / out_scale.

    ``norm`` uses global statistics of ``src`` collected by the stage that wrote it.
    ``dst`` may be ``skip`` itself: the stage then writes its output over its input, band by band
    (the skip rows are read once, at the same rows), so a residual block needs two maps, not three.
    """

    name: str
    src: str
    dst: str
    conv: nn.Conv2d
    norm: nn.GroupNorm | None = None
    act: bool = False
    upsample: bool = False
    skip: str | None = None
    shortcut: nn.Conv2d | None = None
    out_scale: float = 1.0
    stats_groups: int | None = None  # groups of the GroupNorm that reads dst next, if any

    @property
    def halo(self) -> int:
        """Rows each side the conv needs, at the conv's own resolution."""
        return self.conv.kernel_size[0] // 2

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src,) if self.skip is None else (self.src, self.skip)


@dataclass(frozen=True, eq=False)
class KeyValueStage:
    """Pass one of exact attention: keys and values of every token, side by side in one map
    (channels [0, inner) are K, [inner, 2*inner) are V)."""

    name: str
    src: str
    dst: str
    attn: nn.Module  # diffusers Attention
    stats_groups: int | None = None
    halo: int = 0
    upsample: bool = False

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src,)


@dataclass(frozen=True, eq=False)
class AttentionStage:
    """Pass two of exact attention: queries of a band of rows against all keys (in key blocks with
    an online softmax when they do not fit), output projection, residual add over ``src``."""

    name: str
    src: str
    kv: str
    dst: str
    attn: nn.Module  # diffusers Attention
    stats_groups: int | None = None
    halo: int = 0
    upsample: bool = False

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src, self.kv)


Stage = ConvStage | KeyValueStage | AttentionStage


@dataclass(frozen=True)
class Program:
    """What to run: ``stages`` in order, from map ``input`` to map ``output``."""

    op: str
    input: str
    output: str
    maps: dict[str, MapSpec] = field(hash=False)
    stages: tuple[Stage, ...]

    def first_write(self) -> dict[str, int]:
        """Map name -> index of the stage that first writes it (-1 for the input)."""
        first = {self.input: -1}
        for i, stage in enumerate(self.stages):
            first.setdefault(stage.dst, i)
        return first

    def last_use(self) -> dict[str, int]:
        """Map name -> index of the last stage that reads or writes it."""
        last: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            for name in (*stage.reads, stage.dst):
                last[name] = i
        return last
