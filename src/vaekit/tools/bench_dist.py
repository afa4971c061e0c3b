"""`vaekit bench --dist`: patch parallel on this machine, torchrun ranks against one process.

The SD-architecture VAE (seeded random weights) decodes one latent to a .npy sink within a budget per
process: one process with 1 thread, one process with all the threads, and torchrun with one rank
per thread (gloo). Each run is a fresh process group; every rank reports its time and peak RSS
growth, and the output is compared with the one-process output. Writes ``bench-dist.json``/``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

from ..measure import machine
from .workers import run_worker

__all__ = ["run_dist_benchmark"]

DIST_SIZE = 1024  #: image side, pixels
DIST_BUDGET = "256MiB"  #: per process
THREADS = 2  #: this machine's cores: one process with 2 threads, or 2 ranks with 1 each
#: (label, ranks, threads per rank)
RUNS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, THREADS), ("2 ranks × 1 thread", 2, 1))


def _worker(size: int, budget: str, threads: int, out: Path) -> dict | None:
    """One rank (or the only process): decode to ``out`` and report; rank 0 returns every rank's figures."""
    import torch

    import vaekit
    from vaekit.measure import PeakMemory
    from vaekit.models import sd_vae

    torch.set_num_threads(threads)
    vae = sd_vae(seed=0)
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    vaekit.decode(vae, z[..., :16, :16], budget, dist=True)  # kernels, thread pools and the process group first
    dist = torch.distributed.is_initialized()
    if dist:
        torch.distributed.barrier()
    report = vaekit.RunReport()
    with PeakMemory() as mem:
        start = time.perf_counter()
        vaekit.decode(vae, z, budget, dist=True, out=out, report=report)
        seconds = time.perf_counter() - start
    mine = {"seconds": seconds, "peak_rss_growth": mem.growth, "predicted_peak": report.plan.peak_bytes}
    ranks = [mine]
    if dist:
        ranks = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(ranks, mine)
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return None
    return {key: max(r[key] for r in ranks) for key in mine}  # the slowest rank, the largest peaks


def run_dist_benchmark(out_dir: Path, size: int = DIST_SIZE, budget: str = DIST_BUDGET) -> list[dict]:
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    rows, images = [], {}
    for label, ranks, threads in RUNS:
        target = out_dir / f"dist-{ranks}x{threads}.npy"
        worker = ["-m", "vaekit.tools.bench_dist", "--worker", "--size", str(size), "--budget", budget,
                  "--threads", str(threads), "--target", str(target)]
        launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                                      "--no-python", sys.executable] if ranks > 1 else []) + worker
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        row = run_worker(launch, label, env)
        images[label] = np.load(target)
        target.unlink()
        rows.append({"run": label, "ranks": ranks, "threads": threads, **row})
        print(f"{label:<24} {row['seconds']:7.1f} s  {row['peak_rss_growth'] / 2**20:6.0f} MiB", file=sys.stderr)
    base, reference = rows[0]["seconds"], images[RUNS[0][0]]
    for row in rows:
        row["speedup"] = base / row["seconds"]
        row["max_abs_diff"] = float(np.abs(images[row["run"]] - reference).max())
    meta = {"date": date.today().isoformat(), "machine": machine(), "size": size, "budget": budget,
            "dtype": "float32", "backend": "gloo", "model": "SD-architecture VAE, seeded random weights"}
    (out_dir / "bench-dist.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"SD-architecture VAE decode {size}² to .npy, {budget} per process, gloo. Measured {meta['date']} on "
             f"{meta['machine']}, fp32, each run a fresh launch.", "",
             "| run | time | speedup over 1 process, 1 thread | peak RSS growth per process | predicted peak | "
             "max abs diff |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['seconds']:.1f} s | {r['speedup']:.2f}× | {r['peak_rss_growth'] / 2**20:.0f} MiB | "
              f"{r['predicted_peak'] / 2**20:.0f} MiB | {r['max_abs_diff']:.1e} |" for r in rows]
    (out_dir / "bench-dist.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaekit.tools.bench_dist", description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=DIST_SIZE)
    parser.add_argument("--budget", default=DIST_BUDGET)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--target", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.worker:
        row = _worker(args.size, args.budget, args.threads, args.target)
        if row is not None:
            print(json.dumps(row))
        return 0
    run_dist_benchmark(args.out, args.size, args.budget)
    print((args.out / "bench-dist.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
