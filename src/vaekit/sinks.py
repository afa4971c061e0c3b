"""Where decoded pixels go when the output is a file: written band by band as the last stage makes
them, so the whole image is never held in memory.

    .npy            float32 (B, C, H, W), a memory-mapped file (numpy's format, readable by np.load)
    .tif / .tiff    BigTIFF, tiled 256x256, RGB uint8 (tifffile), one image (batch 1)
    .png            RGB uint8 (pypng, row by row), one image (batch 1)
    .zarr           a zarr v3 directory, uint8 (B, H, W, C), chunks of (1, 256, 256, C), compressed

A video (a Wan decode) goes to a file frame by frame as each chunk of frames is made:

    .npy            float32 (B, C, F, H, W), memory-mapped
    .zarr           uint8 (B, F, H, W, C), chunks of one frame's (1, 1, 256, 256, C)
    .mp4            H.264 in yuv420p through PyAV (one video, batch 1), ``crf`` its quality (lower: better)

A sink writes to a temporary file (or directory) beside the target and moves it into place only on
``close``; ``abort`` removes it, so a failed or interrupted run leaves no partial file and never
clobbers one. In a distributed run (dist.py) rank 0 creates the temporary file and the other ranks
attach to it (``shared_tmp``): each writes its own rows of a .npy or .zarr, and rank 0 publishes it.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .extras import require
from .io import quantize, temp_beside

__all__ = ["open_sink", "Sink", "SINK_SUFFIXES", "TILE", "sink_bytes", "sink_rows", "check_shared", "open_video_sink",
           "VideoSink", "VIDEO_SUFFIXES", "MP4_CRF", "MP4_FPS"]

SINK_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".zarr")
TILE = 256  #: TIFF tile side and zarr chunk side, pixels


class Sink:
    """Takes NHWC bands in [-1, 1] in row order; ``close`` puts the file in place."""

    directory = False  #: the output is a directory (zarr), not one file
    shareable = True  #: ranks may write their own rows into one file (False: rows must come in order)

    def __init__(self, target: Path, shared_tmp: str | None = None):
        self.target = Path(target)
        self.owner = shared_tmp is None  # the process that created the temporary file publishes it
        if not self.owner:
            check_shared(self.target)
            self.tmp = Path(shared_tmp)
            return
        self.tmp = temp_beside(self.target, directory=self.directory)

    def write(self, r0: int, band: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush what is buffered (subclasses)."""

    def close(self) -> Path:
        """Flush, and put the file in place (the owner only)."""
        self.finish()
        return self.publish() if self.owner else self.target

    def publish(self) -> Path:
        """Move the finished temporary file onto the target."""
        if self.directory and self.target.exists():  # a directory cannot be replaced in one rename
            old = self.target.with_name(f".{self.target.name}.old")
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            _remove(old)
        else:
            os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        if self.owner:
            _remove(self.tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _one_rgb_image(shape, suffix: str) -> None:
    b, c = shape[:2]
    if b != 1 or c != 3:
        raise InputError(f"a {suffix} output takes one RGB image, not {b} images of {c} channels: use .npy or .zarr")


class _NpySink(Sink):
    def __init__(self, target: Path, shape: tuple[int, int, int, int], shared_tmp: str | None = None):
        super().__init__(target, shared_tmp)
        mode = "w+" if self.owner else "r+"
        self.array = np.lib.format.open_memmap(self.tmp, mode=mode, dtype=np.float32, shape=shape)  # (B, C, H, W)

    def write(self, r0: int, band: torch.Tensor) -> None:
        rows = band.shape[1]
        self.array[:, :, r0 : r0 + rows] = band.float().permute(0, 3, 1, 2).cpu().numpy()  # (B, C, rows, W)

    def finish(self) -> None:
        self.array.flush()
        del self.array


class _RowBuffer:
    """Collects uint8 bands until ``rows`` are ready: the writers want whole tile rows."""

    def __init__(self, width: int, channels: int):
        self.pending = [np.empty((0, width, channels), np.uint8)]

    def add(self, band: np.ndarray) -> None:
        self.pending.append(band)

    def size(self) -> int:
        return sum(p.shape[0] for p in self.pending)

    def take(self, rows: int) -> np.ndarray:
        joined = np.concatenate(self.pending)
        self.pending = [joined[rows:]]
        return joined[:rows]


class _PullSink(Sink):
    """For writers that pull rows from an iterator (tifffile, pypng) while the executor pushes bands:
    a writer thread consumes the bands through a small queue. Subclasses write the file in
    ``_write_file(bands)``, where ``bands`` yields (rows, W, 3) uint8 arrays in order."""

    _END, _ABORT = object(), object()
    shareable = False

    def __init__(self, target: Path, shape: tuple[int, int, int, int], shared_tmp: str | None = None):
        _one_rgb_image(shape, Path(target).suffix)
        _, _, self.height, self.width = shape
        super().__init__(target, shared_tmp)
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"vaekit-{type(self).__name__}", daemon=True)
        self.thread.start()

    def write(self, r0: int, band: torch.Tensor) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(quantize(band[0]))  # (rows, W, 3) uint8  image px

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

    def _run(self) -> None:
        bands = self._bands()
        try:
            self._write_file(bands)
            for _ in bands:  # drain to the end marker
                pass
        except BaseException as e:  # handed to the executor's thread at its next write or at close
            self.error = e
            while True:  # unblock a producer waiting on a full queue
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    break

    def _write_file(self, bands) -> None:
        raise NotImplementedError


class _TiffSink(_PullSink):
    """Tiled BigTIFF. Held at any time: about 256 rows of uint8 RGB plus the queued bands."""

    def _tiles(self, bands):
        buffer = _RowBuffer(self.width, 3)
        for y in range(0, self.height, TILE):
            need = min(TILE, self.height - y)
            while buffer.size() < need:
                buffer.add(next(bands))
            rows = buffer.take(need)
            for x in range(0, self.width, TILE):
                tile = np.zeros((TILE, TILE, 3), np.uint8)  # edge tiles are padded, as TIFF requires
                part = rows[:, x : x + TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                yield tile

    def _write_file(self, bands) -> None:
        import tifffile  # there: check_writer saw to it before the sink was opened

        with tifffile.TiffWriter(self.tmp, bigtiff=True) as tiff:
            tiff.write(self._tiles(bands), shape=(self.height, self.width, 3), dtype=np.uint8, tile=(TILE, TILE),
                       photometric="rgb")


class _PngSink(_PullSink):
    """PNG, one scanline at a time. Held at any time: the queued bands."""

    def _write_file(self, bands) -> None:
        import png  # there: check_writer saw to it before the sink was opened

        rows = (row.reshape(-1) for band in bands for row in band)  # (W * 3,) per scanline
        with open(self.tmp, "wb") as f:
            png.Writer(self.width, self.height, greyscale=False, bitdepth=8).write(f, rows)


class _ZarrSink(Sink):
    """A zarr v3 array; bands are buffered to whole chunk rows so every chunk is written once."""

    directory = True

    def __init__(self, target: Path, shape: tuple[int, int, int, int], shared_tmp: str | None = None):
        import zarr  # there: check_writer saw to it before the sink was opened

        super().__init__(target, shared_tmp)
        b, c, self.height, w = shape
        if self.owner:
            self.array = zarr.create_array(store=str(self.tmp), shape=(b, self.height, w, c), dtype=np.uint8,
                                           chunks=(1, TILE, TILE, c), dimension_names=("batch", "y", "x", "channel"),
                                           overwrite=True)  # the temp dir is ours and empty
        else:
            self.array = zarr.open_array(str(self.tmp), mode="r+")
        self.buffers = [_RowBuffer(w, c) for _ in range(b)]
        self.done = 0  # rows written; a rank of a distributed run starts at its first row (on a chunk)

    def write(self, r0: int, band: torch.Tensor) -> None:
        if self.buffers[0].size() == 0:
            self.done = r0
        for i, buffer in enumerate(self.buffers):
            buffer.add(quantize(band[i]))  # (rows, W, C) uint8  image px
        while (need := min(TILE, self.height - self.done)) and self.buffers[0].size() >= need:
            self.array[:, self.done : self.done + need] = np.stack([buf.take(need) for buf in self.buffers])
            self.done += need  # (B, need, W, C) written: one row of whole chunks


_SINKS = {".npy": _NpySink, ".tif": _TiffSink, ".tiff": _TiffSink, ".png": _PngSink, ".zarr": _ZarrSink}


def open_sink(path, shape: tuple[int, int, int, int], shared_tmp: str | None = None) -> Sink:
    """A sink for an NCHW output of ``shape`` at ``path`` (by suffix); with ``shared_tmp``, attached
    to the temporary file another rank opened."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SINKS:
        raise InputError(f"cannot stream to {path}: streaming outputs end in {', '.join(SINK_SUFFIXES)}")
    check_writer(path)
    return _SINKS[suffix](Path(path), shape, shared_tmp)


#: the optional package each output format's writer needs (extras.py): checked before any work
_WRITERS = {".tif": "tifffile", ".tiff": "tifffile", ".png": "png", ".zarr": "zarr", ".mp4": "av"}


def check_writer(path) -> None:
    """DependencyError, before any work, when the package that writes ``path``'s format is missing."""
    suffix = Path(path).suffix.lower()
    if suffix in _WRITERS:
        require(_WRITERS[suffix], f"writing {suffix} files")


def check_shared(path) -> None:
    """InputError unless ranks can write their rows of ``path`` side by side."""
    sink = _SINKS.get(Path(path).suffix.lower())
    if sink is not None and not sink.shareable:
        raise InputError(f"a {Path(path).suffix} file is written in row order by one process: under "
                         "torchrun write .npy or .zarr, where each rank writes its own rows")


def sink_rows(path) -> int:
    """Rows a rank's share of the output must be a multiple of, so no two ranks write one chunk."""
    return TILE if Path(path).suffix.lower() == ".zarr" else 1


def sink_bytes(path, shape: tuple[int, int, int, int]) -> int:
    """Bytes the file will take at most (for the free-disk check; PNG and zarr compress below it)."""
    b, c, h, w = shape
    return b * c * h * w * (4 if Path(path).suffix.lower() == ".npy" else 1)


# ---- video: whole frames, as the chunks of frames come -----------------------------------------------

VIDEO_SUFFIXES = (".npy", ".zarr", ".mp4")
MP4_CRF = 18  #: x264's constant rate factor: 18 is visually near-lossless, 23 its default
MP4_FPS = 16  #: Wan's frame rate
MP4_LOOKAHEAD = 40  #: frames x264 looks ahead to spend its bits (its default): most of what it holds


def video_writer_bytes(path, shape: tuple[int, ...]) -> int:
    """Host RAM the writer of a video of ``shape`` (B, C, F, H, W) holds beside vaekit's maps: one
    frame quantized (float32 and uint8), and for .mp4 x264's frames in flight, its lookahead and about
    16 more (references, B-frames, threads), each about 2.5x its yuv420p size (padded planes and the
    half-size planes the lookahead reads), plus 16 MiB of the codec's own. Measured with PyAV 18.1,
    2026-11-24: 87 MiB at 480x832 and 189 MiB at 1280x720 (this model: 96 and 201)."""
    b, c, _, h, w = shape
    frame = b * c * h * w * (4 + 1)
    if Path(path).suffix.lower() != ".mp4":
        return frame
    return frame + (16 << 20) + (MP4_LOOKAHEAD + 16) * int(2.5 * h * w * 1.5)


class VideoSink(Sink):
    """Takes frames (B, F, H, W, C) in [-1, 1], in order; ``close`` puts the file in place."""

    shareable = False

    def write_frames(self, f0: int, frames: torch.Tensor) -> None:
        raise NotImplementedError


class _NpyVideo(VideoSink):
    def __init__(self, target: Path, shape: tuple[int, ...]):
        super().__init__(target)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32, shape=shape)  # (B, C, F, H, W)

    def write_frames(self, f0: int, frames: torch.Tensor) -> None:
        self.array[:, :, f0 : f0 + frames.shape[1]] = frames.float().permute(0, 4, 1, 2, 3).cpu().numpy()

    def finish(self) -> None:
        self.array.flush()
        del self.array


class _ZarrVideo(VideoSink):
    directory = True

    def __init__(self, target: Path, shape: tuple[int, ...]):
        import zarr  # there: check_writer saw to it before the sink was opened

        super().__init__(target)
        b, c, f, h, w = shape
        self.array = zarr.create_array(store=str(self.tmp), shape=(b, f, h, w, c), dtype=np.uint8,
                                       chunks=(1, 1, TILE, TILE, c), overwrite=True,
                                       dimension_names=("batch", "frame", "y", "x", "channel"))

    def write_frames(self, f0: int, frames: torch.Tensor) -> None:
        for i in range(frames.shape[1]):  # a frame at a time: the writer holds one frame's copies
            self.array[:, f0 + i] = quantize(frames[:, i])  # (B, H, W, C) uint8


class _Mp4Video(VideoSink):
    """H.264 (libx264), yuv420p: frames are encoded as they come and never held as a whole video."""

    def __init__(self, target: Path, shape: tuple[int, ...], fps: int = MP4_FPS, crf: int = MP4_CRF):
        import av  # there: check_writer saw to it before the sink was opened

        _, _, _, h, w = shape
        super().__init__(target)
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        options = {"crf": str(crf), "rc-lookahead": str(MP4_LOOKAHEAD)}
        self.stream = self.container.add_stream("libx264", rate=fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"

    def write_frames(self, f0: int, frames: torch.Tensor) -> None:
        import av  # there: check_writer saw to it before the sink was opened

        for frame in frames[0]:
            rgb = quantize(frame)  # (H, W, 3) uint8
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                self.container.mux(packet)

    def finish(self) -> None:
        for packet in self.stream.encode():  # flush the encoder
            self.container.mux(packet)
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            super().abort()


def check_video_sink(path, shape: tuple[int, ...]) -> None:
    """InputError unless a video of ``shape`` (B, C, F, H, W) can be written to ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"cannot stream a video to {path}: video outputs end in {', '.join(VIDEO_SUFFIXES)}")
    check_writer(path)
    b, c, _, h, w = shape
    if suffix == ".mp4" and (b != 1 or c != 3 or h % 2 or w % 2):
        raise InputError(f"an .mp4 output takes one RGB video of even width and height, not {b} of {c} channels "
                         f"at {w}x{h}: use .npy or .zarr")


def open_video_sink(path, shape: tuple[int, ...], fps: int = MP4_FPS, crf: int = MP4_CRF) -> VideoSink:
    """A sink for a video of ``shape`` (B, C, F, H, W) at ``path``, by suffix."""
    check_video_sink(path, shape)
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return _Mp4Video(Path(path), shape, fps, crf)
    return (_NpyVideo if suffix == ".npy" else _ZarrVideo)(Path(path), shape)
