"""`vaekit demo`: a real photograph through a real VAE, whole, streamed in a small budget, and in tiles.

The built-in TAEF2 (FLUX.2 latents; MIT) encodes and decodes a photograph from ``skimage.data``
upscaled to ``--size`` (2048x2048 by default) three ways:

    whole          the reference: the model on the whole image at once
    vaekit         streamed within ``--budget`` (64 MiB): the same pixels, a small fraction of the memory
    two tiles      left and right halves with an overlap, blended linearly: what tiling does; the seam shows

Prints time, peak memory, max error and PSNR; writes ``demo.png`` with the three results, their error
maps (amplified ``ERROR_GAIN`` times) and a 1:1 crop across the seam. ``--sd`` adds the second panel
this demo started with: an SD-architecture VAE (seeded random weights) decoding smooth latents whole,
streamed and with diffusers ``enable_tiling()`` (``demo-sd.png``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["main", "run_demo", "run_sd_demo", "photo"]

ERROR_GAIN = 5  # |error| of 0.2 on the [-1, 1] scale shows as full white
DEMO_BUDGET = "64MiB"
DEMO_SIZE = 2048
PANEL_PX = 512  # each image is shown this wide; error maps are max-pooled to it so no error hides
OVERLAP_PX = 64  # the two tiles overlap this many image px, blended linearly across it
SD_TILE_PX = 256  # diffusers tile size for the SD panel: a 512 image becomes 3x3 overlapping tiles


def photo(size: int) -> torch.Tensor:
    """skimage's astronaut (512x512, public domain, NASA) upscaled to size x size, [-1, 1], 1x3xHxW."""
    try:
        from skimage import data
    except ImportError as e:
        raise SystemExit("vaekit demo needs scikit-image for its photograph: pip install scikit-image") from e

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1  # 1,3,512,512 image px
    return F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def _measure(fn):
    from ..measure import PeakMemory

    with PeakMemory() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.growth


def _two_tiles(vae, image: torch.Tensor) -> torch.Tensor:
    """Round trip the left and right halves (plus half the overlap each) separately, blend the overlap."""
    w = image.shape[-1]
    cut, half = w // 2, OVERLAP_PX // 2
    left = vae.decode(vae.encode(image[..., : cut + half]))  # 1,3,H,cut+half image px
    right = vae.decode(vae.encode(image[..., cut - half :]))  # 1,3,H,w-cut+half image px
    ramp = torch.linspace(0, 1, OVERLAP_PX)  # weight of the right tile across the overlap
    out = torch.cat([left[..., : cut - half], torch.zeros_like(image[..., cut - half : cut + half]),
                     right[..., OVERLAP_PX:]], dim=-1)
    out[..., cut - half : cut + half] = left[..., cut - half :] * (1 - ramp) + right[..., :OVERLAP_PX] * ramp
    return out


def run_demo(size: int = DEMO_SIZE, out_dir: Path = Path("demo-out"), budget: str = DEMO_BUDGET) -> list[dict]:
    import vaekit

    vae = vaekit.load("taef2")
    image = photo(size)
    with torch.no_grad():
        vaekit.decode(vae, vaekit.encode(vae, image[..., :64, :64], budget), budget)  # warm up kernels
        rows = [
            _row("whole image", lambda: vae.decode(vae.encode(image))),
            _row(f"vaekit, budget {budget}",
                 lambda: vaekit.decode(vae, vaekit.encode(vae, image, budget), budget)),
            _row(f"two tiles ({OVERLAP_PX} px overlap)", lambda: _two_tiles(vae, image)),
        ]
    _score(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "demo.png"
    _picture(rows, png, crop=True)
    print(_table(rows, f"TAEF2 round trip (encode + decode) of a {size}x{size} photograph, fp32, "
                       f"{torch.get_num_threads()} CPU threads"))
    print(f"\nwrote {png}  (middle row: |error| x{ERROR_GAIN} against the whole image; bottom: 1:1 crop at the seam)")
    return rows


def run_sd_demo(model=None, size: int = 512, out_dir: Path = Path("demo-out"), budget: str = "96MiB") -> list[dict]:
    """The SD-architecture panel: smooth latents decoded whole, streamed and with ``enable_tiling()``."""
    import vaekit

    from ..models import load_model, sd_vae

    vae = load_model(model, torch.float32) if model else sd_vae(seed=0)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    coarse = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    z = F.interpolate(coarse, size=(size // factor,) * 2, mode="bicubic", align_corners=False)  # latent px
    with torch.no_grad():
        vaekit.decode(vae, z[..., :8, :8], budget)  # warm up kernels so the timings compare
        rows = [_row("diffusers untiled", lambda: vae.decode(z).sample),
                _row(f"vaekit, budget {budget}", lambda: vaekit.decode(vae, z, budget))]
        vae.enable_tiling()
        vae.tile_sample_min_size, vae.tile_latent_min_size = SD_TILE_PX, SD_TILE_PX // factor
        rows.append(_row(f"diffusers enable_tiling ({SD_TILE_PX} px)", lambda: vae.decode(z).sample))
        vae.disable_tiling()
    _score(rows)
    png = out_dir / "demo-sd.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    _picture(rows, png, crop=False)
    print(_table(rows, f"SD-architecture VAE (random weights) decode, {size}x{size}, fp32 on CPU"))
    print(f"\nwrote {png}")
    return rows


def _row(method: str, fn) -> dict:
    image, seconds, memory = _measure(fn)
    return dict(method=method, image=image, seconds=seconds, memory=memory)


def _score(rows: list[dict]) -> None:
    from ..io import to_uint8
    from .bench import psnr

    reference = rows[0]["image"]
    for row in rows:
        row["max_error"] = float((row["image"] - reference).abs().max())
        row["psnr"] = psnr(row["image"], reference)
        # what a saved PNG shows: pixels whose 8-bit value changes in any channel
        row["pixels_changed"] = int((to_uint8(row["image"][0]) != to_uint8(reference[0])).any(-1).sum())


def _quality(row: dict, i: int) -> str:
    if i == 0:
        return "reference"
    return "identical" if row["psnr"] == float("inf") else f"{row['psnr']:.1f} dB"


def _table(rows: list[dict], title: str) -> str:
    lines = [title, "", f"{'method':<34}{'time':>9}{'peak RSS growth':>18}{'max error':>12}{'PSNR':>12}"
                        f"{'8-bit px changed':>18}"]
    for i, r in enumerate(rows):
        lines.append(f"{r['method']:<34}{r['seconds']:>8.1f}s{r['memory'] / 2**20:>14.0f} MiB"
                     f"{r['max_error']:>12.1e}{_quality(r, i):>12}{r['pixels_changed']:>18,}")
    return "\n".join(lines)


def _panel(image: torch.Tensor, px: int, pool: bool = False) -> torch.Tensor:
    """Shrink a 1,C,H,W map to px wide: bilinear for a picture, max-pool for an error map (no error hides)."""
    if image.shape[-1] <= px:
        return image
    if pool:
        return F.adaptive_max_pool2d(image, (px * image.shape[-2] // image.shape[-1], px))
    return F.interpolate(image, size=(px * image.shape[-2] // image.shape[-1], px), mode="area")


def _picture(rows: list[dict], path: Path, crop: bool) -> None:
    from PIL import Image, ImageDraw

    from ..io import atomic_path, to_uint8

    reference = rows[0]["image"]
    h, w = reference.shape[-2:]
    cy, cx, c = h // 2, w // 2, min(PANEL_PX, w) // 2  # the crop: PANEL_PX square at the centre, on the seam
    panels = []
    for r in rows:
        error = ((r["image"] - reference).abs().amax(dim=1, keepdim=True) * ERROR_GAIN).clamp(0, 1) * 2 - 1
        shown = [_panel(r["image"], PANEL_PX), _panel(error, PANEL_PX, pool=True).expand(-1, 3, -1, -1)]
        if crop:
            shown.append(r["image"][..., cy - c : cy + c, cx - c : cx + c])
        panels.append([Image.fromarray(to_uint8(p[0])) for p in shown])
    label = 36
    pw = max(p.width for p in panels[0])
    canvas = Image.new("RGB", (pw * len(rows), sum(p.height + label for p in panels[0])), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (r, shown) in enumerate(zip(rows, panels, strict=True)):
        x, y = i * pw, 0
        captions = [f"{r['method']}: {r['seconds']:.1f} s, {r['memory'] / 2**20:.0f} MiB, {_quality(r, i)}",
                    f"|error| x{ERROR_GAIN} (max-pooled), max {r['max_error']:.1e}, "
                    f"{r['pixels_changed']:,} 8-bit px changed",
                    "1:1 crop at the centre (the seam of the two tiles)"]
        for caption, image in zip(captions, shown, strict=False):
            draw.text((x + 6, y + 12), caption, fill="black")
            canvas.paste(image, (x, y + label))
            y += image.height + label
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaekit demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=DEMO_SIZE, help="photo side in px (a multiple of 64)")
    parser.add_argument("--budget", default=DEMO_BUDGET, help=f"vaekit's budget in the comparison (default {DEMO_BUDGET})")
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder of demo.png (default demo-out)")
    parser.add_argument("--sd", action="store_true", help="also the SD-architecture panel (random weights)")
    parser.add_argument("--model", help="with --sd: a diffusers AutoencoderKL folder instead of random weights")
    args = parser.parse_args(argv)
    if args.size % 64:
        parser.error(f"--size {args.size} is not a multiple of 64 (the tiles split it in halves of whole latent px)")
    from ..io import output_folder

    output_folder(args.out, "the demo's pictures (--out)")  # before a minute of work
    run_demo(args.size, args.out, args.budget)
    if args.sd:
        print()
        run_sd_demo(args.model, out_dir=args.out)
    return 0
