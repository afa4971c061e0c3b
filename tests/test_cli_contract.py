"""The CLI's contract, walked through a table of bad input for every subcommand: one line on stderr
naming what was wrong, the documented exit code, no traceback, and no file made or changed. Unwritable
folders and full disks are simulated (root ignores permissions): a folder named ``ro`` refuses new files
as a read-only mount would, and ``full`` makes the n-th write of a run fail with ENOSPC."""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.cli import main

BAD, UNSUPPORTED, BUDGET, CHECKPOINT, DEVICE, DISK = 2, 3, 4, 5, 7, 8


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder holding a latents file of the built-in TAEF2's kind, a photo, junk, a file where a folder is
    expected, and ``ro`` (a folder that takes no new file)."""
    torch.save(torch.randn(1, 32, 3, 4, generator=torch.Generator().manual_seed(0)), tmp_path / "lat.pt")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    torch.save(torch.randn(1, 32, 2, 3, 4), tmp_path / "video.pt")
    torch.save(torch.randn(1, 4, 3, 4), tmp_path / "sd.pt")
    (tmp_path / "file").write_text("a file, not a folder")
    (tmp_path / "ro").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "comfy").mkdir()
    (tmp_path / "comfy" / "main.py").write_text("")
    mkstemp, mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def refuse(real):
        def make(*args, dir=None, **kwargs):
            if dir is not None and os.path.basename(os.path.normpath(str(dir))) == "ro":
                raise PermissionError(errno.EROFS, "Read-only file system")
            return real(*args, dir=dir, **kwargs)
        return make

    monkeypatch.setattr(tempfile, "mkstemp", refuse(mkstemp))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse(mkdtemp))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _full_disk(monkeypatch):
    """Every latents or image file written fails as a full disk does."""
    import safetensors.torch

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    monkeypatch.setattr(np, "save", no_space)
    monkeypatch.setattr(Image.Image, "save", no_space)
    monkeypatch.setattr(torch, "save", no_space)


#: (argv, exit code, a phrase the line must hold, what to set up)
CASES = {
    # decode
    "decode: latents missing": (["decode", "nope.pt", "o.png"], BAD, "nope.pt", None),
    "decode: latents a folder": (["decode", "sub", "o.png"], BAD, "sub", None),
    "decode: a dict inside a valid .pt": (["decode", "dict.pt", "o.png"], BAD, "dict.pt", None),
    "decode: output folder missing": (["decode", "lat.pt", "nodir/o.png"], DISK, "nodir", None),
    "decode: output is a folder": (["decode", "lat.pt", "sub"], DISK, "folder of that name", None),
    "decode: output a folder named .png": (["decode", "lat.pt", "sub.png"], DISK, "folder of that name", "sub.png"),
    "decode: output folder read-only": (["decode", "lat.pt", "ro/o.png"], DISK, "ro", None),
    "decode: .npy into a read-only folder": (["decode", "lat.pt", "ro/o.npy"], DISK, "ro", None),
    "decode: output folder is a file": (["decode", "lat.pt", "file/o.png"], DISK, "file", None),
    "decode: scratch folder missing": (["decode", "lat.pt", "o.png", "--scratch-dir", "/nonexistent/x"], DISK,
                                       "scratch", None),
    "decode: scratch folder is a file": (["decode", "lat.pt", "o.png", "--scratch-dir", "file"], DISK, "scratch",
                                         None),
    "decode: scratch folder read-only": (["decode", "lat.pt", "o.npy", "--scratch-dir", "ro", "--budget", "1MiB"],
                                         DISK, "scratch", None),
    "decode: negative budget": (["decode", "lat.pt", "o.png", "--budget=-5MiB"], BAD, "-5MiB", None),
    "decode: absurd budget": (["decode", "lat.pt", "o.png", "--budget", "1B"], BUDGET, "smallest", None),
    "decode: unreadable budget": (["decode", "lat.pt", "o.png", "--budget", "lots"], BAD, "lots", None),
    "decode: unknown output suffix": (["decode", "lat.pt", "o.xyz"], BAD, "o.xyz", None),
    "decode: video latents to .png": (["decode", "video.pt", "o.png"], BAD, "video", None),
    "decode: a missing GPU": (["decode", "lat.pt", "o.png", "--device", "cuda"], DEVICE, "CUDA", None),
    "decode: a model file that is junk": (["decode", "lat.pt", "o.png", "--model", "junk.png"], CHECKPOINT, "junk",
                                          None),
    "decode: full disk writing .pt": (["decode", "lat.pt", "o.pt"], DISK, "No space", "full"),
    # encode
    "encode: image missing": (["encode", "nope.png", "z.safetensors"], BAD, "nope.png", None),
    "encode: image is junk": (["encode", "junk.png", "z.safetensors"], BAD, "junk.png", None),
    "encode: image is a folder": (["encode", "sub", "z.safetensors"], BAD, "sub", None),
    "encode: output folder read-only": (["encode", "p.png", "ro/z.safetensors"], DISK, "ro", None),
    "encode: .npy into a read-only folder": (["encode", "p.png", "ro/z.npy"], DISK, "ro", None),
    "encode: .pt into a missing folder": (["encode", "p.png", "nodir/z.pt"], DISK, "nodir", None),
    "encode: wrong output suffix": (["encode", "p.png", "z.png"], BAD, "z.png", None),
    "encode: full disk": (["encode", "p.png", "z.safetensors"], DISK, "No space", "full"),
    "encode: scratch folder missing": (["encode", "p.png", "z.pt", "--scratch-dir", "/nonexistent/x"], DISK,
                                       "scratch", None),
    # roundtrip
    "roundtrip: output folder read-only": (["roundtrip", "p.png", "ro/r.png"], DISK, "ro", None),
    "roundtrip: output folder missing": (["roundtrip", "p.png", "nodir/r.png"], DISK, "nodir", None),
    "roundtrip: full disk": (["roundtrip", "p.png", "r.png"], DISK, "No space", "full"),
    # plan
    "plan: size off the scale": (["plan", "--model", "taef2", "--size", "1001x1001"], BAD,
                                   "the nearest are 1000x1000 and 1008x1008", None),
    "plan: unreadable size": (["plan", "--model", "taef2", "--size", "big"], BAD, "big", None),
    "plan: negative budget": (["plan", "--model", "taef2", "--size", "512x512", "--budget=-1GiB"], BAD, "-1GiB",
                              None),
    "plan: a model that is not there": (["plan", "--model", "nope", "--size", "512x512"], CHECKPOINT, "nope", None),
    "decode: SD latents, --model forgotten": (["decode", "sd.pt", "o.png"], BAD, "name yours with --model", None),
    "decode: a TAESD model that is not built in": (["decode", "lat.pt", "o.png", "--model", "taesd"], CHECKPOINT,
                                                   "taesd_encoder.pth taesd_decoder.pth", None),
    # the others
    "comfyui: no such folder": (["comfyui", "install", "nodir"], BAD, "nodir", None),
    "comfyui: main.py but no nodes.py": (["comfyui", "install", "comfy"], BAD, "it has no nodes.py or custom_nodes/",
                                         None),
    "examples: DIR is a file": (["examples", "make", "file"], DISK, "is a file", None),
    "demo: --out is a file": (["demo", "--out", "file"], DISK, "is a file", None),
    "bench: --out is a file": (["bench", "--quick", "--out", "file"], DISK, "is a file", None),
    "gpu-check: --out is a file": (["gpu-check", "--device", "cpu", "--quick", "--out", "file"], DISK, "is a file",
                                   None),
    "gpu-check: --out read-only": (["gpu-check", "--device", "cpu", "--quick", "--out", "ro"], DISK, "ro", None),
}


def _snapshot(folder) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(case, place, monkeypatch, capsys):
    argv, code, phrase, setup = CASES[case]
    if setup == "full":
        _full_disk(monkeypatch)
    elif setup:
        (place / setup).mkdir()
    before = _snapshot(place)
    assert main(argv) == code, capsys.readouterr().err
    err = capsys.readouterr().err
    assert err.startswith("vaekit: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert phrase in err, err
    assert _snapshot(place) == before  # nothing made, nothing changed (and no folder made by a typo)


def test_an_unwritable_output_is_refused_before_the_encode_runs(place, monkeypatch, capsys):
    import vaekit.api

    ran = []
    monkeypatch.setattr(vaekit.api, "encode", lambda *a, **k: ran.append(a))
    assert main(["encode", "p.png", "ro/z.safetensors"]) == DISK
    assert not ran and "the folder ro takes no new file" in capsys.readouterr().err


def test_the_python_api_names_the_scratch_folder(place):
    import vaekit
    from vaekit.errors import DiskError

    with pytest.raises(DiskError, match="scratch files .* the folder /nonexistent/x does not exist"):
        vaekit.decode(vaekit.load("taef2"), torch.randn(1, 32, 3, 4), "1MiB", scratch_dir="/nonexistent/x")
