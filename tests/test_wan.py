"""The Wan family (AutoencoderKLWan, AutoencoderKLQwenImage): decode streamed in chunks of frames and
rows, time caches in the store, equal to diffusers' own (frame-chunked, untiled) decode."""

import types

import pytest
import torch
from diffusers import AutoencoderKLQwenImage, AutoencoderKLWan

import vaekit
from conftest import REL_TOL, relative_error
from vaekit.arch import program_for
from vaekit.plan import smallest_budget

SMALL = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1)  # two time upsamplings, as Wan 2.1


def make(cls=AutoencoderKLWan, seed: int = 0):
    torch.manual_seed(seed)
    vae = cls(**SMALL).eval()
    with torch.no_grad():
        for module in vae.modules():  # the RMS norms' gamma starts at 1: perturb so every term matters
            if hasattr(module, "gamma"):
                module.gamma.normal_(1.0, 0.2)
    return vae


def budgets(vae, shape, op: str = "decode", compiled: bool = False) -> dict[str, int]:
    """Smallest (every map and cache on disk, one row per chunk), mixed, and whole, for a video's chunks."""
    program, (b, c, _, h, w) = program_for(vae, op), shape
    steady = 1 if op == "decode" else 4
    low = max(smallest_budget(program, (b, c, 1, h, w), 4, compiled=compiled, first=True),
              smallest_budget(program, (b, c, steady, h, w), 4, compiled=compiled))
    whole = vaekit.plan(vae, shape, budget=None, op=op).whole_peak_bytes
    return {"smallest": low, "mixed": (low + whole) // 2, "whole": whole}


@pytest.fixture(scope="module")
def wan():
    return make()


def test_decode_is_exact_at_every_budget(wan):
    z = torch.randn(1, 4, 3, 7, 5, generator=torch.Generator().manual_seed(0))  # 3 latent frames, odd px
    with torch.no_grad():
        ref = wan.decode(z).sample  # (1, 3, 9, 56, 40): 1 + 4 * 2 frames
        for name, budget in budgets(wan, tuple(z.shape)).items():
            report = vaekit.RunReport()
            out = vaekit.decode(wan, z, budget, report=report)
            assert report.mode == ("whole" if name == "whole" else "stream"), name
            assert out.shape == ref.shape == (1, 3, 9, 56, 40) and relative_error(out, ref) <= REL_TOL, name


def test_encode_is_exact_at_every_budget(wan):
    x = torch.rand(1, 3, 11, 24, 40, generator=torch.Generator().manual_seed(5)) * 2 - 1  # 1 + 4 + 4 frames (+2 unused)
    with torch.no_grad():
        ref = wan.encode(x).latent_dist.mode()  # (1, 4, 3, 3, 5)
        for name, budget in budgets(wan, tuple(x.shape), "encode").items():
            report = vaekit.RunReport()
            out = vaekit.encode(wan, x, budget, report=report)
            assert report.mode == ("whole" if name == "whole" else "stream"), name
            assert out.shape == ref.shape == (1, 4, 3, 3, 5) and relative_error(out, ref) <= REL_TOL, name
        sample = vaekit.encode(wan, x, budgets(wan, tuple(x.shape), "encode")["smallest"], sample=True,
                               generator=torch.Generator().manual_seed(6))
        assert torch.equal(sample, wan.encode(x).latent_dist.sample(torch.Generator().manual_seed(6))) or \
            relative_error(sample, wan.encode(x).latent_dist.sample(torch.Generator().manual_seed(6))) <= REL_TOL


def test_time_caches_go_to_disk_at_the_smallest_budget(wan):
    z = torch.randn(1, 4, 2, 7, 5, generator=torch.Generator().manual_seed(1))
    low = budgets(wan, tuple(z.shape))["smallest"]
    tiers = vaekit.plan(wan, tuple(z.shape), low).tiers
    assert {tiers[n] for n in program_for(wan, "decode").persistent} == {"disk"}


def test_the_time_caches_matter(wan, monkeypatch):
    """Without carrying the caches from chunk to chunk the frames after the first are far off: the
    exactness test above would catch a cache bug."""
    from vaekit.store import Store

    z = torch.randn(1, 4, 3, 7, 5, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(Store, "swap", lambda self, a, b: None)
    with torch.no_grad():
        out = vaekit.decode(wan, z, budgets(wan, tuple(z.shape))["smallest"])
        ref = wan.decode(z).sample
    assert relative_error(out[:, :, :1], ref[:, :, :1]) <= REL_TOL  # the first chunk has no past
    assert relative_error(out[:, :, 1:], ref[:, :, 1:]) > 1e-2


def test_memory_is_bounded_by_the_chunk_not_the_frames(wan):
    short, long = (vaekit.plan(wan, (1, 4, t, 30, 52), "8MiB") for t in (3, 40))
    assert long.peak_bytes == short.peak_bytes <= 8 << 20
    assert long.out_shape == (1, 3, 1 + 4 * 39, 240, 416)
    # diffusers decodes frame by frame too, but holds the video it concatenates (twice at the end)
    video_bytes = 4 * 3 * 157 * 240 * 416
    assert long.whole_peak_bytes - short.whole_peak_bytes == 2 * video_bytes * (157 - 9) // 157


def test_qwen_image_single_frame_batch_two():
    vae = make(AutoencoderKLQwenImage, seed=3)
    z = torch.randn(2, 4, 1, 9, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = vae.decode(z).sample
        low = budgets(vae, tuple(z.shape))["smallest"]
        assert vaekit.plan(vae, tuple(z.shape), low).mode == "stream"
        assert relative_error(vaekit.decode(vae, z, low), ref) <= REL_TOL


def test_apply_streams_the_decode(wan):
    z = torch.randn(1, 4, 2, 7, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = wan.decode(z).sample
        report = vaekit.RunReport()
        vaekit.apply(wan, budgets(wan, tuple(z.shape))["smallest"], report=report)
        try:
            out = wan.decode(z).sample
        finally:
            vaekit.unapply(wan)
    assert report.mode == "stream" and relative_error(out, ref) <= REL_TOL


def test_compiled_video_is_exact_and_made_once(wan):
    """compile=True: the causal convs' graphs (and the 2-D stages') are made on the first video, and
    reused for other sizes and frame counts; both directions exact, Wan 2.1 and 2.2. Sizes of 1 are
    specialized by torch.compile: one-frame first chunks are made on every first video, and one-row
    chunks (the smallest budgets) make their own graphs, as for images (checked once at a new size:
    each new one-row graph costs seconds)."""
    wan22 = make_wan22()
    cases = [(wan, "decode", (1, 4, 3, 7, 5)), (wan, "encode", (1, 3, 5, 56, 40)),
             (wan22, "decode", (1, 4, 2, 5, 3)), (wan22, "encode", (1, 3, 5, 48, 80))]
    sizes = {"decode": [(9, 6), (6, 11)], "encode": [(80, 48), (32, 96)]}  # Wan 2.2 encodes multiples of 16
    for vae, op, shape in cases:  # warm-up: the graphs are made here, and Wan 2.1's one-row ones (Wan 2.2's
        for budget in ("smallest", "whole") if vae is wan else ("whole",):  # would cost 6 s each)
            _assert_compiled_exact(vae, op, shape, budget)
    for vae, op, shape in cases:
        for i, (h, w) in enumerate(sizes[op]):
            frames = shape[2] + 1 if op == "decode" else 9
            with torch.compiler.set_stance("fail_on_recompile"):  # a new graph would raise
                _assert_compiled_exact(vae, op, (*shape[:2], frames, h, w), "whole")
            if i == 0 and vae is wan and op == "decode":  # one-row chunks at a new size: graphs of their own, exact
                _assert_compiled_exact(vae, op, (*shape[:2], frames, h, w), "smallest")


def test_compiled_batch_of_videos_is_exact():
    """The differential fuzzer's find (test_fuzz.py): compiled, the second video of a batch of two came out
    0.97 off (Wan decode; the causal epilogue's graph given a batch, or a slice of one). Each video now
    goes through the graphs and the conv alone, from tensors of its own: exact, both directions, both
    Wan versions (the old code: the second video 0.55 off in the first case)."""
    wan21 = make()  # its own: graphs made on batches elsewhere in this module must not matter
    cases = [(wan21, "decode", (2, 4, 3, 7, 6), "whole"), (make_wan22(), "decode", (2, 4, 2, 5, 3), "whole"),
             (wan21, "encode", (2, 3, 5, 48, 40), "whole")]
    for vae, op, shape, budget in cases:
        _assert_compiled_exact(vae, op, shape, budget, per_sample=True)


def test_a_batch_of_videos_is_exact_eagerly():
    """Two videos at once, eager, at the smallest budget: their frames in a conv's input sit beside the time
    cache's, so the prologue cannot write them as one NHWC band (ops.causal._nhwc) and copies them in;
    one video writes them in place. Both exact, each video on its own, both directions."""
    from vaekit.ops.causal import _nhwc

    x5 = torch.empty(2, 3, 5, 4, 6).to(memory_format=torch.channels_last_3d)  # (B, C, T, rows, W)
    assert _nhwc(x5[:, :, 2:]) is None  # two videos' frames beside the cache's: no one band
    slot = _nhwc(x5[:1, :, 2:])
    slot.fill_(7)  # one video: a view that writes the frames it holds, and no others
    assert slot.shape == (3, 4, 6, 3) and (x5[0, :, 2:] == 7).all() and not (x5[0, :, :2] == 7).any()
    wan = make(seed=5)
    for op, shape in (("decode", (2, 4, 3, 5, 6)), ("encode", (2, 3, 5, 40, 48))):
        generator = torch.Generator().manual_seed(sum(shape))
        x = torch.randn(*shape, generator=generator) if op == "decode" else torch.rand(*shape, generator=generator) * 2 - 1
        with torch.no_grad():
            ref = wan.decode(x).sample if op == "decode" else wan.encode(x).latent_dist.mode()
        run = vaekit.decode if op == "decode" else vaekit.encode
        out = run(wan, x, budgets(wan, shape, op)["smallest"])
        for i in range(2):
            assert relative_error(out[i], ref[i]) <= REL_TOL, (op, i)


def _assert_compiled_exact(vae, op: str, shape, budget: str, per_sample: bool = False) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=generator) if op == "decode" else torch.rand(*shape, generator=generator) * 2 - 1
    with torch.no_grad():
        ref = vae.decode(x).sample if op == "decode" else vae.encode(x).latent_dist.mode()
    run = vaekit.decode if op == "decode" else vaekit.encode
    report = vaekit.RunReport()
    out = run(vae, x, budgets(vae, shape, op, compiled=True)[budget], compile=True, report=report)
    assert report.mode == "stream" and out.shape == ref.shape
    assert relative_error(out, ref) <= REL_TOL, (op, shape, budget)
    for i in range(out.shape[0] if per_sample else 0):  # every video of a batch, not the batch's norm
        assert relative_error(out[i], ref[i]) <= REL_TOL, (op, shape, budget, i)


def test_four_d_input_is_refused_clearly(wan):
    from vaekit.errors import InputError

    with pytest.raises(InputError, match="5-D"):
        vaekit.decode(wan, torch.randn(1, 4, 7, 5))
    with pytest.raises(InputError, match="5-D"):
        vaekit.encode(wan, torch.rand(1, 3, 56, 40))


# ---- pipelines (tiny, from config dicts, called with prompt embeddings) -----------------------------------


def _wan_pipe(name: str):
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).eval()
    image = name == "WanImageToVideoPipeline"
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=36 if image else 16, out_channels=16, text_dim=32, freq_dim=256,
                                        ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32, image_dim=4 if image else None).eval()
    more = {}
    if image:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        torch.manual_seed(0)
        config = CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, intermediate_size=16, patch_size=1)
        more = dict(image_encoder=CLIPVisionModelWithProjection(config).eval(),
                    image_processor=CLIPImageProcessor(crop_size=32, size=32), transformer_2=None)
    pipe = getattr(diffusers, name)(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **more)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["WanPipeline", "WanImageToVideoPipeline"])
def test_wan_pipelines_are_the_same_under_apply(name):
    from PIL import Image

    from conftest import with_and_without_apply

    pipe = _wan_pipe(name)
    emb, neg = torch.randn(2, 1, 6, 32, generator=torch.Generator().manual_seed(1))
    more = {"image": Image.new("RGB", (80, 48), (90, 140, 200))} if name == "WanImageToVideoPipeline" else {}

    def call():  # the image-to-video pipeline also encodes its image (and zero frames after it)
        return pipe(prompt_embeds=emb, negative_prompt_embeds=neg, height=48, width=80, num_frames=9,
                    num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0), **more).frames

    ref, out = with_and_without_apply(pipe, call, "1MiB")
    assert out.shape == ref.shape == (1, 9, 3, 48, 80) and relative_error(out, ref) <= REL_TOL


@pytest.mark.parametrize("name", ["QwenImagePipeline", "QwenImageEditPipeline"])
def test_qwen_image_pipelines_are_the_same_under_apply(name, monkeypatch):
    import diffusers
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module
    from PIL import Image

    from conftest import with_and_without_apply

    # the edit pipeline resizes its image to an area of 1024x1024 before encoding it: 48x48 here, for time
    resize = edit_module.calculate_dimensions
    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: resize(48 * 48, ratio))
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4)).eval()
    torch.manual_seed(0)
    edit = name == "QwenImageEditPipeline"
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    pipe = getattr(diffusers, name)(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None,
                                    tokenizer=None, transformer=transformer, **({"processor": None} if edit else {}))
    pipe.set_progress_bar_config(disable=True)
    emb, mask = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1)), torch.ones(1, 6, dtype=torch.long)
    image = Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8))

    def call():
        return pipe(prompt_embeds=emb, prompt_embeds_mask=mask, height=48, width=48, num_inference_steps=2,
                    true_cfg_scale=1.0, output_type="pt", generator=torch.Generator().manual_seed(0),
                    **({"image": image} if edit else {})).images

    ref, out = with_and_without_apply(pipe, call, "2200KiB")
    assert out.shape == ref.shape == (1, 3, 48, 48) and relative_error(out, ref) <= REL_TOL


@pytest.mark.parametrize("suffix", [".npy", ".zarr", ".mp4"])
def test_decode_to_a_file_frame_by_frame(wan, tmp_path, suffix):
    import numpy as np

    z = torch.randn(1, 4, 3, 7, 5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = wan.decode(z).sample  # (1, 3, 9, 56, 40)
        writer = vaekit.plan(wan, tuple(z.shape), None, out=tmp_path / f"video{suffix}").writer_bytes
        path = vaekit.decode(wan, z, budgets(wan, tuple(z.shape))["smallest"] + writer, out=tmp_path / f"video{suffix}")
    assert path == tmp_path / f"video{suffix}" and [p.name for p in tmp_path.iterdir()] == [path.name]
    if suffix == ".npy":
        assert relative_error(torch.from_numpy(np.load(path)), ref) <= REL_TOL
        return
    ref8 = ((ref.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1)  # (1, 9, 56, 40, 3) 8-bit
    if suffix == ".zarr":
        import zarr

        assert (torch.from_numpy(zarr.open_array(str(path))[:]).float() - ref8).abs().max() <= 1
        return
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (56, 40, 3)
    error = (torch.from_numpy(np.stack(frames)).float() - ref8[0]).abs().mean()
    assert error < 12  # H.264 at crf 18 on noise-like frames: lossy, but the frames are these


def test_the_video_writer_is_in_the_plan(wan):
    """An .mp4 encoder holds frames (x264's lookahead) in host RAM: on a CPU the budget holds them too."""
    from vaekit.errors import BudgetError

    shape = (1, 4, 3, 7, 5)
    plain = vaekit.plan(wan, shape, "40MiB", out="video.npy")
    mp4 = vaekit.plan(wan, shape, "40MiB", out="video.mp4")
    assert plain.writer_bytes == 3 * 56 * 40 * 5  # one frame, float32 and uint8
    assert mp4.writer_bytes > 16 << 20 and mp4.peak_bytes <= 40 << 20
    assert mp4.peak_bytes == max(s.peak_bytes for s in mp4.stages) + mp4.writer_bytes
    assert "writer holds" in str(mp4)
    gpu = vaekit.plan(wan, shape, "40MiB", out="video.mp4", device="cuda")  # the encoder's RAM is not the GPU's
    assert gpu.peak_bytes == max(s.peak_bytes for s in gpu.stages)
    with pytest.raises(BudgetError) as e:
        vaekit.plan(wan, shape, mp4.writer_bytes, out="video.mp4")
    assert e.value.smallest > mp4.writer_bytes


def test_a_failed_video_leaves_no_file(wan, tmp_path, monkeypatch):
    from vaekit import run as run_module

    z = torch.randn(1, 4, 3, 7, 5, generator=torch.Generator().manual_seed(8))
    (tmp_path / "video.mp4").write_bytes(b"an earlier file")
    monkeypatch.setattr(run_module, "execute", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        vaekit.decode(wan, z, out=tmp_path / "video.mp4")
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]
    assert (tmp_path / "video.mp4").read_bytes() == b"an earlier file"


def test_cli_decodes_video_latents_to_mp4(wan, tmp_path, capsys):
    from safetensors.torch import save_file

    from vaekit.cli import main

    wan.save_pretrained(tmp_path / "vae")
    z = torch.randn(1, 4, 2, 7, 5, generator=torch.Generator().manual_seed(9))
    save_file({"latents": z}, tmp_path / "latents.safetensors")
    out = tmp_path / "out.mp4"
    assert main(["decode", str(tmp_path / "latents.safetensors"), str(out), "--model", str(tmp_path / "vae"),
                 "--budget", "24MiB", "--fps", "8", "--crf", "23", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 0
    import av

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == 8 and sum(1 for _ in container.decode(video=0)) == 5
    assert main(["decode", str(tmp_path / "latents.safetensors"), str(tmp_path / "out.png"), "--model",
                 str(tmp_path / "vae")]) == 2
    assert "use .mp4, .npy or .zarr" in capsys.readouterr().err


def test_a_passed_through_band_does_not_alias_the_read_buffer(wan):
    """On the first chunk Wan's resamplers pass bands through. A band read from a disk map is a view of a
    buffer the next read reuses, while the write of the band may still be in flight: the band handed
    back must be its own (this broke a 1120x928 encode, rows of one band landing in another)."""
    from vaekit.ops.causal import causal_first_band

    stage = next(s for s in program_for(wan, "encode").stages if getattr(s, "first", None) == "pass_keep")
    buffer = torch.randn(1, 4, 5, 8)  # (B*F, rows, W, C): what a disk map's read returns a view of
    band, tail = causal_first_band(stage, {}, lambda name, r0, r1: buffer[:, : r1 - r0], {}, 0, 4, 4, 4)
    expected = buffer[:, :4].clone()
    buffer.normal_()  # the next read
    assert torch.equal(band, expected) and torch.equal(tail, expected)


# ---- Wan 2.2's residual VAE ---------------------------------------------------------------------------


def make_wan22(seed: int = 12):
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           is_residual=True, patch_size=2, in_channels=12, out_channels=12,
                           scale_factor_spatial=16).eval()
    with torch.no_grad():
        for module in vae.modules():
            if hasattr(module, "gamma"):
                module.gamma.normal_(1.0, 0.2)
    return vae


@pytest.fixture(scope="module")
def wan22():
    return make_wan22()


def test_wan22_residual_vae_is_exact_at_every_budget(wan22):
    z = torch.randn(1, 4, 3, 5, 3, generator=torch.Generator().manual_seed(13))  # odd latent px
    x = torch.rand(1, 3, 11, 80, 48, generator=torch.Generator().manual_seed(14)) * 2 - 1
    with torch.no_grad():
        for op, inp, ref in (("decode", z, wan22.decode(z).sample), ("encode", x, wan22.encode(x).latent_dist.mode())):
            for name, budget in budgets(wan22, tuple(inp.shape), op).items():
                report = vaekit.RunReport()
                out = (vaekit.decode if op == "decode" else vaekit.encode)(wan22, inp, budget, report=report)
                assert report.mode == ("whole" if name == "whole" else "stream"), (op, name)
                assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL, (op, name)


def test_wan22_patch_order_matters(wan22, monkeypatch):
    """torch's (c, row, column) order instead of Wan 2.2's (c, column, row): far off, so the test above can fail."""
    from vaekit.arch import wan as wan_arch

    z = torch.randn(1, 4, 2, 5, 3, generator=torch.Generator().manual_seed(15))
    monkeypatch.setattr(wan_arch, "PATCH_ORDER", "channel")
    with torch.no_grad():
        out = vaekit.decode(wan22, z, budgets(wan22, tuple(z.shape))["smallest"])
        assert relative_error(out, wan22.decode(z).sample) > 1e-2


def test_wan22_ti2v_image_to_video_pipeline_is_the_same_under_apply():
    """Wan 2.2 TI2V 5B's pipeline: the residual VAE encodes the image and decodes the video."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from PIL import Image

    from conftest import with_and_without_apply

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           scale_factor_spatial=16, scale_factor_temporal=4).eval()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=48, out_channels=48, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                                   scheduler=scheduler, transformer_2=None, image_encoder=None, image_processor=None,
                                   boundary_ratio=None, expand_timesteps=True)
    pipe.set_progress_bar_config(disable=True)
    emb, neg = torch.randn(2, 1, 6, 32, generator=torch.Generator().manual_seed(16))

    def call():
        return pipe(image=Image.new("RGB", (64, 32), (90, 140, 200)), prompt_embeds=emb, negative_prompt_embeds=neg,
                    height=32, width=64, num_frames=9, num_inference_steps=2, guidance_scale=3.0, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).frames

    ref, out = with_and_without_apply(pipe, call, "1MiB")
    assert out.shape == ref.shape == (1, 9, 3, 32, 64) and relative_error(out, ref) <= REL_TOL


def test_progress_counts_every_chunk(wan, capsys):
    from vaekit.progress import STEPS

    z = torch.randn(1, 4, 3, 7, 5, generator=torch.Generator().manual_seed(17))
    low = budgets(wan, tuple(z.shape))["smallest"]
    seen = []
    with torch.no_grad():
        vaekit.decode(wan, z, low, progress=lambda stage, done, total: seen.append((stage, done, total)))
        stages = len(program_for(wan, "decode").stages)
        assert sorted({s for s, _, _ in seen}) == list(range(3 * stages))  # three chunks, every stage of each
        assert seen[-1][0] == 3 * stages - 1 and seen[-1][1] == seen[-1][2]
        vaekit.decode(wan, z, low, progress=True)  # stderr is not a terminal: a line per tenth of the whole video
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vaekit decode")]
    assert 1 <= len(lines) <= STEPS and lines[-1].startswith("vaekit decode: 100%")


def test_cli_plans_a_video_from_its_config(wan, tmp_path, capsys):
    from vaekit.cli import main

    wan.save_pretrained(tmp_path / "vae")
    assert main(["plan", "--model", str(tmp_path / "vae"), "--size", "416x240", "--frames", "81", "--budget",
                 "64MiB"]) == 0
    out = capsys.readouterr().out
    assert "decode 1x4x21x30x52 -> 1x3x81x240x416" in out and "mode stream" in out
    assert main(["plan", "--model", str(tmp_path / "vae"), "--size", "416x240", "--frames", "9", "--op", "encode",
                 "--budget", "64MiB"]) == 0
    assert "encode 1x3x9x240x416 -> 1x8x3x30x52" in capsys.readouterr().out


def make_qwen21(seed: int = 0, **changes):
    """Qwen-Image 2.1's VAE (AutoencoderKLQwenImage21): Wan 2.2's residual network on one frame, its convs
    2-D, four channels in and out (its config's), a wider decoder than encoder."""
    from diffusers import AutoencoderKLQwenImage21

    torch.manual_seed(seed)
    config = dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                  temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                  scale_factor_spatial=8)
    vae = AutoencoderKLQwenImage21(**{**config, **changes}).eval()
    with torch.no_grad():
        for module in vae.modules():
            if hasattr(module, "gamma"):
                module.gamma.normal_(1.0, 0.2)
    return vae


@pytest.mark.parametrize("changes", [{}, {"patch_size": 2, "in_channels": 12, "out_channels": 12}],
                         ids=["rgba", "patches"])
def test_qwen_image_21_is_exact_at_every_budget(changes):
    vae = make_qwen21(**changes)
    f = 8 * changes.get("patch_size", 1)
    z = torch.randn(2, 4, 1, 5, 7, generator=torch.Generator().manual_seed(3))  # two images, odd latent px
    x = torch.rand(2, vae.config.in_channels // changes.get("patch_size", 1) ** 2, 1, 5 * f, 7 * f,
                   generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        for op, inp, ref in (("decode", z, vae.decode(z).sample), ("encode", x, vae.encode(x).latent_dist.mode())):
            program = program_for(vae, op)
            low = smallest_budget(program, tuple(inp.shape), 4, first=True)
            whole = vaekit.plan(vae, tuple(inp.shape), None, op=op).whole_peak_bytes
            for name, budget in {"smallest": low, "mixed": (low + whole) // 2, "whole": whole}.items():
                report = vaekit.RunReport()
                out = (vaekit.decode if op == "decode" else vaekit.encode)(vae, inp, budget, report=report)
                assert report.mode == ("whole" if name == "whole" else "stream"), (op, name)
                assert out.shape == ref.shape and relative_error(out, ref) <= REL_TOL, (op, name)


def test_qwen_image_21_pipeline_is_the_same_under_apply():
    """QwenImage21Pipeline (text to image) under apply at a budget that streams. Its processor (Qwen3-VL's:
    a tokenizer and a chat template from the Hub) cannot be built offline, and with prompt embeddings given
    the pipeline asks it only, when it is made, for the system prompt's token count and the image token's
    id: a stub answers those two, as the other pipelines' tests pass no tokenizer."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Transformer2DModel

    from conftest import with_and_without_apply

    class Processor:
        tokenizer = types.SimpleNamespace(encode=lambda text: [7])

        def apply_chat_template(self, messages, tokenize=True, return_dict=False):
            return [[0] * 5]

    torch.manual_seed(0)
    transformer = QwenImage21Transformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                                attention_head_dim=16, num_attention_heads=2, context_in_dim=16,
                                                axes_dims_rope=(4, 6, 6)).eval()
    pipe = diffusers.QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=make_qwen21(),
                                         text_encoder=None, processor=Processor(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    emb, mask = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(1)), torch.ones(1, 6, dtype=torch.long)

    def call():  # the pipeline's own latent size is height/16 x width/16: 8x10 latent px, decoded to 64x80
        return pipe(prompt_embeds=emb, prompt_embeds_mask=mask, height=128, width=160, num_inference_steps=2,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).images

    ref, out = with_and_without_apply(pipe, call, "1MiB")
    assert out.shape == ref.shape == (1, 4, 64, 80) and relative_error(out, ref) <= REL_TOL


def test_qwen_image_21_takes_single_frames():
    with pytest.raises(vaekit.errors.InputError, match="single frames"):
        vaekit.decode(make_qwen21(), torch.randn(1, 4, 2, 5, 7))
