"""Outputs written band by band (.npy, BigTIFF): exact, never held whole, never half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vaekit
from conftest import REL_TOL, budgets_for, relative_error, untiled
from vaekit.errors import BudgetError
from vaekit.io import to_uint8


@pytest.fixture(scope="module")
def case(vaes):
    vae = vaes("sd")
    z = torch.randn(1, 4, 33, 47, generator=torch.Generator().manual_seed(11))
    return vae, z, untiled(vae, z), budgets_for(vae, tuple(z.shape))["smallest"]


def test_npy_sink_is_exact(case, tmp_path):
    vae, z, ref, budget = case
    path = vaekit.decode(vae, z, budget, out=tmp_path / "image.npy")
    assert path == tmp_path / "image.npy" and sorted(p.name for p in tmp_path.iterdir()) == ["image.npy"]
    assert relative_error(torch.from_numpy(np.load(path)), ref) <= REL_TOL


def test_bigtiff_sink_is_tiled_and_matches(case, tmp_path):
    import tifffile

    vae, z, ref, budget = case
    path = vaekit.decode(vae, z, budget, out=tmp_path / "image.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].shape == (132, 188, 3)
        image = tif.asarray()
    assert np.abs(image.astype(int) - to_uint8(ref[0]).astype(int)).max() <= 1  # uint8 rounding of ~1e-6


def test_png_sink_streams_scanlines_and_matches(case, tmp_path):
    from PIL import Image

    vae, z, ref, budget = case
    path = vaekit.decode(vae, z, budget, out=tmp_path / "image.png")
    image = np.asarray(Image.open(path))
    assert image.shape == (132, 188, 3)
    assert np.abs(image.astype(int) - to_uint8(ref[0]).astype(int)).max() <= 1


def test_zarr_sink_holds_a_batch_in_whole_chunks(vaes, tmp_path):
    import zarr

    vae = vaes("sd")
    z = torch.randn(2, 4, 70, 33, generator=torch.Generator().manual_seed(12))  # 280 rows: a partial chunk row
    ref = untiled(vae, z)
    path = vaekit.decode(vae, z, budgets_for(vae, tuple(z.shape))["smallest"], out=tmp_path / "image.zarr")
    array = zarr.open_array(str(path), mode="r")
    assert array.shape == (2, 280, 132, 3) and array.chunks == (1, 256, 256, 3)
    for i in range(2):
        assert np.abs(array[i].astype(int) - to_uint8(ref[i]).astype(int)).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.zarr"]


def test_a_zarr_output_replaces_an_old_one_only_on_success(case, tmp_path):
    import zarr

    vae, z, _, budget = case
    target = tmp_path / "image.zarr"
    zarr.create_array(store=str(target), shape=(1,), dtype=np.uint8)
    with pytest.raises(KeyboardInterrupt):
        vaekit.decode(vae, z, budget, out=target, progress=_interrupt_at(20))
    assert zarr.open_array(str(target), mode="r").shape == (1,) and [p.name for p in tmp_path.iterdir()] == [target.name]
    vaekit.decode(vae, z, budget, out=target)
    assert zarr.open_array(str(target), mode="r").shape == (1, 132, 188, 3)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_one_image_formats_refuse_a_batch(vaes, suffix, tmp_path):
    from vaekit.errors import InputError

    z = torch.randn(2, 4, 8, 8)
    with pytest.raises(InputError, match="one RGB image"):
        vaekit.decode(vaes("sd"), z, out=tmp_path / f"image{suffix}")
    assert list(tmp_path.iterdir()) == []


def _interrupt_at(stage_index):
    def interrupt(stage, done, total):
        if stage > stage_index:
            raise KeyboardInterrupt
    return interrupt


def test_whole_mode_writes_the_file_too(case, tmp_path):
    vae, z, ref, _ = case
    path = vaekit.decode(vae, z, out=tmp_path / "image.npy")
    assert relative_error(torch.from_numpy(np.load(path)), ref) <= REL_TOL


def test_a_sink_is_not_counted_in_the_plan(case):
    from vaekit.plan import make_plan

    vae, z, _, budget = case
    program = vaekit.arch.program_for(vae, "decode")
    held = make_plan(program, tuple(z.shape), 4, "float32", "cpu", budget, force_stream=True)
    streamed = make_plan(program, tuple(z.shape), 4, "float32", "cpu", budget, force_stream=True, sink=True)
    out_bytes = next(m.nbytes for m in held.maps if m.name == program.output)
    assert streamed.tiers[program.output] == "sink"
    assert held.stages[-1].resident_bytes - streamed.stages[-1].resident_bytes == out_bytes


def test_a_failed_run_leaves_the_old_file_and_no_part(case, tmp_path):
    vae, z, _, budget = case
    target = tmp_path / "image.tif"
    target.write_bytes(b"precious")
    with pytest.raises(KeyboardInterrupt):
        vaekit.decode(vae, z, budget, out=target, progress=_interrupt_at(20))
    assert target.read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir()] == ["image.tif"]


def test_short_disk_is_a_budget_error_before_any_work(case, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    vae, z, _, budget = case
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1024, 1024))
    with pytest.raises(BudgetError, match="only 1.0 KiB is free"):
        vaekit.decode(vae, z, budget, out=tmp_path / "image.npy", scratch_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_mode_open_would_give(case, tmp_path, umask):
    """mkstemp's private 0600 must not survive the rename: outputs follow the umask like open() (#14)."""
    import os
    import stat

    from vaekit.io import save_latents, save_output

    vae, z, _, budget = case
    old = os.umask(umask)
    try:
        written = [vaekit.decode(vae, z, budget, out=tmp_path / f"image{ext}") for ext in (".npy", ".tif", ".png")]
        zarr = vaekit.decode(vae, z, budget, out=tmp_path / "image.zarr")
        save_output(torch.zeros(1, 3, 8, 8), tmp_path / "held.png")
        save_latents(z, tmp_path / "latents.safetensors")
        written += [tmp_path / "held.png", tmp_path / "latents.safetensors"]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE(zarr.stat().st_mode) == 0o777 & ~umask
