"""What runs are measured by: peak memory of a block of code (resident set on CPU via Linux VmHWM,
allocator peak on CUDA) and image fidelity (PSNR)."""

from __future__ import annotations

import math
import os
import platform

import psutil
import torch

from .store import trim_heap

__all__ = ["PeakMemory", "rss_bytes", "psnr", "machine"]


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of [-1, 1] images, measured on the [0, 1] scale (image clamped to [-1, 1] first)."""
    mse = float(((image.float().clamp(-1, 1) - reference.float()) / 2).square().mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux)."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.growth``: peak bytes above the level at entry.

    CPU: the process's peak resident set (exact, via /proc, Linux only). CUDA: the allocator's peak.
    """

    def __init__(self, device: torch.device | str = "cpu", strict: bool = True):
        self.device = torch.device(device)
        self.start = self.peak = 0
        self.strict = strict  # False: where peak RSS cannot be read, ``growth`` is None instead of an error
        self.available = True

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            trim_heap()  # heap pages a previous, larger run freed would otherwise read as already resident
            if not _reset_hwm():
                if self.strict:
                    raise OSError("peak RSS needs Linux /proc/<pid>/clear_refs")
                self.available = False
            self.start = rss_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.available:
            self.peak = _hwm_bytes()

    @property
    def growth(self) -> int | None:
        return max(self.peak - self.start, 0) if self.available else None


def machine() -> str:
    """CPU model (with its family/model numbers and widest vector units, since a virtual machine's model
    name is often generic and oneDNN's speed follows the ISA), core count and OS, for benchmark tables."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().split("\n\n")[0].splitlines()  # the first processor's entry
        info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
        flags = set(info.get("flags", "").split())
        units = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if flag in flags]
        units = units or [name for flag, name in (("avx2", "AVX2"),) if flag in flags]
        cpu = f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}" + (
            f"; {', '.join(units)})" if units else ")")
    except (OSError, KeyError, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
