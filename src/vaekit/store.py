"""The activation store: where maps live between stages.

Tiers, fastest first:

- ``device``: a tensor on the compute device. Reading a band is a view, free.
- ``host``: a tensor in host RAM (pinned when the device is CUDA); bands are copied to the device.
- ``disk``: a scratch file read and written with explicit offsets (``os.preadv``/``os.pwrite``),
  not mmap, so it never counts as resident memory. Read buffers are allocated once per map and
  reused: first-touching fresh pages costs ~10x the copy itself.

Maps are stored NHWC, (B, H, W, C): a band of rows of one sample is one contiguous range of bytes.
A map may hold a slab of rows only (a rank of a distributed run, dist.py): ``row0`` is the row of the
whole map its first stored row is, and reads and writes take whole-map row numbers.
The scratch directory is removed on every exit path (``close`` runs from ``with``/``finally``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import torch

from .errors import DiskError
from .units import format_bytes

__all__ = ["TIERS", "Store"]

TIERS = ("device", "host", "disk")

#: writes to scratch files happen behind the compute, one band per map in flight (the plan counts it):
#: page-cache allocation and writeback otherwise stall the executor (a third of a gigapixel decode)
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaekit-disk")


class _DiskMap:
    def __init__(self, path: str, shape: tuple[int, int, int, int], dtype: torch.dtype):
        self.path, self.shape, self.dtype = path, shape, dtype
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        b, h, w, c = shape
        self.row_bytes = w * c * self.itemsize
        self.sample_bytes = h * self.row_bytes
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, b * self.sample_bytes)
        self.buffer: torch.Tensor | None = None
        self.pending = None  # the write in flight, if any

    def read(self, r0: int, r1: int) -> torch.Tensor:
        self.flush()
        b, _, w, c = self.shape
        rows = r1 - r0
        need = b * rows * w * c
        if self.buffer is None or self.buffer.numel() < need:
            self.buffer = torch.empty(need, dtype=self.dtype)
        band = self.buffer[:need].view(b, rows, w, c)
        try:
            for i in range(b):
                _read_exact(self.fd, band[i], i * self.sample_bytes + r0 * self.row_bytes)
        except OSError as e:
            raise _scratch_error(self.path, e) from None
        return band

    def write(self, r0: int, band: torch.Tensor) -> None:
        """Start writing ``band`` at row ``r0`` and return; the band is held until it is written."""
        self.flush()
        parts = [(band[i].contiguous(), i * self.sample_bytes + r0 * self.row_bytes) for i in range(band.shape[0])]
        self.pending = _WRITER.submit(_write_parts, self.fd, parts)

    def flush(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        pending, self.pending = self.pending, None
        if pending is not None:
            try:
                pending.result()
            except OSError as e:
                raise _scratch_error(self.path, e) from None

    def close(self, discard: bool = False) -> None:
        """Flush and close; ``discard``: on the way out of a failed run, where a write's error would
        only hide the error that ended the run."""
        try:
            self.flush()
        except OSError:
            if not discard:
                raise
        finally:
            os.close(self.fd)


def _scratch_error(path: str, error: OSError) -> DiskError:
    """What a failed scratch read or write means, and what would work; the scratch files' apparent
    sizes (each is made at its map's full size) are what the run needs there."""
    folder = os.path.dirname(path)
    need = sum(os.path.getsize(f.path) for f in os.scandir(folder) if f.is_file())
    if error.errno == errno.ENOSPC:
        what = f"the disk filled up under the scratch files in {folder}, which need {format_bytes(need)} there"
        fix = "free space there, pass scratch_dir= on a larger disk, or give a larger budget (fewer maps on disk)"
    else:  # a short read: the file was truncated or replaced under the run; never decode its zeros
        what = f"scratch file {path} could not be read back ({error.strerror or error})"
        fix = f"leave {folder} alone while vaekit runs (it removes it itself), or pass scratch_dir= elsewhere"
    err = DiskError(f"{what}: {fix}")
    err.errno = error.errno or errno.EIO
    return err


def _write_parts(fd: int, parts) -> None:
    for part, offset in parts:
        _write_all(fd, part, offset)


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def _read_exact(fd: int, out: torch.Tensor, offset: int) -> None:
    view = _bytes_of(out)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, f"short read at offset {offset + done}: the file ends before it")
        done += n


def _write_all(fd: int, band: torch.Tensor, offset: int) -> None:
    view = _bytes_of(band)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc: nothing to tune
        return None


_LIBC = _load_libc()
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
#: allocations above this go straight to mmap and back to the OS when freed
MMAP_THRESHOLD = 1 << 20


def _bound_heap() -> None:
    """Make glibc serve large blocks with mmap, always.

    By default glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, so
    later chunk-sized tensors come from the heap and stay resident after they are freed: the process
    then holds ~1.5x the planned working set. A fixed threshold keeps the measured peak at the plan.
    This is process-wide and stays set (glibc has no way back to the dynamic threshold); set
    VAEKIT_KEEP_MALLOC=1 to leave malloc alone.
    """
    if _LIBC is not None and not os.environ.get("VAEKIT_KEEP_MALLOC"):
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc; nothing elsewhere)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Store:
    """Maps by name, each in one tier. Use as a context manager so scratch files always go."""

    def __init__(self, device: torch.device, scratch_dir: str | os.PathLike | None = None):
        self.device = torch.device(device)
        self.scratch_parent = scratch_dir
        self.scratch: str | None = None
        self.maps: dict[str, torch.Tensor | _DiskMap] = {}
        self.row0: dict[str, int] = {}  # first stored row of each map (0 unless a slab)
        self.files = 0  # scratch files made
        if self.device.type == "cpu":
            _bound_heap()

    def alloc(self, name: str, shape: tuple[int, int, int, int], dtype: torch.dtype, tier: str,
              row0: int = 0) -> None:
        """Room for map ``name`` of ``shape``, whose stored rows are the map's rows from ``row0``."""
        self.row0[name] = row0
        if tier == "device":
            self.maps[name] = torch.empty(shape, dtype=dtype, device=self.device)
        elif tier == "host":
            pin = self.device.type == "cuda"
            self.maps[name] = torch.empty(shape, dtype=dtype, pin_memory=pin)
        elif tier == "disk":
            if self.scratch is None:
                self.scratch = tempfile.mkdtemp(prefix="vaekit-", dir=self.scratch_parent)
            self.files += 1  # a file of its own: maps swap (time caches) and move, their files with them
            self.maps[name] = _DiskMap(os.path.join(self.scratch, f"{self.files}-{name}.bin"), shape, dtype)
        else:
            raise ValueError(f"unknown tier {tier!r}; tiers are {TIERS}")

    def zero(self, name: str) -> None:
        """Fill a newly allocated map with zeros (a video's time caches before the first frame); a
        new disk map is zeros already (its file is extended by ftruncate)."""
        if isinstance(self.maps[name], torch.Tensor):
            self.maps[name].zero_()

    def swap(self, a: str, b: str) -> None:
        """Exchange what maps ``a`` and ``b`` hold (a time cache and its next tail, after a chunk)."""
        self.maps[a], self.maps[b] = self.maps[b], self.maps[a]
        self.row0[a], self.row0[b] = self.row0.get(b, 0), self.row0.get(a, 0)

    def read(self, name: str, r0: int, r1: int) -> torch.Tensor:
        """Rows [r0, r1) of map ``name`` on the device, (B, rows, W, C). Do not modify it in place."""
        stored, off = self.maps[name], self.row0.get(name, 0)
        if r0 < off or r1 - off > stored.shape[1]:
            raise IndexError(f"rows {r0}-{r1} of {name} are not stored here (rows {off}-{off + stored.shape[1]} are)")
        if isinstance(stored, _DiskMap):
            return stored.read(r0 - off, r1 - off).to(self.device, non_blocking=True)
        return stored[:, r0 - off : r1 - off].to(self.device, non_blocking=True)

    def write(self, name: str, r0: int, band: torch.Tensor) -> None:
        self._put(name, r0 - self.row0.get(name, 0), band)

    def _put(self, name: str, r0: int, band: torch.Tensor) -> None:
        """Write ``band`` at stored row ``r0``."""
        stored = self.maps[name]
        if isinstance(stored, _DiskMap):
            stored.write(r0, band.cpu())
        else:
            stored[:, r0 : r0 + band.shape[1]].copy_(band)

    def demote(self, name: str, tier: str) -> None:
        """Move map ``name`` (a tensor tier) to a slower tier."""
        self._move(name, tier, self.maps[name].dtype)

    def retype(self, name: str, dtype: torch.dtype) -> None:
        """Store map ``name`` in ``dtype`` from now on, keeping its rows (an upcast after an overflow)."""
        stored = self.maps[name]
        tier = "disk" if isinstance(stored, _DiskMap) else ("device" if stored.device == self.device else "host")
        self._move(name, tier, dtype)

    def _move(self, name: str, tier: str, dtype: torch.dtype, rows_per_copy: int = 64) -> None:
        """Re-store a map, a few rows at a time (no second full copy in flight)."""
        stored = self.maps.pop(name)
        self.alloc(name, tuple(stored.shape), dtype, tier, self.row0[name])
        for r0 in range(0, stored.shape[1], rows_per_copy):
            r1 = min(r0 + rows_per_copy, stored.shape[1])
            band = stored.read(r0, r1) if isinstance(stored, _DiskMap) else stored[:, r0:r1]
            self._put(name, r0, band.to(dtype))
        if isinstance(stored, _DiskMap):
            stored.close()
            os.unlink(stored.path)

    def free(self, name: str, discard: bool = False) -> None:
        stored = self.maps.pop(name, None)
        self.row0.pop(name, None)
        if isinstance(stored, _DiskMap):
            stored.close(discard)
            os.unlink(stored.path)  # its own file: a swapped map's is named after the other map

    def end_stage(self) -> None:
        """Drop the read buffers of this stage and hand freed heap pages back to the OS, so the
        next stage starts from the resident maps alone (glibc otherwise keeps freed bands)."""
        for stored in self.maps.values():
            if isinstance(stored, _DiskMap):
                stored.buffer = None
        trim_heap()

    def close(self, discard: bool = False) -> None:
        for name in list(self.maps):
            self.free(name, discard)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(discard=exc_type is not None)
