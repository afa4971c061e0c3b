"""Patch parallel: two gloo ranks on this machine give the pixels of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from conftest import REL_TOL, budgets_for, relative_error
from vaekit.arch import program_for
from vaekit.dist import layout, partition
from vaekit.io import to_uint8
from vaekit.plan import map_shapes

TESTS = Path(__file__).resolve().parent


# ---- the layout, from shapes alone --------------------------------------------------------------


@pytest.mark.parametrize("height,ranks,step", [(40, 2, 1), (7, 3, 1), (1, 2, 1), (320, 3, 2), (560, 2, 256)])
def test_partition_covers_the_rows_in_order_on_the_step(height, ranks, step):
    parts = partition(height, ranks, step)
    assert len(parts) == ranks and parts[0][0] == 0 and parts[-1][1] == height
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    assert all(lo <= hi and (lo % step == 0 or lo == height) for lo, hi in parts)


def test_no_rank_holds_a_whole_map_and_each_holds_what_it_reads(vaes):
    vae = vaes("sd")
    program = program_for(vae, "decode")
    shapes = map_shapes(program, (1, 4, 64, 64))
    plan = layout(program, shapes, 4)
    for i, stage in enumerate(program.stages):
        for k, (lo, hi) in enumerate(plan.parts[i]):
            for name in stage.reads:
                a, b = stage.rows_read(name, lo, hi, shapes[stage.src][1:3])
                held = plan.slabs[name][k]
                assert held[0] <= a and b <= held[1], (stage.name, name, k)
    kv = {s.kv for s in program.stages if hasattr(s, "kv")}
    big = [n for n in shapes if n not in kv and shapes[n][1] >= 64]  # the input too: a rank gets its rows
    assert all(plan.slabs[n][k][1] - plan.slabs[n][k][0] < shapes[n][1] for n in big for k in range(4))
    assert all(plan.slabs[n][k] == (0, shapes[n][1]) for n in kv for k in range(4))  # all keys: an all-gather


def test_a_rank_plans_for_its_slabs(vaes):
    """Each rank holds about 1/n of each map, so at the same budget more of them stay on the device."""
    from vaekit.dist import Peers
    from vaekit.plan import make_plan

    vae = vaes("sd")
    program = program_for(vae, "decode")
    shape = (1, 4, 64, 64)
    one = make_plan(program, shape, 4, "float32", "cpu", 24 << 20, force_stream=True)
    share = Peers(layout(program, map_shapes(program, shape), 4), 1, torch.device("cpu")).plan_rows()
    rank = make_plan(program, shape, 4, "float32", "cpu", 24 << 20, force_stream=True, **share)
    on_device = [sum(t == "device" for t in p.tiers.values()) for p in (one, rank)]
    assert on_device[1] > on_device[0] and rank.peak_bytes <= 24 << 20
    assert [s.height for s in rank.stages] == list(share["heights"])
    tiny = Peers(layout(program, map_shapes(program, (1, 4, 1, 3)), 4), 3, torch.device("cpu")).plan_rows()
    assert 0 in tiny["heights"]  # a rank with no rows of a stage plans it as nothing to do
    make_plan(program, (1, 4, 1, 3), 4, "float32", "cpu", 64 << 20, force_stream=True, **tiny)


def test_every_kernel_reads_within_rows_read(vaes):
    """rows_read is what the slabs are made of: check it against what the kernels actually read."""
    from vaekit import run as executor
    from vaekit.store import Store

    for vae, shape in ((vaes("sd"), (1, 4, 9, 11)), (_dc(), (1, 8, 6, 5)), (_dc(), (1, 8, 2, 4))):
        shapes = map_shapes(program_for(vae, "decode"), shape)
        chunk, reads = [None], []
        read, compute = Store.read, executor._compute

        def spy_read(self, name, r0, r1, read=read, reads=reads, chunk=chunk):
            reads.append((*chunk[0], name, r0, r1))
            return read(self, name, r0, r1)

        def spy_compute(stage, weights, read, stats, r0, r1, *rest, compute=compute, chunk=chunk):
            chunk[0] = (stage, r0, r1)
            return compute(stage, weights, read, stats, r0, r1, *rest)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Store, "read", spy_read)
            mp.setattr(executor, "_compute", spy_compute)
            vaekit.api.run(vae, "decode", torch.randn(*shape), budgets_for(vae, shape)["smallest"], stream=True)
        assert reads
        for stage, lo, hi, name, r0, r1 in reads:
            a, b = stage.rows_read(name, lo, hi, shapes[stage.src][1:3])
            assert a <= r0 and r1 <= b, (stage.name, name, (lo, hi), (r0, r1), (a, b))


def _dc():
    from test_dc import make_dc

    return make_dc("sana")


# ---- two gloo ranks ----------------------------------------------------------------------------


def _torchrun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(TESTS / "dist_worker.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    done = _torchrun(str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _one_process(case):
    from dist_worker import CASES, inputs, model

    name, op, shape, budget_name, _ = CASES[case]
    vae, x = model(name), inputs(op, shape)
    run = vaekit.decode if op == "decode" else vaekit.encode
    with torch.no_grad():
        if op == "decode":
            whole = vae.decode(x).sample
        else:
            encoded = vae.encode(x)
            whole = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latent
    return run(vae, x, budgets_for(vae, shape, op)[budget_name]), whole


@pytest.mark.parametrize("case", ["sd-decode-smallest", "sd-decode-mixed", "sd-encode", "dc-decode", "dc-encode",
                                  "wan-decode", "wan-encode", "hunyuan-decode", "hunyuan-encode", "ltx2-decode",
                                  "ltx2-encode", "hunyuan15-decode", "hunyuan15-encode", "minimax-decode",
                                  "minimax-encode", "hunyuan-video-decode", "kvae-decode",
                                  "mochi-encode"])
def test_two_ranks_give_the_pixels_of_one_process(ranks_out, case):
    streamed, whole = _one_process(case)
    got = torch.load(ranks_out / f"{case}.pt", weights_only=True)
    assert got.shape == whole.shape
    assert relative_error(got, streamed) <= 1e-5  # one process, the same budget: float rounding apart
    assert relative_error(got, whole) <= REL_TOL


def test_ranks_write_their_rows_into_one_npy(ranks_out):
    streamed, _ = _one_process("sd-decode-npy")
    assert relative_error(torch.from_numpy(np.load(ranks_out / "sd-decode-npy.npy")), streamed) <= 1e-5


def test_ranks_write_their_rows_into_one_zarr(ranks_out):
    import zarr

    streamed, _ = _one_process("sd-decode-zarr")
    array = zarr.open_array(str(ranks_out / "sd-decode-zarr.zarr"), mode="r")
    for i in range(2):
        assert np.abs(array[i].astype(int) - to_uint8(streamed[i]).astype(int)).max() <= 1
    assert not [p for p in ranks_out.iterdir() if ".part" in p.name]  # published, temporaries gone


def test_ranks_write_one_video_file(ranks_out):
    """Every rank has each chunk's frames; rank 0 writes them, and the file is in place on every rank's return."""
    import av

    streamed, _ = _one_process("wan-decode")  # (1, 3, 9, 104, 72)
    assert relative_error(torch.from_numpy(np.load(ranks_out / "wan-decode-npy.npy")), streamed) <= 1e-5
    with av.open(str(ranks_out / "wan-decode-mp4.mp4")) as container:
        frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))
    ref8 = ((streamed[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0)  # (9, 104, 72, 3) 8-bit
    assert frames.shape == ref8.shape and (frames.float() - ref8).abs().mean() < 12  # H.264: lossy
    assert not [p for p in ranks_out.iterdir() if ".part" in p.name]


def test_the_cli_splits_rows_under_torchrun(ranks_out):
    import json

    streamed, _ = _one_process("sd-decode-npy")
    assert json.loads((ranks_out / "cli-codes.json").read_text()) == {".npy": 0, ".tif": 2}  # .tif: InputError
    assert relative_error(torch.from_numpy(np.load(ranks_out / "cli.npy")), streamed) <= 1e-5
    assert not (ranks_out / "cli.tif").exists()


def test_a_rank_that_fails_stops_the_others_with_a_typed_error():
    done = _torchrun("--fail", timeout=120)  # not a hang until the process group's timeout
    assert done.returncode != 0
    assert "[rank1]: vaekit.errors.BudgetError: out of memory" in done.stderr
    assert "[rank0]: vaekit.errors.DeviceError:" in done.stderr and "another rank stopped" in done.stderr


def test_a_one_process_dist_run_is_a_plain_run(vaes, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    vae = vaes("sd")
    z = torch.randn(1, 4, 9, 11)
    assert torch.equal(vaekit.decode(vae, z, dist=True), vaekit.decode(vae, z))
