"""The wheel is the product a user installs: built from this checkout's files, it carries the built-in
TAEF2 weights, and installed into a new venv it runs `vaekit roundtrip` with no other file of ours."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _checkout_files(dest: Path) -> None:
    """The files a clean clone would have (tracked, and new ones not ignored), nothing built."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def test_wheel_carries_the_weights_and_runs_alone(tmp_path):
    src, dist, venv = tmp_path / "src", tmp_path / "dist", tmp_path / "venv"
    _checkout_files(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True)
    wheel = next(dist.glob("vaekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("taef2_encoder.pth", "taef2_decoder.pth", "LICENSE-taesd"):
        assert f"vaekit/weights/{f}" in names
    pack = "vaekit/integrations/comfyui_pack/"  # `vaekit comfyui install` from a pip install links a whole pack
    for f in ("__init__.py", "pyproject.toml", "requirements.txt", "icon.svg", "workflows/vaekit_decode_image.json",
              "workflows/vaekit_decode_video.json"):
        assert pack + f in names

    # a new venv with the wheel in it; its dependencies (torch, diffusers, ...) are this venv's, on a plain
    # path line after the new venv's own site-packages (so this checkout's editable install is not seen)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    photo, out = tmp_path / "photo.png", tmp_path / "out.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (72, 104, 3), dtype=np.uint8)).save(photo)
    env = {k: v for k, v in os.environ.items() if k not in ("VAEKIT_WEIGHTS", "PYTHONPATH")}
    where = subprocess.run([str(python), "-c", "import vaekit, vaekit.loader as l; print(vaekit.__file__); "
                            "print(l.builtin_paths('taef2')[0])"], cwd=tmp_path, env=env, check=True,
                           capture_output=True, text=True).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the wheel's copy, and its weights
    done = subprocess.run([str(venv / "bin" / "vaekit"), "roundtrip", str(photo), str(out), "--quiet"], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "PSNR" in done.stdout and Image.open(out).size == (104, 72)
