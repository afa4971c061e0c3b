"""``vaekit gpu-check`` (``bash .device/run.sh`` on a bare GPU machine): what the CUDA paths do, measured
on this GPU, within a deadline.

Sections, in order of value (gpu_cases.py has what each measures):

    exactness   SD-VAE, Wan 2.1, LTX-2, Sana's DC-AE and Mochi 1 both ways, streamed at the smallest and a
                mixed budget against the untiled model, in bfloat16, float16 and float32
    peaks       the allocator's measured peak against the plan's
    timings     SDXL-VAE 4096², Wan 2.1 81x720x1280 and LTX-2 121x704x1280 in bfloat16: diffusers untiled
                (or its out-of-memory), diffusers enable_tiling(), vaekit at 8 GiB and whole, with and
                without compile=True
    ladder      a real CUDA out-of-memory through the recovery ladder
    tiers       maps in pinned host RAM and on disk

``--deadline SECONDS`` bounds the whole run: each section gets a share of the time left (what one leaves
goes to the next), a section past its share stops after the row in hand and is marked "cut", and
``gpu-check.json``/``.md`` are rewritten after every row, so a run cut short, or killed, still leaves what
it measured; a row still running a tenth past the deadline (at least 3 s) ends the process. Without a
CUDA GPU it says so and exits 0; ``--device cpu --quick`` runs the same code at small sizes (the test
suite does, so it cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import threading
import time
import traceback
from datetime import date
from pathlib import Path

import torch

from . import gpu_cases

__all__ = ["main", "run_checks", "SECTIONS"]

#: each section's share of the deadline, in the order they run
SECTIONS = {"exactness": 0.35, "peaks": 0.1, "timings": 0.35, "ladder": 0.1, "tiers": 0.1}
DEFAULT_DEADLINE = 420


def environment(device: torch.device) -> dict:
    """The GPU, driver, torch, CUDA and cuDNN versions (the CPU's model without a GPU)."""
    from ..measure import machine

    info = {"date": date.today().isoformat(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"device": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                 "capability": ".".join(map(str, torch.cuda.get_device_capability(device))), "driver": _driver()}
    else:
        info["device"] = machine()
    return info


def _driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None


class Report:
    """The report, rewritten (atomically: a temporary file renamed into place) after every row. A
    watchdog ends the process ``grace`` seconds past the deadline when a row is still running then (a
    compile or a decode that takes minutes), marking its section "cut" first."""

    def __init__(self, out: Path, stem: str, header: dict):
        self.json, self.md = out / f"{stem}.json", out / f"{stem}.md"
        self.data = {**header, "sections": {name: {"status": "not run", "seconds": 0.0} for name in SECTIONS},
                     **{name: [] for name in SECTIONS}}
        self.lock = threading.Lock()  # the watchdog's write and the rows' never interleave
        out.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        for path, text in ((self.json, json.dumps(self.data, indent=2) + "\n"), (self.md, markdown(self.data))):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def section(self, name: str, rows, until: float) -> None:
        """Take ``rows`` (a generator: the work happens as each row is asked for) until they end or the
        clock passes ``until``."""
        state, start = self.data["sections"][name], time.monotonic()
        with self.lock:
            state["status"] = "running"
        try:
            for row in rows:
                with self.lock:
                    self.data[name].append(row)
                    state["seconds"] = round(time.monotonic() - start, 2)
                    self._write()
                if time.monotonic() > until:
                    state["status"] = "cut"
                    break
            else:
                state["status"] = "done"
        except Exception as e:  # noqa: BLE001 - one section's failure must not lose the others' measurements
            state["status"] = "error"
            state["error"] = traceback.format_exception_only(type(e), e)[-1].strip()
        finally:
            rows.close()  # a cut generator's cleanup (models back to the CPU) runs now
            with self.lock:
                state["seconds"] = round(time.monotonic() - start, 2)
                self._write()

    def watchdog(self, seconds: float) -> threading.Timer:
        def stop() -> None:
            with self.lock:
                for state in self.data["sections"].values():
                    if state["status"] == "running":
                        state["status"] = "cut"
                        state["note"] = "stopped in the middle of a row at the deadline"
                self._write()
                print(f"vaekit gpu-check: stopped at the deadline; what was measured is in {self.json}", flush=True)
                os._exit(1 if failures(self.data) else 0)

        timer = threading.Timer(seconds, stop)
        timer.daemon = True
        timer.start()
        return timer


def run_checks(device: torch.device, out: Path, quick: bool = False, dtypes=tuple(gpu_cases.DTYPES),
               deadline: float = DEFAULT_DEADLINE, sections=tuple(SECTIONS)) -> dict:
    """Run ``sections`` within ``deadline`` seconds, writing the report under ``out`` as it goes."""
    start = time.monotonic()
    stem = "gpu-check" if device.type == "cuda" else f"gpu-check-{device.type}"
    report = Report(out, stem, {**environment(device), "quick": quick, "deadline_s": deadline})
    report.write()
    watchdog = report.watchdog(deadline + max(3.0, 0.1 * deadline))
    makers = {"exactness": lambda: gpu_cases.exactness(device, quick, dtypes),
              "peaks": lambda: gpu_cases.peaks(device, quick), "timings": lambda: gpu_cases.timings(device, quick),
              "ladder": lambda: gpu_cases.ladder(device, quick), "tiers": lambda: gpu_cases.tiers(device, quick)}
    todo = [name for name in SECTIONS if name in sections]
    for i, name in enumerate(todo):
        left = deadline - (time.monotonic() - start)
        share = SECTIONS[name] / sum(SECTIONS[n] for n in todo[i:])  # what earlier sections left over goes on
        if left <= 0:
            report.data["sections"][name]["status"] = "cut"  # not started: the deadline had passed
            continue
        report.section(name, makers[name](), time.monotonic() + left * share)
    watchdog.cancel()
    report.data["seconds"] = round(time.monotonic() - start, 2)
    report.write()
    return report.data


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return "" if value is None else str(value)


def markdown(report: dict) -> str:
    """The report as Markdown: the environment, then one table per section with its status."""
    where = ", ".join(f"{k} {report[k]}" for k in ("torch", "cuda", "cudnn", "driver") if report.get(k))
    lines = [f"GPU check, {report['date']}, {report['device']}, {where}" + (" (--quick)" if report["quick"] else ""),
             ""]
    for name, state in report["sections"].items():
        lines += [f"## {name}: {state['status']}, {state['seconds']:.0f} s" + (f" ({state['error']})"
                                                                              if "error" in state else ""), ""]
        rows = report[name]
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row if k != "what"))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines) + "\n"


def failures(report: dict) -> list[str]:
    """What did not hold: rows not ok, sections that raised."""
    bad = [f"{name}: {row}" for name in SECTIONS for row in report[name] if row.get("ok") is False]
    return bad + [f"{name}: {s['error']}" for name, s in report["sections"].items() if s["status"] == "error"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vaekit gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu with --quick (what the tests run)")
    parser.add_argument("--quick", action="store_true", help="small sizes and models (what the tests run on the CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=list(gpu_cases.DTYPES), default=list(gpu_cases.DTYPES),
                        help="dtypes of the exactness matrix (default: all three)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help="which sections to run (default: all, in this order)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE,
                        help=f"seconds for the whole run (default {DEFAULT_DEADLINE}); past it, what was measured is kept")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of gpu-check.json/.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("vaekit gpu-check: no CUDA GPU here, nothing measured (run it on a machine with one)")
        return 0
    from ..io import output_folder

    output_folder(args.out, "the GPU check's report (--out)")
    report = run_checks(device, args.out, args.quick, args.dtypes, args.deadline, args.sections)
    print(markdown(report))
    bad = failures(report)
    for line in bad:
        print(f"vaekit gpu-check: not ok: {line}")
    return 1 if bad else 0
