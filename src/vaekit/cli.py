"""The ``vaekit`` command: a thin layer over the public API.

    vaekit decode LATENTS OUT [--model MODEL] [--budget 2GiB] [--device cpu|cuda] [--dtype float32]
                                   (5-D video latents: OUT .mp4/.npy/.zarr [--fps 16] [--crf 18])
    vaekit encode IMAGE OUT.safetensors [--model MODEL] [--budget 2GiB] [--sample --seed 0]
    vaekit roundtrip IMAGE OUT.png [--model MODEL] [--budget 2GiB]      (prints the PSNR)
    vaekit plan --size 4096x4096 [--model MODEL] [--budget 4GiB] [--op encode] [--frames 81]
    vaekit doctor
    vaekit comfyui install COMFYUI_DIR [--copy]                         (the ComfyUI nodes)
    vaekit examples make DIR                                            (the docs' example models, offline)

MODEL is a diffusers folder, an LDM single-file VAE (.safetensors), TAESD .pth files, or taef2 (built
in: the default).
    vaekit demo
    vaekit bench

Under ``torchrun`` (WORLD_SIZE > 1) decode, encode and roundtrip split the rows across the ranks
(``dist=True``); each rank writes its rows of a .npy/.zarr output, and rank 0 writes anything else
and prints the result.

Errors print one line, ``vaekit: error: ...``, and exit with the error class's code (``--debug``
shows the traceback). Outputs appear only when complete.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from . import __version__
from .errors import DiskError, InputError, VaekitError

__all__ = ["main"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"cannot read size {text!r}: write WIDTHxHEIGHT in image pixels, e.g. 4096x4096") from None
    return width, height


def _model(args, *, meta_ok: bool = False):
    """What --model names: a diffusers folder, or weights files (TAESD halves, LDM single file)."""
    from pathlib import Path

    from .api import usable_device
    from .loader import load

    if not meta_ok and args.device:
        usable_device(args.device)  # before loading: a missing GPU is a one-line error, not a traceback
    if meta_ok and len(args.model) == 1 and Path(args.model[0]).is_dir():
        from .models import meta_model

        return meta_model(args.model[0])  # planning reads config.json only
    model = load(*args.model, dtype=DTYPES[args.dtype] if args.dtype else None)
    if not args.dtype and not meta_ok:
        from .checks import model_dtype
        from .precision import choose_dtype

        dtype = choose_dtype(model, args.device or "cpu")
        model = model if model_dtype(model) == dtype else model.to(dtype)  # no cast to warn of (MiniMax H3 pins fp32)
    return model


def _ranks() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _lead() -> bool:
    """This process writes the held outputs and prints: rank 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def _run_options(args) -> dict:
    from .recovery import RunReport

    args.report = RunReport()  # what happened besides the plan: told on stderr (_tell)
    return dict(device=args.device, progress=not args.quiet, scratch_dir=args.scratch_dir, report=args.report,
                host_budget=args.host_budget, dist=_ranks() > 1)


def _tell(args) -> None:
    rank = f"rank {os.environ.get('RANK')}: " if _ranks() > 1 else ""
    for event in args.report.retries + args.report.upcasts:
        print(f"vaekit: note: {rank}{event.stage} rows {event.rows[0]}-{event.rows[1]}: {event.action}",
              file=sys.stderr)


def _decode(args) -> int:
    from . import api
    from .io import check_output, load_latents, save_output
    from .sinks import SINK_SUFFIXES

    check_output(args.out)  # fail before any work
    latents = load_latents(args.latents)
    if latents.dim() == 3:
        latents = latents[None]  # (C, h, w) -> (1, C, h, w)
    if args.model == ["taef2"] and latents.dim() >= 4 and latents.shape[1] != 32:  # --model forgotten, most likely
        raise InputError(f"{args.latents} holds latents of {latents.shape[1]} channels, and the default model, the "
                         "built-in taef2, takes 32: name yours with --model (a diffusers folder or a weights file)")
    if latents.dim() == 5:  # a video's (B, C, frames, h, w): frame by frame into .npy, .zarr or .mp4
        if not args.out.lower().endswith((".npy", ".zarr", ".mp4")):
            raise InputError(f"cannot write a video to {args.out}: use .mp4, .npy or .zarr")
        path = api.decode(_model(args), latents, args.budget, out=args.out, fps=args.fps, crf=args.crf,
                          **_run_options(args))
        print(path)
        _tell(args)
        return 0
    if args.out.lower().endswith(".mp4"):
        raise InputError(f"{args.latents} holds {latents.dim()}-D latents, not a video's (B, C, frames, h, w): "
                         "write .png, .tif, .npy or .zarr")
    one_file = latents.shape[0] == 1 or not args.out.lower().endswith(".png")  # a batch is one PNG per image
    if args.out.lower().endswith(SINK_SUFFIXES) and one_file:  # written band by band: never held whole
        path = api.decode(_model(args), latents, args.budget, out=args.out, **_run_options(args))
        if _lead():
            print(path)
        _tell(args)
        return 0
    images = api.decode(_model(args), latents, args.budget, **_run_options(args))
    _tell(args)
    if _lead():
        print(*save_output(images, args.out), sep="\n")
    return 0


def _encode(args) -> int:
    from . import api, checks
    from .io import load_image, load_video, save_latents

    _check_suffix(args.out, (".safetensors", ".npy", ".pt"))
    vae = _model(args)
    images = (load_video if checks.is_video(vae) else load_image)(args.image)  # a video model's: (B, 3, F, H, W)
    generator = torch.Generator().manual_seed(args.seed) if args.sample else None
    latents = api.encode(vae, images, args.budget, sample=args.sample, generator=generator, **_run_options(args))
    _tell(args)
    if _lead():
        print(save_latents(latents, args.out))
    return 0


def _roundtrip(args) -> int:
    from . import api
    from .io import load_image, save_output
    from .measure import psnr

    _check_suffix(args.out, (".png",))
    images = load_image(args.image)
    vae = _model(args)
    latents = api.encode(vae, images, args.budget, **_run_options(args))
    _tell(args)
    decoded = api.decode(vae, latents, args.budget, **_run_options(args))
    _tell(args)
    if decoded.shape != images.shape:
        decoded = decoded[..., : images.shape[2], : images.shape[3]]  # sizes not a multiple of the scale
    if _lead():
        print(*save_output(decoded, args.out), f"PSNR {psnr(decoded, images):.2f} dB", sep="\n")
    return 0


def _check_suffix(out: str, suffixes: tuple[str, ...]) -> None:
    if not out.lower().endswith(suffixes):
        raise InputError(f"cannot write {out}: the output must end in {', '.join(suffixes)}")


def _doctor(args) -> int:
    from .tools.doctor import doctor

    print(doctor())
    return 0


def _plan(args) -> int:
    from . import api, checks
    from .arch import latent_frames, program_for, scale_factor

    vae = _model(args, meta_ok=True)
    width, height = _size(args.size)
    video = checks.is_video(vae)  # a video model plans (batch, channels, frames, height, width)
    frames = () if not video else (args.frames,)
    if args.op == "encode":
        shape = (args.batch, program_for(vae, "encode").maps["input"].channels, *frames, height, width)
    else:
        factor = scale_factor(vae)
        if width % factor or height % factor:
            down, up = (f"{w}x{h}" for w, h in ((width // factor * factor, height // factor * factor),
                                               (-(-width // factor) * factor, -(-height // factor) * factor)))
            raise InputError(f"size {width}x{height} is not a multiple of the VAE's {factor}x scale: the nearest are "
                             f"{down} and {up}")
        if video:  # latent frames: the first, then one per temporal_factor frames (Wan 4, LTX-2 8)
            frames = (latent_frames(vae, args.frames),)
        channels = program_for(vae, "decode").maps["input"].channels
        shape = (args.batch, channels, *frames, height // factor, width // factor)
    dtype = DTYPES[args.dtype] if args.dtype else torch.float32
    budget = args.budget
    if budget is None and args.device != "cpu":
        raise InputError("planning for a device other than this machine's CPU needs --budget")
    the_plan = api.plan(vae, shape, budget, args.op, device=args.device, dtype=dtype, host_budget=args.host_budget)
    print(the_plan)
    if args.op == "encode":  # the program ends in the moments (mean | logvar) where encode returns their mode
        from .arch import family

        moments = torch.empty(the_plan.out_shape, device="meta")
        returned = tuple(family(vae).finish(vae, "encode", moments).shape)
        if returned != tuple(the_plan.out_shape):
            print(f"encode returns latents of {'x'.join(map(str, returned))}: the mode of the moments planned above")
    return 0


def _examples(args) -> int:
    from .tools.examples import make

    for path in make(args.folder):
        print(path)
    return 0


def _comfyui(args) -> int:
    from .integrations.comfyui import install

    target = install(args.comfyui_dir, copy=args.copy)
    how = "copied to" if args.copy else "linked at"
    print(f"vaekit's ComfyUI nodes {how} {target}\n"
          f"  ComfyUI must run with a Python that has vaekit (this one: {sys.executable}); restart ComfyUI, then "
          f"find them under latent/vaekit\n  to undo: rm {'-r ' if args.copy else ''}{target}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaekit", description="Exact streaming VAE decode and encode in a budget.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"vaekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", nargs="+", default=["taef2"],
                       help="a diffusers VAE folder, an LDM single-file VAE, TAESD .pth files (encoder and/or "
                            "decoder), or taef2 (built in, the default)")
    model.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype (default: the checkpoint's)")
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--budget", help="activation memory budget, e.g. 768MiB, 2GiB, or auto (default: free memory)")
    run.add_argument("--device", help="cpu or cuda (default: cpu)")
    run.add_argument("--scratch-dir", help="where the disk tier writes scratch files (default: system temp)")
    run.add_argument("--host-budget", help="CUDA: host RAM for maps kept off the GPU before disk (default: 80%% of free)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    dec = sub.add_parser("decode", parents=[model, run], help="decode latents to an image or a video, exactly, in a budget; "
                         "to a file band by band (frame by frame)")
    dec.add_argument("latents", help=".safetensors, .pt or .npy (already divided by the scaling factor)")
    dec.add_argument("out", help=".npy, .tif (BigTIFF), .zarr, .png (written band by band) or .pt; a video's "
                     "5-D latents: .mp4, .npy or .zarr (frame by frame)")
    dec.add_argument("--fps", type=int, help="video: frames per second of an .mp4 (default 16, Wan's)")
    dec.add_argument("--crf", type=int, help="video: x264 quality of an .mp4, lower is better (default 18)")
    dec.set_defaults(run=_decode)

    enc = sub.add_parser("encode", parents=[model, run], help="encode an image or a video to latents, exactly, "
                                                                  "in a budget")
    enc.add_argument("image", help=".png, .jpg, .tif, ...; a video model's: .mp4, .mkv, ... or a (B, C, F, H, W) "
                                   "tensor in .npy, .safetensors or .pt")
    enc.add_argument("out", help=".safetensors (key 'latents'), .npy or .pt")
    enc.add_argument("--sample", action="store_true", help="sample the latent distribution instead of its mode")
    enc.add_argument("--seed", type=int, default=0, help="seed for --sample")
    enc.set_defaults(run=_encode)

    rt = sub.add_parser("roundtrip", parents=[model, run], help="encode then decode an image; print the PSNR")
    rt.add_argument("image", help=".png, .jpg, .tif, ...")
    rt.add_argument("out", help=".png")
    rt.set_defaults(run=_roundtrip)

    pl = sub.add_parser("plan", help="print the plan for a size (and frames) and budget from the config alone: stages, "
                        "rows per chunk, each map's tier, predicted peak")
    pl.add_argument("--model", nargs="+", default=["taef2"], help="a diffusers VAE folder (only config.json is "
                    "read), weights files, or taef2 (built in, the default, as for decode)")
    pl.add_argument("--op", choices=("decode", "encode"), default="decode", help="what to plan (default: decode)")
    pl.add_argument("--size", required=True, help="image size WIDTHxHEIGHT, e.g. 4096x4096")
    pl.add_argument("--budget", help="e.g. 4GiB (default: this machine's free memory)")
    pl.add_argument("--batch", type=int, default=1, help="images (videos) at once (default 1)")
    pl.add_argument("--frames", type=int, default=1,
                    help="a video model's frames (Wan: 1 + 4k, LTX-2: 1 + 8k, MiniMax H3: 17k + 5), default 1")
    pl.add_argument("--device", default="cpu", help="device to plan for (cpu, cuda): sets the store tiers")
    pl.add_argument("--dtype", choices=sorted(DTYPES), help="dtype to plan for (default: float32)")
    pl.add_argument("--host-budget", help="CUDA: host RAM for maps kept off the GPU, the rest on disk "
                    "(default: 80%% of this machine's free RAM)")
    pl.set_defaults(run=_plan)

    doc = sub.add_parser("doctor", help="versions, devices, free memory, bf16 capability, what vaekit would choose")
    doc.set_defaults(run=_doctor)

    ex = sub.add_parser("examples", help="make the small example models and files the docs use (offline)")
    ex.add_argument("action", choices=("make",))
    ex.add_argument("folder", help="where to write sd-vae/, wan-vae/, ..., sd-pipeline/, latents.pt, photo.png "
                                   "(made if missing)")
    ex.set_defaults(run=_examples)

    comfy = sub.add_parser("comfyui", help="install vaekit's ComfyUI nodes")
    comfy.add_argument("action", choices=("install",))
    comfy.add_argument("comfyui_dir", help="the ComfyUI folder (where its main.py is)")
    comfy.add_argument("--copy", action="store_true", help="copy the node pack instead of linking it")
    comfy.set_defaults(run=_comfyui)

    # listed for --help; their own parsers (tools/demo.py, tools/bench.py) read their arguments
    sub.add_parser("demo", help="a real photo through the built-in TAEF2 whole, streamed and in two tiles: "
                                "time, memory, error, demo.png (vaekit demo --help)")
    sub.add_parser("bench", help="benchmarks against diffusers, each method in a fresh process; CPU model and "
                            "threads with the results (vaekit bench --help)")
    sub.add_parser("gpu-check", help="exactness, peaks, ladder, tiers and timings on a CUDA GPU (vaekit gpu-check --help)")
    return parser


def _preflight(args) -> None:
    """What the command will write, checked before any work: the output's folder and the scratch folder
    exist and take a new file (the API checks the same as it opens them; here a failure costs no model load)."""
    from .io import check_folder, check_writable

    if getattr(args, "scratch_dir", None):
        check_folder(args.scratch_dir, "scratch files (--scratch-dir)")
    if isinstance(getattr(args, "out", None), str):
        check_writable(args.out, directory=args.out.lower().endswith(".zarr"))


def _delegated(argv: list[str]):
    """(main function, its argv) when the command is demo, bench or gpu-check, else None."""
    rest = [a for a in argv if a != "--debug"]
    if rest and rest[0] == "demo":
        from .tools.demo import main as demo_main

        return demo_main, rest[1:]
    if rest and rest[0] == "bench":
        from .tools.bench import main as bench_main

        return bench_main, rest[1:]
    if rest and rest[0] == "gpu-check":
        from .tools.gpu_check import main as gpu_check_main

        return gpu_check_main, rest[1:]
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    delegated = _delegated(argv)
    args = _parser().parse_args(argv) if delegated is None else argparse.Namespace(debug="--debug" in argv)
    try:
        if delegated is not None:
            run, rest = delegated
            return run(rest)
        _preflight(args)
        return args.run(args)
    except (VaekitError, OSError) as e:  # an I/O failure nothing typed is still one line (as a DiskError)
        if args.debug:
            raise
        print(f"vaekit: error: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, VaekitError) else DiskError.exit_code
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
