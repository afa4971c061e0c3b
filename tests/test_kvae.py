"""Kandinsky 5's video VAE (AutoencoderKLKVAEVideo): its encoder in the model's own chunks (17 frames, then
16, the last shorter), time caches between them (copies of the first frame before the first chunk),
GroupNorm statistics of each chunk's frames, edge rows and columns repeated, downsamplers that mirror
rows and average pixels and pairs of frames; equal to diffusers' own encode."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLKVAEVideo

import vaekit
from conftest import REL_TOL, perturb_group_norms, relative_error, with_and_without_apply, zero_borders
from vaekit.arch import program_for
from vaekit.errors import InputError, UnsupportedModelError
from vaekit.plan import smallest_budget

#: Kandinsky 5's structure (a 4x temporal factor over two time-compressing levels), narrow
SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, in_channels=3, out_ch=3, z_channels=4,
             temporal_compress_times=4)


def make(seed: int = 0):
    torch.manual_seed(seed)
    return perturb_group_norms(AutoencoderKLKVAEVideo(**SMALL).eval())


@pytest.fixture(scope="module")
def kvae():
    return make()


#: 21 frames: chunks of 17 and 4; odd latent px (5 x 7)
X = torch.rand(1, 3, 21, 20, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


def budgets(vae, shape) -> dict[str, int]:
    """The smallest (every map on disk, one row per chunk), a mixed and the whole budget."""
    low = smallest_budget(program_for(vae, "encode"), (*shape[:2], min(shape[2], 17), *shape[3:]), 4, first=True)
    whole = max(vaekit.plan(vae, shape, budget=None, op="encode").whole_peak_bytes, low)
    return {"smallest": low, "mixed": (low + whole) // 2, "whole": whole}


@pytest.mark.parametrize("frames", [1, 9, 21])
def test_encode_is_exact_at_every_budget(kvae, frames):
    """One frame (an image-to-video's first: larger, so the smallest budget streams), one chunk, and two
    chunks (the second of 4 frames)."""
    x = X[:, :, :frames] if frames > 1 else torch.rand(1, 3, 1, 56, 72, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = kvae.encode(x).latent_dist
        for name, budget in budgets(kvae, tuple(x.shape)).items():
            report = vaekit.RunReport()
            out = vaekit.encode(kvae, x, budget, report=report)
            assert report.mode == ("whole" if name == "whole" else "stream"), name
            assert out.shape == ref.mode().shape and relative_error(out, ref.mode()) <= REL_TOL, name


@pytest.mark.parametrize("mutation", ["zeros before the first chunk", "each frame's statistics", "zero border"])
def test_the_first_chunks_copies_the_chunks_statistics_and_the_border_matter(kvae, monkeypatch, mutation):
    from vaekit.ops import causal

    x = X[:, :, :9]  # one chunk: its first frames, its statistics
    if mutation == "zeros before the first chunk":
        pad = causal._time_pad

        def zeros_in_front(stage, inner, front, back, frames):
            pad(stage, inner, front, back, frames)
            if stage.first_pad == "copies":
                inner[:, :, :front].zero_()

        monkeypatch.setattr(causal, "_time_pad", zeros_in_front)
    elif mutation == "each frame's statistics":
        program_for_ = vaekit.arch.program_for
        monkeypatch.setattr("vaekit.api.program_for", lambda vae, op: dataclasses.replace(program_for_(vae, op),
                                                                                           frame_stats="each"))
    else:
        zero_borders(monkeypatch)
    with torch.no_grad():
        ref = kvae.encode(x).latent_dist.mode()
        out = vaekit.encode(kvae, x, budgets(kvae, tuple(x.shape))["mixed"])  # streamed
    assert relative_error(out, ref) > 100 * REL_TOL


def test_what_it_does_not_take(kvae):
    with pytest.raises(InputError, match=r"1 \+ 4k frames"):
        vaekit.encode(kvae, X[:, :, :6])
    with pytest.raises(UnsupportedModelError, match="decoder"):
        vaekit.decode(kvae, torch.randn(1, 4, 2, 3, 5))


def test_apply_streams_the_encode_and_gives_the_decode_to_the_model(kvae):
    with torch.no_grad():
        ref, out = with_and_without_apply(kvae, lambda: kvae.encode(X[:, :, :9]).latent_dist.mode(),
                                          budgets(kvae, (1, 3, 9, 20, 28))["smallest"])
        assert relative_error(out, ref) <= REL_TOL
        z = torch.randn(1, 4, 2, 5, 7)
        ref, out = with_and_without_apply(kvae, lambda: kvae.decode(z).sample, "1GiB", streams=False)
    assert torch.equal(ref, out)
