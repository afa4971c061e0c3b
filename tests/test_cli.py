"""The CLI: decode to files, print plans, fail in one line without touching existing outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUILTIN_DIR, REL_TOL, make_vae, relative_error, untiled
from vaekit.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae")
    make_vae("sd").save_pretrained(path)  # config.json + diffusion_pytorch_model.safetensors
    return path


@pytest.fixture(scope="module")
def latents_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("z") / "latents.npy"
    np.save(path, torch.randn(1, 4, 33, 47, generator=torch.Generator().manual_seed(7)).numpy())
    return path


def test_decode_to_npy_is_exact(model_dir, latents_file, tmp_path):
    out = tmp_path / "image.npy"
    assert main(["decode", str(latents_file), str(out), "--model", str(model_dir), "--budget", "3MiB", "--quiet"]) == 0
    ref = untiled(make_vae("sd"), torch.from_numpy(np.load(latents_file)))
    assert relative_error(torch.from_numpy(np.load(out)), ref) <= REL_TOL


def test_decode_to_png(model_dir, latents_file, tmp_path):
    out = tmp_path / "image.png"
    assert main(["decode", str(latents_file), str(out), "--model", str(model_dir), "--quiet"]) == 0
    image = Image.open(out)
    assert image.size == (47 * 4, 33 * 4) and image.mode == "RGB"
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]  # no temp file left beside it


def test_decode_from_safetensors_and_pt(model_dir, tmp_path):
    from safetensors.torch import save_file

    z = torch.randn(1, 4, 8, 8)
    save_file({"latents": z}, tmp_path / "z.safetensors")
    torch.save(z, tmp_path / "z.pt")
    for name in ("z.safetensors", "z.pt"):
        out = tmp_path / f"{name}.npy"
        assert main(["decode", str(tmp_path / name), str(out), "--model", str(model_dir), "--quiet"]) == 0
        assert np.load(out).shape == (1, 3, 32, 32)


def test_plan_prints_a_table(model_dir, capsys):
    assert main(["plan", "--model", str(model_dir), "--size", "1024x768", "--budget", "64MiB"]) == 0
    text = capsys.readouterr().out
    assert "mode stream" in text and "conv_out" in text and "1x3x768x1024" in text


def test_errors_are_one_line_with_a_code_and_leave_outputs_alone(model_dir, tmp_path, capsys):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, 3, 8, 8), dtype=np.float32))
    out = tmp_path / "keep.png"
    out.write_bytes(b"precious")
    code = main(["decode", str(wrong), str(out), "--model", str(model_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("vaekit: error: ") and "expects 4" in err
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png", "wrong.npy"]


def test_budget_error_exit_code_and_message(model_dir, latents_file, tmp_path, capsys):
    code = main(["decode", str(latents_file), str(tmp_path / "x.png"), "--model", str(model_dir), "--budget", "1KiB"])
    err = capsys.readouterr().err
    assert code == 4 and "smallest budget that fits" in err
    assert not (tmp_path / "x.png").exists()


def test_missing_model_folder(latents_file, tmp_path, capsys):
    code = main(["decode", str(latents_file), str(tmp_path / "x.png"), "--model", str(tmp_path / "nope")])
    assert code == 5 and "config.json" in capsys.readouterr().err


def test_python_dash_m_entry_point(model_dir):
    result = subprocess.run([sys.executable, "-m", "vaekit", "plan", "--model", str(model_dir), "--size", "64x64",
                             "--budget", "1GiB"], capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 0 and "mode whole" in result.stdout


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage.data import astronaut

    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(astronaut()[:200, 100:356]).save(path)  # 256x200, an 8x multiple both ways
    return path


def test_encode_to_safetensors_is_exact(model_dir, photo, tmp_path):
    from safetensors.torch import load_file

    from vaekit.io import load_image

    out = tmp_path / "z.safetensors"
    assert main(["encode", str(photo), str(out), "--model", str(model_dir), "--budget", "6MiB", "--quiet"]) == 0
    with torch.no_grad():
        ref = make_vae("sd").encode(load_image(photo)).latent_dist.mode()
    assert relative_error(load_file(out)["latents"], ref) <= REL_TOL


def test_roundtrip_prints_psnr(model_dir, photo, tmp_path, capsys):
    out = tmp_path / "rt.png"
    assert main(["roundtrip", str(photo), str(out), "--model", str(model_dir), "--budget", "6MiB", "--quiet"]) == 0
    assert "PSNR" in capsys.readouterr().out and Image.open(out).size == (256, 200)


def test_taesd_files_as_the_model(photo, tmp_path, capsys):
    halves = [str(BUILTIN_DIR / "taef2_encoder.pth"), str(BUILTIN_DIR / "taef2_decoder.pth")]
    out = tmp_path / "rt.png"
    assert main(["roundtrip", str(photo), str(out), "--model", *halves, "--budget", "16MiB", "--quiet"]) == 0
    psnr = float(capsys.readouterr().out.split("PSNR")[1].split()[0])
    assert psnr > 25  # trained weights on a real photo
    z = tmp_path / "z.safetensors"
    assert main(["encode", str(photo), str(z), "--model", halves[0], "--quiet"]) == 0
    assert main(["decode", str(z), str(tmp_path / "d.png"), "--model", halves[1], "--quiet"]) == 0
    assert Image.open(tmp_path / "d.png").size == (256, 200)


def test_roundtrip_uses_the_built_in_taef2_by_default(photo, tmp_path, capsys):
    assert main(["roundtrip", str(photo), str(tmp_path / "rt.png"), "--budget", "16MiB", "--quiet"]) == 0
    assert float(capsys.readouterr().out.split("PSNR")[1].split()[0]) > 25


def test_encode_refuses_a_wrong_output_suffix_before_work(model_dir, photo, tmp_path, capsys):
    code = main(["encode", str(photo), str(tmp_path / "z.png"), "--model", str(model_dir)])
    assert code == 2 and ".safetensors" in capsys.readouterr().err


def test_doctor_prints_versions_devices_and_choices(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "diffusers" in out and "RAM" in out and "would use" in out
    assert ("cuda    not available" in out) != ("bf16 units" in out)


def test_each_error_class_has_its_exit_code(model_dir, latents_file, tmp_path, capsys):
    from vaekit import errors

    codes = {cls.exit_code for cls in (errors.VaekitError, errors.InputError, errors.UnsupportedModelError,
                                       errors.BudgetError, errors.CheckpointError, errors.PrecisionError,
                                       errors.DeviceError)}
    assert len(codes) == 7  # distinct per class
    if not torch.cuda.is_available():  # a device that is not there: DeviceError, exit 7
        code = main(["decode", str(latents_file), str(tmp_path / "x.png"), "--model", str(model_dir),
                     "--device", "cuda", "--quiet"])
        err = capsys.readouterr().err
        assert code == 7 and "CUDA is not available" in err and err.count("\n") == 1
    junk = tmp_path / "vae.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert main(["decode", str(latents_file), str(tmp_path / "y.png"), "--model", str(junk), "--quiet"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.safetensors"]  # nothing half-written


def test_recoveries_are_told_on_stderr(model_dir, latents_file, tmp_path, capsys):
    from vaekit.testing import oom_after

    with oom_after(2):
        assert main(["decode", str(latents_file), str(tmp_path / "x.npy"), "--model", str(model_dir),
                     "--budget", "3MiB", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "vaekit: note: " in err and "retried after freeing caches" in err


def test_version_and_a_plan_of_the_default_model(capsys):
    import vaekit

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"vaekit {vaekit.__version__}\n"
    assert main(["plan", "--size", "512x512", "--budget", "64MiB"]) == 0  # taef2, as decode's default
    assert "1x32x64x64 -> 1x3x512x512" in capsys.readouterr().out


def test_an_encode_plan_says_what_encode_returns(model_dir, capsys):
    assert main(["plan", "--model", str(model_dir), "--op", "encode", "--size", "512x512", "--budget", "64MiB"]) == 0
    out = capsys.readouterr().out
    assert "-> 1x8x128x128" in out and "encode returns latents of 1x4x128x128" in out  # the moments, then their mode
