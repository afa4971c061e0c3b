"""The same result every time: for the same inputs, budget and threads, every result is bitwise the same
in every fresh process, whatever ran before it (encode before decode, whole before streamed, another
model in between), with the processes running at once and loading each other's cores.

`make test` runs a few processes (short profile); `make fuzz` (VAEKIT_FUZZ=long) runs many, several at
a time, at sizes where MKL's first-call race showed (vector_math.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vaekit import vector_math

WORKER = Path(__file__).resolve().parent / "determinism_worker.py"
LONG = os.environ.get("VAEKIT_FUZZ") == "long"
PROCESSES, AT_ONCE = (24, 3) if LONG else (2, 2)


def _run_at_once(seeds: list[int], profile: str) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(s), profile], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in seeds]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_every_result_is_bitwise_the_same_in_every_process_and_order():
    profile = "long" if LONG else "short"
    results = []
    for first in range(0, PROCESSES, AT_ONCE):
        results += _run_at_once(list(range(first, min(first + AT_ONCE, PROCESSES))), profile)
    assert len({tuple(r["order"]) for r in results}) == len(results)  # every process its own order
    for r in results:  # the budgets stream where their names say (whole where they say so)
        assert all(mode == ("whole" if name.endswith("whole") else "stream") for name, mode in r["modes"].items())
    for name in results[0]["hashes"]:
        seen = {r["hashes"][name] for r in results}
        assert len(seen) == 1, f"{name}: {len(seen)} different results in {len(results)} processes"


def test_vml_is_warmed_at_import_for_the_functions_the_models_call():
    code = "import vaekit.vector_math as v, sys; sys.exit(0 if v._done else 1)"  # a fresh process: import did it
    assert subprocess.run([sys.executable, "-c", f"import vaekit; {code}"]).returncode == 0
    assert {"tanh", "exp", "erf", "sqrt"} <= set(vector_math.VML_FUNCTIONS)  # TAESD's clamp, SiLU, GELU, norms
