"""Out-of-memory recovery: injected failures at several chunks still give the exact untiled result."""

from __future__ import annotations

import pytest
import torch

import vaekit
from conftest import REL_TOL, budgets_for, relative_error, untiled
from vaekit.errors import BudgetError
from vaekit.recovery import is_oom
from vaekit.testing import oom_after


def _chunks(vae, shape, budget) -> int:
    return sum(s.chunks for s in vaekit.plan(vae, shape, budget).stages)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("times", [1, 2])
def test_injected_oom_resumes_at_the_failed_chunk(vaes, where, times):
    vae = vaes("sd")
    z = torch.randn(1, 4, 33, 47, generator=torch.Generator().manual_seed(1))
    ref = untiled(vae, z)
    budget = budgets_for(vae, tuple(z.shape))["mixed"]
    chunks = _chunks(vae, tuple(z.shape), budget)
    n = {"first": 1, "middle": chunks // 2, "last": chunks}[where]
    report = vaekit.RunReport()
    with oom_after(n, times=times) as injected:
        out = vaekit.decode(vae, z, budget, report=report)
    assert injected["fired"] == times
    assert relative_error(out, ref) <= REL_TOL
    actions = [e.action for e in report.retries]
    assert actions[0] == "retried after freeing caches" and len(actions) == times
    if times == 2:
        assert "halved" in actions[1]
    assert report.mode == "stream"


def test_chunks_already_at_one_row_move_maps_down_a_tier(vaes):
    vae = vaes("noattn")
    z = torch.randn(1, 4, 20, 24, generator=torch.Generator().manual_seed(2))
    ref = untiled(vae, z)
    plan = vaekit.plan(vae, tuple(z.shape), budgets_for(vae, tuple(z.shape))["mixed"])
    assert "device" in plan.tiers.values()
    rows, halvings = plan.stages[0].rows, 0
    while rows > 1:
        rows, halvings = rows // 2, halvings + 1
    report = vaekit.RunReport()
    with oom_after(1, times=1 + halvings + 1):  # retry, halve down to one row, then move maps down
        out = vaekit.decode(vae, z, plan.budget, report=report)
    assert relative_error(out, ref) <= REL_TOL
    assert "moved" in report.retries[-1].action, report
    assert "device" not in report.tiers.values()


def test_in_place_stages_resume_safely(vaes):
    """A residual stage writes over its input: a retry must not restart it from the top."""
    vae = vaes("sdxl")
    z = torch.randn(1, 4, 33, 47, generator=torch.Generator().manual_seed(3))
    ref = untiled(vae, z)
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    program = vaekit.arch.program_for(vae, "decode")
    plan = vaekit.plan(vae, tuple(z.shape), budget)
    chunks_before = 0  # fail in the middle of the first in-place stage
    for stage, sp in zip(program.stages, plan.stages, strict=True):
        if getattr(stage, "skip", None) == stage.dst:
            break
        chunks_before += sp.chunks
    with oom_after(chunks_before + 3) as injected:
        out = vaekit.decode(vae, z, budget)
    assert injected["fired"] and relative_error(out, ref) <= REL_TOL


def test_whole_mode_oom_falls_back_to_streaming(vaes):
    vae = vaes("noattn")
    z = torch.randn(1, 4, 16, 16)
    ref = untiled(vae, z)
    report = vaekit.RunReport()
    real_whole = vaekit.arch.kl.whole

    def whole_that_runs_out(model, op, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 36.00 GiB")

    vaekit.arch.kl.whole = whole_that_runs_out
    try:
        out = vaekit.decode(vae, z, report=report)
    finally:
        vaekit.arch.kl.whole = real_whole
    assert report.mode == "stream" and "ran out of memory" in report.retries[0].action
    assert relative_error(out, ref) <= REL_TOL


def test_gives_up_with_a_budget_error_listing_what_it_tried(vaes):
    vae = vaes("noattn")
    z = torch.randn(1, 4, 12, 12)
    budget = budgets_for(vae, tuple(z.shape))["smallest"]
    with pytest.raises(BudgetError, match="after trying: .*halved"):
        with oom_after(1, times=100):
            vaekit.decode(vae, z, budget)


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))


def test_the_last_rung_keeps_the_host_tier_within_its_budget():
    """On CUDA, maps leaving the device go to host RAM while the host budget holds them, then to disk."""
    from vaekit.recovery import Ladder

    class Store:
        device, maps, moves = torch.device("cpu"), {"a": 0, "b": 0}, []

        def demote(self, name, tier):
            self.moves.append((name, tier))

    tiers = {"a": "device", "b": "device", "c": "host", "d": "disk"}
    ladder = Ladder(Store(), tiers, "host", vaekit.RunReport(), sizes={"a": 10, "b": 10, "c": 5, "d": 99},
                    host_budget=16)
    assert ladder._demote() == {"host", "disk"}
    assert tiers == {"a": "host", "b": "disk", "c": "host", "d": "disk"}
    assert Store.moves == [("a", "host"), ("b", "disk")]
    assert ladder._demote() == set()  # nothing left on the device
