"""Helpers for testing code that uses vaekit (and for vaekit's own tests)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from . import run

__all__ = ["oom_after"]


@contextmanager
def oom_after(n: int, times: int = 1):
    """Within this block, the ``n``-th chunk computed (counting from 1, across runs, retries
    included) raises ``torch.OutOfMemoryError`` once, as a device that ran out of memory would;
    with ``times`` > 1 the attempts after it fail too, ``times`` failures in a row. vaekit recovers
    (see ``vaekit.recovery``); yields a dict whose "fired" counts the failures raised."""
    if n < 1 or times < 1:
        raise ValueError("n counts chunks from 1; times is at least 1")
    state = {"count": 0, "fired": 0}
    previous = run.BEFORE_CHUNK

    def before_chunk() -> None:
        if previous is not None:
            previous()
        state["count"] += 1
        if n <= state["count"] < n + times:
            state["fired"] += 1
            raise torch.OutOfMemoryError(f"injected by vaekit.testing.oom_after({n})")

    run.BEFORE_CHUNK = before_chunk
    try:
        yield state
    finally:
        run.BEFORE_CHUNK = previous
