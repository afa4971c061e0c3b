"""The GPU check's code runs on the CPU at small sizes (so it works the day a GPU runs it), and on a
machine without CUDA it says so and exits 0."""

from __future__ import annotations

import json

import torch

from vaekit.cli import main as cli_main
from vaekit.tools.gpu_check import main


def test_without_cuda_it_says_so_and_exits_0(capsys, tmp_path):
    if torch.cuda.is_available():
        return
    assert cli_main(["gpu-check", "--out", str(tmp_path)]) == 0
    assert cli_main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_the_whole_matrix_runs_on_the_cpu_at_small_sizes(tmp_path):
    assert main(["--device", "cpu", "--quick", "--dtypes", "float32", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert all(r["ok"] for r in report["exactness"]), [r for r in report["exactness"] if not r["ok"]]
    assert {r["model"] for r in report["exactness"]} == {"sd", "sana", "wan-decode", "wan-encode", "ltx2-decode",
                                                          "ltx2-encode", "mochi-decode", "mochi-encode"}
    assert all(r["mode"] == "stream" for r in report["exactness"] if r["budget"] == "smallest")
    assert all(r["within"] for r in report["peaks"]) and report["ladder"]["retries"] and report["tiers"]["ok"]
    assert "disk" in report["tiers"]["tiers"]  # maps really left the device
    assert {r["method"].split(":")[0] for r in report["timings"]} == {"diffusers-untiled", "diffusers-tiling", "vaekit"}
    assert (tmp_path / "gpu-check-cpu.md").read_text().startswith("GPU check")
