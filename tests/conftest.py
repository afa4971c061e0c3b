"""Small diffusers VAEs built from config dicts with a fixed seed: no downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from vaekit.testing import untiled as untiled_result  # noqa: F401 (for the tests: what decode/encode must give)

#: the built-in TAEF2 weights, shipped in the package (src/vaekit/weights): every clone has them
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "src" / "vaekit" / "weights"
#: the TAESana encoder is test data shared beside the project, not part of it
TAESD_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "taesd"
needs_taesana = pytest.mark.skipif(not (TAESD_DIR / "taesana_encoder.pth").is_file(),
                                   reason=f"the TAESana encoder is test data of ../shared, not found at {TAESD_DIR}")

#: the tolerance every streamed path is held to: a one-row halo bug is orders of magnitude above it
REL_TOL = 1e-4

CONFIGS = {
    # SD 1.x/2.x shape, scaled down: quant convs, mid attention, 3 levels
    "sd": dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8),
    # SDXL shape (same family, other widths), 32 groups as the real ones
    "sdxl": dict(block_out_channels=(32, 64), layers_per_block=2, latent_channels=4, norm_num_groups=32),
    # Flux/SD3 shape: 16 latent channels, no quant convs
    "flux": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=8,
                 use_quant_conv=False, use_post_quant_conv=False),
    # no mid-block attention
    "noattn": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                   mid_block_add_attention=False),
}


def make_vae(name: str, seed: int = 0, **overrides) -> AutoencoderKL:
    config = {**CONFIGS[name], **overrides}
    levels = len(config["block_out_channels"])
    config.setdefault("down_block_types", ("DownEncoderBlock2D",) * levels)
    config.setdefault("up_block_types", ("UpDecoderBlock2D",) * levels)
    torch.manual_seed(seed)
    return perturb_norms(AutoencoderKL(**config).eval())


def perturb_norms(vae):
    """Random init leaves GroupNorm affine at 1/0: perturb it so every term matters."""
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    return vae


def budgets_for(vae, shape, op: str = "decode", compiled: bool = False) -> dict[str, int]:
    """Budgets that force: every map on disk with tiny chunks; a mix of tiers; the whole model."""
    import vaekit
    from vaekit.plan import smallest_budget

    plan = vaekit.plan(vae, shape, budget=None, op=op, device="meta", dtype=torch.float32)
    low = smallest_budget(vaekit.arch.program_for(vae, op), planned_shape(vae, shape, op), 4, compiled=compiled)
    return {"smallest": low, "mixed": (low + plan.whole_peak_bytes) // 2, "whole": plan.whole_peak_bytes}


def whole_video_budgets(vae, shape, op: str = "decode", compiled: bool = False) -> dict[str, int]:
    """budgets_for of a model that runs the whole video or clip in one chunk (LTX-2, HunyuanVideo, MiniMax
    H3) or in its own chunks (Kandinsky 5, CogVideoX): smallest (every map on disk, one row and one key
    row per chunk; ``compiled``: the rows compiled graphs take), mixed, and whole (never below the smallest)."""
    import vaekit
    from vaekit.planning import smallest_call_budget

    low = smallest_call_budget(vae, op, shape, 4, compiled=compiled)  # one chunk, or the model's own (CogVideoX)
    whole = max(vaekit.plan(vae, shape, budget=None, op=op).whole_peak_bytes, low)
    return {"smallest": low, "mixed": (low + whole) // 2, "whole": whole}


def planned_shape(vae, shape, op: str = "decode") -> tuple[int, ...]:
    """The input shape one run of the program plans: a clip of the model's own (MiniMax H3), or the input."""
    import vaekit

    clips = vaekit.arch.clips_of(vae, op, shape[2]) if len(shape) == 5 else None
    return tuple(shape) if clips is None else (*shape[:2], clips.length, *shape[3:])


def zero_borders(monkeypatch) -> None:
    """A mutation: every causal conv band padded with zeros at the border, whatever its mode says."""
    from vaekit.ops import causal

    border = causal._border
    monkeypatch.setattr(causal, "_border", lambda x5, halo, top, bottom, mode: border(x5, halo, top, bottom, "zeros"))


def assert_exact_at_every_budget(vae, x: torch.Tensor, ref: torch.Tensor, op: str = "decode", label=None,
                                 budgets: dict[str, int] | None = None) -> None:
    """decode/encode ``x`` at each of ``budgets`` (``budgets_for``'s unless given): each plans and runs
    the mode its name says, and gives ``ref`` (the untiled result) within REL_TOL, in its shape and dtype."""
    import vaekit

    run = vaekit.decode if op == "decode" else vaekit.encode
    for name, budget in (budgets or budgets_for(vae, tuple(x.shape), op)).items():
        mode = "whole" if name == "whole" else "stream"
        assert vaekit.plan(vae, tuple(x.shape), budget, op=op).mode == mode
        report = vaekit.RunReport()
        out = run(vae, x, budget, report=report)
        assert report.mode == mode, (label, name)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert relative_error(out, ref) <= REL_TOL, (label, name)


def with_and_without_apply(target, call, budget, streams: bool = True):
    """``call()`` without, then with ``vaekit.apply(target, budget)``: the two results. ``streams``:
    assert that apply's calls streamed (False where the call makes no VAE call at all)."""
    import vaekit

    ref = call()
    report = vaekit.RunReport()
    vaekit.apply(target, budget, report=report)
    try:
        out = call()
    finally:
        vaekit.unapply(target)
    assert report.mode == ("stream" if streams else "")
    return ref, out


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


def untiled(vae, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(z).sample


@pytest.fixture(scope="session")
def vaes():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = make_vae(name)
        return cache[name]

    return get


@pytest.fixture
def halo_bug(monkeypatch):
    """Turn on a one-row halo bug: every band read from a chunk boundary loses its top row."""
    from vaekit.store import Store

    read = Store.read

    def read_losing_top_row(self, name, r0, r1):
        band = read(self, name, r0, r1).clone()
        if r0 > 0:
            band[:, 0] = 0
        return band

    def enable() -> None:
        monkeypatch.setattr(Store, "read", read_losing_top_row)

    return enable
