"""One fresh process of the determinism check (test_determinism.py): runs every job once, in the order
a seed shuffles, and prints each result's SHA-256. Same inputs, budgets and threads in every process,
so every hash must be the same in every process, whatever ran before it in that process.

    python determinism_worker.py SEED PROFILE      PROFILE: short (make test) or long (make fuzz)
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vaekit  # noqa: E402
from conftest import make_vae  # noqa: E402
from test_ltx2 import make as make_ltx2  # noqa: E402
from test_minimax import make as make_minimax  # noqa: E402
from test_mochi import make as make_mochi  # noqa: E402
from test_wan import make as make_wan  # noqa: E402

#: latent sizes: the long profile's TAEF2 latents are big enough that its first tanh is split across
#: threads (ATen's grain is 32768 values), where MKL's first-call race was (vector_math.py)
SIZES = {"short": dict(taef2=(20, 28), sd=(11, 13), wan=(3, 7, 9), ltx2=(3, 5, 7), minimax=(7, 5, 7), mochi=(7, 24, 40)),
         "long": dict(taef2=(64, 64), sd=(24, 19), wan=(5, 12, 10), ltx2=(3, 6, 7), minimax=(12, 6, 9),
                      mochi=(13, 48, 56))}


def jobs(profile: str) -> dict:
    s = SIZES[profile]
    g = torch.Generator().manual_seed(7)
    taef2, sd, wan = vaekit.load("taef2"), make_vae("sd"), make_wan()
    z_taef2 = torch.randn(1, 32, *s["taef2"], generator=g)
    img = torch.rand(1, 3, 8 * s["taef2"][0], 8 * s["taef2"][1], generator=g) * 2 - 1
    z_sd = torch.randn(1, 4, *s["sd"], generator=g)
    img_sd = torch.rand(1, 3, 4 * s["sd"][0], 4 * s["sd"][1], generator=g) * 2 - 1
    z_wan = torch.randn(1, 4, *s["wan"], generator=g)
    z_ltx2 = torch.randn(1, 8, *s["ltx2"], generator=g)
    ltx2 = make_ltx2()
    z_minimax, minimax = torch.randn(1, 8, *s["minimax"], generator=g), make_minimax()
    video, mochi = torch.rand(1, 3, *s["mochi"], generator=g) * 2 - 1, make_mochi()
    return {
        "taef2-decode-8MiB": lambda r: vaekit.decode(taef2, z_taef2, "8MiB", report=r),
        "taef2-decode-whole": lambda r: vaekit.decode(taef2, z_taef2, report=r),
        "taef2-encode-8MiB": lambda r: vaekit.encode(taef2, img, "8MiB", report=r),
        "sd-decode-1MiB": lambda r: vaekit.decode(sd, z_sd, "1MiB", report=r),
        "sd-decode-whole": lambda r: vaekit.decode(sd, z_sd, report=r),
        "sd-encode-1MiB": lambda r: vaekit.encode(sd, img_sd, "1MiB", report=r),
        "wan-decode-1MiB": lambda r: vaekit.decode(wan, z_wan, "1MiB", report=r),
        "ltx2-decode-5MiB": lambda r: vaekit.decode(ltx2, z_ltx2, "5MiB", report=r),  # every frame, reflected rows
        "minimax-decode-500KiB": lambda r: vaekit.decode(minimax, z_minimax, "500KiB", report=r),  # key blocks, clips
        "mochi-encode-2MiB": lambda r: vaekit.encode(mochi, video, "2MiB", report=r),  # attention over each pixel's frames
    }


def main(seed: int, profile: str) -> None:
    torch.set_num_threads(2)
    todo = jobs(profile)
    order = sorted(todo)
    random.Random(seed).shuffle(order)
    hashes, modes = {}, {}
    with torch.no_grad():
        for name in order:
            report = vaekit.RunReport()
            out = todo[name](report)
            hashes[name] = hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest()[:16]
            modes[name] = report.mode
    print(json.dumps({"order": order, "hashes": hashes, "modes": modes}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
