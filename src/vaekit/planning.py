"""The plans of a call: from its shapes, its budget (or its share of the free memory, inflight.py) and
its device; an image's one plan, a video's two (its first chunk and the others); the disk they need."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from . import inflight
from .arch import clips_of, family
from .checks import check_shape, model_dtype
from .errors import BudgetError
from .plan import HOST_SHARE, Plan, make_plan, smallest_budget
from .program import Program
from .sinks import sink_bytes
from .units import format_bytes, parse_bytes

__all__ = ["plan_image", "plan_video", "smallest_video_budget", "smallest_call_budget", "limit_of", "free_memory",
           "free_share", "hold", "host_budget_for", "check_disk"]


def smallest_video_budget(program: Program, vae, shape, op: str, itemsize: int, compiled: bool = False) -> int:
    """The least budget any streamed run of a video of ``shape`` (B, C, F, H, W: one run, a whole video or one
    of the model's clips) fits in: its first chunk of frames, and the later ones, which read the time caches."""
    chunks = family(vae).chunk_frames(vae, op, shape[2])
    low = smallest_budget(program, (*shape[:2], chunks[0], *shape[3:]), itemsize, first=True, compiled=compiled)
    if len(chunks) > 1:
        later = smallest_budget(program, (*shape[:2], max(chunks[1:]), *shape[3:]), itemsize, compiled=compiled)
        low = max(low, later)
    return low


def smallest_call_budget(vae, op: str, shape, itemsize: int, lower: str = "disk", compiled: bool = False) -> int:
    """The least budget a streamed ``op`` of an input of ``shape`` fits in, maps down to the ``lower`` tier:
    an image's one run; a video's chunks of frames, of one of the model's own clips where it cuts the
    video into clips (MiniMax H3), or of the whole video."""
    program = family(vae).program(vae, op)
    if len(shape) == 5:
        clips = clips_of(vae, op, shape[2])
        run = tuple(shape) if clips is None else (*shape[:2], clips.length, *shape[3:])
        return smallest_video_budget(program, vae, run, op, itemsize, compiled)
    return smallest_budget(program, tuple(shape), itemsize, lower, compiled=compiled)


def plan_image(program: Program, vae, shape, budget, op: str, device: torch.device, dtype=None,
               force_stream: bool = False, compiled: bool = False, sink: bool = False, host_budget=None,
               share: dict | None = None, first: bool = False, writer_bytes: int = 0) -> Plan:
    """The plan of an image (or of one chunk of a video's frames) within ``budget``, or within this
    call's share of the free memory when it has none, waiting for a share large enough to plan in."""
    dtype = dtype or model_dtype(vae)
    shape = check_shape(program, vae, shape, op)
    limit = limit_of(budget)
    free = free_share(device) if limit is None and device.type != "meta" else None  # planning needs no device
    itemsize = torch.empty((), dtype=dtype).element_size()
    while True:
        try:
            return make_plan(program, shape, itemsize, str(dtype).removeprefix("torch."), str(device), limit,
                             free_bytes=free, force_stream=force_stream or compiled, compiled=compiled, sink=sink,
                             host_budget=host_budget_for(host_budget, device), first=first, writer_bytes=writer_bytes,
                             **(share or {}))
        except BudgetError:  # this call's share of the free memory is too small: wait for one to return
            if limit is not None or inflight.current() is None or not inflight.current().wait():
                raise
            free = free_share(device)


def plan_video(program: Program, vae, shape, budget, op: str, device: torch.device, dtype=None, *,
               out=None, host_budget=None, stream: bool = False, share: dict | None = None, compiled: bool = False,
               clip: int | None = None, chunk: int | None = None) -> tuple[Plan, Plan]:
    """Plans of a video's first chunk and of the others, these with the whole video's shapes. Running
    whole means the model's own chunked call, which also holds the video it concatenates frame by frame
    (twice, at the last concatenation): whole only if that fits too. With ``out`` a chunk's frames are
    still held until they are written, and the file's writer holds its own (sinks.video_writer_bytes).
    A model that runs its own clips (clips.Clips) is planned for its longest clip, or ``clip`` frames.
    ``chunk``: the plan (twice) of a later chunk of that many frames (Kandinsky 5's last, shorter one)."""
    from .sinks import video_writer_bytes

    shape = check_shape(program, vae, shape, op)
    clips = clips_of(vae, op, shape[2])  # a model's own clips (MiniMax H3): each is planned as the video
    chunks = family(vae).chunk_frames(vae, op, shape[2] if clips is None else clip or clips.length)
    limit = limit_of(budget)
    limit = limit if limit is not None else (free_share(device) if device.type != "meta" else None)
    kw = dict(host_budget=host_budget, share=share, force_stream=limit is not None or compiled,  # no limit: whole
              compiled=compiled)
    if out is not None:
        out_h, out_w = program.sizes(*shape[3:])[program.output]
        frame = (shape[0], program.maps[program.output].channels, 1, out_h, out_w)  # one output frame
        kw["writer_bytes"] = video_writer_bytes(out, frame)
    if chunk is not None:
        later = plan_image(program, vae, (*shape[:2], chunk, *shape[3:]), budget, op, device, dtype, **kw)
        return later, later
    first = plan_image(program, vae, (*shape[:2], chunks[0], *shape[3:]), budget, op, device, dtype, first=True, **kw)
    rest = first if len(chunks) == 1 else plan_image(program, vae, (*shape[:2], max(chunks[1:]), *shape[3:]), budget,
                                                     op, device, dtype, **kw)  # one chunk (LTX): the first is all
    made = [program.frames(c, first=i == 0)[program.output] for i, c in enumerate(chunks)]  # each chunk's frames
    frames = sum(made) if clips is None else clips.frames
    out_shape = (*rest.out_shape[:2], frames, *rest.out_shape[3:])  # (B, C, F, H, W)
    itemsize = torch.empty((), dtype=dtype or model_dtype(vae)).element_size()
    whole = rest.whole_peak_bytes + 2 * math.prod(out_shape) * itemsize
    mode = "stream" if stream or compiled or out is not None or (limit is not None and whole > limit) else "whole"
    if clips is not None and len(clips.windows) > 1:
        runs = f"in the model's own {len(clips.windows)} clips of up to {clips.length} frames, each one run"
    elif clips is not None:
        runs = ""  # one clip: the whole video in one run (Mochi's, its first frames then dropped)
    else:
        runs = "" if len(chunks) == 1 else f"in {len(chunks)} chunks of frames: {chunks[0]}, then {max(chunks[1:])} each"
    video = dict(in_shape=shape, out_shape=out_shape, whole_peak_bytes=whole, runs=runs)
    if mode == "whole":
        video.update(mode="whole", stages=(), maps=())
    return first, dataclasses.replace(rest, **video)


def limit_of(budget) -> int | None:
    """A budget in bytes; None for None or "auto" (the free memory, shared with the calls in flight)."""
    if budget is None or (isinstance(budget, str) and budget.strip().lower() == "auto"):
        return None
    return parse_bytes(budget)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: CUDA's mem_get_info, or available host RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def free_share(device: torch.device) -> int:
    """The free memory a plan without a budget may use: this call's share when others are in flight."""
    free, share = free_memory(device), inflight.current()
    return free if share is None else share.free(device, free)


def hold(*plans: Plan) -> None:
    """A call sharing the free memory has its plan: hold its peak from the share (inflight.py)."""
    share = inflight.current()
    if share is not None:
        share.hold(max(p.peak_bytes for p in plans))


def host_budget_for(host_budget, device: torch.device) -> int | None:
    """Host RAM for the maps a CUDA run keeps off the GPU; on a CPU the disk is the only lower tier."""
    if device.type != "cuda":
        return None
    if host_budget is not None:
        return parse_bytes(host_budget)
    import psutil

    return int(psutil.virtual_memory().available * HOST_SHARE)


def check_disk(the_plan: Plan, scratch_dir, out) -> None:
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

