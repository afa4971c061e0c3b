"""The GPU check's code runs on the CPU at small sizes (so it works the day a GPU runs it), keeps its
deadline (a section past its share is cut, a row still running past the deadline ends the process, and
the report on disk holds what was measured), and on a machine without CUDA it says so and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from vaekit.cli import main as cli_main
from vaekit.tools import gpu_cases
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
    assert {name: s["status"] for name, s in report["sections"].items()} == dict.fromkeys(report["sections"], "done")
    rows = report["exactness"]
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert {(r["model"], r["op"]) for r in rows} == {(m, op) for m in gpu_cases.MODELS for op in ("decode", "encode")}
    assert all(r["mode"] == "stream" for r in rows)
    assert all(r["ok"] for r in report["peaks"]) and report["ladder"][0]["retries"] and report["tiers"][0]["ok"]
    assert "disk" in report["tiers"][0]["tiers"]  # maps really left the device
    assert {r["method"] for r in report["timings"]} == {"diffusers-untiled", "diffusers-tiling", "vaekit:2x smallest",
                                                        "vaekit:whole"}
    assert {r["model"] for r in report["timings"]} == set(gpu_cases.TIMED)
    assert all(r["seconds"] is not None for r in report["timings"])
    assert (tmp_path / "gpu-check-cpu.md").read_text().startswith("GPU check")


def test_half_precision_rows_follow_the_rule(monkeypatch):
    monkeypatch.setattr(gpu_cases, "MODELS", {"ltx2": gpu_cases.MODELS["ltx2"]})
    rows = list(gpu_cases.exactness(torch.device("cpu"), True, ["bfloat16", "float16"]))
    assert len(rows) == 8 and all(r["ok"] for r in rows), rows
    assert all(r["rms"] <= 1.1 * r["untiled_rms"] + 1e-6 for r in rows)


def test_compile_rows_time_the_compiling_call_and_a_second(monkeypatch):
    monkeypatch.setattr(gpu_cases, "TIMED", {"ltx2": gpu_cases.TIMED["ltx2"]})
    rows = list(gpu_cases.timings(torch.device("cpu"), True, compiled=True))
    compiled = [r for r in rows if r["method"].endswith(":compile")]
    assert len(rows) == 6 and len(compiled) == 2, rows
    assert all(r["first_seconds"] is not None and r["seconds"] is not None and r["mode"] == "stream" for r in compiled)


#: gpu-check with its sections replaced: exactness makes a row every 0.3 s (cut at its share of the
#: deadline); peaks makes one row, then hangs (the watchdog ends the process a little past the deadline)
_HANGING = """
import sys, time
from vaekit.tools import gpu_cases, gpu_check

def steady(*args):
    for i in range(100):
        time.sleep(0.3)
        yield dict(row=i, ok=True)

def hangs(*args):
    yield dict(row=0, ok=True)
    time.sleep(120)
    yield dict(row=1, ok=True)

gpu_cases.exactness, gpu_cases.peaks = steady, hangs
sys.exit(gpu_check.main(sys.argv[1:]))
"""


def test_the_deadline_cuts_sections_and_keeps_what_they_measured(tmp_path):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _HANGING, "--device", "cpu", "--quick", "--deadline", "3",
                           "--sections", "exactness", "peaks", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 20  # 3 s, 3 s of grace, the imports
    report = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    sections = report["sections"]
    assert sections["exactness"]["status"] == "cut" and 3 <= len(report["exactness"]) <= 10, report
    assert sections["peaks"]["status"] == "cut" and "middle of a row" in sections["peaks"]["note"]
    assert report["peaks"] == [dict(row=0, ok=True)]
    assert sections["timings"]["status"] == "not run"
    assert "stopped at the deadline" in done.stdout
    assert "## peaks: cut" in (tmp_path / "gpu-check-cpu.md").read_text()
