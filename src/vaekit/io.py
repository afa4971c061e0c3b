"""Reading latents and writing outputs. Outputs are written beside the target and renamed into
place, so a failed or interrupted run never leaves a partial file or clobbers an existing one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, InputError

__all__ = ["load_latents", "save_output", "atomic_path", "to_uint8"]

LATENT_SUFFIXES = (".safetensors", ".pt", ".pth", ".npy")
OUTPUT_SUFFIXES = (".png", ".npy", ".pt")


def load_latents(path) -> torch.Tensor:
    """A latent tensor from .safetensors (key "latents" or the only tensor), .pt (weights_only) or .npy."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"latents file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return _pick(load_file(str(path)), path)
        if suffix in (".pt", ".pth"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            return loaded if isinstance(loaded, torch.Tensor) else _pick(loaded, path)
        if suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read latents from {path}: {e}") from None
    raise InputError(f"cannot read latents from {path}: use one of {', '.join(LATENT_SUFFIXES)}")


def _pick(tensors, path: Path) -> torch.Tensor:
    if isinstance(tensors, dict):
        if "latents" in tensors:
            return tensors["latents"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
    raise InputError(f"{path} holds several tensors and none is named 'latents'")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


@contextmanager
def atomic_path(target):
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def output_paths(out, batch: int) -> list[Path]:
    """One PNG per sample (name_0.png, name_1.png, ...) when batch > 1; one file otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".png" or batch == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch)]


def check_output(out) -> None:
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"cannot write {out}: the output must end in {', '.join(OUTPUT_SUFFIXES)}")


def save_output(images: torch.Tensor, out) -> list[Path]:
    """Write decoded images (B, C, H, W) in [-1, 1] to ``out`` (.png, .npy or .pt), atomically."""
    from PIL import Image

    check_output(out)
    suffix = Path(out).suffix.lower()
    paths = output_paths(out, images.shape[0])
    for i, path in enumerate(paths):
        with atomic_path(path) as tmp:
            if suffix == ".png":
                Image.fromarray(to_uint8(images[i])).save(tmp, format="PNG")
            elif suffix == ".npy":
                with open(tmp, "wb") as f:
                    np.save(f, images.float().cpu().numpy())
            else:
                torch.save(images.cpu(), tmp)
    return paths
