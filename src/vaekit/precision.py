"""Precision policy: one dtype for the VAE, chosen once; an audit of a pipeline's dtypes.

    device                              VAE dtype
    CPU                                 float32
    CUDA, capability >= 8.0             bfloat16  (real bf16 units; torch.cuda.is_bf16_supported()
                                                   also answers yes on GPUs that emulate it)
    CUDA, older                         float16 when the VAE is fp16-safe (config force_upcast False),
                                        else float32

The NaN/Inf guard that recovers from an overflowing stage lives in the executor (run.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import PrecisionError

__all__ = ["choose_dtype", "bf16_units", "fp16_safe", "audit", "Finding", "check_dtype"]

#: the pipeline parts whose dtype the VAE must agree with (its latents come from them)
DENOISERS = ("transformer", "unet", "prior", "decoder")


def bf16_units(device: torch.device | str) -> bool:
    """True where the device computes bf16 natively: any CPU (emulated but correct), CUDA capability 8.0+."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)


def fp16_safe(vae) -> bool:
    """diffusers' own flag: ``force_upcast`` False means the VAE was trained to stay in fp16 range."""
    config = getattr(vae, "config", None)
    return config is not None and getattr(config, "force_upcast", True) is False


def choose_dtype(vae, device: torch.device | str) -> torch.dtype:
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    if bf16_units(device):
        return torch.bfloat16
    return torch.float16 if fp16_safe(vae) else torch.float32


def check_dtype(dtype: torch.dtype, device: torch.device | str) -> None:
    """PrecisionError for a dtype the device cannot run well: bf16 without bf16 units."""
    if dtype == torch.bfloat16 and not bf16_units(device):
        cap = ".".join(map(str, torch.cuda.get_device_capability(torch.device(device))))
        raise PrecisionError(f"bfloat16 on {device} (compute capability {cap}) is emulated: use float16 for an "
                             "fp16-safe VAE, else float32 (vaekit.precision.choose_dtype picks for you)")


@dataclass(frozen=True)
class Finding:
    """One line of an audit: a component, what it is, and what is wrong (empty when nothing)."""

    component: str
    dtype: str
    device: str
    problem: str = ""
    fixed: str = ""

    def __str__(self) -> str:
        line = f"{self.component:<16}{self.dtype:<10}{self.device:<8}{self.problem}"
        return line + (f"  -> {self.fixed}" if self.fixed else "")


def _modules(pipe) -> dict[str, torch.nn.Module]:
    if isinstance(pipe, torch.nn.Module):
        return {"vae": pipe}
    components = getattr(pipe, "components", None) or vars(pipe)
    return {name: m for name, m in components.items() if isinstance(m, torch.nn.Module)}


def _dtype_device(module: torch.nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    p = next(module.parameters(), None)
    return (p.dtype, p.device) if p is not None else (None, None)


def audit(pipe, fix: bool = False) -> list[Finding]:
    """Each component's dtype and device; problems flagged: a VAE whose dtype differs from the
    denoiser's (an fp16 transformer with a bf16 VAE decodes garbage), bf16 on a GPU without bf16 units,
    an fp16 VAE that is not fp16-safe (overflows to NaN). ``fix=True`` makes them consistent: the VAE
    takes the denoiser's dtype where that is safe for it, else float32; says what changed."""
    modules = _modules(pipe)
    denoiser = next((modules[n] for n in DENOISERS if n in modules), None)
    target = _dtype_device(denoiser)[0] if denoiser is not None else None
    findings = []
    for name, module in modules.items():
        dtype, device = _dtype_device(module)
        if dtype is None:
            continue
        problem, fixed, want = "", "", dtype
        if dtype == torch.bfloat16 and not bf16_units(device):
            problem, want = "bfloat16 without bf16 units (emulated: slow, may be wrong)", torch.float16
        if name == "vae":
            unsafe = not fp16_safe(module)
            safe = target if target is not None else want
            if safe == torch.float16 and unsafe:
                safe = torch.float32  # what diffusers' force_upcast does for this VAE
            if dtype != safe:
                why = (f"the denoiser is {_name(target)}" if target is not None and dtype != target
                       else "a float16 VAE that is not fp16-safe (force_upcast) overflows to NaN")
                problem, want = f"VAE is {_name(dtype)} but should be {_name(safe)}: {why}", safe
        if fix and want != dtype and name == "vae":  # other parts are reported, not changed
            module.to(want)
            fixed = f"now {_name(want)}"
        findings.append(Finding(name, _name(dtype), str(device), problem, fixed))
    return findings


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
