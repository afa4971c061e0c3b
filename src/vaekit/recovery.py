"""What a run does when the device still runs out of memory, and the report of what happened.

The plan is a prediction; another process may take memory, or the allocator may fragment. When a
chunk raises out-of-memory, the executor frees caches and climbs down this ladder, then resumes at
the chunk that failed (never from scratch: earlier bands, statistics and in-place writes stay valid,
and the pixels stay the same):

    0. retry the chunk as it was, once (the memory may have been held by a cache or another process)
    1. halve the key rows of an attention stage (down to 1)
    2. halve the chunk rows (down to the stage's row multiple)
    3. move every map of the fastest store tier one tier down (device -> host on CUDA while the
       plan's host budget holds them, then disk; device -> disk on CPU)

Past the last rung it raises BudgetError listing what it tried.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field

import torch

from .errors import BudgetError

__all__ = ["RunReport", "Event", "is_oom", "Ladder"]


@dataclass
class Event:
    """One thing a run did besides following its plan."""

    stage: str
    rows: tuple[int, int]
    action: str


@dataclass
class RunReport:
    """What a decode/encode did: pass one to ``report=`` and read it afterwards.

    Attributes:
        mode: "whole" or "stream".
        plan: the Plan the run followed.
        retries: out-of-memory recoveries (stage, rows, what was done).
        upcasts: bands recomputed in float32 after a float16/bfloat16 overflow.
        tiers: where each map ended up (device, host, disk).
        peak_bytes: measured: the CUDA allocator's peak, or the peak resident-set growth on the CPU.
    """

    mode: str = ""
    plan: object = None
    retries: list[Event] = field(default_factory=list)  # out-of-memory recoveries
    upcasts: list[Event] = field(default_factory=list)  # bands recomputed in float32 after an overflow
    tiers: dict[str, str] = field(default_factory=dict)  # where each map ended up
    peak_bytes: int | None = None  # measured: CUDA allocator peak, or peak RSS growth on the CPU

    def __str__(self) -> str:
        lines = [f"mode {self.mode}, {len(self.retries)} out-of-memory retries, {len(self.upcasts)} float32 upcasts"]
        lines += [f"  {e.stage} rows {e.rows[0]}-{e.rows[1]}: {e.action}" for e in self.retries + self.upcasts]
        return "\n".join(lines)


_CPU_OOM_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")


def is_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _CPU_OOM_MESSAGES)


class Ladder:
    """The rungs one run has left; ``step`` takes the next one or raises BudgetError."""

    def __init__(self, store, tiers: dict[str, str], lower: str, report: RunReport,
                 sizes: dict[str, int] | None = None, host_budget: int | None = None):
        self.store, self.tiers, self.lower, self.report = store, tiers, lower, report
        self.sizes, self.host_budget = sizes or {}, host_budget  # bytes of each map; host RAM allowed (CUDA)
        self.tried: list[str] = []
        self.retried: set[tuple[str, int]] = set()  # (stage, first row) of chunks already retried as they were

    def step(self, stage, r0: int, r1: int, rows: int, kv_rows: int | None, exc: BaseException):
        """New (rows, kv_rows) for ``stage`` after an out-of-memory error at rows [r0, r1)."""
        free_caches(self.store.device)
        multiple = getattr(stage, "row_multiple", 1)
        if (stage.name, r0) not in self.retried:
            self.retried.add((stage.name, r0))
            action = "retried after freeing caches"
        elif kv_rows is not None and kv_rows > 1:
            kv_rows = math.ceil(kv_rows / 2)
            action = f"key rows halved to {kv_rows}"
        elif rows > multiple:
            rows = max(multiple, rows // 2 // multiple * multiple)
            action = f"chunk rows halved to {rows}"
        elif moved := self._demote():
            action = f"maps moved from the device tier to {' and '.join(sorted(moved))}"
        else:
            tried = "; ".join(self.tried) or "nothing"
            raise BudgetError(f"out of memory at stage {stage.name}, rows {r0}-{r1}, after trying: {tried}. "
                              f"Free device memory or pass a smaller budget ({exc})") from exc
        self.tried.append(f"{stage.name}: {action}")
        self.report.retries.append(Event(stage.name, (r0, r1), action))
        return rows, kv_rows

    def _demote(self) -> set[str]:
        """Move every device-tier map down (and send maps not yet written there); the tiers they went
        to, none if no map was left on the device. Host RAM takes them while the host budget holds
        every map planned or moved there (all counted at once: simple and on the safe side)."""
        in_host = sum(self.sizes.get(n, 0) for n, t in self.tiers.items() if t == "host")
        moved = set()
        for name in [n for n, t in self.tiers.items() if t == "device"]:
            tier = self.lower
            if tier == "host" and self.host_budget is not None:
                fits = in_host + self.sizes.get(name, 0) <= self.host_budget
                tier, in_host = ("host", in_host + self.sizes.get(name, 0)) if fits else ("disk", in_host)
            if name in self.store.maps:
                self.store.demote(name, tier)
            self.tiers[name] = tier
            moved.add(tier)
        return moved


def free_caches(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
