"""One file per model family; each turns a model into a :class:`vaekit.program.Program` per op.

A family module provides ``program(vae, op)`` (from the model's structure; ``check_state(vae)``, if
it has one, checks its state at each call), ``whole(vae, op, x)`` (the model's own modules,
untiled: used when everything fits) and ``finish(vae, op, out, sample, generator)`` (what the
public call returns, from the program's output: e.g. the latent distribution's mode).
"""

from __future__ import annotations

from types import ModuleType

from ..errors import UnsupportedModelError
from ..program import Program
from . import cogvideox, dc, hunyuan, hunyuan15, hunyuan_video, kl, kvae, ltx2, minimax, mochi, tiny, wan

__all__ = ["family", "program_for", "check_state", "scale_factor", "temporal_factor", "latent_frames",
           "latent_channels", "clips_of", "OPS"]

OPS = ("decode", "encode")

#: AutoencoderKLFlux2 is AutoencoderKL's encoder and decoder (its BatchNorm belongs to the pipeline)
_FAMILIES: dict[str, ModuleType] = {"AutoencoderKL": kl, "AutoencoderKLFlux2": kl, "AutoencoderDC": dc,
                                     "AutoencoderKLHunyuanImage": hunyuan, "AutoencoderKLWan": wan,
                                     "AutoencoderKLQwenImage": wan, "AutoencoderKLQwenImage21": wan,
                                     "AutoencoderKLLTX2Video": ltx2, "AutoencoderKLLTXVideo": ltx2,
                                     "AutoencoderKLHunyuanVideo15": hunyuan15, "AutoencoderKLHunyuanVideo": hunyuan_video,
                                     "AutoencoderKLMiniMaxH3": minimax, "AutoencoderKLMochi": mochi,
                                     "AutoencoderKLKVAEVideo": kvae, "AutoencoderKLCogVideoX": cogvideox,
                                     "AutoencoderTiny": tiny,
                                     "TinyAutoencoder": tiny}


def family(vae) -> ModuleType:
    name = type(vae).__name__
    if name not in _FAMILIES:
        supported = ", ".join(sorted(_FAMILIES))
        raise UnsupportedModelError(f"vaekit cannot stream a {name}: supported models are {supported}")
    return _FAMILIES[name]


def program_for(vae, op: str) -> Program:
    """The stage program of ``vae`` for ``op`` ("decode" or "encode")."""
    if op not in OPS:
        raise UnsupportedModelError(f"unknown op {op!r}: use one of {', '.join(OPS)}")
    return family(vae).program(vae, op)


def check_state(vae) -> None:
    """UnsupportedModelError when the model's current state (not its structure) cannot be streamed."""
    check = getattr(family(vae), "check_state", None)
    if check is not None:
        check(vae)


def scale_factor(vae) -> int:
    """Image px per latent px."""
    return family(vae).scale_factor(vae)


def temporal_factor(vae) -> int:
    """Video frames per latent frame, after the first (a video is 1 + factor * k frames); 1 for images."""
    of = getattr(family(vae), "temporal_factor", None)
    return 1 if of is None else of(vae)


def latent_frames(vae, frames: int) -> int:
    """Latent frames of a video of ``frames``: what the model's encode makes of it (the first frame, then
    one per temporal_factor; MiniMax H3's 17k + 5 frames: 5k + 2)."""
    clips = clips_of(vae, "encode", frames)
    return clips.frames if clips is not None else 1 + (frames - 1) // temporal_factor(vae)


def clips_of(vae, op: str, frames: int):
    """The model's own clips of a video of ``frames`` (clips.Clips), or None: it runs the video whole
    (in chunks along time that carry caches, chunk_frames)."""
    of = getattr(family(vae), "clips", None)
    return None if of is None else of(vae, op, frames)


def latent_channels(vae) -> int:
    config = getattr(vae, "config", None)
    return config.latent_channels if config is not None else vae.latent_channels
