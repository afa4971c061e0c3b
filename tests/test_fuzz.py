"""Differential fuzzing: a random family × op × odd size × batch × budget (smallest, anywhere between,
whole) × compile, streamed, against the model's own untiled call in float32 and against a float64 run.

`make test` runs a short profile; `make fuzz` (VAEKIT_FUZZ=long) a long one, with compile=True among
the draws. Every failure it finds becomes a regression test beside the family's own tests.
bfloat16 and float16 are drawn too, held to the half-precision rule (vaekit.testing.Fidelity). Not drawn:
the host tier, which exists on CUDA only (the CPU's tiers are the device and disk)."""

from __future__ import annotations

import copy
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaekit
from conftest import REL_TOL, make_vae, relative_error, untiled_result
from test_cogvideox import make as make_cogvideox
from test_dc import make_dc
from test_flux2 import make_flux2
from test_hunyuan import make_hunyuan
from test_hunyuan15 import make as make_hunyuan15
from test_hunyuan_video import make as make_hunyuan_video
from test_kvae import make as make_kvae
from test_ltx2 import make as make_ltx2
from test_ltx_video import make as make_ltxv
from test_minimax import make as make_minimax
from test_mochi import make as make_mochi
from test_tiny import TINY_CONFIG
from test_wan import make as make_wan
from test_wan import make_qwen21, make_wan22
from vaekit.arch import family
from vaekit.testing import fidelity
from vaekit.tools.gpu_cases import smallest, whole_budget

LONG = os.environ.get("VAEKIT_FUZZ") == "long"
BUILDERS = {"sd": lambda: make_vae("sd"), "flux": lambda: make_vae("flux"), "flux2": make_flux2,
            "tiny": lambda: _tiny(), "dc-sana": lambda: make_dc("sana"), "dc-shuffle": lambda: make_dc("shuffle"),
            "hunyuan": make_hunyuan, "wan": make_wan, "wan22": make_wan22, "ltx2": make_ltx2,
            "qwen21": make_qwen21, "hunyuan15": make_hunyuan15, "minimax": make_minimax, "ltxv": make_ltxv,
            "hunyuan_video": make_hunyuan_video, "mochi": make_mochi, "cogvideox": make_cogvideox,
            "kvae": make_kvae}
_models: dict = {}


def _tiny():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny(**TINY_CONFIG).eval()


def _model(name: str):
    if name not in _models:
        vae = BUILDERS[name]()
        _models[name] = (vae, copy.deepcopy(vae).double())
    return _models[name]


def _input(vae, op: str, batch: int, h: int, w: int, frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    video = getattr(family(vae), "VIDEO", False)
    c = vaekit.arch.program_for(vae, op).maps[vaekit.arch.program_for(vae, op).input].channels
    if op == "decode":
        return torch.randn(batch, c, frames, h, w, generator=g) if video else torch.randn(batch, c, h, w, generator=g)
    f, t = family(vae).scale_factor(vae), vaekit.arch.temporal_factor(vae)
    shape = (batch, c, 1 + t * (frames - 1), h * f, w * f) if video else (batch, c, h * f, w * f)
    return torch.rand(shape, generator=g) * 2 - 1


def fitted(name: str, op: str, batch: int, h: int, w: int, frames: int) -> tuple[int, int, int, int]:
    """(batch, h, w, frames) moved to the nearest that the family's model itself takes."""
    if name.startswith("dc"):  # its pixel (un)shuffles need latents of even size
        h, w = h + h % 2, w + w % 2
    if name in ("ltx2", "minimax"):  # reflect padding needs two rows and columns (the model's own refuses one)
        h, w = max(h, 2), max(w, 2)
    if name == "minimax" and op == "decode":  # its clips are 7 latent frames: it decodes at least 3
        frames += 2
    if name == "mochi":  # the test model's GroupNorms have a channel a group: torch refuses a 1x1 frame, and on a
        h, w = (max(h, 3), max(w, 3)) if op == "encode" else (max(h, 2), w)  # 2x1 latent map of an encode,
        # diffusers' own float32 is 2e-3 off its float64
    if name == "qwen21":  # one frame: its convs are 2-D
        frames = 1
    if name == "hunyuan15":  # diffusers' own attention takes one video at a time
        batch = 1
    return batch, h, w, frames


def budget_range(vae, x: torch.Tensor, op: str, compile: bool = False) -> tuple[int, int]:
    """(smallest, whole) in ``x``'s dtype: every map on disk and one row a chunk (a whole-video model's one
    run, or its own clips or chunks), and the budget that runs the call whole (compile always streams)."""
    low = smallest(vae, op, x, compiled=compile)
    return low, max(whole_budget(vae, op, x), low)


SETTINGS = settings(max_examples=200 if LONG else 12, deadline=None, derandomize=not LONG,
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(name=st.sampled_from(sorted(BUILDERS)), op=st.sampled_from(["decode", "encode"]), batch=st.integers(1, 2),
       h=st.integers(1, 9), w=st.integers(1, 9), frames=st.integers(1, 3), where=st.floats(0, 1),
       compile=st.booleans() if LONG else st.just(False), dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
       seed=st.integers(0, 2**16))
def test_streamed_equals_untiled_and_float64(name, op, batch, h, w, frames, where, compile, dtype, seed):
    """float32: within REL_TOL of the untiled call and of float64; bfloat16 and float16: no further from
    float64 than the untiled call in that dtype (vaekit.testing.Fidelity)."""
    vae, vae64 = _model(name)
    batch, h, w, frames = fitted(name, op, batch, h, w, frames)
    x = _input(vae, op, batch, h, w, frames, seed)
    low, high = budget_range(vae, x, op, compile)
    budget = int(low + where * (high - low))  # 0: every map on disk, one row a chunk; 1: whole
    run = vaekit.decode if op == "decode" else vaekit.encode
    if dtype != "float32":  # at least 6x6 latents: over fewer values RMS errors are chance (test_half_precision)
        x = _input(vae, op, batch, max(h, 6), max(w, 6), frames, seed)
        half, xh = copy.deepcopy(vae).to(getattr(torch, dtype)), x.to(getattr(torch, dtype))
        low, high = budget_range(half, xh, op, compile)  # maps of 2-byte values
        out = run(half, xh, int(low + where * (high - low)), compile=compile)
        assert out.dtype == xh.dtype
        truth = untiled_result(copy.deepcopy(half).double(), op, xh.double())  # the same weights, in float64
        f = fidelity(out, untiled_result(half, op, xh), truth)
        assert f.ok, (name, op, dtype, tuple(x.shape), budget, f)
        return
    ref64 = untiled_result(vae64, op, x.double())
    out = run(vae, x, budget, compile=compile)  # never refused: a compiled video batch too (test_wan.py)
    ref = untiled_result(vae, op, x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert relative_error(out, ref) <= REL_TOL, (name, op, tuple(x.shape), budget)
    assert relative_error(out.double(), ref64) <= REL_TOL, (name, op, tuple(x.shape), budget)
