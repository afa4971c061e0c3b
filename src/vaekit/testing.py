"""Helpers for testing code that uses vaekit (and for vaekit's own tests)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import run

__all__ = ["oom_after", "untiled", "Fidelity", "fidelity"]


@contextmanager
def oom_after(n: int, times: int = 1):
    """Make chunks fail as a device out of memory does, to test recovery.

    Within this block, the ``n``-th chunk computed (counting from 1, across runs, retries included)
    raises ``torch.OutOfMemoryError``, as a device that ran out of memory would; vaekit recovers.

    Args:
        n: the chunk that fails first, counting from 1.
        times: how many attempts in a row fail.

    Yields:
        A dict whose "fired" counts the failures raised.
    """
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


def untiled(vae, op: str, x: torch.Tensor) -> torch.Tensor:
    """What ``vaekit.decode``/``encode`` of ``x`` must give: the model's own untiled call.

    Args:
        vae: a model vaekit streams.
        op: "decode" or "encode".
        x: the latents or images.

    Returns:
        The model's own result (its modules, or its own call where it cuts a video into clips), with any
        ``enable_tiling()`` of the user's left out; encode's is the latent distribution's mode.
    """
    from .arch import family

    with torch.no_grad():
        if getattr(family(vae), "clips", None) is not None:
            return vae.decode(x).sample if op == "decode" else vae.encode(x).latent_dist.mode()
        return family(vae).finish(vae, op, family(vae).whole(vae, op, x))


@dataclass(frozen=True)
class Fidelity:
    """A half-precision result's errors against a float64 truth, beside the untiled call's in the same
    dtype: root-mean-square and largest, each relative to max(1, the truth's largest magnitude).

    Attributes:
        rms: the streamed result's RMS error.
        max: its largest error.
        untiled_rms: the untiled call's RMS error (inf where it overflowed).
        untiled_max: its largest error.

    ``ok`` is the rule vaekit holds itself to in bfloat16 and float16: streaming may not take the result
    further from the truth than the model's own untiled call in that dtype (RMS at most 1.1x, largest
    at most 2x, each plus 1e-6). Where the untiled call overflows (NaN or Inf), any finite result is
    nearer the truth than it: ``untiled_rms`` is then inf."""

    rms: float
    max: float
    untiled_rms: float
    untiled_max: float

    @property
    def ok(self) -> bool:
        finite = math.isfinite(self.rms)  # a streamed NaN or Inf is never ok, whatever the untiled call gave
        return finite and self.rms <= 1.1 * self.untiled_rms + 1e-6 and self.max <= 2 * self.untiled_max + 1e-6


def fidelity(out: torch.Tensor, untiled: torch.Tensor, truth: torch.Tensor) -> Fidelity:
    """The half-precision rule's measurements of a streamed result.

    Args:
        out: the streamed result.
        untiled: the model's own call in the same dtype.
        truth: the same model's weights and input, as that dtype holds them, run in float64 (so the
            errors are the computation's rounding alone, not the weights', which both calls share).

    Returns:
        Their Fidelity; ``.ok`` is the rule.
    """
    truth = truth.double()
    scale = max(1.0, float(truth.abs().max()))

    def errors(x: torch.Tensor) -> tuple[float, float]:
        d = x.double() - truth
        if not bool(torch.isfinite(d).all()):
            return float("inf"), float("inf")
        return float(d.square().mean().sqrt()) / scale, float(d.abs().max()) / scale

    (rms, largest), (untiled_rms, untiled_max) = errors(out), errors(untiled)
    return Fidelity(rms, largest, untiled_rms, untiled_max)
