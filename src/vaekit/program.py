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

__all__ = ["MapSpec", "Shortcut", "SpatialNorm", "ConvAttention", "SHUFFLE_ORDERS", "ConvStage", "KeyValueStage",
           "AttentionStage", "GLUStage", "LinearKVStage", "LinearQueryStage", "CausalConvStage", "TokenKVStage",
           "TokenBlockStage", "Registers", "FrameAttentionStage", "Program", "Stage", "ACTIVATIONS", "TIME_PADS"]

#: element-wise functions a stage may apply before its conv (``act``) or after its skip add (``post``)
ACTIVATIONS = (
    "silu",
    "relu",
    "tanh_clamp",  # tanh(x / 3) * 3: TAESD decoders clamp their input latents
    "from_signed",  # (x + 1) / 2: [-1, 1] images to the [0, 1] that TAESD encoders expect
    "to_signed",  # x * 2 - 1: back to [-1, 1]
    "clamp",  # to [-1, 1]: the Wan decoders' last step
    "fourier",  # [x, sin(2^k 2 pi x), cos(2^k 2 pi x)], k = 6, 7: Mochi's encoder input, 5x the channels
)


#: how a pixel (un)shuffle orders the f*f*C channels of its coarse side (r1: row offset, r2: column
#: offset): "channel" is torch's (c, r1, r2); "offset" is (r1, r2, c) (HunyuanImage's resamplers);
#: "transposed" is (c, r2, r1) (Wan 2.2's patchify)
SHUFFLE_ORDERS = ("channel", "offset", "transposed")


@dataclass(frozen=True, eq=False)
class ConvAttention:
    """A single-head self-attention whose projections are 1x1 convs (HunyuanImage, Wan), in the
    shape of diffusers' ``Attention`` that the attention stages read: softmax(q k^T / sqrt(C)) v."""

    group_norm: nn.Module  # a GroupNorm, or a per-pixel norm (Wan's RMS norm)
    to_q: nn.Conv2d | None
    to_k: nn.Conv2d | None
    to_v: nn.Conv2d | None
    proj: nn.Conv2d
    heads: int = 1
    rescale_output_factor: float = 1.0
    qkv: nn.Conv2d | None = None  # one conv giving q, k, v side by side (Wan), instead of to_q/to_k/to_v

    @property
    def scale(self) -> float:
        return self.proj.in_channels**-0.5

    @property
    def to_out(self) -> tuple[nn.Conv2d]:
        return (self.proj,)


class _SameSize:
    """A stage whose output has its source's height and width, reading ``src`` alone (unless it says)."""

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src,)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return h, w

    def rows_read(self, name: str, r0: int, r1: int, src_hw: tuple[int, int]) -> tuple[int, int]:
        """Rows [a, b) of map ``name`` that output rows [r0, r1) read (``halo`` rows each side)."""
        halo = getattr(self, "halo", 0)
        return max(r0 - halo, 0), min(r1 + halo, src_hw[0])


@dataclass(frozen=True)
class MapSpec:
    """One activation map: its name and channels."""

    name: str
    channels: int


@dataclass(frozen=True, eq=False)
class Shortcut:
    """What a residual stage adds: shuffle(mean(repeat(conv(norm(unshuffle(skip)))))), each step optional.

    The skip map is read at the rows matching the output rows: ``unshuffle`` times as many when it is
    at a finer resolution (DC-AE down blocks), 1/``shuffle`` as many when coarser (DC-AE up blocks).
    In a video, ``time_unshuffle`` first folds groups of that many frames into the channels (zero
    frames padded in front of each sample's chunk to a whole group: Wan 2.2's AvgDown3D), and
    ``time_shuffle`` unfolds channels into frames before the pixel shuffle (its DupUp3D; a first
    chunk drops each video's first ``time_shuffle - 1`` frames, as diffusers does). LTX's resamplers
    order the channels of a time and pixel (un)shuffle (c, t, row, column), as these do.
    """

    conv: nn.Conv2d | None = None  # 1x1
    unshuffle: int = 1  # pixel_unshuffle factor, first
    repeat: int = 1  # repeat_interleave of channels
    mean: int = 1  # average of groups of this many channels
    shuffle: int = 1  # pixel_shuffle factor, last
    order: str = "channel"  # channel order of the (un)shuffled map: see SHUFFLE_ORDERS
    time_unshuffle: int = 1  # frames folded into channels, before everything
    time_shuffle: int = 1  # channels unfolded into frames, before the pixel shuffle
    time_front: str = "zeros"  # what fills a time unshuffle's first group: zero frames, or "first": LTX's
    # first time_unshuffle - 1 frames in front of the chunk
    tile: int = 1  # channels tiled this many times, last (LTX's upsampler residual: torch's repeat)
    norm: nn.Module | None = None  # a LayerNorm over channels before the conv (LTX-Video 0.9's resnets)

    @classmethod
    def of(cls, conv: nn.Conv2d | None) -> Shortcut | None:
        return None if conv is None else cls(conv=conv)

    def skip_rows(self, r0: int, r1: int) -> tuple[int, int]:
        return r0 * self.unshuffle // self.shuffle, r1 * self.unshuffle // self.shuffle


@dataclass(frozen=True, eq=False)
class SpatialNorm:
    """A norm conditioned on the latents (Kandinsky 5's decoder): norm(x) * conv_y(zq) + conv_b(zq), zq
    the map ``latents`` (the run's input) nearest-upsampled to x's frames, rows and columns: ``scale``
    times in space; in time, on a video's first chunk, its first frame from the first latent frame alone."""

    latents: str
    conv_y: nn.Module  # 1x1x1
    conv_b: nn.Module  # 1x1x1
    scale: int


@dataclass(frozen=True, eq=False)
class ConvStage:
    """dst = post(shortcut(skip) + out_norm(shuffle(conv(upsample(act(norm(src))))) / out_scale)).

    ``norm`` is a GroupNorm (with global statistics of ``src``, collected by the stage that wrote it)
    or a per-pixel RMSNorm. ``pad`` is the zero padding (top, bottom, left, right) at the conv's
    input, "same" by default; it applies only at the true image border, halo rows from the
    neighbours everywhere else. ``shuffle``/``unshuffle`` are pixel (un)shuffles of the conv output,
    with channels in ``order`` (SHUFFLE_ORDERS).
    ``dst`` may be ``skip`` itself: the stage then writes its output over its input, band by band
    (the skip rows are read once, at the same rows), so a residual block needs two maps, not three.
    """

    name: str
    src: str
    dst: str
    conv: nn.Conv2d
    norm: nn.Module | None = None
    act: str | None = None
    upsample: int = 1  # nearest-neighbour factor before the conv
    pad: tuple[int, int, int, int] | None = None
    shuffle: int = 1
    unshuffle: int = 1
    out_norm: nn.Module | None = None  # RMSNorm or (eval) BatchNorm2d of the conv output
    skip: str | None = None
    shortcut: Shortcut | None = None
    out_scale: float = 1.0
    post: str | None = None
    stats_groups: int | None = None  # groups of the GroupNorm that reads dst next, if any
    order: str = "channel"  # of the pixel (un)shuffle's channels

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

    @property
    def row_multiple(self) -> int:
        """Chunks start and end on multiples of this (a pixel shuffle makes rows in pairs)."""
        return max(self.shuffle, self.shortcut.shuffle if self.shortcut else 1)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        top, bottom, left, right = self.padding
        k, s, f = self.kernel, self.stride, self.upsample
        conv_h, conv_w = (h * f + top + bottom - k) // s + 1, (w * f + left + right - k) // s + 1
        if conv_h % self.unshuffle or conv_w % self.unshuffle:
            raise ValueError(f"{self.name}: a {conv_w}x{conv_h} map cannot be pixel-unshuffled by {self.unshuffle}")
        return conv_h * self.shuffle // self.unshuffle, conv_w * self.shuffle // self.unshuffle

    def conv_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Rows [lo, hi) of the conv's (upsampled, unpadded) input that output rows [r0, r1) read;
        they run past [0, height) where the border padding is."""
        c0, c1 = self.conv_out_rows(r0, r1)
        lo = c0 * self.stride - self.padding[0]
        return lo, lo + (c1 - 1 - c0) * self.stride + self.kernel

    def conv_out_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Rows of the conv's own output behind output rows [r0, r1) (before any pixel (un)shuffle)."""
        return r0 * self.unshuffle // self.shuffle, r1 * self.unshuffle // self.shuffle

    def src_rows(self, r0: int, r1: int, src_h: int) -> tuple[int, int]:
        """Rows [a, b) of ``src`` that output rows [r0, r1) need (halo included, clipped)."""
        lo, hi = self.conv_rows(r0, r1)
        f = self.upsample
        return max(lo, 0) // f, min(-(-hi // f), src_h)

    def rows_read(self, name: str, r0: int, r1: int, src_hw: tuple[int, int]) -> tuple[int, int]:
        """Rows [a, b) of map ``name`` (src or skip) that output rows [r0, r1) read. An upsampling
        stage's compiled kernel reads whole pairs of conv rows: one more source row each side."""
        spans = []
        if name == self.src:
            a, b = self.src_rows(r0, r1, src_hw[0])
            extra = 1 if self.upsample != 1 else 0
            spans.append((max(a - extra, 0), min(b + extra, src_hw[0])))
        if name == self.skip:
            spans.append(self.shortcut.skip_rows(r0, r1) if self.shortcut else (r0, r1))
        return min(a for a, _ in spans), max(b for _, b in spans)


class _AllKeys(_SameSize):
    """A stage of queries: it reads its own rows of ``src`` and every row of the keys and values ``kv``."""

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.src, self.kv)

    def rows_read(self, name: str, r0: int, r1: int, src_hw: tuple[int, int]) -> tuple[int, int]:
        """Queries read their own rows; every band of queries reads all keys and values."""
        return (0, src_hw[0]) if name == self.kv else (r0, r1)


@dataclass(frozen=True, eq=False)
class KeyValueStage(_SameSize):
    """Pass one of exact attention: keys and values of every token, side by side in one map
    (channels [0, inner) are K, [inner, 2*inner) are V)."""

    name: str
    src: str
    dst: str
    attn: nn.Module | ConvAttention  # diffusers Attention
    stats_groups: int | None = None


@dataclass(frozen=True, eq=False)
class AttentionStage(_AllKeys):
    """Pass two of exact attention: queries of a band of rows against all keys (in key blocks with
    an online softmax when they do not fit), output projection, residual add over ``src``. In a video,
    each frame's tokens attend within the frame, or (``frames`` "causal", HunyuanVideo 1.5) to the
    tokens of their frame and of every frame before it."""

    name: str
    src: str
    kv: str
    dst: str
    attn: nn.Module | ConvAttention  # diffusers Attention
    stats_groups: int | None = None
    frames: str | None = None  # "causal": over every frame's tokens, each frame seeing itself and those before


@dataclass(frozen=True, eq=False)
class TokenKVStage(_SameSize):
    """Pass one of a ViT decoder's block (MiniMax H3): every token (a latent voxel) RMS-normed,
    projected to keys and values, the keys normed per head and rotated by the token's (frame, row,
    column) position (``rope``); K and V side by side in ``dst``."""

    name: str
    src: str
    dst: str
    block: nn.Module  # the transformer block: norm1, attn (to_q/to_k/to_v, norm_q/norm_k, to_out)
    rope: nn.Module  # the 3-axis rotary embedding (its inv_freq)
    stats_groups: None = None


@dataclass(frozen=True, eq=False)
class Registers:
    """Tokens a ViT appends after the image's (MiniMax H3: learned registers and one zero token), all
    at position 0: they attend and are attended to in every block. They are the run's state, not a
    map: a block stage reads them from ``("registers", state_in)`` (the initial ones when None) and
    leaves the block's output at ``("registers", name)``."""

    tokens: nn.Parameter  # (1, R, dim)
    zeros: int = 1  # zero tokens after them


@dataclass(frozen=True, eq=False)
class TokenBlockStage(_AllKeys):
    """Pass two of a ViT block, for a band of query tokens: attention over the keys of every token of
    the video (all its frames, in key blocks with an online softmax when they do not fit) and of the
    registers, x + attn * scale1, then x + FFN(norm2(x)) * scale2; written over ``src``. At the stage's
    end the registers go through the same block (run._Run.stage)."""

    name: str
    src: str
    kv: str
    dst: str
    block: nn.Module
    rope: nn.Module
    registers: Registers
    state_in: str | None = None  # the stage whose registers this one reads (None: the initial ones)
    stats_groups: None = None


@dataclass(frozen=True, eq=False)
class FrameAttentionStage(_SameSize):
    """Attention over time, pixel by pixel (Mochi's encoder): after a GroupNorm with each frame's
    statistics, each pixel's tokens, one per frame of its video, attend to their own frame and those
    before it (to every frame where the attention is not causal: ComfyUI's); + src, written over src. A
    band needs no rows of other bands, but every frame of its rows: the model's one chunk is the whole
    video (arch.mochi.chunk_frames)."""

    name: str
    src: str
    dst: str
    attn: nn.Module  # diffusers Attention: heads of 32, L2-normed queries and keys, causal
    norm: nn.Module  # a GroupNorm, its statistics collected by the stage that wrote src
    stats_groups: int | None = None


@dataclass(frozen=True, eq=False)
class GLUStage(_SameSize):
    """DC-AE's GLUMBConv, one band: 1x1 expand + SiLU, depthwise 3x3, gate, 1x1, RMSNorm, + src."""

    name: str
    src: str
    dst: str
    block: nn.Module  # diffusers GLUMBConv
    stats_groups: int | None = None
    halo: int = 1


@dataclass(frozen=True, eq=False)
class LinearKVStage(_SameSize):
    """Pass one of DC-AE's ReLU linear attention: sum over all tokens of [V; 1] K^T per head, into
    the run's state ``state``. It writes no map (``dst`` is None); q, k, v (and their multiscale
    depthwise projections, ``halo`` rows each side) are recomputed from ``src`` rather than stored."""

    name: str
    src: str
    attn: nn.Module  # diffusers SanaMultiscaleLinearAttention
    state: str
    halo: int
    dst: None = None
    stats_groups: None = None


@dataclass(frozen=True, eq=False)
class LinearQueryStage(_SameSize):
    """Pass two: queries of a band against the summed state, output projection, norm, + src."""

    name: str
    src: str
    dst: str
    attn: nn.Module
    state: str
    halo: int
    stats_groups: int | None = None

    def rows_read(self, name: str, r0: int, r1: int, src_hw: tuple[int, int]) -> tuple[int, int]:
        if src_hw[0] * src_hw[1] <= self.attn.attention_head_dim:  # diffusers' quadratic path: the whole map
            return 0, src_hw[0]
        return super().rows_read(name, r0, r1, src_hw)


@dataclass(frozen=True, eq=False)
class CausalConvStage(_SameSize):
    """dst = post(rearrange(conv3d(pad([cache ; act(norm(src))]))) + shortcut(skip)): a 3-D conv over frames.

    Maps of a video hold their frames in the batch dimension: (B * frames, H, W, C), each sample's
    frames consecutive. The conv has ``time_kernel`` taps in time (stride ``time_stride``) and k x k
    taps in space (stride ``stride``), 'same' padded (or by ``pad``) with zeros or, ``border``
    "reflect"/"replicate", mirrored or repeated rows and columns (at the true border only: halo rows
    from the neighbours elsewhere). ``norm``: a per-pixel norm, or a GroupNorm with each frame's
    statistics (MiniMax H3's, collected by the stage that wrote ``src``).

    In time, ``time_pad`` says what precedes the frames. "cache" (Wan): ``cache`` holds the last
    ``cache_frames`` frames of the conv's input (after norm and act) from the chunks before, zeros
    before the first (the causal padding); the stage writes the new tail to ``cache_out``, a second
    map, because later bands still read the old tail's halo rows (the runner swaps the two after each
    chunk; ``first_pad`` "copies": time_kernel - 1 copies of the first frame instead, Kandinsky 5's).
    "first" (LTX, causal): time_kernel - 1 copies of the first frame; "edges" (LTX, not
    causal): half as many copies of the first frame in front and of the last behind; "zeros" (MiniMax
    H3): time_kernel - 1 zero frames in front. These see the whole video (or clip) in one chunk
    (arch.ltx2.chunk_frames), so they keep no cache.

    The conv's output is then rearranged: ``time_split`` > 1: its channels are that many frames side
    by side (Wan's temporal upsampler), unfolded in order. ``time_unshuffle`` f: the first f - 1 frames
    go in front of the input too, and groups of f output frames fold into the channels (LTX's
    downsamplers); ``time_shuffle`` f: channels unfold into f frames each, and a first chunk drops each
    video's first f - 1 (LTX's upsamplers). ``shuffle``/``unshuffle``: a pixel (un)shuffle after that,
    channels in ``order``. ``repeat_last``: the last channel repeated that many more times (LTX's
    encoder: one log-variance for every latent channel).
    ``packing`` "up"/"down" rearranges instead as HunyuanVideo 1.5's resamplers do (DC-AE's, over frames:
    channels (t, row, column, c), a video's first frame by space alone) and adds the source rearranged
    the same way as the residual (ops/packing.py); the (un)shuffle fields still give the output's shape.
    A timestep-conditioned decoder (LTX) gives a stage ``modulated``: its norm's output is scaled and
    shifted per video and channel, by values made once per call from the timestep (the run's state
    ``("modulation", name)``); ``noise_scale``: a map of noise (rows, W), drawn once per call as
    diffusers draws it (``("noise", name)``), times these per-channel scales is added to the conv output.
    ``upsample``/``time_upsample``: the input made larger before the conv, nearest-neighbour: its pixels
    in u x u blocks, each frame after a video's first repeated t times (HunyuanVideo's upsamplers).
    ``first``: what the stage does on a video's first chunk instead, as Wan's resamplers do:
    "pass" (dst = src, the cache untouched) or "pass_keep" (dst = src, and the cache takes the tail).
    """

    name: str
    src: str
    dst: str
    conv: nn.Module  # Conv3d: (C_out, C_in, time_kernel, k, k)
    cache: str | None = None
    cache_out: str | None = None
    norm: nn.Module | None = None  # per-pixel (Wan's RMS norm, LTX's pixel norm)
    act: str | None = None
    skip: str | None = None
    shortcut: Shortcut | None = None
    time_split: int = 1
    time_stride: int = 1
    first: str | None = None
    post: str | None = None
    skip2: str | None = None  # a second residual, added as it is (Wan 2.2's identity block shortcut)
    stats_groups: None = None
    time_pad: str = "cache"  # or "first", "edges", "zeros": see TIME_PADS
    border: str = "zeros"  # or "reflect", "replicate"
    time_unshuffle: int = 1
    time_shuffle: int = 1
    shuffle: int = 1
    unshuffle: int = 1
    order: str = "channel"
    repeat_last: int = 0
    packing: str | None = None  # "up"/"down": HunyuanVideo 1.5's resamplers (ops/packing.py), skip = src
    modulated: bool = False  # x * (1 + scale) + shift after the norm, per video and channel (LTX's timestep)
    noise_scale: nn.Parameter | None = None  # + noise (rows, W) * this (C,) on the conv output (LTX's decode noise)
    stride: int = 1  # in space (MiniMax H3's downsamplers: 2)
    pad: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) in space; None: "same", halo each side
    first_pad: str = "cache"  # time_pad "cache": on a video's first chunk, "copies" of its first frame instead
    spatial_norm: SpatialNorm | None = None  # the norm's output scaled and shifted by the latents (Kandinsky 5)
    time_pool: int = 1  # the conv's output frames averaged in groups, a first frame alone (CogVideoX's encoder)
    first_alone: str = "first"  # when upsampling time and mapping latents take a video's first frame alone:
    # on its "first" chunk (HunyuanVideo, Kandinsky 5), or in any run of an "odd" number of frames (CogVideoX)
    upsample: int = 1  # nearest-neighbour in space before the conv (HunyuanVideo's upsamplers)
    time_upsample: int = 1  # each frame repeated this many times before the conv (a video's first: once)

    @property
    def time_kernel(self) -> int:
        return self.conv.kernel_size[0]

    @property
    def cache_frames(self) -> int:
        return self.time_kernel - self.time_stride

    @property
    def lead_frames(self) -> int:
        """The video's own first frames a time unshuffle puts in front of the conv's input (LTX's
        downsamplers: f - 1); HunyuanVideo 1.5's packing puts none."""
        return 0 if self.packing else self.time_unshuffle - 1

    @property
    def pad_frames(self) -> tuple[int, int]:
        """Frames the conv's input gets before and after the video's own: the lead frames, then copies
        of the first and of the last frame (time_pad "first"/"edges")."""
        front = self.lead_frames
        if self.time_pad in ("first", "zeros"):
            return front + self.time_kernel - 1, 0
        if self.time_pad == "edges":
            return front + (self.time_kernel - 1) // 2, (self.time_kernel - 1) // 2
        return front, 0

    def upsampled_frames(self, frames: int, first: bool) -> int:
        """Frames after time_upsample: each repeated, on a video's first chunk its first once (one frame
        alone is not repeated, as Kandinsky 5's upsamplers leave it)."""
        t = self.time_upsample
        if t == 1 or frames == 1:
            return frames
        return 1 + t * (frames - 1) if self.alone(frames, first) else t * frames

    def alone(self, frames: int, first: bool) -> bool:
        """Whether a run of ``frames`` takes the video's first frame alone (first_alone)."""
        return first if self.first_alone == "first" else frames > 1 and frames % 2 == 1

    def copies_first(self, first: bool) -> bool:
        """Whether this chunk's frames follow copies of the video's first frame, not the time cache
        (Kandinsky 5: the first chunk's)."""
        return first and self.cache is not None and self.first_pad == "copies"

    @property
    def halo(self) -> int:
        return self.conv.kernel_size[1] // 2

    @property
    def padding(self) -> tuple[int, int, int, int]:
        return self.pad if self.pad is not None else (self.halo,) * 4

    def input_rows(self, c0: int, c1: int) -> tuple[int, int]:
        """Rows [lo, hi) of the conv's unpadded input (upsampled, if it is) that its output rows [c0, c1)
        read; rows outside [0, height) are the border's padding."""
        lo = c0 * self.stride - self.padding[0]
        return lo, (c1 - 1) * self.stride - self.padding[0] + self.conv.kernel_size[1]

    @property
    def reads(self) -> tuple[str, ...]:
        latents = self.spatial_norm.latents if self.spatial_norm is not None else None
        return tuple(n for n in (self.src, self.cache, self.skip, self.skip2, latents) if n is not None)

    @property
    def row_multiple(self) -> int:
        """Chunks start and end on multiples of this (a pixel shuffle makes rows in pairs)."""
        return max(self.shuffle, self.shortcut.shuffle if self.shortcut else 1)

    def out_frames(self, frames: int, first: bool = False) -> int:
        if first and self.first is not None:
            return frames
        frames = self.upsampled_frames(frames, first)
        if self.time_pool != 1:  # averaged in groups: the first alone (one frame stays), or all in groups
            alone = frames == 1 or self.alone(frames, first)
            return 1 + (frames - 1) // self.time_pool if alone else frames // self.time_pool
        if self.time_stride != 1:  # after the cached frames, or the padding (MiniMax H3: zero frames)
            padded = self.cache_frames + frames if self.time_pad == "cache" else frames + sum(self.pad_frames)
            padded += self.time_kernel - 1 - self.cache_frames if self.copies_first(first) else 0
            return (padded - self.time_kernel) // self.time_stride + 1
        if self.time_unshuffle != 1:
            f = self.time_unshuffle
            if frames % f != 1 % f:  # [first f - 1 frames ; frames] must fold into whole groups
                raise ValueError(f"{self.name}: {frames} frames cannot be folded by {f} after the first {f - 1}")
            return (frames + f - 1) // f
        if self.time_shuffle != 1:
            return frames * self.time_shuffle - (self.time_shuffle - 1 if first else 0)
        return frames * self.time_split

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        h, w = h * self.upsample, w * self.upsample  # the conv's input
        u, s = self.unshuffle, self.shuffle
        skip_u = self.shortcut.unshuffle if self.shortcut is not None and self.skip == self.src else 1
        if h % skip_u or w % skip_u:  # the residual unshuffles this very map (Kandinsky 5's downsamplers)
            raise ValueError(f"{self.name}: a {w}x{h} map cannot be pixel-unshuffled by {skip_u}")
        if h % u or w % u:
            raise ValueError(f"{self.name}: a {w}x{h} map cannot be pixel-unshuffled by {u}")
        if self.border == "reflect" and min(h, w) <= max(self.padding):  # as torch's reflect padding refuses it
            raise ValueError(f"{self.name}: a {w}x{h} map is too small to mirror {max(self.padding)} rows and columns")
        if self.stride != 1:
            top, bottom, left, right = self.padding
            k = self.conv.kernel_size[1]
            h, w = (h + top + bottom - k) // self.stride + 1, (w + left + right - k) // self.stride + 1
        return h * s // u, w * s // u

    def conv_out_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """Rows of the conv's own output behind output rows [r0, r1) (before any pixel (un)shuffle)."""
        return r0 * self.unshuffle // self.shuffle, r1 * self.unshuffle // self.shuffle

    def rows_read(self, name: str, r0: int, r1: int, src_hw: tuple[int, int]) -> tuple[int, int]:
        """Rows [a, b) of map ``name`` that output rows [r0, r1) read: the union when it is read twice
        (LTX's downsamplers add their own source, folded, as the residual)."""
        spans = []
        if name in (self.src, self.cache):  # the conv input's rows, at the source's resolution
            lo, hi = self.input_rows(*self.conv_out_rows(r0, r1))
            u = self.upsample
            spans.append((max(lo, 0) // u, min(-(-hi // u), src_hw[0])))
        if name == self.skip and self.packing:  # the residual is the source, rearranged as the conv's output
            spans.append(self.conv_out_rows(r0, r1))
        elif name == self.skip:
            spans.append(self.shortcut.skip_rows(r0, r1) if self.shortcut else (r0, r1))
        if name == self.skip2:
            spans.append((r0, r1))
        if self.spatial_norm is not None and name == self.spatial_norm.latents:  # behind the source rows read
            a, b = self.rows_read(self.src, r0, r1, src_hw)
            s = self.spatial_norm.scale
            spans.append((a // s, -(-b // s)))
        return min(a for a, _ in spans), max(b for _, b in spans)


#: what precedes a CausalConvStage's frames in time: the time cache (zeros before the first chunk),
#: copies of the first frame (causal), copies of the first and the last (not causal), or zero frames
#: (causal, with no cache: MiniMax H3's encoder, whose one chunk is a clip)
TIME_PADS = ("cache", "first", "edges", "zeros")


Stage = (ConvStage | KeyValueStage | AttentionStage | GLUStage | LinearKVStage | LinearQueryStage | CausalConvStage
         | TokenKVStage | TokenBlockStage | FrameAttentionStage)


@dataclass(frozen=True)
class Program:
    """What to run: ``stages`` in order, from map ``input`` to map ``output``.

    A video program runs once per chunk of frames; its ``caches`` are the (cache, cache_out) map pairs
    of its causal convs (CausalConvStage), which outlive the chunk: they are planned as alive at every
    stage and never freed by it. ``frame_stats``: whether a GroupNorm of a video normalizes each frame
    by its own statistics (MiniMax H3) or by those of all the frames of the chunk, per video
    (HunyuanVideo, whose one chunk is the whole video or one of its own clips)."""

    op: str
    input: str
    output: str
    maps: dict[str, MapSpec] = field(hash=False)
    stages: tuple[Stage, ...]
    caches: tuple[tuple[str, str], ...] = ()
    frame_stats: str = "each"  # a video's GroupNorms: each frame's statistics, or "all" frames' of the run's

    @property
    def persistent(self) -> frozenset[str]:
        return frozenset(name for pair in self.caches for name in pair)

    def sizes(self, h: int, w: int) -> dict[str, tuple[int, int]]:
        """Map name -> (height, width) for an input of h x w."""
        sizes = {self.input: (h, w)}
        for stage in self.stages:
            for cache in (getattr(stage, "cache", None), getattr(stage, "cache_out", None)):
                if cache is not None:
                    sizes[cache] = sizes[stage.src]
            if stage.dst is None:
                continue
            hw = stage.out_hw(*sizes[stage.src])
            if sizes.setdefault(stage.dst, hw) != hw:
                raise ValueError(f"{stage.name}: writes {hw} into {stage.dst} of size {sizes[stage.dst]}")
        return sizes

    def frames(self, frames: int, first: bool = False) -> dict[str, int]:
        """Map name -> frames per sample for an input chunk of ``frames`` frames (``first``: the
        video's first chunk); 1 for every map of an image program."""
        out = {self.input: frames}
        for stage in self.stages:
            if isinstance(stage, CausalConvStage) and stage.cache is not None:
                out[stage.cache] = out[stage.cache_out] = stage.cache_frames
            if stage.dst is not None:
                made = stage.out_frames(out[stage.src], first) if isinstance(stage, CausalConvStage) else out[stage.src]
                out.setdefault(stage.dst, made)
        return out

    def first_write(self) -> dict[str, int]:
        """Map name -> index of the stage that first writes it (-1 for the input)."""
        first = {self.input: -1}
        for i, stage in enumerate(self.stages):
            if stage.dst is not None:
                first.setdefault(stage.dst, i)
        return first

    def last_use(self) -> dict[str, int]:
        """Map name -> index of the last stage that reads or writes it."""
        last: dict[str, int] = {}
        for i, stage in enumerate(self.stages):
            for name in (*stage.reads, stage.dst):
                if name is not None:
                    last[name] = i
        return last
