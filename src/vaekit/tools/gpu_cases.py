"""What ``vaekit gpu-check`` measures, one generator of result rows per section (gpu_check.py runs them
against a deadline, writing the report after every row).

Models are the real configurations with seeded random weights (exactness and memory do not depend on
trained values); ``quick`` makes them narrower and shallower (every stage kind, scale factor and attention
kept) and the inputs small, which is how the test suite runs this code on the CPU.
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass

import torch

__all__ = ["DTYPES", "MODELS", "TIMED", "exactness", "peaks", "timings", "ladder", "tiers"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: float32's rule, as in the tests: relative error against the untiled model (half types: testing.Fidelity)
FLOAT32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Model:
    """A diffusers class with its real config and --quick's, and the latent size of one input: (rows,
    columns), or (frames, rows, columns) for a video model."""

    cls: str
    real: dict
    small: dict
    latents: tuple[int, ...]
    small_latents: tuple[int, ...]

    def build(self, quick: bool):
        import diffusers

        from ..models import SANA_DC_CONFIG, SD_VAE_CONFIG

        base = {"sd": SD_VAE_CONFIG, "sana": SANA_DC_CONFIG}.get(self.real.get("base"), {})
        config = {**base, **{k: v for k, v in self.real.items() if k != "base"}}
        torch.manual_seed(0)
        return getattr(diffusers, self.cls)(**({**config, **self.small} if quick else config)).eval()


SMALL_SD = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8)
SMALL_SANA = dict(encoder_block_out_channels=(32, 64, 64, 64, 128, 128),
                  decoder_block_out_channels=(32, 64, 64, 64, 128, 128),
                  encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6)
SMALL_WAN = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
LTX2 = dict(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8)
SMALL_LTX2 = dict(latent_channels=8, block_out_channels=(8, 16, 16, 16), decoder_block_out_channels=(16, 32, 64),
                  layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 4)

#: the exactness matrix, in order of value: SD-VAE (520x544), Wan 2.1 (9 frames of 240x416), LTX-2 (17 of
#: 256x384), Sana's DC-AE (1056x1152), Mochi 1 (13 of 240x424); --quick: a few latent rows and frames
MODELS = {
    "sd": Model("AutoencoderKL", dict(base="sd"), SMALL_SD, (65, 68), (17, 20)),
    "wan": Model("AutoencoderKLWan", {}, SMALL_WAN, (3, 30, 52), (3, 5, 7)),
    "ltx2": Model("AutoencoderKLLTX2Video", LTX2, SMALL_LTX2, (3, 8, 12), (3, 3, 5)),
    "sana": Model("AutoencoderDC", dict(base="sana"), SMALL_SANA, (33, 36), (5, 8)),
    "mochi": Model("AutoencoderKLMochi", {}, dict(latent_channels=4, encoder_block_out_channels=(32,) * 4,
                                                   decoder_block_out_channels=(32,) * 4, layers_per_block=(1,) * 5),
                   (3, 30, 53), (3, 4, 5)),
}

#: the timings, in bfloat16 where the GPU has bf16 units: SDXL-VAE 4096², Wan 2.1 81x720x1280, LTX-2 121x704x1280
TIMED = {
    "sdxl": Model("AutoencoderKL", dict(base="sd", scaling_factor=0.13025, sample_size=1024), SMALL_SD,
                  (512, 512), (16, 16)),
    "wan": Model("AutoencoderKLWan", {}, SMALL_WAN, (21, 90, 160), (3, 5, 7)),
    "ltx2": Model("AutoencoderKLLTX2Video", LTX2, SMALL_LTX2, (16, 22, 40), (3, 3, 5)),
}


def _inputs(vae, latents: tuple[int, ...], seed: int = 1) -> dict[str, torch.Tensor]:
    """A decode's latents and an encode's image (in [-1, 1]) of the latent size ``latents``."""
    from .. import arch

    program = arch.program_for(vae, "decode")
    c, f, t = program.maps[program.input].channels, arch.scale_factor(vae), arch.temporal_factor(vae)
    g = torch.Generator().manual_seed(seed)
    if len(latents) == 3:  # a video: latent frames, rows, columns
        frames, h, w = latents
        return {"decode": torch.randn(1, c, frames, h, w, generator=g),
                "encode": torch.rand(1, 3, 1 + t * (frames - 1), h * f, w * f, generator=g) * 2 - 1}
    h, w = latents
    return {"decode": torch.randn(1, c, h, w, generator=g), "encode": torch.rand(1, 3, h * f, w * f, generator=g) * 2 - 1}


def smallest(vae, op: str, x: torch.Tensor, lower: str = "disk", compiled: bool = False) -> int:
    """The least budget a streamed run of ``x`` fits in, maps going down to the ``lower`` tier."""
    from ..planning import smallest_call_budget

    return smallest_call_budget(vae, op, tuple(x.shape), x.element_size(), lower, compiled)


def whole_budget(vae, op: str, x: torch.Tensor) -> int:
    """The budget at which the call runs whole: vaekit's model of the untiled call's peak."""
    import vaekit

    return vaekit.plan(vae, tuple(x.shape), None, op, device="meta", dtype=x.dtype).whole_peak_bytes


def bf16_or_fp32(device: torch.device) -> torch.dtype:
    """bfloat16 where it is computed natively (what users run), else float32 (the CPU's dtype)."""
    from ..precision import bf16_units

    return torch.bfloat16 if device.type == "cuda" and bf16_units(device) else torch.float32


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def _size(x: torch.Tensor) -> str:
    return "x".join(map(str, x.shape[2:]))


def exactness(device: torch.device, quick: bool, dtypes):
    """Each model both ways, streamed at the smallest and a mixed budget, against its own untiled call in
    the same dtype: float32 within 1e-4 relative error; bfloat16 and float16 by the half-precision rule
    (testing.Fidelity: no further from a float64 run of the same weights than the untiled call)."""
    for name, model in MODELS.items():
        yield from _guarded(name, _exactness(name, model, device, quick, dtypes))


def _guarded(name: str, rows):
    """``rows``, and a failed row in place of the rest where they raise: the next model still runs."""
    try:
        yield from rows
    except Exception as e:  # noqa: BLE001 - a failure is a result of the check
        yield dict(model=name, error=f"{type(e).__name__}: {e}".splitlines()[0][:300], ok=False)


def _exactness(name: str, model: Model, device: torch.device, quick: bool, dtypes):
    import vaekit
    from vaekit.testing import fidelity, untiled

    from ..precision import bf16_units

    master = model.build(quick)  # float32 on the CPU: each dtype's copy rounds from it, never from another's
    inputs = _inputs(master, model.small_latents if quick else model.latents)
    for dtype in dtypes:
        if dtype == "bfloat16" and not bf16_units(device):
            continue  # emulated bf16 measures nothing users run
        vae = copy.deepcopy(master).to(device, DTYPES[dtype])
        # the truth: the same (rounded) weights in float64, so the errors are the computation's alone
        vae64 = None if dtype == "float32" else copy.deepcopy(vae).to(torch.float64)
        for op, x32 in inputs.items():
            x = x32.to(device, DTYPES[dtype])
            ref = untiled(vae, op, x)
            truth = None if dtype == "float32" else untiled(vae64, op, x.double())
            low = smallest(vae, op, x)
            for label, budget in (("smallest", low), ("mixed", (low + max(whole_budget(vae, op, x), low)) // 2)):
                report = vaekit.RunReport()
                start = time.perf_counter()
                out = (vaekit.decode if op == "decode" else vaekit.encode)(vae, x, budget, report=report)
                row = dict(model=name, op=op, dtype=dtype, size=_size(x), budget=label, mode=report.mode,
                           rel_error=_rel(out, ref), seconds=time.perf_counter() - start,
                           upcasts=len(report.upcasts))
                if truth is None:
                    row["ok"] = row["rel_error"] <= FLOAT32_TOLERANCE
                else:
                    f = fidelity(out, ref, truth)
                    row.update(rms=f.rms, max=f.max, untiled_rms=f.untiled_rms, untiled_max=f.untiled_max, ok=f.ok)
                yield row
                del out
            del ref, truth
        del vae, vae64
        free(device)
    del master
    free(device)


def peaks(device: torch.device, quick: bool):
    """SD-VAE 1024²: the allocator's measured peak (the resident set's on the CPU) against the plan's."""
    import vaekit

    dtype = bf16_or_fp32(device)
    vae = MODELS["sd"].build(quick).to(device, dtype)
    z = _inputs(vae, (32, 32) if quick else (128, 128))["decode"].to(device, dtype)
    low = smallest(vae, "decode", z)
    try:
        for budget in ([low, 2 * low] if quick else ["256MiB", "1GiB", "4GiB"]):
            report = vaekit.RunReport()
            vaekit.decode(vae, z, budget, report=report)
            predicted = report.plan.peak_bytes if report.plan.mode == "stream" else report.plan.whole_peak_bytes
            within = report.peak_bytes <= predicted * 1.1 + (32 << 20)
            yield dict(size=_size(z), dtype=str(dtype).removeprefix("torch."), budget=str(budget), mode=report.mode,
                       predicted_mib=predicted / 2**20, measured_mib=report.peak_bytes / 2**20, ok=within)
            free(device)
    finally:
        del vae
        free(device)


def timings(device: torch.device, quick: bool, compiled: bool | None = None):
    """Each TIMED decode (bfloat16 on a GPU): diffusers untiled (or its out-of-memory), diffusers
    enable_tiling(), vaekit at 8 GiB and at the budget that runs whole; then, for each model again, both
    vaekit budgets with compile=True (its first call, which compiles, and a second), after every model's
    eager rows since compiling takes longest. Not by default with ``quick``: the CPU's compiler takes a
    minute a model, and tests/test_compile.py holds compile=True exact. Each model's first row follows a
    small warm-up call."""
    passes = (False, True) if (not quick if compiled is None else compiled) else (False,)
    for compiling in passes:
        for name, model in TIMED.items():
            yield from _guarded(name, _timings(name, model, device, quick, compiling))


def _timings(name: str, model: Model, device: torch.device, quick: bool, compiled: bool):
    dtype = bf16_or_fp32(device)
    vae = model.build(quick).to(device, dtype)
    z = _inputs(vae, model.small_latents if quick else model.latents)["decode"].to(device, dtype)
    with torch.no_grad():
        vae.decode(_inputs(vae, model.small_latents)["decode"].to(device, dtype))  # cuDNN's and lazy modules' start
    low, whole = smallest(vae, "decode", z, compiled=compiled), whole_budget(vae, "decode", z)
    streamed = ("2x smallest", 2 * low) if quick else ("8GiB", 8 << 30)
    if compiled:  # compiled graphs always stream: "whole" is the budget that holds every map on the device
        methods = [(f"vaekit:{label}:compile", _vaekit(vae, z, budget, True))
                   for label, budget in (streamed, ("whole", max(whole, low)))]
    else:
        methods = [("diffusers-untiled", lambda: vae.decode(z).sample), ("diffusers-tiling", lambda: _tiled(vae, z))]
        methods += [(f"vaekit:{label}", _vaekit(vae, z, budget, False)) for label, budget in (streamed, ("whole", whole))]
    try:
        for method, call in methods:
            row = dict(model=name, size=f"{_size(z)} latents", dtype=str(dtype).removeprefix("torch."), method=method)
            if compiled:
                row["first_seconds"] = _timed(call, device)["seconds"]  # compiles its graphs
            yield {**row, **_timed(call, device)}
            free(device)
    finally:
        vae.disable_tiling()
        vae.to("cpu")
        free(device)


def _vaekit(vae, z, budget: int, compiled: bool):
    import vaekit

    def call():
        report = vaekit.RunReport()
        vaekit.decode(vae, z, budget, compile=compiled, report=report)
        plan = report.plan
        return {"mode": report.mode,
                "predicted_mib": (plan.peak_bytes if plan.mode == "stream" else plan.whole_peak_bytes) / 2**20}

    return call


def _tiled(vae, z):
    vae.enable_tiling()
    try:
        return vae.decode(z).sample
    finally:
        vae.disable_tiling()


def _timed(call, device: torch.device) -> dict:
    from ..measure import PeakMemory
    from ..recovery import is_oom

    try:
        with torch.no_grad(), PeakMemory(device, strict=False) as peak:
            start = time.perf_counter()
            result = call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - a row's failure is its result; the next row still runs
        free(device)
        if is_oom(e):
            return dict(seconds=None, peak_mib=None, note="out of memory")
        return dict(seconds=None, peak_mib=None, note=f"{type(e).__name__}: {e}".splitlines()[0][:300], ok=False)
    extra = result if isinstance(result, dict) else {}
    growth = peak.growth
    return dict(seconds=seconds, peak_mib=None if growth is None else growth / 2**20, note="", **extra)


def ladder(device: torch.device, quick: bool):
    """Plan for more than the allocator may give: a real out-of-memory on CUDA (injected on the CPU); the
    recovery ladder's retries, and the result still exact."""
    import vaekit

    vae = MODELS["sd"].build(quick).to(device)
    z = _inputs(vae, (32, 35) if quick else (256, 259))["decode"].to(device)
    low = smallest(vae, "decode", z)
    ref = vaekit.decode(vae, z, 2 * low if quick else "2GiB")
    report = vaekit.RunReport()
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        allowed = torch.cuda.memory_allocated(device) + (512 << 20)  # weights, latents and the reference, then 512 MiB
        torch.cuda.set_per_process_memory_fraction(allowed / total, device)
        try:
            out = vaekit.decode(vae, z, "4GiB", report=report)  # plans for 4 GiB, may use 512 MiB
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    else:
        with vaekit.testing.oom_after(2, times=2):
            out = vaekit.decode(vae, z, 2 * low, report=report)
    row = dict(size=f"{_size(z)} latents", retries=len(report.retries), what=[str(e) for e in report.retries],
               rel_error=_rel(out, ref))
    row["ok"] = bool(report.retries) and row["rel_error"] <= FLOAT32_TOLERANCE
    del vae, z, ref, out
    free(device)
    yield row


def tiers(device: torch.device, quick: bool):
    """A plan whose maps leave the device: pinned host RAM up to host_budget, the rest on disk."""
    import vaekit
    from vaekit.testing import untiled

    vae = MODELS["sd"].build(quick).to(device)
    z = _inputs(vae, (17, 20) if quick else (128, 131))["decode"].to(device)
    ref = untiled(vae, "decode", z)
    low = smallest(vae, "decode", z, "host" if device.type == "cuda" else "disk")
    report = vaekit.RunReport()
    out = vaekit.decode(vae, z, low, report=report, host_budget="8MiB" if quick else "256MiB")
    row = dict(size=f"{_size(z)} latents", tiers=sorted({m.tier for m in report.plan.maps}), rel_error=_rel(out, ref))
    row["ok"] = row["rel_error"] <= FLOAT32_TOLERANCE and bool(set(row["tiers"]) - {"device"})
    del vae, z, ref, out
    free(device)
    yield row
