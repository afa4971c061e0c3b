"""``vaekit.apply(pipe)``: a diffusers pipeline's own VAE calls go through vaekit, and nothing else changes.

The VAE instance gets ``encode`` and ``decode`` attributes that shadow its class's methods (callables
holding the instance weakly: an applied VAE dropped from a pipeline is freed at once, not at the next
garbage collection, and ``copy.deepcopy`` gives a copy that streams itself), take the same arguments and
return the same types (``DecoderOutput``, ``AutoencoderKLOutput``, ``EncoderOutput``,
``AutoencoderTinyOutput``, or the ``return_dict=False`` tuples). ``unapply`` deletes them, so the
instance is exactly as it was. Pipelines need no change: they call ``self.vae.decode(z, return_dict=False)[0]``.

A drop-in changes nothing but memory, so a call vaekit cannot take as the model would goes to the
model's own method, said once in the ``vaekit`` logger:

    autograd recording, and the input or a weight requires grad   the model's own graph and gradients
    an input vaekit refuses (NaN/Inf, a size its program cannot    whatever the model does with it
      take, a BatchNorm in training mode)
    weights on the meta device (accelerate's sequential offload)   accelerate's hooks place them

Everything else streams within the budget: images outside [-1, 1] too (the range check that
``vaekit.encode`` makes is for direct calls), and a NaN/Inf output is returned as the model returns it.
"""

from __future__ import annotations

import copy
import logging
import weakref

import torch

from .. import api
from ..arch import family, kl
from ..errors import InputError, UnsupportedModelError

__all__ = ["apply", "unapply", "is_applied"]

log = logging.getLogger("vaekit")

_MARK = "_vaekit_applied"  # instance attribute: the options, what encode/decode were before, what was said


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

    The pipeline's calls return what they returned without it (same types, dtypes and pixels within
    1e-4); only the memory differs. A user's ``vae.enable_tiling()`` is honoured by exact streaming
    instead of tiles.

    Args:
        pipe_or_vae: a diffusers pipeline (its ``.vae``) or a VAE.
        budget: as for :func:`vaekit.decode`, per call.
        **options: those of :func:`vaekit.decode`: device, progress, scratch_dir, report, compile.

    Returns:
        Its argument.

    Raises:
        UnsupportedModelError: a VAE vaekit cannot stream (now, not at the first call).
    """
    vae = _vae_of(pipe_or_vae)
    _streams_an_op(vae)  # UnsupportedModelError now, not at the first call
    if is_applied(vae):
        unapply(vae)
    before = {name: vars(vae)[name] for name in ("encode", "decode") if name in vars(vae)}
    setattr(vae, _MARK, {"before": before, "said": set(), "options": {"budget": budget, **options}})
    vae.decode, vae.encode = _Shadow(vae, decode), _Shadow(vae, encode)
    return pipe_or_vae


class _Shadow:
    """``function`` bound to ``vae`` like a method, but through a weak reference: a bound method stored
    on its own instance is a reference cycle, which would keep every dropped VAE's weights until a
    garbage collection happens to run."""

    def __init__(self, vae, function):
        self._vae, self.__func__ = weakref.ref(vae), function
        self.__name__ = self.__qualname__ = function.__name__
        self.__doc__ = function.__doc__

    @property
    def __self__(self):
        return self._vae()

    def __call__(self, *args, **kwargs):
        return self.__func__(self._vae(), *args, **kwargs)

    def __deepcopy__(self, memo):
        return _Shadow(copy.deepcopy(self._vae(), memo), self.__func__)  # the copy's own, from the memo


def decode(vae, z, *args, return_dict: bool = True, **kwargs):
    """The shadowing ``vae.decode``: ``vae.decode(z, return_dict=True, ...)`` as the class has it."""
    if args and isinstance(args[0], bool):  # decode(z, False): return_dict positionally
        return_dict, args = args[0], args[1:]
    sample = _run(vae, "decode", z, args, {"return_dict": return_dict, **kwargs})
    if not isinstance(sample, torch.Tensor):
        return sample  # the model's own method answered, in its own types
    if not return_dict:
        return (sample,)
    from diffusers.models.autoencoders.vae import DecoderOutput

    return DecoderOutput(sample=sample)


def encode(vae, x, *args, return_dict: bool = True, **kwargs):
    """The shadowing ``vae.encode``: ``vae.encode(x, return_dict=True)`` as the class has it."""
    if args and isinstance(args[0], bool):
        return_dict, args = args[0], args[1:]
    out = _run(vae, "encode", x, args, {"return_dict": return_dict, **kwargs})
    if not isinstance(out, torch.Tensor):
        return out
    output = _encoder_output(vae, out)
    return output if return_dict else (next(iter(output.values())),)


def _run(vae, op: str, x, args: tuple, kwargs: dict):
    """The program's output for ``op`` on ``x`` (a plain tensor: no inference-mode copy to make), or
    the model's own method's return value when vaekit should not take the call."""
    state = vars(vae)[_MARK]
    why = _why_not(vae, op, x)
    timestep, why = _timestep(vae, op, args, kwargs, why)
    if why is None:
        _pre_forward(vae)
        options = dict(state["options"])
        try:
            return api.run(vae, op, x, options.pop("budget"), stream=_tiling_requested(vae, state), strict=False,
                           video={"timestep": timestep} if timestep is not None else None, **options)
        except InputError as e:  # raised before any work: a size, a dtype, NaN/Inf or a model state it cannot take
            why = f"vaekit does not take this input ({e})"
        except UnsupportedModelError as e:  # before any work too: an op vaekit does not stream for this model
            why = f"vaekit does not stream this {op} ({e})"
    level = logging.WARNING if why.startswith("autograd") else logging.INFO  # a warning: it does not stream
    _say_once(state, why.split(" (")[0], f"vaekit: {why}: running the model's own {op}", level)
    return _own_method(vae, op, x, args, kwargs)


def _streams_an_op(vae) -> None:
    """UnsupportedModelError unless vaekit streams the decode or the encode of ``vae`` (a model of which it
    streams one op only: the other goes to the model's own method)."""
    try:
        api.program_for(vae, "decode")
    except UnsupportedModelError:
        try:
            api.program_for(vae, "encode")
        except UnsupportedModelError:
            pass
        else:
            return
        raise


def _why_not(vae, op: str, x) -> str | None:
    """Why a call must go to the model's own method, before trying vaekit; None if it need not."""
    if not isinstance(x, torch.Tensor):
        return None  # api.run raises InputError: the model's own method gives the model's own error
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in vae.parameters())):
        return ("autograd is recording and a tensor requires grad, so the model's own graph is used (vaekit streams "
                "without gradients: call under torch.no_grad() or torch.inference_mode() to stream)")
    if any(p.is_meta for p in vae.parameters()):
        return "the weights are on the meta device (accelerate offload hooks place them)"
    own_tiles = getattr(family(vae), "own_tiles", None)
    if own_tiles is not None and own_tiles(vae, op, tuple(x.shape)):
        return (f"a {type(vae).__name__} ships with tiling on and its tiles are its output, so its own call is "
                "used (vae.disable_tiling() to stream its untiled call exactly)")
    return None


def _timestep(vae, op: str, args: tuple, kwargs: dict, why: str | None):
    """A timestep-conditioned decoder's timestep (LTX's ``decode(z, temb, causal)``), and why the call
    must go to the model's own method, if it must: ``causal=True`` for a decoder its config makes not
    causal (the model runs ``causal or is_causal``)."""
    if op != "decode" or type(vae).__name__ not in ("AutoencoderKLLTX2Video", "AutoencoderKLLTXVideo"):
        return None, why
    timestep = args[0] if args else kwargs.get("temb")
    causal = args[1] if len(args) > 1 else kwargs.get("causal")  # LTX-2's; LTX-Video 0.9 takes none
    if causal and not vae.decoder.is_causal and why is None:
        why = "vaekit streams the decoder as its config has it (not causal), and this call asks for causal=True"
    return timestep, why


def _own_method(vae, op: str, x, args: tuple, kwargs: dict):
    """The method ``apply`` shadowed: the instance's earlier one, else the class's (with its accelerate hook)."""
    before = vars(vae)[_MARK]["before"].get(op)
    method = before if before is not None else getattr(type(vae), op).__get__(vae)
    return method(x, *args, **kwargs)


def _pre_forward(vae) -> None:
    """What diffusers' ``@apply_forward_hook`` does before encode/decode: accelerate's model offload
    (``pipe.enable_model_cpu_offload()``) moves the VAE onto the device and the other models off it."""
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)


def _tiling_requested(vae, state: dict) -> bool:
    if getattr(vae, "use_tiling", False):
        _say_once(state, "tiling", "vaekit: vae.enable_tiling() is honoured by exact streaming (the untiled "
                                   "pixels, not tiles)")
        return True
    return False


def _say_once(state: dict, key: str, message: str, level: int = logging.INFO) -> None:
    if key not in state["said"]:
        state["said"].add(key)
        log.log(level, message)


def _encoder_output(vae, out: torch.Tensor):
    """What the model's own encode returns, with ``out`` (the program's output) inside."""
    name = type(vae).__name__
    if family(vae).finish is kl.finish:  # the program's output is the moments (mean | logvar)
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(out))
    if name == "AutoencoderTiny":
        from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput

        return AutoencoderTinyOutput(latents=out)
    from diffusers.models.autoencoders.vae import EncoderOutput

    return EncoderOutput(latent=out)


def unapply(pipe_or_vae):
    """Undo :func:`apply`: the VAE's ``encode``/``decode`` are what they were.

    Args:
        pipe_or_vae: what :func:`apply` was given (a VAE or pipeline it was not applied to is left alone).

    Returns:
        Its argument.
    """
    vae = _vae_of(pipe_or_vae)
    state = vars(vae).pop(_MARK, None)
    if state is None:
        return pipe_or_vae
    for name in ("encode", "decode"):
        vars(vae).pop(name, None)
        if name in state["before"]:
            setattr(vae, name, state["before"][name])
    return pipe_or_vae
