"""Run by test_dist.py under ``torchrun --nproc_per_node 2``: every case with ``dist=True``.

Rank 0 saves what the ranks computed to OUT/<case>.pt; files written through sinks land in OUT too.
With ``--fail``, rank 1 runs out of memory for good mid-run, and rank 0 must stop with a typed error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import vaekit
from conftest import budgets_for, make_vae
from test_dc import make_dc

#: the cases: name -> (model, op, input shape, budget name, output suffix or None)
CASES = {
    "sd-decode-smallest": ("sd", "decode", (1, 4, 40, 56), "smallest", None),
    "sd-decode-mixed": ("sd", "decode", (1, 4, 40, 56), "mixed", None),
    "sd-decode-npy": ("sd", "decode", (1, 4, 40, 56), "smallest", ".npy"),
    "sd-decode-zarr": ("sd", "decode", (2, 4, 70, 33), "smallest", ".zarr"),
    "sd-encode": ("sd", "encode", (1, 3, 83, 121), "smallest", None),
    "dc-decode": ("dc", "decode", (1, 8, 17, 23), "smallest", None),
    "dc-encode": ("dc", "encode", (2, 3, 36, 52), "smallest", None),
    "wan-decode": ("wan", "decode", (1, 4, 3, 13, 9), "smallest", None),  # frames and their time caches
    "wan-encode": ("wan", "encode", (1, 3, 9, 48, 40), "smallest", None),
    "hunyuan-decode": ("hunyuan", "decode", (1, 4, 13, 9), "smallest", None),  # ConvAttention, (r1, r2, c) shuffles
    "hunyuan-encode": ("hunyuan", "encode", (1, 3, 52, 36), "smallest", None),
    "ltx2-decode": ("ltx2", "decode", (1, 8, 3, 5, 7), "smallest", None),  # all frames, reflected borders
    "ltx2-encode": ("ltx2", "encode", (1, 3, 9, 48, 32), "smallest", None),
    "hunyuan15-decode": ("hunyuan15", "decode", (1, 8, 3, 9, 5), "smallest", None),  # attention across frames
    "hunyuan15-encode": ("hunyuan15", "encode", (1, 3, 5, 48, 40), "smallest", None),
    "minimax-decode": ("minimax", "decode", (1, 8, 7, 5, 7), "smallest", None),  # ViT blocks, registers
    "minimax-encode": ("minimax", "encode", (1, 3, 17, 19, 27), "smallest", None),  # strided convs, frame stats
    "hunyuan-video-decode": ("hunyuan_video", "decode", (1, 4, 7, 5, 7), "smallest", None),  # clips of 5, 4, 1
    "kvae-decode": ("kvae", "decode", (1, 4, 6, 5, 7), "smallest", None),  # chunks of 5 and 1, latents' norms
    "mochi-encode": ("mochi", "encode", (1, 3, 13, 40, 56), "smallest", None),  # attention over each pixel's frames
    "wan-decode-npy": ("wan", "decode", (1, 4, 3, 13, 9), "smallest", ".npy"),  # rank 0 writes the frames
    "wan-decode-mp4": ("wan", "decode", (1, 4, 3, 13, 9), "smallest", ".mp4"),
}


def inputs(op: str, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(*shape, generator=generator) if op == "decode" else torch.rand(*shape, generator=generator) * 2 - 1


def model(name: str):
    if name == "wan":
        from test_wan import make

        return make()
    if name == "hunyuan":
        from test_hunyuan import make_hunyuan

        return make_hunyuan()
    if name == "ltx2":
        from test_ltx2 import make as make_ltx2

        return make_ltx2()
    if name == "hunyuan15":
        from test_hunyuan15 import make as make_hunyuan15

        return make_hunyuan15()
    if name == "hunyuan_video":
        from test_hunyuan_video import make as make_hunyuan_video

        return make_hunyuan_video()
    if name == "kvae":
        from test_kvae import make as make_kvae

        return make_kvae()
    if name == "minimax":
        from test_minimax import make as make_minimax

        return make_minimax()
    if name == "mochi":
        from test_mochi import make as make_mochi

        return make_mochi()
    return make_vae("sd") if name == "sd" else make_dc("sana")


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    models = {name: model(name) for name in ("sd", "dc", "wan", "hunyuan", "ltx2", "hunyuan15", "minimax",
                                                  "hunyuan_video", "kvae", "mochi")}
    for case, (name, op, shape, budget_name, suffix) in CASES.items():
        vae, x = models[name], inputs(op, shape)
        budget = budgets_for(vae, shape, op)[budget_name]
        run = vaekit.decode if op == "decode" else vaekit.encode
        if suffix is None:
            result = run(vae, x, budget, dist=True)
            if rank == 0:
                torch.save(result, out / f"{case}.pt")
        else:
            path = out / f"{case}{suffix}"
            if name == "wan":  # the smallest budget, and what the video's writer holds beside it
                budget += vaekit.plan(vae, shape, None, out=path, device="meta").writer_bytes
            assert run(vae, x, budget, dist=True, out=path) == path
    assert torch.distributed.get_world_size() == 2  # the runs joined the group torchrun described
    cli_cases(out, rank, budgets_for(models["sd"], CASES["sd-decode-npy"][2])["smallest"])
    torch.distributed.destroy_process_group()


def cli_cases(out: Path, rank: int, budget: int) -> None:
    """``vaekit decode`` under torchrun: to a .npy (each rank its rows), and to a .tif (refused)."""
    import json

    import numpy as np

    from vaekit.cli import main as cli

    model_dir = out / f"model-{rank}"
    make_vae("sd").save_pretrained(model_dir)
    latents = out / f"cli-z-{rank}.npy"
    np.save(latents, inputs("decode", CASES["sd-decode-npy"][2]).numpy())
    common = ["--model", str(model_dir), "--budget", str(budget), "--quiet", "--dtype", "float32"]
    codes = {suffix: cli(["decode", str(latents), str(out / f"cli{suffix}"), *common]) for suffix in (".npy", ".tif")}
    if rank == 0:
        (out / "cli-codes.json").write_text(json.dumps(codes))


def fail(rank: int) -> None:
    import contextlib

    from vaekit.testing import oom_after

    z = inputs("decode", CASES["sd-decode-smallest"][2])
    with oom_after(30, times=10**6) if rank == 1 else contextlib.nullcontext():
        vaekit.decode(make_vae("sd"), z, 8 << 20, dist=True)


if __name__ == "__main__":
    if "--fail" in sys.argv:
        fail(int(os.environ["RANK"]))
    else:
        main(Path(sys.argv[1]))
