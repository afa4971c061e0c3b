"""Where decoded pixels go when the output is a file: written band by band as the last stage makes
them, so the whole image is never held in memory.

    .npy            float32 (B, C, H, W), a memory-mapped file (numpy's format, readable by np.load)
    .tif / .tiff    BigTIFF, tiled 256x256, RGB uint8 (tifffile), one image (batch 1)

A sink writes to a temporary file beside the target and renames it into place only on ``close``;
``abort`` removes it, so a failed or interrupted run leaves no partial file and never clobbers one.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

__all__ = ["open_sink", "Sink", "SINK_SUFFIXES", "TILE", "sink_bytes"]

SINK_SUFFIXES = (".npy", ".tif", ".tiff")
TILE = 256  #: TIFF tile side, pixels


class Sink:
    """Takes NHWC bands in [-1, 1] in row order; ``close`` puts the file in place."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".part" + self.target.suffix,
                                   dir=self.target.parent)
        os.close(fd)
        self.tmp = Path(tmp)

    def write(self, r0: int, band: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush what is buffered (subclasses)."""

    def close(self) -> Path:
        self.finish()
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)


class _NpySink(Sink):
    def __init__(self, target: Path, shape: tuple[int, int, int, int]):
        super().__init__(target)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape)  # (B, C, H, W)

    def write(self, r0: int, band: torch.Tensor) -> None:
        rows = band.shape[1]
        self.array[:, :, r0 : r0 + rows] = band.float().permute(0, 3, 1, 2).cpu().numpy()  # (B, C, rows, W)

    def finish(self) -> None:
        self.array.flush()
        del self.array


class _TiffSink(Sink):
    """tifffile pulls tiles from an iterator while the executor pushes bands: a writer thread turns
    the bands it receives through a small queue into rows of 256x256 tiles. Held at any time: about
    256 rows of uint8 RGB plus the queued bands."""

    _END, _ABORT = object(), object()

    def __init__(self, target: Path, shape: tuple[int, int, int, int]):
        b, c, self.height, self.width = shape
        if b != 1 or c != 3:
            raise InputError(f"a TIFF output takes one RGB image, not {b} images of {c} channels: use .npy")
        super().__init__(target)
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write_file, name="vaekit-tiff", daemon=True)
        self.thread.start()

    def write(self, r0: int, band: torch.Tensor) -> None:
        from .io import to_uint8

        if self.error is not None:
            raise self.error
        self.queue.put(to_uint8(band[0].permute(2, 0, 1)))  # (rows, W, 3) uint8

    def finish(self) -> None:
        self.queue.put(self._END)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self.thread.is_alive():
            self.queue.put(self._ABORT)
            self.thread.join()
        super().abort()

    def _bands(self):
        while True:
            item = self.queue.get()
            if item is self._ABORT:
                raise RuntimeError("aborted")
            if item is self._END:
                return
            yield item

    def _tiles(self):
        bands, pending = self._bands(), np.empty((0, self.width, 3), np.uint8)
        for y in range(0, self.height, TILE):
            need = min(TILE, self.height - y)
            while pending.shape[0] < need:
                pending = np.concatenate([pending, next(bands)])
            rows, pending = pending[:need], pending[need:]
            for x in range(0, self.width, TILE):
                tile = np.zeros((TILE, TILE, 3), np.uint8)  # edge tiles are padded, as TIFF requires
                part = rows[:, x : x + TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                yield tile
        for _ in bands:  # drain to the end marker
            pass

    def _write_file(self) -> None:
        import tifffile

        try:
            with tifffile.TiffWriter(self.tmp, bigtiff=True) as tiff:
                tiff.write(self._tiles(), shape=(self.height, self.width, 3), dtype=np.uint8, tile=(TILE, TILE),
                           photometric="rgb")
        except BaseException as e:  # handed to the executor's thread at its next write or at close
            self.error = e
            while True:  # unblock a producer waiting on a full queue
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break


def open_sink(path, shape: tuple[int, int, int, int]) -> Sink:
    """A sink for an NCHW output of ``shape`` at ``path`` (by suffix)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return _NpySink(Path(path), shape)
    if suffix in (".tif", ".tiff"):
        return _TiffSink(Path(path), shape)
    raise InputError(f"cannot stream to {path}: streaming outputs end in {', '.join(SINK_SUFFIXES)}")


def sink_bytes(path, shape: tuple[int, int, int, int]) -> int:
    """Bytes the file will take (for the free-disk check)."""
    b, c, h, w = shape
    return b * c * h * w * (4 if Path(path).suffix.lower() == ".npy" else 1)
