"""Byte sizes: parse what users type ("768MiB", "1.5GB", 2**30) and print them back."""

from __future__ import annotations

import re

from .errors import InputError

__all__ = ["parse_bytes", "format_bytes"]

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """``"768MiB"`` -> 805306368. Ints pass through; SI (GB) and binary (GiB) units are both understood."""
    if isinstance(value, bool):
        raise InputError(f"budget must be a size like '768MiB' or a number of bytes, not {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _PATTERN.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise InputError(
                f"cannot read {value!r} as a size: write a number of bytes or a number with a unit, "
                "e.g. '768MiB', '2GiB', '1.5GB'"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise InputError(f"a size must be positive, got {value!r}")
    return size


def format_bytes(size: int | float) -> str:
    """967000000 -> '922.2 MiB' (binary units, one decimal)."""
    size = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
