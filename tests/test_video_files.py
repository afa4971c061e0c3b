"""Every video family of 2026 through the entry points around the engine: its frames written to a file
as they are made (.npy in float32, .zarr in 8 bits), and the CLI's encode and decode of its diffusers
folder, equal to the model's own calls. The model's own clips (HunyuanVideo 1.0's cross-faded windows,
Mochi's dropped frames) and chunks (Kandinsky 5, CogVideoX) reach the file in the model's order."""

import numpy as np
import pytest
import torch

import vaekit
from conftest import REL_TOL, relative_error, untiled_result
from conftest import whole_video_budgets as budgets


def _family(name: str):
    """(model, latents, video) of a family's small test model."""
    if name == "ltxv":
        from test_ltx_video import V090, make

        vae = make(V090)
        x = torch.rand(1, 3, 1 + vaekit.arch.temporal_factor(vae), 24, 40, generator=torch.Generator().manual_seed(1))
        return vae, torch.randn(1, 8, 2, 3, 5, generator=torch.Generator().manual_seed(0)), x * 2 - 1
    if name == "hunyuan_video":
        from test_hunyuan_video import X, Z, make
    elif name == "kvae":
        from test_kvae import X, Z, make
    elif name == "cogvideox":
        from test_cogvideox import X, Z, make
    else:
        from test_mochi import Z, _video, make

        X = _video(13, 40, 56, batch=1)
    return make(), Z[:1], X


def _decoded(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


@pytest.mark.parametrize("name", ["ltxv", "hunyuan_video", "kvae", "cogvideox", "mochi"])
def test_frames_to_a_file_and_the_cli(name, tmp_path):
    from safetensors.torch import save_file

    from vaekit.cli import main as cli

    vae, z, x = _family(name)
    ref = _decoded(vae, z)  # (1, 3, F, H, W)
    low = budgets(vae, tuple(z.shape))["smallest"]
    for suffix in (".npy", ".zarr"):
        path = tmp_path / f"video{suffix}"
        writer = vaekit.plan(vae, tuple(z.shape), None, out=path).writer_bytes
        assert vaekit.decode(vae, z, low + writer, out=path) == path
        if suffix == ".npy":
            assert relative_error(torch.from_numpy(np.load(path)), ref) <= REL_TOL, name
        else:
            import zarr

            ref8 = ((ref.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1)  # (1, F, H, W, 3) 8-bit
            assert (torch.from_numpy(zarr.open_array(str(path))[:]).float() - ref8).abs().max() <= 1, name

    vae.save_pretrained(tmp_path / "vae")
    save_file({"video": x.contiguous()}, tmp_path / "x.safetensors")
    save_file({"latents": z.contiguous()}, tmp_path / "z.safetensors")
    common = ["--model", str(tmp_path / "vae"), "--quiet", "--dtype", "float32"]
    budget = str(budgets(vae, tuple(x.shape), "encode")["smallest"])
    assert cli(["encode", str(tmp_path / "x.safetensors"), str(tmp_path / "z.npy"), "--budget", budget, *common]) == 0
    encoded = untiled_result(vae, "encode", x)
    assert relative_error(torch.from_numpy(np.load(tmp_path / "z.npy")), encoded) <= REL_TOL, name
    budget = str(low + vaekit.plan(vae, tuple(z.shape), None, out=tmp_path / "v.npy").writer_bytes)
    assert cli(["decode", str(tmp_path / "z.safetensors"), str(tmp_path / "v.npy"), "--budget", budget, *common]) == 0
    assert relative_error(torch.from_numpy(np.load(tmp_path / "v.npy")), ref) <= REL_TOL, name


@pytest.mark.parametrize("name", ["ltxv", "hunyuan_video", "kvae"])
def test_compiled_is_exact(name):
    """compile=True on the families without a compiled test of their own: the same frames and latents
    (their stages of other kinds run eagerly; CogVideoX's once did not, test_cogvideox.py)."""
    vae, z, x = _family(name)
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = vaekit.decode(vae, z, budgets(vae, tuple(z.shape), compiled=True)["mixed"], compile=True)
        assert relative_error(out, ref) <= REL_TOL, name
        ref = untiled_result(vae, "encode", x)
        out = vaekit.encode(vae, x, budgets(vae, tuple(x.shape), "encode", compiled=True)["mixed"], compile=True)
        assert relative_error(out, ref) <= REL_TOL, name
