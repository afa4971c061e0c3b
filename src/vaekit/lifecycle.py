"""``VaeManager``: which VAE a pipeline uses, swapping without leaking or leaving the wrong one loaded.

    mgr = vaekit.VaeManager(pipe)          # remembers pipe.vae as the original
    mgr.use("sdxl-vae-fp16-fix/")          # a folder, a .safetensors, TAESD .pth files, or a model
    mgr.use(None)                          # (or "auto") the pipeline's own original VAE object again

The VAE in use sits where the original did (its device and dtype). Swapped-out VAEs wait on the CPU
in an LRU bounded in bytes (by default: at most one besides the original, which is always kept);
evicted ones are dropped, garbage-collected and the CUDA cache emptied, so swapping back and forth
leaves memory where it began. If ``vaekit.apply`` was used on the pipeline, the new VAE gets it too.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .units import parse_bytes

__all__ = ["VaeManager", "model_bytes"]


def model_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class VaeManager:
    """Which VAE a pipeline uses: swap in another, return to the original, without leaking memory.

    The VAE in use sits where the original did (its device and dtype). Swapped-out VAEs wait on the CPU
    in an LRU bounded in bytes; evicted ones are dropped and the CUDA cache emptied, so swapping back and
    forth leaves memory where it began. If ``vaekit.apply`` was used on the pipeline, the new VAE gets it.

    Args:
        pipe: a pipeline with a ``.vae`` (remembered as the original).
        cache_bytes: the most the swapped-out VAEs may hold on the CPU, bytes or "2GiB" (default: one
            besides the original, which is always kept).

    Raises:
        InputError: a pipeline without a ``.vae``.
    """

    def __init__(self, pipe, cache_bytes: int | str | None = None):
        if not isinstance(getattr(pipe, "vae", None), nn.Module):
            raise InputError(f"{type(pipe).__name__} has no .vae to manage")
        self.pipe = pipe
        self.original = pipe.vae
        param = next(self.original.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache_bytes = None if cache_bytes is None else parse_bytes(cache_bytes)
        self._cache: OrderedDict[str, nn.Module] = OrderedDict()  # swapped-out VAEs, least recently used first
        self._key_of: dict[int, str] = {}

    @property
    def current(self) -> nn.Module:
        return self.pipe.vae

    @property
    def cached(self) -> list[str]:
        return list(self._cache)

    def use(self, vae=None) -> nn.Module:
        """Make ``vae`` the pipeline's VAE.

        Args:
            vae: None or "auto" for the original, a path (anything ``vaekit.load`` reads; cached by
                path) or a model.

        Returns:
            The VAE now in use.
        """
        target, key = self._resolve(vae)
        current = self.pipe.vae
        if target is current:
            return target
        applied = _applied_options(current)
        self._set(_place(target, self.device, self.dtype))
        if applied is not None:
            from .integrations import apply

            apply(target, **applied)
        self._stash(current)
        self._key_of[id(target)] = key
        self._cache.pop(key, None)  # in use now: not a cache entry
        self._evict()
        return target

    def _resolve(self, vae) -> tuple[nn.Module, str]:
        if vae is None or (isinstance(vae, str) and vae == "auto"):
            return self.original, "original"
        if isinstance(vae, nn.Module):
            return vae, self._key_of.get(id(vae), f"model:{id(vae)}")
        if isinstance(vae, str | Path) or (isinstance(vae, list | tuple) and vae):
            paths = [vae] if isinstance(vae, str | Path) else list(vae)
            key = "|".join(str(Path(p).resolve()) for p in paths)
            if key in self._cache:
                return self._cache[key], key
            from .loader import load

            return load(*paths), key
        raise InputError(f"cannot use {vae!r} as a VAE: pass a model, a path, or None for the original")

    def _set(self, vae: nn.Module) -> None:
        from .integrations import unapply

        current = self.pipe.vae
        if _applied_options(current) is not None:
            unapply(current)  # the instance goes back to how it was before vaekit.apply
        self.pipe.vae = vae

    def _stash(self, vae: nn.Module) -> None:
        vae.to("cpu")  # off the device while it waits
        if vae is not self.original:
            self._cache[self._key_of.get(id(vae), f"model:{id(vae)}")] = vae

    def _evict(self) -> None:
        def over() -> bool:
            if self.cache_bytes is None:
                return len(self._cache) > 1
            return sum(model_bytes(v) for v in self._cache.values()) > self.cache_bytes

        evicted = False
        while self._cache and over():
            key, vae = self._cache.popitem(last=False)
            self._key_of.pop(id(vae), None)
            del vae
            evicted = True
        if evicted:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _place(vae: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    param = next(vae.parameters())
    if param.device != device:
        vae.to(device)
    if param.dtype != dtype:
        vae.to(dtype)
    return vae


def _applied_options(vae) -> dict | None:
    state = vars(vae).get("_vaekit_applied")
    return None if state is None else state["options"]
