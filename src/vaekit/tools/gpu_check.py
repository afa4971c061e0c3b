"""``make gpu-check`` / ``vaekit bench --device cuda``: what the CUDA paths do, measured on this GPU.

    1 exactness   SD-VAE and Sana DC-AE, streamed at the smallest and a mixed budget against the
                  untiled model, in float32, bfloat16 and float16 (odd sizes); and the video VAEs
                  users run out of memory on (Wan 2.1, LTX-2 and Mochi 1, real configs), both ways
    2 peaks       the allocator's measured peak (max_memory_allocated) against the plan's, at
                  several budgets
    3 ladder      real CUDA out-of-memory (set_per_process_memory_fraction below the plan): the
                  recovery ladder's retries, and the result still exact
    4 tiers       a plan with maps in pinned host RAM and on disk (small host_budget): exact
    5 timings     SD-VAE at 1024/2048/4096 and Sana DC-AE at 4096 in bfloat16: diffusers untiled
                  (or its out-of-memory), diffusers enable_tiling(), vaekit at a budget

Writes ``gpu-check.json`` and ``gpu-check.md``. Without a CUDA GPU it says so and exits 0.
``--device cpu --quick`` runs the same code at small sizes (the test suite does, so it cannot rot).
Weights are seeded random (real configs): exactness and memory do not depend on trained values.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from datetime import date
from pathlib import Path

import torch

__all__ = ["main", "run_checks"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: relative error vs the untiled model in the same dtype: float32 as the tests; half types at their rounding
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


#: the video VAEs of the exactness matrix: (diffusers class, real config, --quick config, latent frames, rows and
#: columns of one video, and --quick's). Wan 2.1: 9 frames of 240x416; LTX-2: 17 of 256x384; Mochi
#: 1: 13 of 240x424 (--quick: latents of 3 frames, a few rows)
VIDEO = {
    "wan": ("AutoencoderKLWan", {}, dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
            (3, 30, 52), (3, 5, 7)),
    "ltx2": ("AutoencoderKLLTX2Video", dict(decoder_causal=False, spatial_compression_ratio=32,
                                            temporal_compression_ratio=8),
             dict(latent_channels=8, block_out_channels=(8, 16, 16, 16), decoder_block_out_channels=(16, 32, 64),
                  layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 4, decoder_causal=False,
                  spatial_compression_ratio=32, temporal_compression_ratio=8), (3, 8, 12), (3, 3, 5)),
    "mochi": ("AutoencoderKLMochi", {}, dict(latent_channels=4, encoder_block_out_channels=(32,) * 4,
                                             decoder_block_out_channels=(32,) * 4, layers_per_block=(1,) * 5),
              (3, 30, 53), (3, 4, 5)),
}

#: --quick: the same architectures, narrower and shallower (every stage kind, scale factor and attention kept)
SMALL_SD = dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8)
SMALL_SANA = dict(encoder_block_out_channels=(32, 64, 64, 64, 128, 128),
                  decoder_block_out_channels=(32, 64, 64, 64, 128, 128),
                  encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6)


def run_checks(device: torch.device, quick: bool = False, dtypes=tuple(DTYPES)) -> dict:
    from ..measure import machine
    from ..models import sana_dc, sd_vae

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    report = {"date": date.today().isoformat(), "device": name, "torch": torch.__version__, "quick": quick}
    models = {"sd": sd_vae(seed=0, **(SMALL_SD if quick else {})), "sana": sana_dc(seed=0, **(SMALL_SANA if quick else {}))}
    report["exactness"] = [_exactness(models, device, d, quick) for d in dtypes if _runs(device, d)]
    report["exactness"] = [row for rows in report["exactness"] for row in rows]
    report["exactness"] += [row for d in dtypes if _runs(device, d) for row in _video_exactness(device, d, quick)]
    report["peaks"] = _peaks(models["sd"], device, quick)
    report["ladder"] = _ladder(models["sd"], device, quick)
    report["tiers"] = _tiers(models["sd"], device, quick)
    report["timings"] = _timings(models, device, quick)
    return report


def _runs(device: torch.device, dtype: str) -> bool:
    return not (dtype == "bfloat16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0))


def _latents(vae, size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    from ..arch import latent_channels, scale_factor

    n = size // scale_factor(vae)
    return torch.randn(batch, latent_channels(vae), n, n + 3, generator=torch.Generator().manual_seed(seed))


def _smallest(vae, z: torch.Tensor, lower: str = "disk") -> int:
    """The least budget a streamed decode of ``z`` fits in, maps going down to the ``lower`` tier."""
    from ..arch import program_for
    from ..plan import smallest_budget

    return smallest_budget(program_for(vae, "decode"), tuple(z.shape), z.element_size(), lower)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def _exactness(models: dict, device: torch.device, dtype: str, quick: bool) -> list[dict]:
    import vaekit

    rows = []
    for name, vae in models.items():
        vae = vae.to(device, DTYPES[dtype])
        size = {"sd": 136 if quick else 520, "sana": 160 if quick else 1056}[name]
        z = _latents(vae, size).to(device, DTYPES[dtype])
        with torch.no_grad():
            ref = vaekit.arch.family(vae).whole(vae, "decode", z)
        shape = tuple(z.shape)
        low = _smallest(vae, z)
        whole = vaekit.plan(vae, shape, None, device="meta", dtype=z.dtype).whole_peak_bytes
        for label, budget in (("smallest", low), ("mixed", (low + whole) // 2)):
            report = vaekit.RunReport()
            out = vaekit.decode(vae, z, budget, report=report)
            error = _rel(out, ref)
            rows.append(dict(model=name, dtype=dtype, size=f"{z.shape[-1] * (size // z.shape[-2])}x{size}",
                             budget=label, mode=report.mode, rel_error=error, ok=error <= TOLERANCE[dtype],
                             upcasts=len(report.upcasts)))
        vae.to("cpu", torch.float32)
        _free(device)
    return rows


def _video_exactness(device: torch.device, dtype: str, quick: bool) -> list[dict]:
    """Each VIDEO model (seeded) decoded and encoded at the smallest and a mixed budget against its own
    untiled call, in ``dtype``."""
    import diffusers

    import vaekit
    from vaekit.planning import smallest_video_budget

    rows = []
    for name, (cls, real, small, latents, small_latents) in VIDEO.items():
        torch.manual_seed(0)
        vae = getattr(diffusers, cls)(**(small if quick else real)).eval().to(device, DTYPES[dtype])
        program = vaekit.arch.program_for(vae, "decode")
        c, (frames, h, w) = program.maps[program.input].channels, small_latents if quick else latents
        f, t = vaekit.arch.scale_factor(vae), vaekit.arch.temporal_factor(vae)
        g = torch.Generator().manual_seed(1)
        inputs = {"decode": torch.randn(1, c, frames, h, w, generator=g),
                  "encode": torch.rand(1, 3, 1 + t * (frames - 1), h * f, w * f, generator=g) * 2 - 1}
        for op, x in inputs.items():
            x = x.to(device, DTYPES[dtype])
            with torch.no_grad():
                ref = vae.decode(x).sample if op == "decode" else vae.encode(x).latent_dist.mode()
            low = smallest_video_budget(vaekit.arch.program_for(vae, op), vae, tuple(x.shape), op, x.element_size())
            whole = vaekit.plan(vae, tuple(x.shape), None, op, device="meta", dtype=x.dtype).whole_peak_bytes
            run = vaekit.decode if op == "decode" else vaekit.encode
            for label, budget in (("smallest", low), ("mixed", (low + max(whole, low)) // 2)):
                report = vaekit.RunReport()
                error = _rel(run(vae, x, budget, report=report), ref)
                rows.append(dict(model=f"{name}-{op}", dtype=dtype, size="x".join(map(str, x.shape[2:])),
                                 budget=label, mode=report.mode, rel_error=error, ok=error <= TOLERANCE[dtype],
                                 upcasts=len(report.upcasts)))
        del vae
        _free(device)
    return rows


def _peaks(vae, device: torch.device, quick: bool) -> list[dict]:
    import vaekit

    dtype = torch.bfloat16 if device.type == "cuda" and _runs(device, "bfloat16") else torch.float32
    vae = vae.to(device, dtype)
    size = 256 if quick else 1024
    z = _latents(vae, size).to(device, dtype)
    rows = []
    for budget in ([_smallest(vae, z), 2 * _smallest(vae, z)] if quick else ["256MiB", "1GiB", "4GiB"]):
        report = vaekit.RunReport()
        vaekit.decode(vae, z, budget, report=report)
        predicted = report.plan.peak_bytes if report.plan.mode == "stream" else report.plan.whole_peak_bytes
        rows.append(dict(size=f"{size}x{size}", dtype=str(dtype).removeprefix("torch."), budget=str(budget),
                         mode=report.mode, predicted_mib=predicted / 2**20, measured_mib=report.peak_bytes / 2**20,
                         within=report.peak_bytes <= predicted * 1.1 + (32 << 20)))
        _free(device)
    vae.to("cpu", torch.float32)
    return rows


def _ladder(vae, device: torch.device, quick: bool) -> dict:
    """Plan for more than the allocator may give: real out-of-memory on CUDA (injected on the CPU)."""
    import vaekit

    size = 256 if quick else 2048
    vae = vae.to(device)
    z = _latents(vae, size).to(device)
    low = _smallest(vae, z)
    with torch.no_grad():
        ref = vaekit.decode(vae, z, 2 * low if quick else "2GiB")
    report = vaekit.RunReport()
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        allowed = torch.cuda.memory_allocated(device) + (512 << 20)  # weights and latents, then 512 MiB
        torch.cuda.set_per_process_memory_fraction(allowed / total, device)
        try:
            out = vaekit.decode(vae, z, "4GiB", report=report)  # plans for 4 GiB, may use 512 MiB
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    else:
        with vaekit.testing.oom_after(2, times=2):
            out = vaekit.decode(vae, z, 2 * low, report=report)
    vae.to("cpu")
    result = dict(size=f"{size}x{z.shape[-1] * 8}", retries=[str(e) for e in report.retries], rel_error=_rel(out, ref))
    result["ok"] = bool(report.retries) and result["rel_error"] <= TOLERANCE["float32"]
    _free(device)
    return result


def _tiers(vae, device: torch.device, quick: bool) -> dict:
    """A plan whose maps leave the device: pinned host RAM up to host_budget, the rest on disk."""
    import vaekit

    size = 136 if quick else 1024
    vae = vae.to(device)
    z = _latents(vae, size).to(device)
    with torch.no_grad():
        ref = vaekit.arch.family(vae).whole(vae, "decode", z)
    low = _smallest(vae, z, "host" if device.type == "cuda" else "disk")
    report = vaekit.RunReport()
    out = vaekit.decode(vae, z, low, report=report, host_budget="8MiB" if quick else "256MiB")
    vae.to("cpu")
    tiers = sorted({m.tier for m in report.plan.maps})
    error = _rel(out, ref)
    _free(device)
    return dict(size=f"{size}x{z.shape[-1] * 8}", tiers=tiers, rel_error=error, ok=error <= TOLERANCE["float32"])


def _timings(models: dict, device: torch.device, quick: bool) -> list[dict]:
    import vaekit

    dtype = torch.bfloat16 if device.type == "cuda" and _runs(device, "bfloat16") else torch.float32
    cases = [("sd", 128), ("sana", 128)] if quick else [("sd", 1024), ("sd", 2048), ("sd", 4096), ("sana", 4096)]
    rows = []
    for name, size in cases:
        vae = models[name].to(device, dtype)
        z = _latents(vae, size).to(device, dtype)[..., : size // vaekit.arch.scale_factor(vae)]
        budget = 2 * _smallest(vae, z) if quick else "8GiB"
        methods = {"diffusers-untiled": lambda v=vae, z=z: v.decode(z).sample,
                   "diffusers-tiling": lambda v=vae, z=z: _tiled(v, z),
                   f"vaekit:{budget}": lambda v=vae, z=z, b=budget: vaekit.decode(v, z, b)}
        for method, call in methods.items():
            rows.append(dict(model=name, size=f"{size}x{size}", dtype=str(dtype).removeprefix("torch."), method=method,
                             **_timed(call, device)))
        vae.to("cpu", torch.float32)
        _free(device)
    return rows


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
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - an out-of-memory is a result here, anything else is not
        if not is_oom(e):
            raise
        _free(device)
        return dict(seconds=None, peak_mib=None, note="out of memory")
    growth = peak.growth
    return dict(seconds=seconds, peak_mib=None if growth is None else growth / 2**20, note="")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def markdown(report: dict) -> str:
    lines = [f"GPU check, {report['date']}, {report['device']}, torch {report['torch']}", "",
             "| model | dtype | size | budget | mode | rel. error | ok |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dtype']} | {r['size']} | {r['budget']} | {r['mode']} | {r['rel_error']:.1e} | "
              f"{r['ok']} |" for r in report["exactness"]]
    lines += ["", "| size | dtype | budget | mode | predicted peak | measured peak | within |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']} | {r['dtype']} | {r['budget']} | {r['mode']} | {r['predicted_mib']:.0f} MiB | "
              f"{r['measured_mib']:.0f} MiB | {r['within']} |" for r in report["peaks"]]
    ladder, tiers = report["ladder"], report["tiers"]
    lines += ["", f"Ladder at {ladder['size']}: {len(ladder['retries'])} retries, rel. error {ladder['rel_error']:.1e}"
              f" (ok: {ladder['ok']})", f"Tiers at {tiers['size']}: {', '.join(tiers['tiers'])}, rel. error "
              f"{tiers['rel_error']:.1e} (ok: {tiers['ok']})", "",
              "| model | size | dtype | method | time | peak | note |", "|---|---|---|---|---|---|---|"]
    for r in report["timings"]:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.2f} s"
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
        lines.append(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['method']} | {seconds} | {peak} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaekit gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (what the tests run on the CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES),
                        help="dtypes of the exactness matrix (default: all three)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("vaekit gpu-check: no CUDA GPU here, nothing measured (run it on a machine with one)")
        return 0
    report = run_checks(device, args.quick, args.dtypes)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-check" if device.type == "cuda" else f"gpu-check-{device.type}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    failed = [r for r in report["exactness"] if not r["ok"]] + [r for r in report["peaks"] if not r["within"]]
    failed += [x for x in (report["ladder"], report["tiers"]) if not x["ok"]]
    return 1 if failed else 0
