"""``vaekit.audit(pipe)``: the dtype of every component of a pipeline, checked at every boundary
where one component's output feeds another.

    text encoder(s), image encoder, ControlNet  ->  denoiser (transformer / UNet)  ->  VAE

A pipeline casts what crosses a boundary to the receiver's dtype, so a producer in bfloat16 or
float32 feeding a float16 denoiser turns every value past float16's ±65504 into inf there (the Sana
report: a bfloat16 Gemma feeding a float16 transformer). The VAE must match the denoiser and be safe
in its dtype (``force_upcast``). ``fix=True`` changes what is safe to change, and says what it left:

    VAE        takes the denoiser's dtype, or float32 where float16 overflows for it
    producer   cast to the denoiser's float16 only if a probe prompt (its tokenizer's, else random
               tokens) runs finite through every layer and within 1% of its own output; else left
               as it is, with where float16 overflowed and what would work instead
    denoiser   never changed: it is the model the user chose to run
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .precision import bf16_units, fp16_safe

__all__ = ["audit", "Finding", "DENOISERS", "PRODUCERS"]

#: the pipeline parts that make the latents (the VAE's input)
DENOISERS = ("transformer", "unet", "prior", "decoder")
#: name prefixes of the parts whose outputs the denoiser takes in
PRODUCERS = ("text_encoder", "image_encoder", "controlnet", "adapter")
PROBE_PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
PROBE_TOLERANCE = 1e-2  # float16 vs the producer's own dtype, relative to the output's largest value


@dataclass(frozen=True)
class Finding:
    """One line of an audit: a component, what it is, what is wrong (empty when nothing), what fix did."""

    component: str
    dtype: str
    device: str
    problem: str = ""
    fixed: str = ""

    def __str__(self) -> str:
        line = f"{self.component:<16}{self.dtype:<10}{self.device:<8}{self.problem}"
        return line + (f"  -> {self.fixed}" if self.fixed else "")


def audit(pipe, fix: bool = False) -> list[Finding]:
    """Each component's dtype and device, with the problems at its boundaries.

    Args:
        pipe: a diffusers pipeline.
        fix: change what is safe to change (the VAE to the denoiser's dtype, float32 where float16
            overflows for it; a producer to float16 only where a probe runs finite) and say what was done
            or why not. The denoiser is never changed.

    Returns:
        One Finding per component: its name, dtype, device, the problem (if any) and what was fixed.
    """
    components = _components(pipe)
    modules = {name: m for name, m in components.items() if isinstance(m, torch.nn.Module)}
    denoiser_name = next((n for n in DENOISERS if n in modules), None)
    target = _dtype_device(modules[denoiser_name])[0] if denoiser_name else None
    findings = []
    for name, module in modules.items():
        dtype, device = _dtype_device(module)
        if dtype is None:
            continue
        problem, fixed = "", ""
        if dtype == torch.bfloat16 and not bf16_units(device):
            problem = "bfloat16 without bf16 units (emulated: slow, may be wrong)"
        if name == "vae":
            problem, fixed = _vae(module, dtype, target, fix) or (problem, fixed)
        elif name.startswith(PRODUCERS) and target == torch.float16 and dtype != torch.float16:
            problem, fixed = _producer(name, module, dtype, denoiser_name, components, fix)
        findings.append(Finding(name, _name(dtype), str(device), problem, fixed))
    return findings


def _vae(vae, dtype: torch.dtype, target: torch.dtype | None, fix: bool) -> tuple[str, str] | None:
    """The denoiser -> VAE boundary: the VAE in the denoiser's dtype, or float32 where float16 overflows."""
    safe = target if target is not None else dtype
    if safe == torch.float16 and not fp16_safe(vae):
        safe = torch.float32  # what diffusers' force_upcast does for this VAE
    if dtype == safe:
        return None
    why = (f"the denoiser is {_name(target)}" if target is not None and dtype != target
           else "a float16 VAE that is not fp16-safe (force_upcast) overflows to NaN")
    problem = f"VAE is {_name(dtype)} but should be {_name(safe)}: {why}"
    if not fix:
        return problem, ""
    vae.to(safe)
    return problem, f"now {_name(safe)}"


def _producer(name: str, module, dtype: torch.dtype, denoiser: str, components: dict, fix: bool) -> tuple[str, str]:
    """A producer wider than the float16 denoiser it feeds: measured on a probe, cast only if float16 holds."""
    inputs = _probe_inputs(name, module, components)
    reference = None if inputs is None else _run(module, inputs).float()
    reach = "" if reference is None else f" (its output reaches {float(reference.abs().max()):.3g} on a probe prompt)"
    problem = (f"{_name(dtype)} feeds the float16 {denoiser}: values past ±65504 become inf there{reach}")
    if not fix:
        return problem, ""
    if inputs is None:
        return problem, "left as it is: no probe input for it (cast it, or run the denoiser in bfloat16/float32)"
    restore = _cast(module, torch.float16)
    overflow, out = _run_watching(module, inputs)
    error = float((out.float() - reference).abs().max() / reference.abs().max().clamp_min(1e-30))
    if overflow is None and error <= PROBE_TOLERANCE:
        return problem, f"now float16 (a probe prompt runs finite, within {error:.1e} of {_name(dtype)})"
    restore()
    why = f"overflows at {overflow}" if overflow is not None else f"differs by {error:.1e} from {_name(dtype)}"
    return problem, (f"left {_name(dtype)}: in float16 it {why} on a probe prompt; run the {denoiser} in "
                     "bfloat16 (a GPU with bf16 units) or float32 instead")


def _probe_inputs(name: str, module, components: dict) -> dict | None:
    """A prompt through the producer's own tokenizer (text_encoder_2 -> tokenizer_2), else random tokens."""
    config = getattr(module, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        return None
    device = next(module.parameters()).device
    tokenizer = components.get(name.replace("text_encoder", "tokenizer"))
    if tokenizer is not None and callable(tokenizer):
        ids = tokenizer(PROBE_PROMPT, return_tensors="pt").input_ids
    else:
        ids = torch.randint(vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(device)}


def _run(module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = module(**inputs)
    return out[0] if not isinstance(out, torch.Tensor) else out


def _run_watching(module, inputs: dict) -> tuple[str | None, torch.Tensor]:
    """The output, and the first submodule whose output was not finite (None if none)."""
    first: list[str] = []

    def watch(name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if not first and isinstance(out, torch.Tensor) and out.is_floating_point() and not out.isfinite().all():
                first.append(name or type(module).__name__)
        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in module.named_modules()]
    try:
        out = _run(module, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return (first[0] if first else None), out


def _cast(module, dtype: torch.dtype):
    """Cast ``module`` to ``dtype``; returns a function that puts back the very tensors it had (no
    rounding through ``dtype``). Holds both copies until then."""
    params = [(p, p.data) for p in module.parameters()]
    buffers = [(m, n, b) for m in module.modules() for n, b in m._buffers.items() if b is not None]
    module.to(dtype)

    def restore() -> None:
        for p, data in params:
            p.data = data
        for m, n, b in buffers:
            m._buffers[n] = b

    return restore


def _components(pipe) -> dict:
    if isinstance(pipe, torch.nn.Module):
        return {"vae": pipe}
    return dict(getattr(pipe, "components", None) or vars(pipe))


def _dtype_device(module: torch.nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    p = next(module.parameters(), None)
    return (p.dtype, p.device) if p is not None else (None, None)


def _name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.")
