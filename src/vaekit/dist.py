"""Patch parallel across processes (``torchrun``): every rank runs every stage on its share of the rows.

The layout is planned from shapes alone (``layout``), the same on every rank:

    parts   rank k computes rows parts[stage][k] of each stage's output: a proportional split,
            on the stage's row multiple; the output's split is on the sink's tile rows
    slabs   rank k holds of each map only slabs[map][k]: the rows it writes and the rows its own
            reads need (conv halos; all the rows of attention's keys and values)

and after each stage the ranks settle what one process would have had (``Peers``):

    GroupNorm statistics   every rank's (count, mean, M2) per group, merged (Chan et al.)
    linear-attention state summed over the ranks
    the map just written   each rank sends the rows it wrote to every rank whose slab holds them:
                           halo rows to the neighbours, keys and values to everyone (an all-gather)

So the pixels are those of one process (up to float64 rounding in the merged statistics), and no
rank ever holds the whole image: each writes its own rows to the sink. Collectives run on the
default process group: NCCL for CUDA tensors, gloo for CPU ones.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import DeviceError
from .plan import Plan, row_step
from .program import Program

__all__ = ["Layout", "layout", "partition", "Peers", "world", "EXCHANGE_BYTES"]

#: what one round of the row exchange holds (send copies, read buffers, receive buffers, all peers):
#: within the plan's FIXED_ALLOWANCE, so the plan need not count it
EXCHANGE_BYTES = 16 << 20

Rows = tuple[int, int]


def world() -> tuple[int, int]:
    """(rank, world size) of this process, joining the default process group ``torchrun`` describes
    in the environment if nobody has yet. A process started without torchrun is rank 0 of 1."""
    import torch.distributed as dist

    if not dist.is_available():
        raise DeviceError("this torch build has no torch.distributed: install a build with it, or run one process")
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return 0, 1
        if torch.cuda.is_available():  # NCCL wants each rank's own GPU current
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def partition(height: int, ranks: int, step: int = 1) -> tuple[Rows, ...]:
    """Rows [lo, hi) of each rank: in order, covering [0, height), bounds on multiples of ``step``
    (the last bound is ``height`` itself). A rank may get no rows when there are fewer than ranks."""
    bounds = [min(round(k * height / ranks / step) * step, height) for k in range(ranks)] + [height]
    return tuple((bounds[k], bounds[k + 1]) for k in range(ranks))


@dataclass(frozen=True)
class Layout:
    """Who computes which rows of each stage and holds which rows of each map."""

    ranks: int
    parts: tuple[tuple[Rows, ...], ...]  # per stage, per rank: output rows (source rows for a reduction)
    slabs: dict[str, tuple[Rows, ...]]  # per map, per rank: rows held

    def sends(self, stage: int, name: str, me: int, peer: int) -> Rows:
        """Rows of ``name`` that rank ``me`` wrote in ``stage`` and ``peer`` holds."""
        return _meet(self.parts[stage][me], self.slabs[name][peer])


def layout(program: Program, shapes: dict, ranks: int, compiled: bool = False, out_step: int = 1) -> Layout:
    """The layout of ``program`` on ``ranks`` ranks, from the maps' (B, H, W, C) ``shapes``."""
    parts = []
    for stage in program.stages:
        height = shapes[stage.dst or stage.src][1]
        step = row_step(stage, compiled)
        parts.append(partition(height, ranks, math.lcm(step, out_step) if stage.dst == program.output else step))
    spans: dict[str, list[list[Rows]]] = {name: [[] for _ in range(ranks)] for name in shapes}
    for stage, part in zip(program.stages, parts, strict=True):
        src_hw = shapes[stage.src][1:3]
        for k, (lo, hi) in enumerate(part):
            if lo == hi:
                continue
            if stage.dst is not None:
                spans[stage.dst][k].append((lo, hi))
            if getattr(stage, "cache_out", None) is not None:  # a video's next time cache: written at these rows
                spans[stage.cache_out][k].append((lo, hi))
            for name in stage.reads:
                spans[name][k].append(stage.rows_read(name, lo, hi, src_hw))
    for cache, cache_out in program.caches:  # they swap after each chunk: one slab for both
        for k in range(ranks):
            spans[cache][k] = spans[cache_out][k] = spans[cache][k] + spans[cache_out][k]
    slabs = {name: tuple(_hull(s) for s in per_rank) for name, per_rank in spans.items()}
    return Layout(ranks, tuple(parts), slabs)


def _hull(spans: list[Rows]) -> Rows:
    return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else (0, 0)


def _meet(a: Rows, b: Rows) -> Rows:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else (lo, lo)


class Peers:
    """This rank's side of a distributed run: the executor calls it after each stage."""

    def __init__(self, the_layout: Layout, rank: int, device: torch.device):
        import torch.distributed as dist

        self.dist, self.layout, self.rank, self.device = dist, the_layout, rank, device

    def plan_rows(self) -> dict:
        """This rank's rows of each map and of each stage: what make_plan plans for (``held``, ``heights``)."""
        held = {name: hi - lo for name, (lo, hi) in ((n, s[self.rank]) for n, s in self.layout.slabs.items())}
        heights = tuple(hi - lo for lo, hi in (part[self.rank] for part in self.layout.parts))
        return {"held": held, "heights": heights}

    def merge_stats(self, mine):
        """One process's GroupNorm (mean, var) from every rank's GroupStats."""
        from .ops.norm import GroupStats

        parts = self._gather(None if mine.mean is None else (mine.count, mine.mean.cpu(), mine.m2.cpu()))
        merged = GroupStats(mine.groups)
        for part in parts:
            if part is not None:
                merged.merge(*part)
        mean, var = merged.mean_var()
        return mean.to(self.device), var.to(self.device)

    def sum_state(self, mine: torch.Tensor | None) -> torch.Tensor:
        """A reduction's state summed over the ranks (in rank order, as one process sums bands)."""
        parts = [p for p in self._gather(None if mine is None else mine.cpu()) if p is not None]
        total = parts[0].clone()
        for part in parts[1:]:
            total.add_(part)
        return total.to(self.device)

    def widest(self, dtype: torch.dtype) -> torch.dtype:
        """float32 if any rank went to float32 after an overflow, else ``dtype``."""
        return torch.float32 if torch.float32 in self._gather(dtype) else dtype

    def exchange(self, store, stage: int, name: str) -> None:
        """Send the rows of ``name`` this rank wrote in ``stage`` to the ranks that hold them; take theirs."""
        dist, me = self.dist, self.rank
        b, _, w, c = store.maps[name].shape
        dtype = store.maps[name].dtype
        row_bytes = b * w * c * dtype.itemsize
        block = max(1, EXCHANGE_BYTES // (3 * (self.layout.ranks - 1) * row_bytes))  # rows per message
        sends = {p: _blocks(self.layout.sends(stage, name, me, p), block) for p in self._others()}
        recvs = {p: _blocks(self.layout.sends(stage, name, p, me), block) for p in self._others()}
        for i in range(max((len(x) for x in (*sends.values(), *recvs.values())), default=0)):
            ops, received = [], []
            for peer in self._others():
                if i < len(sends[peer]):
                    band = store.read(name, *sends[peer][i]).contiguous().clone()  # the store reuses read buffers
                    ops.append(dist.P2POp(dist.isend, band, peer))
                if i < len(recvs[peer]):
                    r0, r1 = recvs[peer][i]
                    band = torch.empty(b, r1 - r0, w, c, dtype=dtype, device=store.device)  # (B, rows, W, C)
                    ops.append(dist.P2POp(dist.irecv, band, peer))
                    received.append((r0, band))
            with _collective(f"exchanging rows of {name}"):
                for request in dist.batch_isend_irecv(ops) if ops else []:
                    request.wait()
            for r0, band in received:
                store.write(name, r0, band)

    def share_output(self, output: torch.Tensor, stage: int) -> None:
        """Every rank's rows of the (B, C, H, W) ``output`` to every rank (only for outputs held in memory)."""
        for k, (lo, hi) in enumerate(self.layout.parts[stage]):
            if lo == hi:
                continue
            rows = output[:, :, lo:hi].permute(0, 2, 3, 1).contiguous()  # (B, rows, W, C)
            with _collective("sharing the output"):
                self.dist.broadcast(rows, src=k)
            output[:, :, lo:hi] = rows.permute(0, 3, 1, 2)

    def barrier(self) -> None:
        with _collective("waiting for every rank"):
            self.dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        with _collective("broadcasting from rank 0"):
            self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def _others(self) -> list[int]:
        return [p for p in range(self.layout.ranks) if p != self.rank]

    def _gather(self, obj) -> list:
        parts = [None] * self.layout.ranks
        with _collective("gathering from every rank"):
            self.dist.all_gather_object(parts, obj)
        return parts


@contextmanager
def _collective(what: str):
    """A collective that fails because another rank stopped (gloo: "connection closed by peer";
    NCCL: DistBackendError, a RuntimeError) becomes one typed error on this rank."""
    try:
        yield
    except RuntimeError as e:
        raise DeviceError(f"{what} failed: another rank stopped, and its own error says why ({e})") from e


def _blocks(rows: Rows, block: int) -> list[Rows]:
    return [(r, min(r + block, rows[1])) for r in range(rows[0], rows[1], block)]


def peers_for(program: Program, the_plan: Plan, rank: int, ranks: int, device: torch.device, compiled: bool, out):
    """This rank's Peers for a run by ``the_plan``; rows are split in steps an output file can take."""
    from .sinks import sink_rows

    shapes = {m.name: m.shape for m in the_plan.maps}
    step = 1 if out is None else sink_rows(out)
    return Peers(layout(program, shapes, ranks, compiled, step), rank, device)

