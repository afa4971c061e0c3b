"""VaeManager: swap VAEs, restore the original object, bounded LRU, no memory left behind."""

from __future__ import annotations

import gc

import pytest
import torch

import vaekit
from conftest import make_vae
from vaekit.lifecycle import VaeManager, model_bytes
from vaekit.measure import rss_bytes


class Pipe:
    """What VaeManager needs of a pipeline: a ``vae`` attribute (real pipelines work the same)."""

    def __init__(self, vae):
        self.vae = vae


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    paths = []
    for i, name in enumerate(["noattn", "sdxl"]):
        make_vae(name, seed=i).save_pretrained(root / name)
        paths.append(root / name)
    return paths


def test_none_restores_the_original_object(vae_dirs):
    original = make_vae("sd")
    pipe = Pipe(original)
    mgr = VaeManager(pipe)
    other = mgr.use(vae_dirs[0])
    assert pipe.vae is other and other is not original
    assert mgr.use(None) is original and pipe.vae is original  # SDXL -> SD 1.5 with VAE "None"
    assert mgr.use("auto") is original


def test_lru_keeps_one_besides_the_original_by_default(vae_dirs):
    pipe = Pipe(make_vae("sd"))
    mgr = VaeManager(pipe)
    a = mgr.use(vae_dirs[0])
    b = mgr.use(vae_dirs[1])
    assert len(mgr.cached) == 1  # a waits
    assert mgr.use(vae_dirs[0]) is a  # from the cache: the same object, not loaded again
    mgr.use(None)
    assert len(mgr.cached) == 1 and mgr.current is mgr.original  # a and b would be two: one went
    del b


def test_cache_bound_in_bytes(vae_dirs):
    pipe = Pipe(make_vae("sd"))
    small = model_bytes(vaekit.load(vae_dirs[0]))
    mgr = VaeManager(pipe, cache_bytes=small)  # room for the small one only
    mgr.use(vae_dirs[1])
    mgr.use(vae_dirs[0])
    mgr.use(None)  # both wait: over the bound, the least recently used (the big one) goes
    assert mgr.cached == [str(vae_dirs[0].resolve())]


def test_new_vae_takes_the_pipelines_device_and_dtype(vae_dirs):
    pipe = Pipe(make_vae("sd").to(torch.bfloat16))
    vae = VaeManager(pipe).use(vae_dirs[0])
    assert next(vae.parameters()).dtype == torch.bfloat16


def test_apply_follows_the_swap(vae_dirs):
    pipe = Pipe(make_vae("sd"))
    vaekit.apply(pipe, "1MiB")
    mgr = VaeManager(pipe)
    new = mgr.use(vae_dirs[0])
    assert vaekit.integrations.is_applied(new) and not vaekit.integrations.is_applied(mgr.original)
    assert vaekit.integrations.is_applied(mgr.use(None))


def test_a_hundred_swaps_leave_memory_where_it_began(vae_dirs):
    pipe = Pipe(make_vae("sd"))
    mgr = VaeManager(pipe)
    cycle = [vae_dirs[0], vae_dirs[1], None]

    def swaps(n):
        for i in range(n):
            mgr.use(cycle[i % 3])
        mgr.use(None)
        gc.collect()

    swaps(12)  # warm up: allocator pools, diffusers' caches
    before = rss_bytes()
    swaps(100)
    assert rss_bytes() - before < 8 << 20, (rss_bytes() - before) / 2**20
    assert len(mgr.cached) <= 1


def test_swaps_with_pipeline_runs_grow_no_more_than_plain_assignment(vae_dirs, tmp_path):
    """In fresh processes: 100 VaeManager swaps under apply, a pipeline run after each, against the
    same swaps by plain ``pipe.vae = ...`` without vaekit (swap_worker.py). Measured over several
    runs here: 0.6-2.1 MiB against plain's 0-2.3 MiB, not growing with the number of swaps."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    for name, path in zip("ab", vae_dirs, strict=True):
        os.symlink(path, tmp_path / name)
    worker = Path(__file__).with_name("swap_worker.py")

    # both at once, one thread each (the worker sets it): each measures its own RSS
    runs = {mode: subprocess.Popen([sys.executable, str(worker), mode, str(tmp_path)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for mode in ("plain", "manager")}
    growth = {}
    for mode, run in runs.items():
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        growth[mode] = json.loads(out.strip().splitlines()[-1])["growth_mib"]
    plain, managed = growth["plain"], growth["manager"]
    assert managed <= max(plain, 0.0) + 4.0, (managed, plain)
