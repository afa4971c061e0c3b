"""Fresh processes for measurements: a worker is a command that prints its result as JSON, last."""

from __future__ import annotations

import json
import subprocess

__all__ = ["run_worker"]


def run_worker(cmd: list[str], what: str, env: dict | None = None):
    """Run a benchmark worker in a fresh process; what it printed last, as JSON."""
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])
