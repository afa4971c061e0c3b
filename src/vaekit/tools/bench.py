"""`vaekit bench`: vaekit against diffusers, decoding with seeded random weights, each run in a fresh process.

Models: ``sd`` (the SD-architecture AutoencoderKL, 512² and 1024²), ``sana`` (Sana's DC-AE
f32c32 AutoencoderDC, 2048²), ``wan`` (the Wan 2.1 video VAE, its real config: 9 frames of
240x416, sizes written FRAMESxHEIGHTxWIDTH), ``ltx2`` (LTX-2's video VAE, its real config: 17
frames of 256x384) and ``hunyuan15`` (HunyuanVideo 1.5's, its real config, the same size). For every
size: diffusers untiled (the reference), diffusers ``enable_tiling()`` (its default tiles: 512 px
for DC-AE; for LTX-2 160 px at a stride of 128, or it would not tile 256x384 at all), and vaekit at
several budgets. Reports seconds, peak RSS growth over the RSS after loading, max abs error and PSNR
against untiled; writes ``bench[-MODEL].json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import date
from pathlib import Path

from ..measure import machine
from .workers import run_worker

__all__ = ["main", "run_benchmark", "psnr"]

#: model -> (default sizes, default methods)
MODELS = {
    "sd": ((512, 1024), ("diffusers-untiled", "diffusers-tiling", "vaekit:768MiB", "vaekit:1.5GiB", "vaekit:none")),
    "sana": ((2048,), ("diffusers-untiled", "diffusers-tiling", "vaekit:1GiB", "vaekit:3GiB")),
    "wan": (("9x240x416",), ("diffusers-untiled", "diffusers-tiling", "vaekit:256MiB", "vaekit:512MiB")),
    "ltx2": (("17x256x384",), ("diffusers-untiled", "diffusers-tiling", "vaekit:64MiB", "vaekit:96MiB", "vaekit:128MiB")),
    "hunyuan15": (("17x256x384",), ("diffusers-untiled", "diffusers-tiling", "vaekit:128MiB", "vaekit:256MiB")),
}
#: LTX-2's tiles for diffusers-tiling: its defaults (512 px) would not tile 256x384 at all
LTX2_TILES = dict(tile_sample_min_height=160, tile_sample_min_width=160, tile_sample_stride_height=128,
                  tile_sample_stride_width=128)
THREADS = 2

#: `vaekit bench --quick` (make bench-quick): issue 23's goals, (model, size, vaekit budget) -> most time x untiled
QUICK_GOALS = {("sd", 1024, "768MiB"): 1.0, ("sd", 1024, "64MiB"): 1.1, ("wan", "9x240x416", "256MiB"): 1.0}


def psnr(out, ref, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of ``out`` against ``ref`` for images in [-1, 1]."""
    mse = float(((out.double() - ref.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def _worker(model: str, method: str, size: int, ref_path: Path) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np
    import torch

    import vaekit
    from vaekit.arch import scale_factor
    from vaekit.measure import PeakMemory
    from vaekit.models import sana_dc, sd_vae

    torch.set_num_threads(THREADS)
    if model in VIDEO_MODELS:
        vae, z, warm = VIDEO_MODELS[model](size)
    else:
        vae = sd_vae(seed=0) if model == "sd" else sana_dc(seed=0)
        n = size // scale_factor(vae)
        z = torch.randn(1, vae.config.latent_channels, n, n, generator=torch.Generator().manual_seed(1))
        warm = torch.randn(1, vae.config.latent_channels, 8, 8)
    budget = method.split(":", 1)[1] if method.startswith("vaekit") else None
    budget = None if budget == "none" else budget
    if method == "diffusers-tiling":
        vae.enable_tiling(**(LTX2_TILES if model == "ltx2" else {}))
    if method.startswith("vaekit-stream"):  # streams even where the whole model would fit the budget
        vaekit.apply(vae, budget)
        vae.enable_tiling()  # under apply: exact streaming, never tiles

    def run(latents):
        with torch.inference_mode():
            if method.startswith("vaekit:"):
                return vaekit.decode(vae, latents, budget)
            return vae.decode(latents).sample  # diffusers, or vaekit-stream through apply

    run(warm)  # load kernels and thread pools first
    with PeakMemory() as mem:
        start = time.perf_counter()
        out = run(z)
        seconds = time.perf_counter() - start
    row = {"model": model, "method": method, "size": size, "seconds": seconds, "peak_rss_growth": mem.growth}
    if method.startswith("vaekit:"):
        row["plan_mode"] = vaekit.plan(vae, tuple(z.shape), budget).mode
    elif method.startswith("vaekit-stream"):
        row["plan_mode"] = "stream"
    if method == "diffusers-untiled":
        np.save(ref_path, out.numpy())
    else:
        ref = torch.from_numpy(np.load(ref_path))
        row["max_abs_error"] = float((out - ref).abs().max())
        row["relative_error"] = row["max_abs_error"] / float(ref.abs().max())
        row["psnr_db"] = psnr(out, ref)
    return row


def _wan(size: str):
    """The Wan 2.1 VAE (diffusers' default config, seeded weights) and latents for FRAMESxHEIGHTxWIDTH."""
    import torch
    from diffusers import AutoencoderKLWan

    frames, height, width = (int(v) for v in size.split("x"))
    torch.manual_seed(0)
    vae = AutoencoderKLWan().eval()
    shape = (1, vae.config.z_dim, 1 + (frames - 1) // 4, height // 8, width // 8)  # latent frames and px
    return vae, torch.randn(*shape, generator=torch.Generator().manual_seed(1)), torch.randn(1, vae.config.z_dim, 2, 4, 4)


def _ltx2(size: str):
    """The LTX-2 video VAE (its real config: diffusers' defaults with a decoder that is not causal; seeded
    weights) and latents for FRAMESxHEIGHTxWIDTH."""
    import torch
    from diffusers import AutoencoderKLLTX2Video

    frames, height, width = (int(v) for v in size.split("x"))
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8).eval()
    ratio, t_ratio = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    shape = (1, vae.config.latent_channels, 1 + (frames - 1) // t_ratio, height // ratio, width // ratio)
    warm = torch.randn(1, vae.config.latent_channels, 1, 2, 2)
    return vae, torch.randn(*shape, generator=torch.Generator().manual_seed(1)), warm


def _hunyuan15(size: str):
    """The HunyuanVideo 1.5 VAE (diffusers' defaults are its config; seeded weights) and latents for
    FRAMESxHEIGHTxWIDTH."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo15

    frames, height, width = (int(v) for v in size.split("x"))
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo15().eval()
    ratio, t_ratio = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    shape = (1, vae.config.latent_channels, 1 + (frames - 1) // t_ratio, height // ratio, width // ratio)
    warm = torch.randn(1, vae.config.latent_channels, 1, 2, 2)
    return vae, torch.randn(*shape, generator=torch.Generator().manual_seed(1)), warm


VIDEO_MODELS = {"wan": _wan, "ltx2": _ltx2, "hunyuan15": _hunyuan15}

COMPILE_SIZES = (256, 384, 320, 448)
COMPILE_BUDGET = "256MiB"


def _compile_worker(method: str, sizes) -> list[dict]:
    """One process: decode each size twice in a row (first call: compile or recompile; second: warm)."""
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vaekit-inductor-")  # cold caches
    import torch

    import vaekit
    from vaekit.models import sd_vae

    torch.set_num_threads(THREADS)
    vae = sd_vae(seed=0)
    decoder = torch.compile(vae.decoder) if method == "diffusers-compile" else None
    rows = []
    for size in sizes:
        z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
        times = []
        for _ in range(2):
            start = time.perf_counter()
            with torch.inference_mode():
                if decoder is not None:
                    decoder(vae.post_quant_conv(z))
                else:
                    vaekit.decode(vae, z, COMPILE_BUDGET, compile=True)
            times.append(time.perf_counter() - start)
        rows.append({"method": method, "size": size, "first_seconds": times[0], "warm_seconds": times[1]})
    return rows


def run_compile_benchmark(sizes, out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in ("diffusers-compile", "vaekit-compile"):
        cmd = [sys.executable, "-m", "vaekit.tools.bench", "--compile-worker", method, "--sizes", *map(str, sizes)]
        for row in run_worker(cmd, f"compile benchmark worker {method}"):
            rows.append(row)
            print(f"{row['size']:>5}  {method:<18} first {row['first_seconds']:7.1f} s  warm {row['warm_seconds']:6.1f} s",
                  file=sys.stderr, flush=True)
    meta = {"date": date.today().isoformat(), "machine": machine(), "threads": THREADS, "dtype": "float32",
            "model": MODEL_NAMES["sd"], "sizes_in_order": list(sizes), "vaekit_budget": COMPILE_BUDGET}
    (out_dir / "bench-compile.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"{meta['model']} decode under torch.compile, sizes in this order in one process, cold inductor cache. "
             f"Measured {meta['date']} on {meta['machine']}, fp32, {THREADS} threads.", "",
             "| image | method | first call (compiles if it must) | second call |", "|---|---|---|---|"]
    lines += [f"| {r['size']}² | {r['method']} | {r['first_seconds']:.1f} s | {r['warm_seconds']:.1f} s |" for r in rows]
    (out_dir / "bench-compile.md").write_text("\n".join(lines) + "\n")
    return rows


GIGAPIXEL_SIZES = (4096, 8192)
GIGAPIXEL_BUDGET = "512MiB"


def _gigapixel_worker(size: int, out_dir: Path) -> dict:
    """TAEF2's real decoder to a tiled BigTIFF within GIGAPIXEL_BUDGET, in this (fresh) process."""
    import torch

    import vaekit
    from vaekit.measure import PeakMemory

    torch.set_num_threads(THREADS)
    vae = vaekit.load("taef2")
    n = size // vae.scale_factor
    z = torch.randn(1, vae.latent_channels, n, n, generator=torch.Generator().manual_seed(1))
    vaekit.decode(vae, z[..., :8, :8], GIGAPIXEL_BUDGET)  # kernels and thread pools first
    target = out_dir / f"taef2-{size}.tif"
    plan = vaekit.plan(vae, tuple(z.shape), GIGAPIXEL_BUDGET, out=target)
    with PeakMemory() as mem:
        start = time.perf_counter()
        vaekit.decode(vae, z, GIGAPIXEL_BUDGET, out=target)
        seconds = time.perf_counter() - start
    row = {"size": size, "seconds": seconds, "peak_rss_growth": mem.growth, "file_bytes": target.stat().st_size,
           "scratch_bytes": plan.scratch_bytes, "predicted_peak": plan.peak_bytes}
    target.unlink()
    return row


def run_gigapixel_benchmark(sizes, out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        cmd = [sys.executable, "-m", "vaekit.tools.bench", "--gigapixel-worker", str(size), "--out", str(out_dir)]
        rows.append(run_worker(cmd, f"gigapixel worker at {size}"))
        print(f"{size:>6}  {rows[-1]['seconds']:7.1f} s  {rows[-1]['peak_rss_growth'] / 2**20:7.0f} MiB", file=sys.stderr)
    meta = {"date": date.today().isoformat(), "machine": machine(), "threads": THREADS, "dtype": "float32",
            "budget": GIGAPIXEL_BUDGET, "model": "TAEF2 decoder (real weights)"}
    (out_dir / "bench-gigapixel.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"TAEF2 decoder (real weights) to tiled BigTIFF, budget {GIGAPIXEL_BUDGET}, random latents. Measured "
             f"{meta['date']} on {meta['machine']}, fp32, {THREADS} threads, each size a fresh process.", "",
             "| image | time | peak RSS growth | predicted peak | scratch on disk | BigTIFF |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['size']}² | {r['seconds']:.0f} s | {r['peak_rss_growth'] / 2**20:.0f} MiB | "
              f"{r['predicted_peak'] / 2**20:.0f} MiB | {r['scratch_bytes'] / 2**30:.1f} GiB | "
              f"{r['file_bytes'] / 2**20:.0f} MiB |" for r in rows]
    (out_dir / "bench-gigapixel.md").write_text("\n".join(lines) + "\n")
    return rows


def run_quick(out_dir: Path) -> list[dict]:
    """The goals' ratios only (QUICK_GOALS), each run a fresh process: bench-quick.{json,md}."""
    rows = []
    for model in ("sd", "wan"):
        goals = {(size, budget) for m, size, budget in QUICK_GOALS if m == model}
        for size in sorted({size for size, _ in goals}, key=str):
            methods = ["diffusers-untiled"] + [f"vaekit:{b}" for s, b in sorted(goals) if s == size]
            rows += [dict(r, model=model) for r in run_benchmark(model, [size], methods, out_dir / "quick")]
    meta = {"date": date.today().isoformat(), "machine": machine(), "threads": THREADS, "dtype": "float32"}
    (out_dir / "bench-quick.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"Issue 23's goals, measured {meta['date']} on {meta['machine']}, fp32, {THREADS} threads, each run a "
             "fresh process (`make bench-quick`).", "",
             "| model | size | method | time | × untiled | goal | peak RSS growth | × untiled | PSNR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        goal = QUICK_GOALS.get((r["model"], r["size"], r["method"].removeprefix("vaekit:")))
        met = "" if goal is None else f"≤ {goal:.1f} ({'met' if r['time_ratio'] <= goal else 'not met'})"
        db = "" if "psnr_db" not in r else ("∞" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f} dB")
        lines.append(f"| {r['model']} | {_size_label(r['size'])} | {r['method']} | {r['seconds']:.1f} s | "
                     f"{r['time_ratio']:.2f} | {met} | {r['peak_rss_growth'] / 2**20:.0f} MiB | "
                     f"{r['memory_ratio']:.2f} | {db} |")
    (out_dir / "bench-quick.md").write_text("\n".join(lines) + "\n")
    return rows


def run_benchmark(model: str, sizes, methods, out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "bench" if model == "sd" else f"bench-{model}"
    rows = []
    for size in sizes:
        ref_path = out_dir / f"reference-{model}-{size}.npy"
        for method in methods:  # untiled first: it writes the reference
            cmd = [sys.executable, "-m", "vaekit.tools.bench", "--model", model, "--worker", method, "--size", str(size),
                   "--ref", str(ref_path)]
            row = run_worker(cmd, f"benchmark worker {method} at {size}")
            rows.append(row)
            print(_format_row(row), file=sys.stderr, flush=True)
        ref_path.unlink(missing_ok=True)
    _add_ratios(rows)
    meta = {"date": date.today().isoformat(), "machine": machine(), "threads": THREADS, "dtype": "float32",
            "model": MODEL_NAMES[model]}
    (out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    _plot(rows, out_dir / f"{stem}.png", meta)
    (out_dir / f"{stem}.md").write_text(markdown_table(rows, meta))
    return rows


MODEL_NAMES = {"sd": "SD VAE (AutoencoderKL)", "sana": "Sana DC-AE f32c32 (AutoencoderDC)",
               "wan": "Wan 2.1 VAE (AutoencoderKLWan)", "ltx2": "LTX-2 video VAE (AutoencoderKLLTX2Video)",
               "hunyuan15": "HunyuanVideo 1.5 VAE (AutoencoderKLHunyuanVideo15)"}


def _add_ratios(rows: list[dict]) -> None:
    base = {r["size"]: r for r in rows if r["method"] == "diffusers-untiled"}
    for r in rows:
        ref = base[r["size"]]
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["memory_ratio"] = r["peak_rss_growth"] / max(ref["peak_rss_growth"], 1)


def _format_row(r: dict) -> str:
    err = "" if "psnr_db" not in r else f"  max err {r['max_abs_error']:.2e}  {r['psnr_db']:.1f} dB"
    return f"{r['size']:>5}  {r['method']:<20} {r['seconds']:7.1f} s  {r['peak_rss_growth'] / 2**20:8.0f} MiB{err}"


def markdown_table(rows: list[dict], meta: dict) -> str:
    lines = [f"{meta.get('model', 'SD VAE')} decode, random weights. Measured {meta['date']} on {meta['machine']}, "
             f"fp32, {meta['threads']} threads, each run a fresh process.",
             "", "| image | method | time | × untiled | peak RSS growth | × untiled | max abs error | PSNR |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = "reference" if "psnr_db" not in r else f"{r['max_abs_error']:.1e}"
        db = "" if "psnr_db" not in r else ("∞" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f} dB")
        lines.append(f"| {_size_label(r['size'])} | {r['method']} | {r['seconds']:.1f} s | {r['time_ratio']:.2f} | "
                     f"{r['peak_rss_growth'] / 2**20:.0f} MiB | {r['memory_ratio']:.2f} | {err} | {db} |")
    return "\n".join(lines) + "\n"


def _size_label(size) -> str:
    return f"{size}²" if isinstance(size, int) else f"{size} (frames x h x w)"


def _plot(rows: list[dict], path: Path, meta: dict) -> None:
    from ..extras import require

    matplotlib = require("matplotlib", "the benchmark's plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        for r in (r for r in rows if r["size"] == size):
            color = "tab:gray" if r["method"] == "diffusers-untiled" else (
                "tab:red" if r["method"] == "diffusers-tiling" else "tab:blue")
            ax.scatter(r["peak_rss_growth"] / 2**20, r["seconds"], color=color, s=50)
            db = "reference" if "psnr_db" not in r else (
                "exact (∞ dB)" if math.isinf(r["psnr_db"]) else f"{r['psnr_db']:.1f} dB")
            ax.annotate(f"{r['method']}\n{db}", (r["peak_rss_growth"] / 2**20, r["seconds"]),
                        textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel("peak RSS growth (MiB)")
        ax.set_ylabel("seconds")
        ax.set_title(f"{meta.get('model', 'SD VAE')} decode {_size_label(size)}, fp32 CPU", fontsize=9)
        ax.margins(0.3)
    fig.suptitle(f"vaekit vs diffusers — {meta['date']}, {meta['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaekit bench", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model", choices=sorted(MODELS), default="sd")
    parser.add_argument("--sizes", nargs="+", help="image sizes (default: sd 512 1024, sana 2048), wan and ltx2 "
                        "FRAMESxHxW (default 9x240x416, 17x256x384)")
    parser.add_argument("--methods", nargs="+", help="diffusers-untiled, diffusers-tiling, vaekit:BUDGET (whole where "
                        "it fits), vaekit-stream:BUDGET (always streamed) ...")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile across resolutions: vaekit compile=True against diffusers' decoder compiled")
    parser.add_argument("--gigapixel", action="store_true",
                        help="TAEF2's real decoder (the built-in weights) at 4096² and 8192² to BigTIFF "
                             "within 512 MiB")
    parser.add_argument("--dist", action="store_true",
                        help="patch parallel: torchrun ranks against one process (SD VAE, 1024², .npy sink)")
    parser.add_argument("--device", default="cpu", help="cuda: the GPU check (vaekit gpu-check, its options after --)")
    parser.add_argument("--quick", action="store_true",
                        help="issue 23's goals only: SD 1024² at 768 MiB and 64 MiB, Wan 2.1 9x240x416 at 256 MiB, "
                             "against untiled (under 10 minutes on 2 cores)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--compile-worker", help=argparse.SUPPRESS)
    parser.add_argument("--gigapixel-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--ref", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.device != "cpu":
        from .gpu_check import main as gpu_check_main

        return gpu_check_main(["--device", args.device, "--out", str(args.out), *[a for a in rest if a != "--"]])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    sizes_arg = args.sizes and [int(v) if v.isdigit() else v for v in args.sizes]
    if args.worker:
        size = int(args.size) if args.size.isdigit() else args.size
        print(json.dumps(_worker(args.model, args.worker, size, args.ref)))
        return 0
    if args.gigapixel_worker:
        print(json.dumps(_gigapixel_worker(args.gigapixel_worker, args.out)))
        return 0
    from ..io import output_folder

    output_folder(args.out, "the benchmark's results (--out)")  # before minutes of work
    print(f"vaekit bench: {machine()}, {THREADS} threads, fp32, each run a fresh process", file=sys.stderr, flush=True)
    if args.quick:
        run_quick(args.out)
        print((args.out / "bench-quick.md").read_text())
        return 0
    if args.dist:
        from .bench_dist import run_dist_benchmark

        run_dist_benchmark(args.out, *(sizes_arg or [])[:1])
        print((args.out / "bench-dist.md").read_text())
        return 0
    if args.gigapixel:
        run_gigapixel_benchmark(sizes_arg or GIGAPIXEL_SIZES, args.out)
        print((args.out / "bench-gigapixel.md").read_text())
        return 0
    if args.compile_worker:
        print(json.dumps(_compile_worker(args.compile_worker, sizes_arg)))
        return 0
    if args.compile:
        run_compile_benchmark(sizes_arg or COMPILE_SIZES, args.out)
        print((args.out / "bench-compile.md").read_text())
        return 0
    sizes, methods = MODELS[args.model]
    methods = ["diffusers-untiled"] + [m for m in (args.methods or methods) if m != "diffusers-untiled"]
    run_benchmark(args.model, sizes_arg or sizes, methods, args.out)
    stem = "bench" if args.model == "sd" else f"bench-{args.model}"
    print((args.out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
