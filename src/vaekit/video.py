"""A video call: (B, C, F, H, W) in chunks of frames along time (run.run_video), each chunk streamed in
rows, or the model's own call when a chunk's plan fits whole; frames to a file as they are made."""

from __future__ import annotations

import functools
import types
from pathlib import Path

import torch

from . import planning
from .arch import clips_of, family
from .checks import check_shape, check_values, compute_device, model_dtype, rank_device, same_device
from .clips import Assembler
from .dist import peers_for, world
from .errors import InputError, PrecisionError
from .precision import check_dtype
from .program import Program
from .progress import progress_callback
from .recovery import RunReport
from .run import run_video, run_whole
from .sinks import MP4_CRF, MP4_FPS, check_video_sink, open_video_sink

__all__ = ["run_video_call"]


def run_video_call(vae, program: Program, op: str, x, budget, *, device, report, scratch_dir, stream, strict,
                   out=None, progress=None, dist: bool = False, compile: bool = False, fps: int | None = None,
                   crf: int | None = None, timestep=None):
    """A video model: (B, C, F, H, W) in chunks of frames along time (run.run_video), each chunk streamed
    in rows; or the model's own call when the plan of a chunk fits whole. ``out``: a .npy/.zarr/.mp4
    file the frames go to as they are made (the video is never held). ``progress`` counts the stages of
    every chunk in turn: a callable gets (chunk * stages + stage, rows_done, rows_total). ``timestep``: a
    timestep-conditioned decoder's (LTX), as its own decode takes it."""

    what = "latents" if op == "decode" else "videos"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if out is not None and op != "decode":
        raise InputError("out= takes a decoded video; encode returns the latents")
    shape = check_shape(program, vae, tuple(x.shape), op)
    check_values(x, op, image_range=strict, vae=vae)
    rank, ranks = world() if dist else (0, 1)
    compute = compute_device(vae, rank_device(device) if ranks > 1 else device)
    check_dtype(model_dtype(vae), compute)
    report = report if report is not None else RunReport()
    clips = clips_of(vae, op, shape[2])  # a model's own clips (MiniMax H3), else the video as one run
    chunks = family(vae).chunk_frames(vae, op, shape[2] if clips is None else clips.length)
    elsewhere = not same_device(next(vae.parameters()).device, compute)
    plans = functools.partial(planning.plan_video, program, vae, shape, budget, op, compute, out=out, compiled=compile)
    first, rest = plans(stream=stream or elsewhere or ranks > 1)
    peers = share = None
    if ranks > 1:  # each rank computes and holds its rows of every map and time cache, chunk after chunk
        peers = peers_for(program, rest, rank, ranks, compute, compile, None)
        share = peers.plan_rows()
        del share["held"][program.output]  # each chunk's frames are whole on every rank (dist.share_output)
        first, rest = plans(stream=True, share=share)
        lo, hi = peers.layout.slabs[program.input][rank]
        x = x[..., lo:hi, :]  # this rank's input rows  (B, C, F, rows, W)
    planning.hold(first, rest)
    out_shape = rest.out_shape
    if out is not None:
        check_video_sink(out, out_shape)  # on every rank, before any rank opens it
    sink = None if out is None or rank > 0 else open_video_sink(out, out_shape, fps or MP4_FPS, crf or MP4_CRF)
    inp = x.to(device=compute, dtype=model_dtype(vae))
    call = {} if timestep is None else {"timestep": timestep}  # api.run refused it for a model that takes none
    conditioning = getattr(family(vae), "conditioning", None)
    runs = 1 if clips is None else len(clips.windows)  # videos run: the video, or the model's own clips of it
    result = None
    try:
        with torch.no_grad():
            # the model's own call draws its decode noise (LTX-2) from the global generator
            rng = None if conditioning is None else _rng_state(compute)
            conditions = None

            def emit(f0: int, y: torch.Tensor) -> None:
                nonlocal result
                if out is None:
                    if result is None:
                        result = torch.empty(out_shape, dtype=inp.dtype, device=compute)
                    result[:, :, f0 : f0 + y.shape[2]] = y
                elif sink is not None:  # rank 0's: every rank has the chunk's frames (dist.share_output)
                    sink.write_frames(f0, y.permute(0, 2, 3, 4, 1))  # (B, F', H, W, C)

            def run_one(video: torch.Tensor, give, k: int, callback) -> torch.Tensor | None:
                """The model's own call while the plan says it fits (its output returned; None if it ran
                out of memory), else streamed chunk by chunk into ``give``. A clip shorter than the longest
                (the last of HunyuanVideo's) streams by plans of its own length."""
                nonlocal first, rest, conditions
                if rest.mode == "whole":
                    got = run_whole(vae, op, video, report, **call)
                    if got is not None:
                        return got
                    if rng is not None:  # it ran out of memory: stream, drawing the noise it would have drawn
                        _set_rng_state(compute, rng)
                    first, rest = plans(stream=True, share=share)
                    planning.hold(first, rest)
                if conditions is None:
                    planning.check_disk(rest, scratch_dir, None)
                    conditions = {} if conditioning is None else conditioning(vae, program, op, inp, **call)
                these, frames = (first, rest), video.shape[2]
                if clips is not None and frames != clips.length:
                    these = plans(stream=True, share=share, clip=frames)
                chunks = family(vae).chunk_frames(vae, op, frames)
                stages = len(program.stages) * len(chunks)

                def told(i: int, done: int, total: int) -> None:  # counted over every run's chunks
                    callback(k * stages + i, done, total)

                run_video(program, these, video, chunks, give, scratch_dir=scratch_dir, report=report,
                          progress=told if callback is not None and (rank == 0 or callable(progress)) else None,
                          peers=peers, compiled=compile, conditions=conditions,
                          plan_for=lambda f: plans(stream=True, share=share, chunk=f)[1])
                return None

            every = types.SimpleNamespace(op=op, stages=(first.stages + rest.stages * (len(chunks) - 1)) * runs)
            with progress_callback(progress, every) as callback:
                if clips is None:
                    got = run_one(inp, emit, 0, callback)
                    result = got if got is not None else result
                else:  # each clip a video of its own, its frames where the model puts them
                    assembler = Assembler(clips, emit)
                    for k, video in enumerate(clips.clips(inp)):
                        frames = []
                        got = run_one(video, lambda f0, y, frames=frames: frames.append(y), k, callback)
                        assembler.add(got if got is not None else torch.cat(frames, dim=2))
                    assembler.close()
        if sink is not None:
            result = sink.close()
        if peers is not None and out is not None:  # rank 0 wrote the file: it is in place on every rank's return
            peers.barrier()
            result = Path(peers.broadcast(None if sink is None else str(result)))
    except BaseException:
        if sink is not None:
            sink.abort()  # no partial file, and an existing one is left alone
        raise
    report.mode, report.plan = rest.mode, rest
    if out is not None:
        return result
    if strict and not bool(torch.isfinite(result).all()):
        raise PrecisionError(f"the {op} produced NaN or Inf from finite {what} in {result.dtype}")
    return result.to(x.device)


def _rng_state(device: torch.device):
    """The global generator's state on ``device`` (where the model's own call draws its noise)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.random.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.random.set_rng_state(state)
