"""``vaekit.apply(pipe)``: a diffusers pipeline's own VAE calls go through vaekit.

The VAE instance gets ``encode`` and ``decode`` attributes that shadow its class's methods, take the
same arguments and return the same types (``DecoderOutput``, ``AutoencoderKLOutput``,
``EncoderOutput``, ``AutoencoderTinyOutput``, or the ``return_dict=False`` tuples), built only from
diffusers' public output classes. ``unapply`` deletes them again, so the instance is exactly as it
was. Pipelines need no change: they call ``self.vae.decode(latents, return_dict=False)[0]``.
"""

from __future__ import annotations

import logging

import torch

from .. import api
from ..errors import InputError

__all__ = ["apply", "unapply", "is_applied"]

log = logging.getLogger("vaekit")

_MARK = "_vaekit_applied"  # instance attribute: the options, and what encode/decode were before


def _vae_of(pipe_or_vae):
    if isinstance(getattr(pipe_or_vae, "vae", None), torch.nn.Module):
        return pipe_or_vae.vae
    if hasattr(pipe_or_vae, "decode") and isinstance(pipe_or_vae, torch.nn.Module):
        return pipe_or_vae
    raise InputError(f"{type(pipe_or_vae).__name__} is neither a VAE nor a pipeline with a .vae")


def is_applied(pipe_or_vae) -> bool:
    return _MARK in vars(_vae_of(pipe_or_vae))


def apply(pipe_or_vae, budget=None, **options):
    """Route ``vae.encode``/``vae.decode`` of a pipeline (or of a VAE) through vaekit, within ``budget``.

    ``options`` are those of :func:`vaekit.decode` (device, progress, scratch_dir, report). A user's
    ``vae.enable_tiling()`` is honoured by exact streaming instead of tiles. Returns its argument.
    """
    vae = _vae_of(pipe_or_vae)
    api.program_for(vae, "decode")  # UnsupportedModelError now, not at the first decode
    if is_applied(vae):
        unapply(vae)
    before = {name: vars(vae)[name] for name in ("encode", "decode") if name in vars(vae)}
    state = {"before": before, "told": False, "options": {"budget": budget, **options}}

    def stream_requested() -> bool:
        if getattr(vae, "use_tiling", False):
            if not state["told"]:
                log.info("vaekit: vae.enable_tiling() is honoured by exact streaming (the untiled pixels, not tiles)")
                state["told"] = True
            return True
        return False

    def run(op: str, x: torch.Tensor) -> torch.Tensor:
        out = api.run(vae, op, x, budget, stream=stream_requested(), **options)
        return out.clone()  # out of inference mode: pipelines may go on with it as with any tensor

    def decode(z, *args, return_dict: bool = True, **kwargs):
        if args and isinstance(args[0], bool):  # decode(z, False): return_dict positionally
            return_dict = args[0]
        sample = run("decode", z)
        if not return_dict:
            return (sample,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=sample)

    def encode(x, *args, return_dict: bool = True, **kwargs):
        if args and isinstance(args[0], bool):
            return_dict = args[0]
        output = _encoder_output(vae, run("encode", x))
        return output if return_dict else (next(iter(output.values())),)

    vae.decode, vae.encode = decode, encode
    setattr(vae, _MARK, state)
    return pipe_or_vae


def _encoder_output(vae, out: torch.Tensor):
    """What the model's own encode returns, with ``out`` (the program's output) inside."""
    name = type(vae).__name__
    if name == "AutoencoderKL":
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(out))
    if name == "AutoencoderTiny":
        from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput

        return AutoencoderTinyOutput(latents=out)
    from diffusers.models.autoencoders.vae import EncoderOutput

    return EncoderOutput(latent=out)


def unapply(pipe_or_vae):
    """Undo :func:`apply`: the VAE's ``encode``/``decode`` are what they were. Returns its argument."""
    vae = _vae_of(pipe_or_vae)
    state = vars(vae).pop(_MARK, None)
    if state is None:
        return pipe_or_vae
    for name in ("encode", "decode"):
        vars(vae).pop(name, None)
        if name in state["before"]:
            setattr(vae, name, state["before"][name])
    return pipe_or_vae
