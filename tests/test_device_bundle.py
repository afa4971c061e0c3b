"""The device bundle's run on this CPU, as a bare GPU machine sees it: a fresh venv holding only the CPU
torch and the packages such a machine has (KINDS: no diffusers, av, zarr, tifffile, pypng or matplotlib),
``bash .device/run.sh`` with no package index, a deadline, and the report it leaves.

Gated (``VAEKIT_BARE=1``; ``make bare-check`` builds the bundle and runs it): making the venv takes a
minute. Run it before a GPU session and before changing the bundle, the imports or gpu-check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".device"
#: what a locked-down GPU machine has (the versions seen on one, 2026-11, where the index has them)
MACHINE = ["numpy", "pillow", "safetensors==0.8.0", "tqdm", "psutil", "requests", "filelock", "regex",
           "huggingface-hub==1.33.0", "pyyaml", "packaging", "accelerate==1.15.0"]

pytestmark = pytest.mark.skipif(os.environ.get("VAEKIT_BARE") != "1",
                                reason="VAEKIT_BARE=1 runs the bundle in a bare venv (make bare-check)")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", *MACHINE], check=True)
    return python


def test_the_bare_venv_lacks_what_the_bundle_must_not_need(bare_python):
    for module in ("diffusers", "av", "zarr", "tifffile", "png", "matplotlib", "vaekit"):
        done = subprocess.run([str(bare_python), "-c", f"import {module}"], capture_output=True)
        assert done.returncode != 0, module


def test_run_sh_measures_within_its_deadline_and_leaves_a_valid_report(bare_python, tmp_path):
    assert (BUNDLE / "run.sh").is_file(), "make device-bundle first"
    size = sum(f.stat().st_size for f in (BUNDLE / "wheels").iterdir())
    assert size < 48 << 20, size
    print(f"bundle: {size / 2**20:.1f} MiB")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PYTHON": str(bare_python), "OUT": str(out), "PIP_NO_INDEX": "1"}
    start = time.monotonic()
    done = subprocess.run(["bash", str(BUNDLE / "run.sh"), "--device", "cpu", "--quick", "--deadline", "30"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert seconds <= 90, seconds
    assert "torch 2.13.0" in done.stdout and "diffusers" in done.stdout, done.stdout

    report = json.loads((out / "gpu-check-cpu.json").read_text())
    assert report["seconds"] <= 30 * 1.1 + 3 or any(s.get("note") for s in report["sections"].values())
    statuses = {name: s["status"] for name, s in report["sections"].items()}
    print(f"run.sh: {seconds:.0f} s, gpu-check {report['seconds']:.0f} s, sections {statuses}, rows "
          f"{ {name: len(report[name]) for name in statuses} }")
    assert "cut" in statuses.values(), statuses  # the whole quick matrix takes minutes on this CPU
    assert not {"error", "running"} & set(statuses.values()), report["sections"]
    cut = [name for name, status in statuses.items() if status == "cut" and report[name]]
    assert cut, statuses  # a section cut after some rows: what it measured was kept
    assert all(row.get("ok", True) for name in statuses for row in report[name]), report  # timings: no verdict
    assert (out / "gpu-check-cpu.md").read_text().startswith("GPU check")
    assert (out / "run.log").read_text().count("run.sh:") >= 3
