"""Kandinsky 5's video VAE (AutoencoderKLKVAEVideo), both directions in the model's own chunks (17 frames,
then 16, the last shorter; decoding 5 latent frames, then 4), time caches between them (copies of the
first frame before the first chunk), GroupNorm statistics of each chunk's frames, edge rows and columns
repeated; encoding, downsamplers that mirror rows and average pixels and pairs of frames; decoding,
norms scaled and shifted by the chunk's latents and upsamplers that repeat frames and pixels; equal to
diffusers' own calls."""

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLKVAEVideo

import vaekit
from conftest import (
    REL_TOL,
    assert_exact_at_every_budget,
    perturb_norms,
    relative_error,
    with_and_without_apply,
    zero_borders,
)
from conftest import whole_video_budgets as budgets
from vaekit.errors import InputError

#: Kandinsky 5's structure (a 4x temporal factor over two time-compressing levels), narrow
SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, in_channels=3, out_ch=3, z_channels=4,
             temporal_compress_times=4)


def make(seed: int = 0):
    torch.manual_seed(seed)
    return perturb_norms(AutoencoderKLKVAEVideo(**SMALL).eval())


@pytest.fixture(scope="module")
def kvae():
    return make()


#: 21 frames: chunks of 17 and 4; odd latent px (5 x 7)
X = torch.rand(1, 3, 21, 20, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


#: 10 latent frames: chunks of 5, 4 and 1 (34 frames); odd latent px
Z = torch.randn(2, 4, 10, 5, 7, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("frames", [2, 10])
def test_decode_is_exact_at_every_budget(kvae, frames):
    """One chunk of 2 latent frames (5 frames), and chunks of 5, 4 and 1 (the last not repeated in time)."""
    z = Z[:, :, :frames] if frames < 10 else Z[:1]  # two videos in one chunk; one video in three
    with torch.no_grad():
        ref = kvae.decode(z).sample
        assert_exact_at_every_budget(kvae, z, ref, "decode", budgets=budgets(kvae, tuple(z.shape), "decode"))


@pytest.mark.parametrize("mutation", ["latents by plain nearest frames", "no latents"])
def test_the_spatial_norms_latents_matter(kvae, monkeypatch, mutation):
    """The decoder's norms from latents mapped to frames by plain nearest-neighbour (not a first chunk's
    first frame alone), or not scaled and shifted at all: each is far off."""
    from vaekit.ops import causal

    latents = causal._latents
    if mutation == "latents by plain nearest frames":
        monkeypatch.setattr(causal, "_latents", lambda stage, w, read, r0, r1, n, first, band: latents(
            stage, w, read, r0, r1, n, False, band))
    else:
        monkeypatch.setattr(causal, "_latents", lambda stage, w, read, r0, r1, n, first, band: tuple(
            torch.ones_like(t) if i == 0 else torch.zeros_like(t)
            for i, t in enumerate(latents(stage, w, read, r0, r1, n, first, band))))
    z = Z[:1, :, :2]
    with torch.no_grad():
        ref = kvae.decode(z).sample
        out = vaekit.decode(kvae, z, budgets(kvae, tuple(z.shape), "decode")["mixed"])
    assert relative_error(out, ref) > 100 * REL_TOL


@pytest.mark.parametrize("frames", [1, 9, 21])
def test_encode_is_exact_at_every_budget(kvae, frames):
    """One frame (an image-to-video's first: larger, so the smallest budget streams), one chunk, and two
    chunks (the second of 4 frames)."""
    x = X[:, :, :frames] if frames > 1 else torch.rand(1, 3, 1, 56, 72, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = kvae.encode(x).latent_dist
        assert_exact_at_every_budget(kvae, x, ref.mode(), "encode", budgets=budgets(kvae, tuple(x.shape), "encode"))


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
        out = vaekit.encode(kvae, x, budgets(kvae, tuple(x.shape), "encode")["mixed"])  # streamed
    assert relative_error(out, ref) > 100 * REL_TOL


def test_frames_its_chunks_cannot_fold_and_odd_sizes_are_refused(kvae):
    with pytest.raises(InputError, match=r"1 \+ 4k frames"):
        vaekit.encode(kvae, X[:, :, :6])
    with pytest.raises(InputError, match="pixel-unshuffled"):  # its downsamplers average 2x2 pixels
        vaekit.encode(kvae, X[:, :, :1, :19])


def test_apply_streams_both(kvae):
    with torch.no_grad():
        ref, out = with_and_without_apply(kvae, lambda: kvae.encode(X[:, :, :9]).latent_dist.mode(),
                                          budgets(kvae, (1, 3, 9, 20, 28), "encode")["mixed"])
        assert relative_error(out, ref) <= REL_TOL
        z = Z[:1, :, :2]
        ref, out = with_and_without_apply(kvae, lambda: kvae.decode(z).sample,
                                          budgets(kvae, tuple(z.shape), "decode")["mixed"])
    assert relative_error(out, ref) <= REL_TOL
