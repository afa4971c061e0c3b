"""The public functions: plan and decode."""

from __future__ import annotations

import os

import torch

from .arch import program_for
from .errors import DeviceError, InputError
from .plan import Plan, make_plan
from .program import Program
from .run import execute
from .units import parse_bytes

__all__ = ["decode", "plan", "free_memory"]


def plan(vae, shape, budget=None, op: str = "decode", *, device=None, dtype=None) -> Plan:
    """Plan ``op`` of an NCHW input of ``shape`` from the model's config and shapes alone.

    ``shape`` is the latent shape for decode, e.g. (1, 4, 128, 128). Works for a model on the meta
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
    budget: bytes, or a string like "768MiB", "2GiB", "1.5GB"; None decodes whole when that fits the
        free memory of the device, and streams within the free memory otherwise.
    device: where to compute (default: the model's device); weights move there stage by stage.
    progress: True for a progress bar on stderr, or a callable(stage_index, rows_done, rows_total).
    scratch_dir: where the disk tier writes its scratch files (default: the system temp dir).
    Returns the image on the latents' device, in the model's dtype.
    """
    if compile:
        raise InputError("compile=True is not available yet: call decode(..., compile=False)")
    program = program_for(vae, "decode")
    if not isinstance(latents, torch.Tensor):
        raise InputError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    _check_shape(program, vae, tuple(latents.shape), "decode")
    if not latents.is_floating_point():
        raise InputError(f"latents must be floating point, got {latents.dtype}")
    compute = _device(vae, device)
    dtype = _model_dtype(vae)
    the_plan = plan(vae, tuple(latents.shape), budget, "decode", device=compute, dtype=dtype)
    x = latents.to(device=compute, dtype=dtype)
    with torch.inference_mode():
        if the_plan.mode == "whole":
            out = _decode_whole(vae, x)
        else:
            with _progress(progress, the_plan) as callback:
                out = execute(program, the_plan, x, scratch_dir=scratch_dir, progress=callback)
    return out.to(latents.device)


def _decode_whole(vae, z: torch.Tensor) -> torch.Tensor:
    # The model's own modules, untiled (vae.decode would honour a user's enable_tiling()).
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    return vae.decoder(z)


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
    return shape


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
