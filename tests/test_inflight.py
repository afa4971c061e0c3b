"""Concurrent calls share the memory: calls without a budget (None, "auto") made at once from several
threads, through one applied VAE, plan within the free memory together; a fixed budget stays per call.
Results are exact either way."""

from __future__ import annotations

import threading

import pytest
import torch

import vaekit
from conftest import REL_TOL, budgets_for, relative_error, untiled
from vaekit import inflight, planning

THREADS = 4
SHAPE = (1, 4, 15, 13)


@pytest.fixture
def held(monkeypatch):
    """Every plan a call without a budget holds, with the device's total held after it. After holding,
    a call waits (up to 2 s) for all THREADS to hold, so the plans are in flight at the same time; a
    call that has to wait for memory to come back cannot hold, hence the time limit."""
    seen, everyone, hold = [], threading.Condition(), planning.hold

    def hold_then_wait(*plans):
        hold(*plans)
        if inflight.current() is None:  # a call with a budget of its own
            return
        with everyone:
            seen.append((max(p.peak_bytes for p in plans), sum(sum(c.values()) for c in inflight._held.values())))
            everyone.notify_all()
            everyone.wait_for(lambda: len(seen) >= THREADS, timeout=2)

    monkeypatch.setattr(planning, "hold", hold_then_wait)
    return seen


def _decode_in_threads(vae, latents: list[torch.Tensor]) -> list[torch.Tensor]:
    outs = [None] * len(latents)

    def work(i: int) -> None:
        with torch.no_grad():
            outs[i] = vae.decode(latents[i]).sample

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(latents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outs


@pytest.mark.parametrize("budget", [None, "auto"])
def test_calls_without_a_budget_stay_inside_the_free_memory_together(vaes, held, monkeypatch, budget):
    vae = vaes("sd")
    whole = vaekit.plan(vae, SHAPE, device="meta", dtype=torch.float32).whole_peak_bytes
    free = int(2.5 * whole)  # two whole decodes fit, four do not
    monkeypatch.setattr(planning, "free_memory", lambda device: free)
    latents = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(THREADS)]
    refs = [untiled(vae, z) for z in latents]
    vaekit.apply(vae, budget)
    try:
        outs = _decode_in_threads(vae, latents)
    finally:
        vaekit.unapply(vae)
    assert len(held) == THREADS and not inflight._held  # every call held a share, and gave it back
    assert max(total for _, total in held) <= free  # together inside the free memory, at every moment
    assert min(peak for peak, _ in held) < whole  # so not every call could run whole: some streamed
    for out, ref in zip(outs, refs, strict=True):
        assert relative_error(out, ref) <= REL_TOL


def test_a_fixed_budget_stays_per_call(vaes, held, monkeypatch):
    vae = vaes("sd")
    budget = vaekit.plan(vae, SHAPE, device="meta", dtype=torch.float32).whole_peak_bytes // 2
    alone = vaekit.plan(vae, SHAPE, budget)
    monkeypatch.setattr(planning, "free_memory", lambda device: pytest.fail("a fixed budget never asks"))
    latents = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(THREADS)]
    vaekit.apply(vae, budget)
    try:
        outs = _decode_in_threads(vae, latents)
    finally:
        vaekit.unapply(vae)
    assert held == [] and alone.mode == "stream"  # nothing shared: each call planned as if alone
    for out, z in zip(outs, latents, strict=True):
        assert relative_error(out, untiled(vae, z)) <= REL_TOL


def test_a_call_whose_share_is_too_small_waits_for_memory_to_come_back(vaes, monkeypatch):
    vae = vaes("sd")
    whole = vaekit.plan(vae, SHAPE, device="meta", dtype=torch.float32).whole_peak_bytes
    smallest = budgets_for(vae, SHAPE)["smallest"]
    monkeypatch.setattr(planning, "free_memory", lambda device: whole + smallest // 2)  # one whole, then too little
    waits, waited, wait, hold = [], threading.Event(), inflight.Share.wait, planning.hold

    def counted_wait(self):
        waits.append(1)
        waited.set()
        return wait(self)

    def hold_until_the_other_waits(*plans):  # the first call stays in flight until the second has to wait
        hold(*plans)
        if not waited.is_set():
            waited.wait(10)

    monkeypatch.setattr(inflight.Share, "wait", counted_wait)
    monkeypatch.setattr(planning, "hold", hold_until_the_other_waits)
    latents = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    vaekit.apply(vae)
    try:
        outs = _decode_in_threads(vae, latents)
    finally:
        vaekit.unapply(vae)
    assert waits and not inflight._held  # one call waited for the other's memory, then ran
    for out, z in zip(outs, latents, strict=True):
        assert relative_error(out, untiled(vae, z)) <= REL_TOL
