"""Faults under a run, with nothing lost and nothing left behind: the scratch disk filling up, a scratch
file truncated, an output folder that is read-only or fills up, SIGINT and SIGTERM mid-run."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from conftest import budgets_for
from vaekit import store as store_module
from vaekit.errors import DiskError

SHAPE = (1, 4, 13, 11)


def _full_after(n: int, write):
    """``write`` that works ``n`` times, then fails as a full disk does (ENOSPC)."""
    calls = []

    def full(*args):
        calls.append(1)
        if len(calls) > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(*args)

    return full


@pytest.fixture
def case(vaes):
    vae = vaes("sd")
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    return vae, z, budgets_for(vae, SHAPE)["smallest"]


def test_a_full_scratch_disk_is_a_disk_error_naming_the_folder_and_the_need(case, tmp_path, monkeypatch):
    vae, z, budget = case
    monkeypatch.setattr(store_module.os, "pwrite", _full_after(5, os.pwrite))
    with pytest.raises(DiskError, match="disk filled up") as e:
        vaekit.decode(vae, z, budget, scratch_dir=tmp_path)
    assert str(tmp_path) in str(e.value) and "need" in str(e.value) and e.value.errno == errno.ENOSPC
    assert isinstance(e.value, OSError) and not list(tmp_path.iterdir())  # scratch folder gone


def test_a_scratch_file_truncated_under_the_run_is_an_error_not_zeros(case, tmp_path, monkeypatch):
    vae, z, budget = case
    read = store_module._DiskMap.read

    def truncated_read(self, r0, r1):
        self.flush()
        os.ftruncate(self.fd, 0)  # someone else's cleanup ran over the scratch folder
        return read(self, r0, r1)

    monkeypatch.setattr(store_module._DiskMap, "read", truncated_read)
    with pytest.raises(DiskError, match="could not be read back"):
        vaekit.decode(vae, z, budget, scratch_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_an_output_folder_that_cannot_be_written_is_a_disk_error(case, tmp_path, monkeypatch):
    vae, z, budget = case
    import tempfile

    def read_only(*args, **kwargs):  # what mkstemp meets in a read-only folder (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(DiskError, match="cannot write the output"):
        vaekit.decode(vae, z, budget, out=tmp_path / "img.npy")
    assert not list(tmp_path.iterdir())


def test_an_output_disk_filling_up_leaves_the_old_file_and_no_part(case, tmp_path, monkeypatch):
    vae, z, budget = case
    target = tmp_path / "img.npy"
    np.save(target, np.zeros(3))
    before = target.read_bytes()
    from vaekit import sinks

    monkeypatch.setattr(sinks._NpySink, "write", _full_after(2, sinks._NpySink.write))
    with pytest.raises(DiskError, match="cannot write the output"):
        vaekit.decode(vae, z, budget, out=target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["img.npy"]  # no .part


CHILD = textwrap.dedent("""
    import sys, time, torch, vaekit
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import budgets_for, make_vae
    folder = Path(sys.argv[1])
    vae = make_vae("sd")
    z = torch.randn(1, 4, 40, 36)
    def progress(stage, done, total):
        if stage == 3:
            (folder / "started").touch()
            time.sleep(0.2)  # slow chunks: the signal lands mid-run
    vaekit.decode(vae, z, budgets_for(vae, tuple(z.shape))["smallest"], scratch_dir=folder / "scratch",
                  out=folder / "img.npy", progress=progress)
    print("finished")
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_leaves_no_scratch_and_no_part_file(sig, tmp_path):
    (tmp_path / "scratch").mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(Path(__file__).parent)), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    assert list((tmp_path / "scratch").iterdir())  # mid-run: the scratch folder is there
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert "finished" not in out
    if sig == signal.SIGTERM:
        assert child.returncode == -signal.SIGTERM, err  # ends as SIGTERM would, after the cleanup
    else:
        assert "KeyboardInterrupt" in err
    assert not list((tmp_path / "scratch").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "started"]  # no img.npy, no .part
