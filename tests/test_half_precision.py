"""Half precision, proven on the CPU (torch runs bfloat16 and float16 convs there): for every family, both
ways, at an odd size, streamed at the smallest and a mixed budget, no further from a float64 run of the
same weights and input than the model's own untiled call in that dtype (vaekit.testing.Fidelity: RMS at
most 1.1x, largest error at most 2x). docs/benchmarks.md has the table these runs make (``python
tests/test_half_precision.py`` prints it)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import vaekit
from conftest import untiled_result
from test_fuzz import BUILDERS, _input, _model, budget_range, fitted
from vaekit.arch import family
from vaekit.testing import Fidelity, fidelity

HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: one odd size for every family (latent rows 6, columns 9, 3 latent frames; fitted() moves it to what the
#: family's model takes; encode's images are 8-16x that). Not smaller: the rule compares RMS errors, and
#: over the few values of a 3x5 map they are chance (streamed/untiled RMS 0.77-1.25x for one model as the
#: size went from 3x5 to 6x9, the streamed error below the untiled one at the larger sizes)
SIZE = dict(batch=1, h=6, w=9, frames=3)


@functools.cache
def _input_of(name: str, op: str) -> torch.Tensor:
    vae, _ = _model(name)
    batch, h, w, frames = fitted(name, op, **SIZE)
    return _input(vae, op, batch, h, w, frames, seed=3)


def measure(name: str, op: str, dtype: str) -> dict[str, Fidelity]:
    """Fidelity of the streamed call at the smallest and a mixed budget (and the untiled call's errors)
    against the truth: the half model's own weights and input, run in float64, so that what is measured is
    the computation's rounding alone (float32 weights would add the weights' rounding to both)."""
    vae, _ = _model(name)
    half, xh = copy.deepcopy(vae).to(HALF[dtype]), _input_of(name, op).to(HALF[dtype])
    truth = untiled_result(copy.deepcopy(half).double(), op, xh.double())
    untiled = untiled_result(half, op, xh)
    low, whole = budget_range(half, xh, op)
    results = {}
    for label, budget in (("smallest", low), ("mixed", (low + whole) // 2)):
        report = vaekit.RunReport()
        with torch.no_grad():  # streamed even where the whole call fits (DC-AE's weights set its smallest budget)
            out = family(half).finish(half, op, vaekit.api.run(half, op, xh, budget, stream=True, report=report))
        assert report.mode == "stream", (name, op, label)
        assert out.dtype == xh.dtype and out.shape == untiled.shape
        results[label] = fidelity(out, untiled, truth)
    return results


@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("op", ["decode", "encode"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_streamed_is_no_further_from_float64_than_untiled(name, op, dtype):
    for label, f in measure(name, op, dtype).items():
        assert f.ok, (name, op, dtype, label, f)


def test_the_rule_fails_a_one_row_halo_bug(halo_bug):
    """The rule can fail: a band that loses its top row is far further from float64 than untiled bf16."""
    halo_bug()
    results = measure("sd", "decode", "bfloat16")
    assert not results["smallest"].ok, results


def test_fidelity_of_an_overflowing_untiled_call():
    """Where the untiled call overflows (NaN or Inf: float16 SDXL), any finite result is nearer the truth;
    a streamed NaN is never ok."""
    truth = torch.linspace(-1, 1, 64, dtype=torch.float64)
    nan = truth.clone().float()
    nan[3] = float("nan")
    assert fidelity(truth.float(), nan, truth).ok
    assert not fidelity(nan, nan, truth).ok
    assert not fidelity(truth.float() + 0.1, truth.float(), truth).ok


if __name__ == "__main__":  # the table for docs/benchmarks.md
    import warnings

    warnings.filterwarnings("ignore")
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []"
    print("| class (test config) | op | dtype | untiled RMS | streamed RMS (smallest, mixed) | untiled max | "
          "streamed max (smallest, mixed) | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for name in sorted(BUILDERS):
        for op in ("decode", "encode"):
            for dtype in sorted(HALF):
                r = measure(name, op, dtype)
                s, m = r["smallest"], r["mixed"]
                print(f"| {type(_model(name)[0]).__name__} ({name}) | {op} | {dtype} | {s.untiled_rms:.2e} | "
                      f"{s.rms:.2e}, {m.rms:.2e} | {s.untiled_max:.2e} | {s.max:.2e}, {m.max:.2e} | {s.ok and m.ok} |")


@pytest.mark.parametrize("op", ["decode", "encode"])
def test_compiled_half_precision_follows_the_rule_too(op):
    """compile=True in bfloat16 (the long fuzz's find: the compiled GroupNorm prologue gave its float32
    arithmetic to a bfloat16 conv, which refused it): streamed, and no further from float64 than untiled."""
    vae, _ = _model("sd")
    half, xh = copy.deepcopy(vae).to(torch.bfloat16), _input_of("sd", op).to(torch.bfloat16)
    truth = untiled_result(copy.deepcopy(half).double(), op, xh.double())
    low, whole = budget_range(half, xh, op, compile=True)
    report = vaekit.RunReport()
    out = (vaekit.decode if op == "decode" else vaekit.encode)(half, xh, max(2 * low, (low + whole) // 2), compile=True,
                                                              report=report)
    assert report.mode == "stream" and out.dtype == torch.bfloat16
    f = fidelity(out, untiled_result(half, op, xh), truth)
    assert f.ok, f
