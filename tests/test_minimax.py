"""MiniMax H3's VAE (AutoencoderKLMiniMaxH3), both directions in the model's own clips, equal to
diffusers' own untiled call. Decode: its ViT decoder streamed in rows within each clip (7 latent
frames, 5 apart, the overlap cross-faded), every token's keys in a map, queries by bands of rows, the
registers carried as run state. Encode: its causal CNN over clips of 17 frames, zero frames in front,
mirrored borders, each frame's GroupNorm statistics, downsamplers of stride 2 after a mirrored row
and column."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLMiniMaxH3

import vaekit
from conftest import REL_TOL, assert_exact_at_every_budget, relative_error, with_and_without_apply, zero_borders
from conftest import whole_video_budgets as budgets
from vaekit.errors import InputError

#: MiniMax H3's structure (temporal factor 4 over 17-frame clips, 4 registers, a ViT decoder), narrow
SMALL = dict(latent_channels=8, block_out_channels=(8, 16), layers_per_block=1, spatial_downsample_factors=(2, 2),
             temporal_downsample_factors=(2, 2), norm_num_groups=4, decoder_num_layers=2,
             decoder_num_attention_heads=2, decoder_attention_head_dim=16, decoder_ffn_mult=2)


def make(seed: int = 0, **changes):
    torch.manual_seed(seed)
    vae = AutoencoderKLMiniMaxH3(**{**SMALL, **changes}).eval()
    with torch.no_grad():  # the layer scales and registers start at zero, the norms at one: every term must matter
        for p in vae.parameters():
            p.normal_(0.0, 0.2 if p.dim() > 1 else 0.5)
    vae.disable_tiling()  # the reference: its untiled call
    return vae


@pytest.fixture(scope="module")
def mm():
    return make()


#: 12 latent frames: two clips and their cross-fade; odd latent px (5 x 7)
Z = torch.randn(2, 8, 12, 5, 7, generator=torch.Generator().manual_seed(0))
#: 22 frames: a clip of 17, then 5 and 12 copies of the last; odd sizes (the downsamplers' mirrored row)
X = torch.rand(1, 3, 22, 19, 27, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def ref(mm):
    with torch.no_grad():
        return mm.decode(Z).sample


def test_exact_at_every_budget(mm, ref):
    for name, budget in budgets(mm, tuple(Z.shape)).items():
        report = vaekit.RunReport()
        out = vaekit.decode(mm, Z, budget, report=report)
        assert report.mode == ("whole" if name == "whole" else "stream"), name
        assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL, name
        if name == "smallest":  # queries against key blocks (the online softmax), not all keys at once
            assert any(s.kv_rows is not None and s.kv_rows < 5 for s in report.plan.stages)


@pytest.mark.parametrize("frames", [3, 5, 7])
def test_every_clip_layout(mm, frames):
    """One clip (7 frames), a clip padded with copies (3, 5: frames cut at the end): as the model does."""
    z = Z[:1, :, :frames]
    with torch.no_grad():
        ref = mm.decode(z).sample
    out = vaekit.decode(mm, z, budgets(mm, tuple(z.shape))["smallest"])
    assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL


@pytest.mark.parametrize("mutation", ["registers", "rotation", "cross-fade", "key blocks"])
def test_each_part_matters(mm, ref, monkeypatch, mutation):
    """Registers never updated, rows rotated as if every band were the first, clips laid end to end
    without their cross-fade, or the registers' keys left out of key blocks: each is off by more than
    the tolerance (the registers, 5 keys of 250, by about 10x it; the others by far more)."""
    from vaekit import clips
    from vaekit.ops import vit

    if mutation == "registers":
        monkeypatch.setattr("vaekit.run.token_registers", lambda stage, w, read, stats, src_h, kv_rows, samples:
                            vit._registers_in(stage, w, stats, samples))  # as they came in
    elif mutation == "rotation":
        rotation = vit._rotation
        monkeypatch.setattr(vit, "_rotation", lambda w, f, h, width, r0, r1: rotation(w, f, h, width, 0, r1 - r0))
    elif mutation == "cross-fade":
        monkeypatch.setattr(clips, "_blend", lambda a, b, extent: b)
    else:
        softmax = vit.online_softmax
        monkeypatch.setattr(vit, "online_softmax", lambda q, blocks, scale: softmax(q, list(blocks)[:-1], scale))
    with torch.no_grad():
        out = vaekit.decode(mm, Z, budgets(mm, tuple(Z.shape))["smallest"])
    assert relative_error(out, ref) > 5 * REL_TOL


@pytest.mark.parametrize("frames", [1, 17, 22])
def test_encode_exact_at_every_budget(mm, frames):
    """One frame (its own clip), one clip, two clips (the second padded with copies)."""
    x = X[:, :, :frames]
    with torch.no_grad():
        ref = mm.encode(x).latent_dist.mode()
        assert_exact_at_every_budget(mm, x, ref, "encode", budgets=budgets(mm, tuple(x.shape), "encode"))


@pytest.mark.parametrize("mutation", ["zero border", "copies in front", "whole-video statistics"])
def test_encode_border_time_padding_and_statistics_matter(mm, monkeypatch, mutation):
    """Zero rows and columns instead of mirrored ones, copies of the first frame instead of zero frames,
    or GroupNorm statistics over all of a clip's frames instead of each frame's: each is far off."""
    from vaekit.ops import causal, norm

    x = X[:, :, :17]
    if mutation == "zero border":
        zero_borders(monkeypatch)
    elif mutation == "copies in front":
        pad = causal._time_pad
        monkeypatch.setattr(causal, "_time_pad", lambda stage, inner, front, back, frames: pad(
            dataclasses.replace(stage, time_pad="first"), inner, front, back, frames))
    else:
        scale_shift = norm.group_scale_shift
        monkeypatch.setattr(norm, "group_scale_shift", lambda stats, eps, w, b, c: scale_shift(
            tuple(s.mean(0, keepdim=True).expand_as(s) for s in stats), eps, w, b, c))
    with torch.no_grad():
        ref = mm.encode(x).latent_dist.mode()
        out = vaekit.encode(mm, x, budgets(mm, tuple(x.shape), "encode")["smallest"])
    assert relative_error(out, ref) > 100 * REL_TOL


def test_too_few_frames_and_pixels_out_of_its_range_are_refused(mm):
    with pytest.raises(InputError, match="at least 3 latent frames"):
        vaekit.decode(mm, Z[:, :, :2])
    with pytest.raises(InputError, match="ImageNet-normalized"):  # its pixels: (x - mean) / std, x in [0, 1]
        vaekit.encode(mm, X[:, :, :1] * 4)


def test_out_file_and_plan(mm, ref, tmp_path):
    path = vaekit.decode(mm, Z, budgets(mm, tuple(Z.shape))["mixed"], out=tmp_path / "video.npy")
    assert relative_error(torch.from_numpy(np.load(path)), ref) <= REL_TOL
    plan = vaekit.plan(mm, tuple(Z.shape), "1GiB", device="meta")
    assert plan.out_shape == tuple(ref.shape)


def test_apply_leaves_its_own_tiles_and_streams_the_untiled_call():
    """With tiling on (the model's default) and frames larger than a tile, its blended tiles are its
    output: apply leaves the call to it. With one tile, or tiling off, apply streams: the model's pixels."""
    vae = make()
    z = Z[:1, :, :7]
    budget = budgets(vae, tuple(z.shape))["smallest"]
    vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_min_overlap_height=4,
                      tile_sample_min_overlap_width=4)
    with torch.no_grad():
        tiled, applied = with_and_without_apply(vae, lambda: vae.decode(z).sample, budget, streams=False)
        assert torch.equal(tiled, applied)
        vae.disable_tiling()
        ref = vae.decode(z).sample
        assert not torch.allclose(tiled, ref, atol=1e-3)  # the tiles are another picture
        for tiling in (False, True):  # off, and on with the default tile (256 px): one tile
            if tiling:
                vae.enable_tiling(tile_sample_min_height=256, tile_sample_min_width=256)
            own, out = with_and_without_apply(vae, lambda: vae.decode(z).sample, budget)
            assert relative_error(own, ref) == 0 and relative_error(out, ref) <= REL_TOL


def test_cli_encodes_decodes_and_plans(mm, tmp_path, capsys):
    """The CLI takes a MiniMax H3 folder: an encode and a decode as the model's own, a plan of 17k + 5
    frames (5k + 2 latent frames)."""
    from safetensors.torch import save_file

    from vaekit.cli import main as cli

    mm.save_pretrained(tmp_path / "mm-vae")
    x = X[:, :, :17]
    save_file({"video": x.contiguous()}, tmp_path / "x.safetensors")
    common = ["--model", str(tmp_path / "mm-vae"), "--quiet", "--dtype", "float32"]
    budget = str(budgets(mm, tuple(x.shape), "encode")["smallest"])
    assert cli(["encode", str(tmp_path / "x.safetensors"), str(tmp_path / "z.npy"), "--budget", budget, *common]) == 0
    z = torch.from_numpy(np.load(tmp_path / "z.npy"))
    with torch.no_grad():
        assert relative_error(z, mm.encode(x).latent_dist.mode()) <= REL_TOL
        budget = str(budgets(mm, tuple(Z[:1].shape))["mixed"])
        save_file({"latents": Z[:1].contiguous()}, tmp_path / "z.safetensors")
        assert cli(["decode", str(tmp_path / "z.safetensors"), str(tmp_path / "v.npy"), "--budget", budget,
                    *common]) == 0
        assert relative_error(torch.from_numpy(np.load(tmp_path / "v.npy")), mm.decode(Z[:1]).sample) <= REL_TOL
    assert cli(["plan", "--model", str(tmp_path / "mm-vae"), "--size", "28x20", "--frames", "39"]) == 0
    out = capsys.readouterr().out
    assert "decode 1x8x12x5x7 -> 1x3x39x20x28" in out and "the model's own 2 clips of up to 7 frames" in out


def test_compiled_is_exact(mm, ref):
    """compile=True: its per-token convs through compiled graphs, the rest eagerly; the same pixels."""
    budget = budgets(mm, tuple(Z.shape))["mixed"]
    assert relative_error(vaekit.decode(mm, Z, budget, compile=True), ref) <= REL_TOL
