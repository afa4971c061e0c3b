"""`vaekit demo`: one latent decoded three ways, side by side.

An SD-architecture VAE (seeded random weights, or ``--model`` for real ones) decodes a 512x512 image
whole (the reference), with vaekit under a small budget, and with diffusers ``enable_tiling()``.
Prints time, peak memory, max error and PSNR; writes a PNG with the images and their error maps
amplified ``ERROR_GAIN`` times: plain tiling shows its seams, vaekit's map stays black.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["main", "run_demo"]

ERROR_GAIN = 5  # |error| of 0.2 on the [-1, 1] scale shows as full white
DEMO_BUDGET = "96MiB"
TILE_PX = 256  # diffusers tile size for the demo: a 512 image becomes 3x3 overlapping tiles


def _latents(vae, size: int, seed: int = 1) -> torch.Tensor:
    """Smooth random latents (a few blobs, like a real image's) rather than white noise."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, vae.config.latent_channels, 8, 8, generator=g) * 2
    n = size // factor
    return F.interpolate(coarse, size=(n, n), mode="bicubic", align_corners=False)


def _measure(fn):
    from .measure import PeakMemory

    with PeakMemory() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.growth


def run_demo(model=None, size: int = 512, out_dir: Path = Path("demo-out"), budget: str = DEMO_BUDGET) -> list[dict]:
    import vaekit

    from .bench import psnr
    from .models import load_model, sd_vae

    vae = load_model(model, torch.float32) if model else sd_vae(seed=0)
    z = _latents(vae, size)
    with torch.inference_mode():
        vaekit.decode(vae, z[..., :8, :8], budget)  # warm up kernels so the timings compare
        reference, t_ref, m_ref = _measure(lambda: vae.decode(z).sample)
        streamed, t_vk, m_vk = _measure(lambda: vaekit.decode(vae, z, budget))
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = TILE_PX, TILE_PX // (size // z.shape[-1])
        tiled, t_tile, m_tile = _measure(lambda: vae.decode(z).sample)
        vae.disable_tiling()
    rows = [
        dict(method="diffusers untiled", image=reference, seconds=t_ref, memory=m_ref),
        dict(method=f"vaekit budget={budget}", image=streamed, seconds=t_vk, memory=m_vk),
        dict(method=f"diffusers enable_tiling ({TILE_PX}px tiles)", image=tiled, seconds=t_tile, memory=m_tile),
    ]
    for row in rows:
        row["max_error"] = float((row["image"] - reference).abs().max())
        row["psnr"] = psnr(row["image"], reference)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "demo.png"
    _picture(rows, png)
    print(_table(rows, size))
    print(f"\nwrote {png}  (bottom row: |error| x{ERROR_GAIN} against untiled)")
    return rows


def _table(rows, size: int) -> str:
    lines = [f"SD-architecture VAE decode, {size}x{size}, fp32 on CPU", "",
             f"{'method':<38}{'time':>9}{'peak RSS growth':>18}{'max error':>12}{'PSNR':>10}"]
    for r in rows:
        db = "exact" if r["psnr"] == float("inf") else f"{r['psnr']:.1f} dB"
        if r["method"].startswith("diffusers untiled"):
            db = "reference"
        lines.append(f"{r['method']:<38}{r['seconds']:>8.1f}s{r['memory'] / 2**20:>14.0f} MiB"
                     f"{r['max_error']:>12.2e}{db:>10}")
    return "\n".join(lines)


def _picture(rows, path: Path) -> None:
    from PIL import Image, ImageDraw

    from .io import atomic_path, to_uint8

    reference = rows[0]["image"][0]
    tiles = []
    for r in rows:
        image = Image.fromarray(to_uint8(r["image"][0]))
        error = ((r["image"][0] - reference).abs().amax(dim=0) * ERROR_GAIN).clamp(0, 1)
        error_image = Image.fromarray((error * 255).round().to(torch.uint8).numpy()).convert("RGB")
        tiles.append((r, image, error_image))
    w, h = tiles[0][1].size
    label = 36
    canvas = Image.new("RGB", (w * len(tiles), 2 * (h + label)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (r, image, error_image) in enumerate(tiles):
        x = i * w
        db = "reference" if i == 0 else ("exact" if r["psnr"] == float("inf") else f"{r['psnr']:.1f} dB")
        draw.text((x + 6, 4), f"{r['method']}", fill="black")
        draw.text((x + 6, 18), f"{r['seconds']:.1f} s, {r['memory'] / 2**20:.0f} MiB, {db}", fill="black")
        canvas.paste(image, (x, label))
        draw.text((x + 6, h + label + 10), f"|error| x{ERROR_GAIN}, max {r['max_error']:.1e}", fill="black")
        canvas.paste(error_image, (x, h + 2 * label))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaekit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a diffusers AutoencoderKL folder (default: SD architecture, random weights)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budget", default=DEMO_BUDGET)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    args = parser.parse_args(argv)
    run_demo(args.model, args.size, args.out, args.budget)
    return 0
