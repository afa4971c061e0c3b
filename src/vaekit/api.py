"""The public functions: plan, decode and encode (a video's call: video.py)."""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from . import inflight, planning
from .arch import check_state, family, program_for
from .checks import check_shape, check_values, compute_device, is_video, model_dtype, rank_device, same_device, usable_device
from .dist import peers_for, world
from .errors import InputError, PrecisionError
from .faults import cleanly
from .io import check_folder
from .measure import PeakMemory
from .plan import Plan
from .planning import free_memory
from .precision import check_dtype
from .progress import progress_callback
from .recovery import RunReport
from .run import execute, run_whole
from .sinks import check_shared, open_sink
from .video import run_video_call

__all__ = ["decode", "encode", "plan", "run", "free_memory", "usable_device"]


def plan(vae, shape, budget=None, op: str = "decode", *, device=None, dtype=None, out=None,
         host_budget=None) -> Plan:
    """Plan ``op`` of an input of ``shape`` from the model's config and shapes alone (no data, no compute).

    Works for a model on the meta device, so a GPU's plan can be made on a laptop.

    Args:
        vae: a diffusers VAE (or TAESD model) vaekit streams; its weights are not read.
        shape: the latent shape for decode, e.g. (1, 4, 128, 128), the image shape for encode, e.g.
            (1, 3, 1024, 1024); a video model's have a frames axis, (B, C, F, H, W).
        budget: bytes, or a string like "768MiB"; None plans for the free memory of the device.
        op: "decode" or "encode".
        device: the device to plan for ("cuda" sets the store's tiers: device, pinned host RAM, disk).
        dtype: the compute dtype to plan for (default: the model's).
        out: plan as ``decode(..., out=...)`` runs, the image going to a file instead of being held.
        host_budget: on CUDA, the host RAM the maps that leave the GPU may take before the rest go to
            disk (default: 80% of the RAM available now).

    Returns:
        The Plan: its mode ("whole" or "stream"), rows per chunk, each map's tier, predicted peak.

    Raises:
        BudgetError: no plan fits the budget (it says the smallest that would).
        UnsupportedModelError: a model vaekit cannot stream.
        InputError: a shape the model cannot take.
    """
    program, device = program_for(vae, op), compute_device(vae, device, check=False)
    if is_video(vae):  # the plan of the chunks after the first (the largest), shown with the video's shapes
        return planning.plan_video(program, vae, shape, budget, op, device, dtype, out=out, host_budget=host_budget)[1]
    return planning.plan_image(program, vae, shape, budget, op, device, dtype, sink=out is not None, host_budget=host_budget)


def decode(vae, latents: torch.Tensor, budget=None, *, device=None, progress=None, compile: bool = False,
           scratch_dir: str | os.PathLike | None = None, report: RunReport | None = None,
           out: str | os.PathLike | None = None, host_budget=None, dist: bool = False, fps: int | None = None,
           crf: int | None = None, timestep=None):
    """``vae.decode(latents).sample``, exactly, while holding at most ``budget`` bytes of activations.

    Args:
        vae: a diffusers VAE (or TAESD model) vaekit streams.
        latents: NCHW (a video's: B, C, F, H, W), already divided by the scaling factor, as for
            ``vae.decode``.
        budget: bytes, or a string like "768MiB", "2GiB", "1.5GB", per call; None (or "auto") runs whole
            when that fits the free memory of the device, and streams within the free memory otherwise,
            counting the other budget-less vaekit calls in flight in this process: calls from several
            threads at once stay inside the free memory together.
        device: where to compute (default: the model's device); weights move there stage by stage.
        progress: True for a progress bar on stderr, or a callable(stage_index, rows_done, rows_total).
        compile: run the conv stages through torch.compile graphs made once and shared by every image
            size (always streams; the first call compiles, later sizes reuse the graphs).
        scratch_dir: an existing folder for the disk tier's scratch files (default: the system temp dir).
        report: a RunReport to fill with what happened (mode, plan, out-of-memory retries, tiers, peak).
        out: a file (.npy, .tif/.tiff, .zarr, .png) to write the image to band by band instead of
            returning it; the image is then never held in memory (the budget does not count it). A video
            model's latents decode frame by frame into .npy, .zarr or .mp4. Its folder must exist.
        host_budget: on CUDA, the host RAM for maps that do not stay on the GPU; past it they go to
            scratch files on disk (default: 80% of the RAM available).
        dist: under ``torchrun``, split every stage's rows across the ranks: each rank computes and holds
            its share, and writes its rows to ``out`` (.npy or .zarr); a video's frames go to ``out``
            from rank 0. Without ``out`` every rank gets the whole image. Every rank must call it with
            the same arguments; ``budget`` is per rank. One process (no torchrun) runs as usual.
        fps: an .mp4's frames per second (default 16).
        crf: an .mp4's x264 quality, lower is better (default 18).
        timestep: a timestep-conditioned decoder's timestep (LTX-2 with ``timestep_conditioning``), one
            per video or one for all, as ``vae.decode(latents, timestep)`` takes it; its decode noise
            (where the config injects it) is drawn from the global generator as diffusers draws it.

    Returns:
        The image (in [-1, 1] for a trained model) on the latents' device, in the model's dtype; with
        ``out``, the path written.

    Raises:
        InputError: latents of the wrong rank, channels or dtype, NaN, a bad argument.
        UnsupportedModelError: a model vaekit cannot stream.
        BudgetError: no plan fits the budget (it says the smallest that would).
        DiskError: the output or the scratch folder cannot be written, or a disk filled up; nothing is
            left behind.
        DeviceError: a device that does not exist, or a rank that stopped.
        PrecisionError: a dtype the device cannot run, or NaN/Inf even in float32.
        DependencyError: ``out``'s format needs a package that is not installed.
    """
    return run(vae, "decode", latents, budget, device=device, progress=progress, compile=compile,
               scratch_dir=scratch_dir, report=report, out=out, host_budget=host_budget, dist=dist,
               video={"fps": fps, "crf": crf, "timestep": timestep})


def encode(vae, images: torch.Tensor, budget=None, *, sample: bool = False, generator: torch.Generator | None = None,
           device=None, progress=None, compile: bool = False, scratch_dir: str | os.PathLike | None = None,
           report: RunReport | None = None, host_budget=None, dist: bool = False) -> torch.Tensor:
    """The latents of ``images``, exactly as the untiled encoder gives them, within ``budget``.

    Args:
        vae: a diffusers VAE (or TAESD model) vaekit streams.
        images: NCHW in [-1, 1] (a video's: B, 3, F, H, W), as diffusers takes them for every model.
        budget: as for :func:`decode`.
        sample: AutoencoderKL: a sample of the latent distribution, drawn as diffusers draws it, instead
            of its mode (its mean).
        generator: the generator of ``sample``'s draw (reproducible).
        device: as for :func:`decode`.
        progress: as for :func:`decode`.
        compile: as for :func:`decode`.
        scratch_dir: as for :func:`decode`.
        report: as for :func:`decode`.
        host_budget: as for :func:`decode`.
        dist: as for :func:`decode` (every rank gets the whole latents).

    Returns:
        The latents, not multiplied by the scaling factor: AutoencoderKL's mode (or sample),
        AutoencoderDC's ``.latent``, a tiny autoencoder's encoder output.

    Raises:
        InputError: images of the wrong rank, channels or dtype, NaN, a bad argument.
        BudgetError: no plan fits the budget. Other errors as for :func:`decode`.
    """
    out = run(vae, "encode", images, budget, device=device, progress=progress, compile=compile,
              scratch_dir=scratch_dir, report=report, host_budget=host_budget, dist=dist)
    with torch.no_grad():
        return family(vae).finish(vae, "encode", out, sample=sample, generator=generator)


def run(vae, op: str, x: torch.Tensor, budget=None, *, device=None, progress=None, compile: bool = False,
        scratch_dir=None, report: RunReport | None = None, stream: bool = False, out=None, host_budget=None,
        dist: bool = False, strict: bool = True, video: dict | None = None):
    """The program's own output for ``op``: for AutoencoderKL encode the moments (mean | logvar), not
    yet the latents. ``stream=True`` never runs the model whole. Used by decode, encode and apply.
    ``strict=False`` (apply: the model's own call takes these) lets images outside [-1, 1] through and
    returns a NaN/Inf output instead of raising PrecisionError.

    Runs under ``no_grad``, not ``inference_mode``: the result is a plain tensor callers may modify
    in place or use in autograd later, with no copy to make (an inference tensor would need one)."""
    if scratch_dir is not None:  # before any work, and never blamed on the output (cleanly's DiskError)
        check_folder(scratch_dir, "scratch files (the scratch folder)")
    auto = planning.limit_of(budget) is None  # no budget: the free memory, shared with the other calls in flight
    with cleanly(out), inflight.sharing() if auto else contextlib.nullcontext():
        return _run(vae, op, x, budget, device=device, progress=progress, compile=compile, scratch_dir=scratch_dir,
                    report=report, stream=stream, out=out, host_budget=host_budget, dist=dist, strict=strict,
                    video=video)


def _run(vae, op: str, x: torch.Tensor, budget=None, *, device=None, progress=None, compile: bool = False,
         scratch_dir=None, report: RunReport | None = None, stream: bool = False, out=None, host_budget=None,
         dist: bool = False, strict: bool = True, video: dict | None = None):
    program = program_for(vae, op)
    check_state(vae)
    if (video or {}).get("timestep") is not None and getattr(family(vae), "conditioning", None) is None:
        raise InputError(f"a {type(vae).__name__} takes no timestep: leave timestep=None")
    if is_video(vae):
        return run_video_call(vae, program, op, x, budget, device=device, report=report, scratch_dir=scratch_dir,
                          stream=stream, strict=strict, out=out, progress=progress, dist=dist, compile=compile,
                          **(video or {}))
    what = "latents" if op == "decode" else "images"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    check_shape(program, vae, tuple(x.shape), op)
    if not x.is_floating_point():
        raise InputError(f"{what} must be floating point, got {x.dtype}")
    check_values(x, op, image_range=strict, vae=vae)
    rank, ranks = world() if dist else (0, 1)
    if ranks > 1 and out is not None:
        check_shared(out)
    compute = compute_device(vae, rank_device(device) if ranks > 1 else device)
    check_dtype(model_dtype(vae), compute)
    measure = report is not None  # measuring resets the process's (or CUDA's) peak counters: only when asked
    report = report if report is not None else RunReport()
    # the model's own modules run where the model is; elsewhere, stages move their weights themselves
    elsewhere = not same_device(next(vae.parameters()).device, compute)
    planned = functools.partial(planning.plan_image, program, vae, tuple(x.shape), budget, op, compute, compiled=compile,
                                sink=out is not None, host_budget=host_budget)
    the_plan = planned(force_stream=elsewhere or stream or ranks > 1)
    peers = peers_for(program, the_plan, rank, ranks, compute, compile, out) if ranks > 1 else None
    if peers is not None:
        share = peers.plan_rows()  # plan for this rank's slabs and rows
        if out is None:
            del share["held"][program.output]  # an output held in memory is whole on every rank
        the_plan = planned(force_stream=True, share=share)
        lo, hi = peers.layout.slabs[program.input][rank]
        x = x[:, :, lo:hi]  # this rank's input rows: only they go to its device
    planning.hold(the_plan)
    inp = x.to(device=compute, dtype=model_dtype(vae))
    sink = None if out is None else _open_sink(out, the_plan.out_shape, peers)
    progress = progress if rank == 0 or callable(progress) else None  # one progress bar: rank 0's
    peak = PeakMemory(compute, strict=False) if measure else contextlib.nullcontext()
    try:
        with peak, torch.no_grad():
            result = run_whole(vae, op, inp, report) if the_plan.mode == "whole" else None
            if result is None:  # streaming, planned so or because the whole model ran out of memory
                if the_plan.mode != "stream":  # the whole model ran out of memory
                    the_plan = planned(force_stream=True)
                    planning.hold(the_plan)
                planning.check_disk(the_plan, scratch_dir, out)
                with progress_callback(progress, the_plan) as callback:
                    result = execute(program, the_plan, inp, scratch_dir=scratch_dir, progress=callback,
                                     report=report, compiled=compile, sink=sink, peers=peers)
            elif sink is not None:
                sink.write(0, result.permute(0, 2, 3, 1))  # (B, H, W, C): the whole image in one band
        if sink is not None:
            result = sink.close() if peers is None else _close_shared(sink, peers)
    except BaseException:
        if sink is not None:
            sink.abort()  # no partial file, and an existing one is left alone
        raise
    report.mode, report.plan = the_plan.mode, the_plan
    report.peak_bytes = peak.growth if measure else None
    if strict and sink is None and not bool(torch.isfinite(result).all()):
        raise PrecisionError(f"the {op} produced NaN or Inf from finite {'latents' if op == 'decode' else 'images'} "
                             f"in {result.dtype}: the model's weights are out of range for this input")
    return result if sink is not None else result.to(x.device)


def _open_sink(out, shape, peers):
    """The output's sink; in a distributed run rank 0 creates it and the others attach."""
    if peers is None:
        return open_sink(out, shape)
    sink = open_sink(out, shape) if peers.rank == 0 else None
    tmp = peers.broadcast(None if sink is None else str(sink.tmp))
    return sink if sink is not None else open_sink(out, shape, shared_tmp=tmp)


def _close_shared(sink, peers) -> Path:
    """Every rank's rows are written before rank 0 puts the file in place, and it is there on return."""
    sink.finish()
    peers.barrier()
    if sink.owner:
        sink.publish()
    peers.barrier()
    return sink.target

