"""The public functions: plan, decode and encode."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import types
from pathlib import Path

import torch

from . import inflight
from .arch import check_state, family, program_for
from .errors import BudgetError, DeviceError, InputError, PrecisionError
from .faults import cleanly
from .measure import PeakMemory
from .plan import HOST_SHARE, Plan, make_plan
from .precision import check_dtype
from .program import Program
from .progress import progress_callback
from .recovery import Event, RunReport, free_caches, is_oom
from .run import execute
from .sinks import check_shared, open_sink, sink_bytes
from .units import format_bytes, parse_bytes

__all__ = ["decode", "encode", "plan", "run", "free_memory", "usable_device"]

#: images past +-this are certainly not in [-1, 1] (resampling may overshoot 1 a little)
IMAGE_RANGE_SLACK = 1.5


def plan(vae, shape, budget=None, op: str = "decode", *, device=None, dtype=None, out=None,
         host_budget=None) -> Plan:
    """Plan ``op`` of an NCHW input of ``shape`` from the model's config and shapes alone.

    ``shape`` is the latent shape for decode, e.g. (1, 4, 128, 128), the image shape for encode,
    e.g. (1, 3, 1024, 1024). Works for a model on the meta
    device. ``budget``: bytes, or a string like "768MiB"; None plans for the free memory of the device.
    ``out``: plan as ``decode(..., out=...)`` runs, with the image going to a file (not held).
    ``host_budget``: on CUDA, the host RAM the maps that leave the GPU may take before the rest go to
    disk (default: 80% of the RAM available now).
    """
    program, device = program_for(vae, op), _device(vae, device, check=False)
    if _video(vae):  # the plan of the chunks after the first (the largest), shown with the video's shapes
        return _video_plans(program, vae, shape, budget, op, device, dtype, out=out, host_budget=host_budget)[1]
    return _plan(program, vae, shape, budget, op, device, dtype, sink=out is not None, host_budget=host_budget)


def _video_plans(program: Program, vae, shape, budget, op: str, device: torch.device, dtype=None, *,
                 out=None, host_budget=None, stream: bool = False, share: dict | None = None, compiled: bool = False
                 ) -> tuple[Plan, Plan]:
    """Plans of a video's first chunk and of the others, these with the whole video's shapes. Running
    whole means the model's own chunked call, which also holds the video it concatenates frame by frame
    (twice, at the last concatenation): whole only if that fits too. With ``out`` a chunk's frames are
    still held until they are written, and the file's writer holds its own (sinks.video_writer_bytes)."""
    from .sinks import video_writer_bytes

    shape = _check_shape(program, vae, shape, op)
    chunks = family(vae).chunk_frames(vae, op, shape[2])
    limit = _limit(budget)
    limit = limit if limit is not None else (_free(device) if device.type != "meta" else None)
    kw = dict(host_budget=host_budget, share=share, force_stream=limit is not None or compiled,  # no limit: whole
              compiled=compiled)
    if out is not None:
        out_h, out_w = program.sizes(*shape[3:])[program.output]
        frame = (shape[0], program.maps[program.output].channels, 1, out_h, out_w)  # one output frame
        kw["writer_bytes"] = video_writer_bytes(out, frame)
    first = _plan(program, vae, (*shape[:2], chunks[0], *shape[3:]), budget, op, device, dtype, first=True, **kw)
    rest = _plan(program, vae, (*shape[:2], max(chunks), *shape[3:]), budget, op, device, dtype, **kw)
    frames = first.out_shape[2] + (len(chunks) - 1) * rest.out_shape[2]
    out_shape = (*rest.out_shape[:2], frames, *rest.out_shape[3:])  # (B, C, F, H, W)
    itemsize = torch.empty((), dtype=dtype or _model_dtype(vae)).element_size()
    whole = rest.whole_peak_bytes + 2 * math.prod(out_shape) * itemsize
    mode = "stream" if stream or compiled or out is not None or (limit is not None and whole > limit) else "whole"
    video = dict(in_shape=shape, out_shape=out_shape, whole_peak_bytes=whole)
    if mode == "whole":
        video.update(mode="whole", stages=(), maps=())
    return first, dataclasses.replace(rest, **video)


def _plan(program: Program, vae, shape, budget, op: str, device: torch.device, dtype=None,
          force_stream: bool = False, compiled: bool = False, sink: bool = False, host_budget=None,
          share: dict | None = None, first: bool = False, writer_bytes: int = 0) -> Plan:
    dtype = dtype or _model_dtype(vae)
    shape = _check_shape(program, vae, shape, op)
    limit = _limit(budget)
    free = _free(device) if limit is None and device.type != "meta" else None  # planning needs no device
    itemsize = torch.empty((), dtype=dtype).element_size()
    while True:
        try:
            return make_plan(program, shape, itemsize, str(dtype).removeprefix("torch."), str(device), limit,
                             free_bytes=free, force_stream=force_stream or compiled, compiled=compiled, sink=sink,
                             host_budget=_host_budget(host_budget, device), first=first, writer_bytes=writer_bytes,
                             **(share or {}))
        except BudgetError:  # this call's share of the free memory is too small: wait for one to return
            if limit is not None or inflight.current() is None or not inflight.current().wait():
                raise
            free = _free(device)


def _limit(budget) -> int | None:
    """A budget in bytes; None for None or "auto" (the free memory, shared with the calls in flight)."""
    if budget is None or (isinstance(budget, str) and budget.strip().lower() == "auto"):
        return None
    return parse_bytes(budget)


def _free(device: torch.device) -> int:
    """The free memory a plan without a budget may use: this call's share when others are in flight."""
    free, share = free_memory(device), inflight.current()
    return free if share is None else share.free(device, free)


def _hold(*plans: Plan) -> None:
    """A call sharing the free memory has its plan: hold its peak from the share (inflight.py)."""
    share = inflight.current()
    if share is not None:
        share.hold(max(p.peak_bytes for p in plans))


def _host_budget(host_budget, device: torch.device) -> int | None:
    """Host RAM for the maps a CUDA run keeps off the GPU; on a CPU the disk is the only lower tier."""
    if device.type != "cuda":
        return None
    if host_budget is not None:
        return parse_bytes(host_budget)
    import psutil

    return int(psutil.virtual_memory().available * HOST_SHARE)


def decode(vae, latents: torch.Tensor, budget=None, *, device=None, progress=None, compile: bool = False,
           scratch_dir: str | os.PathLike | None = None, report: RunReport | None = None,
           out: str | os.PathLike | None = None, host_budget=None, dist: bool = False, fps: int | None = None,
           crf: int | None = None):
    """``vae.decode(latents).sample``, exactly, while holding at most ``budget`` bytes of activations.

    latents: NCHW, already divided by the scaling factor, as for ``vae.decode``.
    budget: bytes, or a string like "768MiB", "2GiB", "1.5GB", per call; None (or "auto") runs whole
        when that fits the free memory of the device, and streams within the free memory otherwise,
        counting the other budget-less vaekit calls in flight in this process (inflight.py): calls
        from several threads at once stay inside the free memory together.
    device: where to compute (default: the model's device); weights move there stage by stage.
    progress: True for a progress bar on stderr, or a callable(stage_index, rows_done, rows_total).
    scratch_dir: where the disk tier writes its scratch files (default: the system temp dir).
    report: a RunReport to fill with what happened (mode, plan, out-of-memory retries, tiers, peak).
    compile: run the conv stages through torch.compile graphs made once and shared by every image
        size (always streams; the first call compiles, later sizes reuse the graphs).
    out: a file (.npy, .tif/.tiff, .zarr, .png) to write the image to band by band instead of
        returning it; the image is then never held in memory (the budget does not count it).
        Returns the path. A video model's (B, C, F, H, W) latents decode frame by frame into .npy,
        .zarr or .mp4 (H.264, yuv420p; ``fps``, default 16, and ``crf``, x264's quality, default 18).
    host_budget: on CUDA, the host RAM for maps that do not stay on the GPU; past it they go to
        scratch files on disk (default: 80% of the RAM available).
    dist: under ``torchrun``, split every stage's rows across the ranks (dist.py): each rank computes
        and holds its share, and writes its rows to ``out`` (.npy or .zarr); a video's frames go to
        ``out`` from rank 0 (any video suffix). Without ``out`` every rank gets the whole image.
        Every rank must call it with the same arguments. One process (no torchrun) runs as usual.
        ``budget`` is per rank.
    Returns the image (in [-1, 1] for a trained model) on the latents' device, in the model's dtype.
    """
    return run(vae, "decode", latents, budget, device=device, progress=progress, compile=compile,
               scratch_dir=scratch_dir, report=report, out=out, host_budget=host_budget, dist=dist,
               video={"fps": fps, "crf": crf})


def encode(vae, images: torch.Tensor, budget=None, *, sample: bool = False, generator: torch.Generator | None = None,
           device=None, progress=None, compile: bool = False, scratch_dir: str | os.PathLike | None = None,
           report: RunReport | None = None, host_budget=None, dist: bool = False) -> torch.Tensor:
    """The latents of ``images`` (NCHW in [-1, 1]), exactly as the untiled encoder gives them.

    AutoencoderKL: the latent distribution's mode (its mean), or with ``sample=True`` a sample drawn
    as diffusers draws it (reproducible with ``generator``). Tiny autoencoders: the encoder output.
    Latents are not multiplied by the scaling factor. Other arguments as for :func:`decode`.
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
    auto = _limit(budget) is None  # no budget: the free memory, shared with the other calls in flight
    with cleanly(out), inflight.sharing() if auto else contextlib.nullcontext():
        return _run(vae, op, x, budget, device=device, progress=progress, compile=compile, scratch_dir=scratch_dir,
                    report=report, stream=stream, out=out, host_budget=host_budget, dist=dist, strict=strict,
                    video=video)


def _run(vae, op: str, x: torch.Tensor, budget=None, *, device=None, progress=None, compile: bool = False,
         scratch_dir=None, report: RunReport | None = None, stream: bool = False, out=None, host_budget=None,
         dist: bool = False, strict: bool = True, video: dict | None = None):
    program = program_for(vae, op)
    check_state(vae)
    if _video(vae):
        return _run_video(vae, program, op, x, budget, device=device, report=report, scratch_dir=scratch_dir,
                          stream=stream, strict=strict, out=out, progress=progress, dist=dist, compile=compile,
                          **(video or {}))
    what = "latents" if op == "decode" else "images"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    _check_shape(program, vae, tuple(x.shape), op)
    if not x.is_floating_point():
        raise InputError(f"{what} must be floating point, got {x.dtype}")
    _check_values(x, op, image_range=strict)
    rank, ranks = _world() if dist else (0, 1)
    if ranks > 1 and out is not None:
        check_shared(out)
    compute = _device(vae, _rank_device(device) if ranks > 1 else device)
    check_dtype(_model_dtype(vae), compute)
    measure = report is not None  # measuring resets the process's (or CUDA's) peak counters: only when asked
    report = report if report is not None else RunReport()
    # the model's own modules run where the model is; elsewhere, stages move their weights themselves
    elsewhere = not _same_device(next(vae.parameters()).device, compute)
    planned = functools.partial(_plan, program, vae, tuple(x.shape), budget, op, compute, compiled=compile,
                                sink=out is not None, host_budget=host_budget)
    the_plan = planned(force_stream=elsewhere or stream or ranks > 1)
    peers = _peers(program, the_plan, rank, ranks, compute, compile, out) if ranks > 1 else None
    if peers is not None:
        share = peers.plan_rows()  # plan for this rank's slabs and rows
        if out is None:
            del share["held"][program.output]  # an output held in memory is whole on every rank
        the_plan = planned(force_stream=True, share=share)
        lo, hi = peers.layout.slabs[program.input][rank]
        x = x[:, :, lo:hi]  # this rank's input rows: only they go to its device
    _hold(the_plan)
    inp = x.to(device=compute, dtype=_model_dtype(vae))
    sink = None if out is None else _open_sink(out, the_plan.out_shape, peers)
    progress = progress if rank == 0 or callable(progress) else None  # one progress bar: rank 0's
    peak = PeakMemory(compute, strict=False) if measure else contextlib.nullcontext()
    try:
        with peak, torch.no_grad():
            result = _whole(vae, op, inp, report) if the_plan.mode == "whole" else None
            if result is None:  # streaming, planned so or because the whole model ran out of memory
                if the_plan.mode != "stream":  # the whole model ran out of memory
                    the_plan = planned(force_stream=True)
                    _hold(the_plan)
                _check_disk(the_plan, scratch_dir, out)
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


def _video(vae) -> bool:
    return getattr(family(vae), "VIDEO", False)


def _run_video(vae, program: Program, op: str, x, budget, *, device, report, scratch_dir, stream, strict, out=None,
               progress=None, dist: bool = False, compile: bool = False, fps: int | None = None,
               crf: int | None = None):
    """A video model: (B, C, F, H, W) in chunks of frames along time (run.run_video), each chunk streamed
    in rows; or the model's own call when the plan of a chunk fits whole. ``out``: a .npy/.zarr/.mp4
    file the frames go to as they are made (the video is never held). ``progress`` counts the stages of
    every chunk in turn: a callable gets (chunk * stages + stage, rows_done, rows_total)."""
    from .run import run_video
    from .sinks import MP4_CRF, MP4_FPS, check_video_sink, open_video_sink

    what = "latents" if op == "decode" else "videos"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"{what} must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if out is not None and op != "decode":
        raise InputError("out= takes a decoded video; encode returns the latents")
    shape = _check_shape(program, vae, tuple(x.shape), op)
    _check_values(x, op, image_range=strict)
    rank, ranks = _world() if dist else (0, 1)
    compute = _device(vae, _rank_device(device) if ranks > 1 else device)
    check_dtype(_model_dtype(vae), compute)
    report = report if report is not None else RunReport()
    chunks = family(vae).chunk_frames(vae, op, shape[2])
    elsewhere = not _same_device(next(vae.parameters()).device, compute)
    plans = functools.partial(_video_plans, program, vae, shape, budget, op, compute, out=out, compiled=compile)
    first, rest = plans(stream=stream or elsewhere or ranks > 1)
    peers = None
    if ranks > 1:  # each rank computes and holds its rows of every map and time cache, chunk after chunk
        peers = _peers(program, rest, rank, ranks, compute, compile, None)
        share = peers.plan_rows()
        del share["held"][program.output]  # each chunk's frames are whole on every rank (dist.share_output)
        first, rest = plans(stream=True, share=share)
        lo, hi = peers.layout.slabs[program.input][rank]
        x = x[..., lo:hi, :]  # this rank's input rows  (B, C, F, rows, W)
    _hold(first, rest)
    out_shape = rest.out_shape
    if out is not None:
        check_video_sink(out, out_shape)  # on every rank, before any rank opens it
    sink = None if out is None or rank > 0 else open_video_sink(out, out_shape, fps or MP4_FPS, crf or MP4_CRF)
    inp = x.to(device=compute, dtype=_model_dtype(vae))
    try:
        with torch.no_grad():
            result = _whole(vae, op, inp, report) if rest.mode == "whole" else None
            if result is None:
                if rest.mode == "whole":  # it ran out of memory: stream
                    first, rest = plans(stream=True)
                    _hold(first, rest)
                _check_disk(rest, scratch_dir, None)
                if out is None:
                    result = torch.empty(out_shape, dtype=inp.dtype, device=compute)

                def emit(f0: int, y: torch.Tensor) -> None:
                    if out is None:
                        result[:, :, f0 : f0 + y.shape[2]] = y
                    elif sink is not None:  # rank 0's: every rank has the chunk's frames (dist.share_output)
                        sink.write_frames(f0, y.permute(0, 2, 3, 4, 1))  # (B, F', H, W, C)

                every = types.SimpleNamespace(op=op, stages=first.stages + rest.stages * (len(chunks) - 1))
                with progress_callback(progress, every) as callback:
                    run_video(program, (first, rest), inp, chunks, emit, scratch_dir=scratch_dir, report=report,
                              progress=callback if rank == 0 or callable(progress) else None, peers=peers,
                              compiled=compile)
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


def _world() -> tuple[int, int]:
    from .dist import world

    return world()


def _rank_device(device):
    """A rank's device: its own GPU (LOCAL_RANK) when it asks for CUDA without an index, or by default."""
    if device is None and not torch.cuda.is_available():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or str(device) == "cuda":
        return torch.device("cuda", local)
    return device


def _peers(program: Program, the_plan: Plan, rank: int, ranks: int, device: torch.device, compiled: bool, out):
    from .dist import Peers, layout
    from .sinks import sink_rows

    shapes = {m.name: m.shape for m in the_plan.maps}
    step = 1 if out is None else sink_rows(out)
    return Peers(layout(program, shapes, ranks, compiled, step), rank, device)


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


def _check_disk(the_plan: Plan, scratch_dir, out) -> None:
    """BudgetError before any work when the scratch dir or the output's dir is short of space."""
    import shutil
    import tempfile

    needs = [(Path(scratch_dir or tempfile.gettempdir()), the_plan.scratch_bytes, "the disk tier's scratch files")]
    if out is not None:
        needs.append((Path(out).resolve().parent, sink_bytes(out, the_plan.out_shape), f"the output {out}"))
    for folder, need, what in needs:
        if need == 0:
            continue
        free = shutil.disk_usage(_existing(folder)).free
        if free < need:
            raise BudgetError(f"{what} need {format_bytes(need)} on {folder} but only {format_bytes(free)} is free: "
                              "free disk space, pass scratch_dir= on a larger disk, or a larger budget")


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _whole(vae, op: str, x: torch.Tensor, report: RunReport) -> torch.Tensor | None:
    """The model's own modules, untiled; None when they run out of memory (the caller streams)."""
    error = None
    try:
        out = family(vae).whole(vae, op, x)
    except Exception as e:  # only out-of-memory is handled; anything else goes up as it is
        if not is_oom(e):
            raise
        error = e.with_traceback(None)  # drop the frames: they hold the failed run's tensors
    if error is None:
        if x.dtype == torch.float32 or bool(torch.isfinite(out).all()):
            return out
        del out  # float16/bfloat16 overflow: streaming recomputes the overflowing bands in float32
        report.upcasts.append(Event("whole", (0, x.shape[2]), f"the untiled {op} overflowed {x.dtype}: streaming"))
        return None
    free_caches(x.device)
    report.retries.append(Event("whole", (0, x.shape[2]), f"the untiled {op} ran out of memory ({error}): streaming"))
    return None


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA's mem_get_info, or available host RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def _device(vae, device, check: bool = True) -> torch.device:
    if device is None:
        return next(vae.parameters()).device
    return usable_device(device) if check else _parse_device(device)


def usable_device(device) -> torch.device:
    """``device`` as a torch.device, or DeviceError when it does not exist here."""
    device = _parse_device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} was asked for but CUDA is not available here; use device='cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def _parse_device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"cannot use device {device!r}: {e}; try 'cpu' or 'cuda'") from None
    return device


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _model_dtype(vae) -> torch.dtype:
    return next(vae.parameters()).dtype


def _check_shape(program: Program, vae, shape, op: str) -> tuple[int, int, int, int]:
    shape = tuple(int(d) for d in shape)
    channels = program.maps[program.input].channels
    what = "latents" if op == "decode" else "images"
    if _video(vae) and len(shape) != 5:
        raise InputError(f"{what} of a {type(vae).__name__} must be 5-D (batch, channels, frames, height, width), "
                         f"got shape {shape}")
    if not _video(vae) and len(shape) != 4:
        raise InputError(f"{what} must be 4-D (batch, channels, height, width), got shape {shape}")
    if shape[1] != channels:
        raise InputError(f"{what} have {shape[1]} channels but this {type(vae).__name__} expects {channels}")
    if min(shape) < 1:
        raise InputError(f"{what} shape {shape} has an empty dimension")
    try:
        out_h, out_w = program.sizes(*shape[-2:])[program.output]
    except ValueError as e:  # e.g. a pixel unshuffle of an odd size
        raise InputError(f"{what} of {shape[-1]}x{shape[-2]} do not fit this {type(vae).__name__} ({e}): use sizes "
                         f"that are multiples of {family(vae).scale_factor(vae)}") from None
    if min(out_h, out_w) < 1:
        raise InputError(f"{what} of {shape[-1]}x{shape[-2]} are too small for this {type(vae).__name__}")
    return shape


def _check_values(x: torch.Tensor, op: str, image_range: bool = True) -> None:
    """NaN/Inf anywhere, and (``image_range``) for encode images outside [-1, 1]: say so before any work."""
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        what = "latents" if op == "decode" else "images"
        raise InputError(f"{what} contain NaN or Inf (first at index {tuple(bad)}): the step before vaekit "
                         "produced them, e.g. an fp16 model that overflowed; vaekit cannot decode them")
    if image_range and op == "encode" and (low < -IMAGE_RANGE_SLACK or high > IMAGE_RANGE_SLACK):
        raise InputError(f"images must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]: "
                         "for 0-255 pixels use x / 127.5 - 1, for [0, 1] use x * 2 - 1")
