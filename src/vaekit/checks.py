"""What a call is given, checked before any work: the device, the dtype, the input's shape and values."""

from __future__ import annotations

import math
import os

import torch

from .arch import family
from .errors import DeviceError, InputError
from .program import Program

__all__ = ["IMAGE_RANGE_SLACK", "is_video", "compute_device", "usable_device", "parse_device", "same_device",
           "model_dtype", "check_shape", "check_values", "rank_device"]

#: images past +-this are certainly not in [-1, 1] (resampling may overshoot 1 a little)
IMAGE_RANGE_SLACK = 1.5


def is_video(vae) -> bool:
    """A model whose inputs are (B, C, F, H, W) and whose calls go by chunks of frames (video.py)."""
    return getattr(family(vae), "VIDEO", False)


def compute_device(vae, device, check: bool = True) -> torch.device:
    """Where a call computes: ``device``, or the model's own; ``check``: it must exist here."""
    if device is None:
        return next(vae.parameters()).device
    return usable_device(device) if check else parse_device(device)


def usable_device(device) -> torch.device:
    """``device`` as a torch.device, or DeviceError when it does not exist here."""
    device = parse_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} was asked for but CUDA is not available here: run on the CPU ('cpu')")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def parse_device(device) -> torch.device:
    """``device`` as a torch.device, or DeviceError for what torch cannot read as one."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"cannot use device {device!r}: {e}; try 'cpu' or 'cuda'") from None
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device (a device without an index matches any of its type)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def model_dtype(vae) -> torch.dtype:
    """The dtype a call computes in: the model's."""
    return next(vae.parameters()).dtype


def check_shape(program: Program, vae, shape, op: str) -> tuple[int, int, int, int]:
    """``shape`` as ints, or InputError saying what shape this model takes."""
    shape = tuple(int(d) for d in shape)
    channels = program.maps[program.input].channels
    what = "latents" if op == "decode" else "images"
    if is_video(vae) and len(shape) != 5:
        raise InputError(f"{what} of a {type(vae).__name__} must be 5-D (batch, channels, frames, height, width), "
                         f"got shape {shape}")
    if not is_video(vae) and len(shape) != 4:
        raise InputError(f"{what} must be 4-D (batch, channels, height, width), got shape {shape}")
    if shape[1] != channels:
        raise InputError(f"{what} have {shape[1]} channels but this {type(vae).__name__} expects {channels}")
    if min(shape) < 1:
        raise InputError(f"{what} shape {shape} has an empty dimension")
    try:
        out_h, out_w = program.sizes(*shape[-2:])[program.output]
    except ValueError as e:  # e.g. a pixel unshuffle of an odd size
        raise InputError(f"{what} of {shape[-1]}x{shape[-2]} do not fit this {type(vae).__name__} ({e}): use sizes "
                         f"that are multiples of {family(vae).scale_factor(vae)}") from None
    if is_video(vae):
        try:
            program.frames(shape[2], first=True)
        except ValueError as e:  # e.g. LTX's encoder folds frames in pairs after the first
            raise InputError(f"{what} of {shape[2]} frames do not fit this {type(vae).__name__} ({e}): use "
                             f"{_frame_rule(program)}") from None
    if min(out_h, out_w) < 1:
        raise InputError(f"{what} of {shape[-1]}x{shape[-2]} are too small for this {type(vae).__name__}")
    return shape


def _frame_rule(program: Program) -> str:
    """Which frame counts the program takes, in words: 1 + k * (the frames each output frame folds)."""
    fold = 1
    for stage in program.stages:
        fold *= getattr(stage, "time_unshuffle", 1)
    return f"1 + {fold}k frames (1, {1 + fold}, {1 + 2 * fold}, ...)"


def check_values(x: torch.Tensor, op: str, image_range: bool = True, vae=None) -> None:
    """NaN/Inf anywhere, and (``image_range``) for encode images outside [-1, 1] (or the range of the
    model's own pixel convention, a family's PIXELS): say so before any work."""
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        what = "latents" if op == "decode" else "images"
        raise InputError(f"{what} contain NaN or Inf (first at index {tuple(bad)}): the step before vaekit "
                         "produced them, e.g. an fp16 model that overflowed; vaekit cannot decode them")
    pixels = None if vae is None else getattr(family(vae), "PIXELS", None)
    if image_range and op == "encode" and pixels is not None:
        (lo, hi), how = pixels
        if low < lo - IMAGE_RANGE_SLACK + 1 or high > hi + IMAGE_RANGE_SLACK - 1:
            raise InputError(f"a {type(vae).__name__} takes pixels in [{lo:.4g}, {hi:.4g}] ({how}), got values in "
                             f"[{low:.4g}, {high:.4g}]")
    elif image_range and op == "encode" and (low < -IMAGE_RANGE_SLACK or high > IMAGE_RANGE_SLACK):
        raise InputError(f"images must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]: "
                         "for 0-255 pixels use x / 127.5 - 1, for [0, 1] use x * 2 - 1")


def rank_device(device):
    """A rank's device: its own GPU (LOCAL_RANK) when it asks for CUDA without an index, or by default."""
    if device is None and not torch.cuda.is_available():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or str(device) == "cuda":
        return torch.device("cuda", local)
    return device
