"""A VAE written as data: the maps it produces and the stages that produce them.

A *map* is one activation tensor of the network (its channels; its height and width follow from
the input's by walking the stages). A *stage* reads one map in bands of rows (plus a halo) and
writes another. Stages end where a global operator needs the whole previous map: every GroupNorm
and every attention. A stage that feeds a GroupNorm collects that norm's statistics on the way out.

Programs are built from the model's modules (``arch/``) but planned from shapes alone, so a
model on the meta device is enough to plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["MapSpec", "ConvStage", "KeyValueStage", "AttentionStage", "Program", "Stage", "ACTIVATIONS"]

#: element-wise functions a stage may apply before its conv (``act``) or after its skip add (``post``)
ACTIVATIONS = (
    "silu",
    "relu",
    "tanh_clamp",  # tanh(x / 3) * 3: TAESD decoders clamp their input latents
    "from_signed",  # (x + 1) / 2: [-1, 1] images to the [0, 1] that TAESD encoders expect
    "to_signed",  # x * 2 - 1: back to [-1, 1]
)


@dataclass(frozen=True)
class MapSpec:
    """One activation map: its name and channels."""

    name: str
    channels: int


@dataclass(frozen=True, eq=False)
class ConvStage:
    """dst = post(shortcut(skip) + conv(upsample(act(norm(src)))) / out_scale).

    ``norm`` uses global statistics of ``src`` collected by the stage that wrote it. ``pad`` is the
    zero padding (top, bottom, left, right) at the conv's input, "same" by default; it applies only
    at the true image border, halo rows from the neighbours everywhere else.
    ``dst`` may be ``skip`` itself: the stage then writes its output over its input, band by band
    (the skip rows are read once, at the same rows), so a residual block needs two maps, not three.
    """

    name: str
    src: str
    dst: str
    conv: nn.Conv2d
    norm: nn.GroupNorm | None = None
    act: str | None = None
    upsample: int = 1  # nearest-neighbour factor before the conv
    pad: tuple[int, int, int, int] | None = None
    skip: str | None = None
    shortcut: nn.Conv2d | None = None
    out_scale: float = 1.0
    post: str | None = None
    stats_groups: int | None = None  # groups of the GroupNorm that reads dst next, if any

    @property
    def kernel(self) -> int:
        return self.conv.kernel_size[0]

    @property
    def stride(self) -> int:
        return self.conv.stride[0]

    @property
    def padding(self) -> tuple[int, int, int, int]:
        return self.pad if self.pad is not None else (self.kernel // 2,) * 4

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src,) if self.skip is None else (self.src, self.skip)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        k, s, f = self.kernel, self.stride, self.upsample
        return (h * f + top + bottom - k) // s + 1, (w * f + left + right - k) // s + 1

    def conv_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Rows [lo, hi) of the conv's (upsampled, unpadded) input that output rows [r0, r1) read;
        they run past [0, height) where the border padding is."""
        lo = r0 * self.stride - self.padding[0]
        return lo, lo + (r1 - 1 - r0) * self.stride + self.kernel

    def src_rows(self, r0: int, r1: int, src_h: int) -> tuple[int, int]:
        """Rows [a, b) of ``src`` that output rows [r0, r1) need (halo included, clipped)."""
        lo, hi = self.conv_rows(r0, r1)
        f = self.upsample
        return max(lo, 0) // f, min(-(-hi // f), src_h)


@dataclass(frozen=True, eq=False)
class KeyValueStage:
    """Pass one of exact attention: keys and values of every token, side by side in one map
    (channels [0, inner) are K, [inner, 2*inner) are V)."""

    name: str
    src: str
    dst: str
    attn: nn.Module  # diffusers Attention
    stats_groups: int | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src,)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return h, w


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

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src, self.kv)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return h, w


Stage = ConvStage | KeyValueStage | AttentionStage


@dataclass(frozen=True)
class Program:
    """What to run: ``stages`` in order, from map ``input`` to map ``output``."""

    op: str
    input: str
    output: str
    maps: dict[str, MapSpec] = field(hash=False)
    stages: tuple[Stage, ...]

    def sizes(self, h: int, w: int) -> dict[str, tuple[int, int]]:
        """Map name -> (height, width) for an input of h x w."""
        sizes = {self.input: (h, w)}
        for stage in self.stages:
            hw = stage.out_hw(*sizes[stage.src])
            if sizes.setdefault(stage.dst, hw) != hw:
                raise ValueError(f"{stage.name}: writes {hw} into {stage.dst} of size {sizes[stage.dst]}")
        return sizes

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
