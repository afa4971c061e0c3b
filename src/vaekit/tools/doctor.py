"""`vaekit doctor`: what this machine has, and what vaekit would choose on it."""

from __future__ import annotations

import os
import platform
import sys

import torch

from ..precision import bf16_units
from ..units import format_bytes

__all__ = ["doctor"]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def doctor() -> str:
    """A printable report: versions, devices, free memory, real bf16 capability, the default choices."""
    import psutil

    from .. import __version__
    from ..measure import machine

    mem = psutil.virtual_memory()
    lines = [
        f"vaekit {__version__}   torch {torch.__version__}   diffusers {_version('diffusers')}   "
        f"safetensors {_version('safetensors')}   python {platform.python_version()} ({sys.platform})",
        f"cpu     {machine()}; torch threads {torch.get_num_threads()}",
        f"        RAM {format_bytes(mem.total)}, free {format_bytes(mem.available)}; "
        f"scratch dir free {format_bytes(_disk_free())}",
    ]
    choice = "cpu: float32, budget = free RAM"
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            device = torch.device("cuda", i)
            free, total = torch.cuda.mem_get_info(device)
            major, minor = torch.cuda.get_device_capability(device)
            units = "yes" if bf16_units(device) else "no (emulated: vaekit will not use bf16)"
            lines.append(f"cuda:{i}  {torch.cuda.get_device_name(device)}, capability {major}.{minor}, "
                         f"{format_bytes(total)}, free {format_bytes(free)}; bf16 units: {units}")
        dtype = "bfloat16" if bf16_units("cuda:0") else "float16 for fp16-safe VAEs, else float32"
        choice = f"cuda:0: {dtype}, budget = free device memory; host RAM, then disk, below it"
    else:
        lines.append("cuda    not available")
    lines.append(f"would use  {choice}")
    lines.append(_extras())
    return "\n".join(lines)


def _extras() -> str:
    """Each optional package (extras.py) and the extra that brings it where it is missing."""
    from ..extras import EXTRAS

    found = []
    for package, extra in EXTRAS.values():
        version = _version(package)
        found.append(f"{package} missing (vaekit[{extra}])" if version == "not installed" else f"{package} {version}")
    return "extras  " + ", ".join(found)


def _disk_free() -> int:
    import shutil
    import tempfile

    return shutil.disk_usage(os.environ.get("TMPDIR", tempfile.gettempdir())).free
