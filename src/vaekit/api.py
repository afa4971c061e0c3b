"""The public functions: plan, decode and encode."""

from __future__ import annotations

import math
import os

import torch

from .arch import family, program_for
from .errors import DeviceError, InputError
from .plan import Plan, make_plan
from .program import Program
from .run import execute
from .units import parse_bytes

__all__ = ["decode", "encode", "plan", "free_memory"]

#: images past +-this are certainly not in [-1, 1] (resampling may overshoot 1 a little)
IMAGE_RANGE_SLACK = 1.5


def plan(vae, shape, budget=None, op: str = "decode", *, device=None, dtype=None) -> Plan:
    """Plan ``op`` of an NCHW input of ``shape`` from the model's config and shapes alone.

    ``shape`` is the latent shape for decode, e.g. (1, 4, 128, 128), the image shape for encode,
    e.g. (1, 3, 1024, 1024). Works for a model on the meta
    device. ``budget``: bytes, or a string like "768MiB"; None plans for the free memory of the device.
    """
    program = program_for(vae, op)
    device = _device(vae, device, check=False)  # planning for a device needs no such device here
    dtype = dtype or _model_dtype(vae)
    shape = _check_shape(program, vae, shape, op)
    limit = None if budget is None else parse_bytes(budget)
    free = free_memory(device) if limit is None and device.type != "meta" else None
    itemsize = torch.empty((), dtype=dtype).element_size()
    return make_plan(program, shape, itemsize, str(dtype).removeprefix("torch."), str(device), limit, free_bytes=free)


def decode(vae, latents: torch.Tensor, budget=None, *, device=None, progress=None, compile: bool = False,
           scratch_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """``vae.decode(latents).sample``, exactly, while holding at most ``budget`` bytes of activations.

    latents: NCHW, already divided by the scaling factor, as for ``vae.decode``.
    budget: bytes, or a string like "768MiB", "2GiB", "1.5GB"; None runs whole when that fits the
        free memory of the device, and streams within the free memory otherwise.
    device: where to compute (default: the model's device); weights move there stage by stage.
    progress: True for a progress bar on stderr, or a callable(stage_index, rows_done, rows_total).
    scratch_dir: where the disk tier writes its scratch files (default: the system temp dir).
    Returns the image (in [-1, 1] for a trained model) on the latents' device, in the model's dtype.
    """
    return _run(vae, "decode", latents, budget, device=device, progress=progress, compile=compile,
                scratch_dir=scratch_dir)


def encode(vae, images: torch.Tensor, budget=None, *, sample: bool = False, generator: torch.Generator | None = None,
           device=None, progress=None, compile: bool = False,
           scratch_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The latents of ``images`` (NCHW in [-1, 1]), exactly as the untiled encoder gives them.

    AutoencoderKL: the latent distribution's mode (its mean), or with ``sample=True`` a sample drawn
    as diffusers draws it (reproducible with ``generator``). Tiny autoencoders: the encoder output.
    Latents are not multiplied by the scaling factor. Other arguments as for :func:`decode`.
    """
    out = _run(vae, "encode", images, budget, device=device, progress=progress, compile=compile,
               scratch_dir=scratch_dir)
    with torch.inference_mode():
        return family(vae).finish(vae, "encode", out, sample=sample, generator=generator)


def _run(vae, op: str, x: torch.Tensor, budget, *, device, progress, compile: bool, scratch_dir) -> torch.Tensor:
    if compile:
        raise InputError("compile=True is not available yet: pass compile=False")
    program = program_for(vae, op)
    what = "latents" if op == "decode" else "images"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    _check_shape(program, vae, tuple(x.shape), op)
    if not x.is_floating_point():
        raise InputError(f"{what} must be floating point, got {x.dtype}")
    if op == "encode":
        _check_range(x)
    compute = _device(vae, device)
    dtype = _model_dtype(vae)
    the_plan = plan(vae, tuple(x.shape), budget, op, device=compute, dtype=dtype)
    inp = x.to(device=compute, dtype=dtype)
    with torch.inference_mode():
        if the_plan.mode == "whole":
            out = family(vae).whole(vae, op, inp)
        else:
            with _progress(progress, the_plan) as callback:
                out = execute(program, the_plan, inp, scratch_dir=scratch_dir, progress=callback)
    return out.to(x.device)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA's mem_get_info, or available host RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def _device(vae, device, check: bool = True) -> torch.device:
    if device is None:
        return next(vae.parameters()).device
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"cannot use device {device!r}: {e}; try 'cpu' or 'cuda'") from None
    if check and device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} was asked for but CUDA is not available here; use device='cpu'")
    return device


def _model_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype


def _check_shape(program: Program, vae, shape, op: str) -> tuple[int, int, int, int]:
    shape = tuple(int(d) for d in shape)
    channels = program.maps[program.input].channels
    what = "latents" if op == "decode" else "images"
    if len(shape) != 4:
        raise InputError(f"{what} must be 4-D (batch, channels, height, width), got shape {shape}")
    if shape[1] != channels:
        raise InputError(f"{what} have {shape[1]} channels but this {type(vae).__name__} expects {channels}")
    if min(shape) < 1:
        raise InputError(f"{what} shape {shape} has an empty dimension")
    try:
        out_h, out_w = program.sizes(*shape[2:])[program.output]
    except ValueError as e:  # e.g. a pixel unshuffle of an odd size
        raise InputError(f"{what} of {shape[3]}x{shape[2]} do not fit this {type(vae).__name__} ({e}): use sizes "
                         f"that are multiples of {family(vae).scale_factor(vae)}") from None
    if min(out_h, out_w) < 1:
        raise InputError(f"{what} of {shape[3]}x{shape[2]} are too small for this {type(vae).__name__}")
    return shape


def _check_range(images: torch.Tensor) -> None:
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError("images contain NaN or Inf")
    if low < -IMAGE_RANGE_SLACK or high > IMAGE_RANGE_SLACK:
        raise InputError(f"images must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]: "
                         "for 0-255 pixels use x / 127.5 - 1, for [0, 1] use x * 2 - 1")


class _progress:
    """Context manager giving the executor a progress callback (tqdm bar, user callable or None)."""

    def __init__(self, progress, the_plan: Plan):
        self.progress, self.plan, self.bar = progress, the_plan, None

    def __enter__(self):
        if callable(self.progress):
            return self.progress
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        heights = [s.height for s in self.plan.stages]
        done_before = [sum(heights[:i]) for i in range(len(heights))]
        self.bar = tqdm(total=sum(heights), unit="row", desc=f"vaekit {self.plan.op}", leave=False)

        def callback(stage: int, rows_done: int, _rows_total: int) -> None:
            self.bar.n = done_before[stage] + rows_done
            self.bar.refresh()

        return callback

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
