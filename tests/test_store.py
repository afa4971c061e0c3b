"""The activation store: tiers round-trip bands, and scratch files never outlive a run."""

from __future__ import annotations

import os

import pytest
import torch

import vaekit
from conftest import make_vae
from vaekit.errors import DiskError
from vaekit.plan import smallest_budget
from vaekit.store import Store


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
def test_bands_round_trip(tier, tmp_path):
    data = torch.randn(2, 13, 5, 3)  # (B, H, W, C)
    with Store("cpu", tmp_path) as store:
        store.alloc("m", tuple(data.shape), data.dtype, tier)
        for r0 in range(0, 13, 4):
            store.write("m", r0, data[:, r0 : r0 + 4])
        assert torch.equal(store.read("m", 0, 13), data)
        assert torch.equal(store.read("m", 6, 9), data[:, 6:9])
    assert os.listdir(tmp_path) == []


def test_bfloat16_on_disk(tmp_path):
    data = torch.randn(1, 4, 3, 2).to(torch.bfloat16)
    with Store("cpu", tmp_path) as store:
        store.alloc("m", tuple(data.shape), data.dtype, "disk")
        store.write("m", 0, data)
        assert torch.equal(store.read("m", 1, 3), data[:, 1:3])


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_no_scratch_file_left_after_an_error(tmp_path, exc):
    vae = make_vae("noattn")
    z = torch.randn(1, 4, 24, 24)
    budget = smallest_budget(vaekit.arch.program_for(vae, "decode"), tuple(z.shape), 4)
    seen = []

    def fail_midway(stage, rows_done, rows_total):
        seen.append(os.listdir(tmp_path))
        if stage == 5:
            raise exc("stop")

    with pytest.raises(exc):
        vaekit.decode(vae, z, budget, scratch_dir=tmp_path, progress=fail_midway)
    assert any(seen), "the run should have been using the scratch dir"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("start", ["device", "disk"])
def test_retype_keeps_the_rows(start, tmp_path):
    data = torch.randn(2, 5, 3, 4).half()
    with Store("cpu", tmp_path) as store:
        store.alloc("m", tuple(data.shape), data.dtype, start)
        store.write("m", 0, data)
        store.retype("m", torch.float32)
        band = store.read("m", 0, 5)
        assert band.dtype == torch.float32 and torch.equal(band, data.float())


def test_demote_moves_a_device_map_to_disk(tmp_path):
    data = torch.randn(1, 130, 3, 4)  # more rows than one copy step
    with Store("cpu", tmp_path) as store:
        store.alloc("m", tuple(data.shape), data.dtype, "device")
        store.write("m", 0, data)
        store.demote("m", "disk")
        assert os.listdir(store.scratch) == ["1-m.bin"]
        assert torch.equal(store.read("m", 0, 130), data)


def test_disk_writes_run_behind_and_a_failed_write_is_raised(tmp_path, monkeypatch):
    """Scratch writes go on behind the compute; a read of the map waits for them, and a write's
    error comes out at the next call on that map, not lost in the writer thread."""
    import threading

    from vaekit import store as store_module

    data = torch.randn(1, 8, 4, 2)
    gate = threading.Event()
    write_all = store_module._write_all

    def slow_write(fd, band, offset):
        gate.wait(5)
        write_all(fd, band, offset)

    monkeypatch.setattr(store_module, "_write_all", slow_write)
    with Store("cpu", tmp_path) as store:
        store.alloc("m", tuple(data.shape), data.dtype, "disk")
        store.write("m", 0, data)  # returns while the write waits on the gate
        assert store.maps["m"].pending is not None and not store.maps["m"].pending.done()
        gate.set()
        assert torch.equal(store.read("m", 0, 8), data)

        def failing_write(fd, band, offset):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store_module, "_write_all", failing_write)
        store.write("m", 0, data)
        with pytest.raises(DiskError, match="disk filled up") as e:  # typed, and still an OSError
            store.read("m", 0, 8)
        assert isinstance(e.value, OSError) and e.value.errno == 28


def test_a_failed_write_does_not_hide_the_error_that_ended_the_run(tmp_path, monkeypatch):
    from vaekit import store as store_module

    def failing_write(fd, band, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_write_all", failing_write)
    with pytest.raises(KeyboardInterrupt), Store("cpu", tmp_path) as store:
        store.alloc("m", (1, 4, 4, 2), torch.float32, "disk")
        store.write("m", 0, torch.zeros(1, 4, 4, 2))
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_swapped_disk_maps_keep_their_own_files(tmp_path):
    """Time caches swap with their next tails after each chunk: each file stays with its data."""
    a, b = torch.randn(1, 5, 3, 2), torch.randn(1, 5, 3, 2)
    with Store("cpu", tmp_path) as store:
        store.alloc("c", tuple(a.shape), a.dtype, "disk")
        store.alloc("c_out", tuple(b.shape), b.dtype, "disk")
        store.zero("c")
        assert torch.equal(store.read("c", 0, 5), torch.zeros_like(a))
        store.write("c", 0, a)
        store.write("c_out", 0, b)
        store.swap("c", "c_out")
        store.demote("c", "disk")  # a move after a swap: the new file must not clobber the other map's
        assert torch.equal(store.read("c", 0, 5), b) and torch.equal(store.read("c_out", 0, 5), a)
    assert not os.listdir(tmp_path)
