"""One file per model family: each turns a model into a :class:`vaekit.program.Program`."""

from __future__ import annotations

from ..errors import UnsupportedModelError
from ..program import Program
from . import kl

__all__ = ["program_for"]


def program_for(vae, op: str) -> Program:
    """The stage program of ``vae`` for ``op`` ("decode")."""
    name = type(vae).__name__
    if name == "AutoencoderKL":
        if op == "decode":
            return kl.decode_program(vae)
        raise UnsupportedModelError(f"op {op!r} is not supported yet for {name}: use op='decode'")
    raise UnsupportedModelError(
        f"vaekit cannot stream a {name} yet: supported models are diffusers AutoencoderKL (decode)"
    )
