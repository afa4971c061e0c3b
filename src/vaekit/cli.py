"""The ``vaekit`` command: a thin layer over the public API.

    vaekit decode LATENTS OUT --model DIR [--budget 2GiB] [--device cpu|cuda] [--dtype float32]
    vaekit plan --model DIR --size 4096x4096 [--budget 4GiB]
    vaekit demo
    vaekit bench

Errors print one line, ``vaekit: error: ...``, and exit with the error class's code (``--debug``
shows the traceback). Outputs appear only when complete.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .errors import InputError, VaekitError

__all__ = ["main"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"cannot read size {text!r}: write WIDTHxHEIGHT in image pixels, e.g. 4096x4096") from None
    return width, height


def _decode(args) -> int:
    from . import api
    from .io import check_output, load_latents, save_output
    from .models import load_model

    check_output(args.out)  # fail before any work
    latents = load_latents(args.latents)
    if latents.dim() == 3:
        latents = latents[None]  # (C, h, w) -> (1, C, h, w)
    vae = load_model(args.model, DTYPES[args.dtype] if args.dtype else None)
    images = api.decode(vae, latents, args.budget, device=args.device, progress=not args.quiet,
                        scratch_dir=args.scratch_dir)
    for path in save_output(images, args.out):
        print(path)
    return 0


def _plan(args) -> int:
    from . import api
    from .models import latent_factor, meta_model

    vae = meta_model(args.model)
    width, height = _size(args.size)
    factor = latent_factor(vae)
    if width % factor or height % factor:
        raise InputError(f"size {width}x{height} is not a multiple of the VAE's {factor}x scale")
    shape = (args.batch, vae.config.latent_channels, height // factor, width // factor)
    dtype = DTYPES[args.dtype] if args.dtype else torch.float32
    budget = args.budget
    if budget is None and args.device != "cpu":
        raise InputError("planning for a device other than this machine's CPU needs --budget")
    print(api.plan(vae, shape, budget, device=args.device, dtype=dtype))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaekit", description="Exact streaming VAE decode within a memory budget.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    dec = sub.add_parser("decode", help="decode latents to an image")
    dec.add_argument("latents", help=".safetensors, .pt or .npy (already divided by the scaling factor)")
    dec.add_argument("out", help=".png, .npy or .pt")
    dec.add_argument("--model", required=True, help="a diffusers VAE folder (config.json + safetensors)")
    dec.add_argument("--budget", help="activation memory budget, e.g. 768MiB, 2GiB (default: free memory)")
    dec.add_argument("--device", help="cpu or cuda (default: cpu)")
    dec.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default: the checkpoint's)")
    dec.add_argument("--scratch-dir", help="where the disk tier writes scratch files (default: system temp)")
    dec.add_argument("--quiet", action="store_true", help="no progress bar")
    dec.set_defaults(run=_decode)

    pl = sub.add_parser("plan", help="print the plan for an image size and budget")
    pl.add_argument("--model", required=True, help="a diffusers VAE folder (only config.json is read)")
    pl.add_argument("--size", required=True, help="image size WIDTHxHEIGHT, e.g. 4096x4096")
    pl.add_argument("--budget", help="e.g. 4GiB (default: this machine's free memory)")
    pl.add_argument("--batch", type=int, default=1)
    pl.add_argument("--device", default="cpu", help="device to plan for (cpu, cuda): sets the store tiers")
    pl.add_argument("--dtype", choices=sorted(DTYPES))
    pl.set_defaults(run=_plan)

    # listed for --help; their own parsers (demo.py, bench.py) read their arguments
    sub.add_parser("demo", help="decode one latent three ways and show the seams (vaekit demo --help)")
    sub.add_parser("bench", help="benchmark against diffusers, fresh process per run (vaekit bench --help)")
    return parser


def _delegated(argv: list[str]):
    """(main function, its argv) when the command is demo or bench, else None."""
    rest = [a for a in argv if a != "--debug"]
    if rest and rest[0] == "demo":
        from .demo import main as demo_main

        return demo_main, rest[1:]
    if rest and rest[0] == "bench":
        from .bench import main as bench_main

        return bench_main, rest[1:]
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    delegated = _delegated(argv)
    args = _parser().parse_args(argv) if delegated is None else argparse.Namespace(debug="--debug" in argv)
    try:
        if delegated is not None:
            run, rest = delegated
            return run(rest)
        return args.run(args)
    except VaekitError as e:
        if args.debug:
            raise
        print(f"vaekit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
