"""A model's own frame batching: independent calls on windows ("clips") of a video, their outputs laid
end to end, the overlap of consecutive clips cross-faded (MiniMax H3). vaekit reproduces what the
model's default call computes, no more and no less: each clip is a video of its own (streamed in rows,
or whole when it fits), and Assembler puts the clips' frames where the model puts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Clips", "Assembler"]


@dataclass(frozen=True)
class Clips:
    """Which windows of the input a model runs alone, and which of each one's output frames it keeps.

    The input gets ``pad`` copies of its last frame; clip k is its frames [start, stop) of
    ``windows[k]`` (the last ones may be shorter). Of a clip's output, frames [keep[0], keep[1]) go to
    the result (``keep_first`` for the first clip, if it keeps others), the first ``fade`` of them
    cross-faded with the previous clip's last ``fade`` frames; with ``tail``, the last clip's last
    ``fade`` frames follow as they are. The result is cut to ``frames``."""

    windows: tuple[tuple[int, int], ...]
    keep: tuple[int, int]
    frames: int
    pad: int = 0
    fade: int = 0
    keep_first: tuple[int, int] | None = None
    tail: bool = False

    @property
    def length(self) -> int:
        """The longest clip's frames."""
        return max(stop - start for start, stop in self.windows)

    def clips(self, x: torch.Tensor):
        """Each clip of ``x`` (B, C, F, H, W), padded with copies of its last frame."""
        if self.pad:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, self.pad, -1, -1)], dim=2)  # (B, C, F + pad, H, W)
        for start, stop in self.windows:
            yield x[:, :, start:stop]


class Assembler:
    """Takes each clip's output in turn (``add``) and gives ``emit(f0, frames)`` the result's frames."""

    def __init__(self, clips: Clips, emit: Callable[[int, torch.Tensor], None]):
        self.clips, self.emit = clips, emit
        self.done = self.added = 0  # frames of the result given, clips taken
        self.last: torch.Tensor | None = None  # the previous clip's last frames, to fade from

    def add(self, y: torch.Tensor) -> None:
        """The next clip's output (B, C, F', H, W)."""
        c = self.clips
        lo, hi = c.keep_first if c.keep_first is not None and self.added == 0 else c.keep
        self.added += 1
        body = y[:, :, lo:hi]
        if self.last is not None:
            body = _blend(self.last, body, c.fade)
        self._give(body)
        self.last = y[:, :, y.shape[2] - c.fade :] if c.fade else None

    def close(self) -> None:
        if self.clips.tail and self.last is not None:
            self._give(self.last)
        self.last = None
        if self.done != self.clips.frames:  # the result would hold frames no clip gave
            raise RuntimeError(f"the clips gave {self.done} frames of {self.clips.frames}: their layout is not the "
                               "model's (please report this model's config)")

    def _give(self, frames: torch.Tensor) -> None:
        frames = frames[:, :, : self.clips.frames - self.done]  # past the result's end: cut
        if frames.shape[2]:
            self.emit(self.done, frames)
            self.done += frames.shape[2]


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """a's last frames fading into b's first, linearly over ``extent`` frames, as MiniMax H3 and
    HunyuanVideo blend: a * (1 - i / n) + b * (i / n), the weights in b's dtype."""
    extent = min(a.shape[2], b.shape[2], extent)
    if extent == 0:
        return b
    positions = torch.arange(extent, device=b.device, dtype=b.dtype).view(1, 1, extent, 1, 1)
    blended = a[:, :, a.shape[2] - extent :] * (1 - positions / extent) + b[:, :, :extent] * (positions / extent)
    return blended if extent == b.shape[2] else torch.cat([blended, b[:, :, extent:]], dim=2)
