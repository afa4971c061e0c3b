"""One fresh process: 100 VAE swaps on a tiny Stable Diffusion pipeline, a short pipeline run after each,
and the growth of RSS over them printed as JSON on the last line.

    python swap_worker.py manager DIR   # VaeManager.use among two saved VAEs and the original, under apply
    python swap_worker.py plain DIR     # the same VAEs loaded once each, assigned to pipe.vae

``DIR`` holds two diffusers VAE folders (``a``, ``b``), written by the test.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import vaekit  # noqa: E402
from test_integrations import EMB, _sd_pipe  # noqa: E402
from vaekit.measure import rss_bytes  # noqa: E402

SWAPS, WARMUP = 100, 12


def main(mode: str, folder: str) -> None:
    torch.set_num_threads(1)
    pipe = _sd_pipe()
    paths = [Path(folder) / "a", Path(folder) / "b", None]
    if mode == "manager":
        vaekit.apply(pipe, "1MiB")
        mgr = vaekit.VaeManager(pipe)
        use = mgr.use
    else:
        original = pipe.vae
        loaded = {p: vaekit.load(p) for p in paths[:2]}

        def use(path):
            pipe.vae = original if path is None else loaded[path]

    def swaps(n: int) -> None:
        for i in range(n):
            use(paths[i % 3])
            pipe(prompt_embeds=EMB, num_inference_steps=1, guidance_scale=1.0, height=32, width=32, output_type="pt",
                 generator=torch.Generator().manual_seed(0))
        use(None)
        gc.collect()

    swaps(WARMUP)  # allocator pools, diffusers' and torch's caches
    before = rss_bytes()
    swaps(SWAPS)
    print(json.dumps({"mode": mode, "growth_mib": (rss_bytes() - before) / 2**20}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
