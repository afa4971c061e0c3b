"""Under ``vaekit.apply`` a diffusers VAE behaves as without it: every behaviour diffusers' own model
tests check (tests/models/autoencoders/ and the mixins in tests/models/testing_utils/ of diffusers),
each checked here with apply at a budget that streams. ``test_diffusers_suite.py`` runs diffusers'
own tests themselves, given a checkout."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

import vaekit
from conftest import REL_TOL, make_vae, relative_error, with_and_without_apply
from test_dc import make_dc
from test_tiny import TINY_CONFIG
from vaekit.errors import InputError
from vaekit.integrations import apply, is_applied, unapply

BUDGET = "2MiB"  # with the fixture below, every call apply takes streams in several chunks


@pytest.fixture(autouse=True)
def always_stream(monkeypatch):
    """Every call apply takes streams, as at a budget too small for the whole model (and asserted)."""
    from vaekit.integrations import diffusers as integration

    run = integration.api.run
    monkeypatch.setattr(integration.api, "run", lambda *a, **k: run(*a, **{**k, "stream": True}))


def _images(*shape, seed=1, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _both(vae, call):
    """``call()`` without and with apply (streaming asserted): the two results."""
    return with_and_without_apply(vae, call, BUDGET)


def _close(out, ref, tol=REL_TOL):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert relative_error(out, ref) <= tol


@pytest.fixture(scope="module")
def kl():
    return make_vae("sd")


def test_forward_mode_and_posterior_sample_with_generator(kl):
    x = _images(2, 3, 40, 24)  # randn images, as diffusers' tests feed them: outside [-1, 1], taken as they are
    with torch.no_grad():
        for kwargs in ({}, {"sample_posterior": True}):
            ref, out = _both(kl, lambda kw=kwargs: kl(x, generator=torch.Generator().manual_seed(3), **kw).sample)
            _close(out, ref)


def test_return_dict_false_is_the_same_tuple(kl):
    z = _images(1, 4, 7, 9)
    with torch.no_grad():
        apply(kl, BUDGET)
        try:
            assert torch.equal(kl.decode(z).sample, kl.decode(z, return_dict=False)[0])
            assert torch.equal(kl.decode(z, False)[0], kl.decode(z).sample)
            posterior = kl.encode(_images(1, 3, 28, 36), return_dict=False)[0]
            assert type(posterior).__name__ == "DiagonalGaussianDistribution"
            a, b = kl(_images(1, 3, 28, 36), return_dict=False)[0], kl(_images(1, 3, 28, 36)).sample
            assert torch.equal(a, b)  # determinism, too
        finally:
            unapply(kl)


def test_images_outside_the_unit_range_are_taken_under_apply_and_refused_by_direct_encode(kl):
    x = _images(1, 3, 28, 36, scale=3.0)  # e.g. a preprocessing step's own normalization
    with torch.no_grad():
        ref, out = _both(kl, lambda: kl.encode(x).latent_dist.mean)
    _close(out, ref)
    with pytest.raises(InputError, match=r"x / 127.5 - 1"):
        vaekit.encode(kl, x * 100)  # the direct call still says what a 0-255 image needs


def test_nan_input_gives_the_models_own_result(kl, caplog):
    z = _images(1, 4, 7, 9)
    z[0, 0, 3, 3] = float("nan")
    with torch.no_grad():
        ref = kl.decode(z).sample
        apply(kl, BUDGET)
        try:
            with caplog.at_level(logging.INFO, logger="vaekit"):
                out, again = kl.decode(z).sample, kl.decode(z).sample
        finally:
            unapply(kl)
    assert torch.equal(out.isnan(), ref.isnan()) and torch.equal(again.isnan(), ref.isnan())
    assert sum("model's own decode" in r.message for r in caplog.records) == 1  # said once


def test_autograd_runs_the_models_own_graph_and_says_how_to_stream(caplog):
    vae = make_vae("sd")
    x = _images(2, 3, 24, 24)

    def loss_and_grads():
        vae.zero_grad()
        out = vae(x).sample
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}

    vae.train()
    ref, ref_grads = loss_and_grads()
    apply(vae, BUDGET)
    try:
        with caplog.at_level(logging.WARNING, logger="vaekit"):
            out, grads = loss_and_grads()
            loss_and_grads()
    finally:
        unapply(vae)
    assert torch.equal(out, ref) and grads.keys() == ref_grads.keys()
    assert all(torch.equal(grads[n], ref_grads[n]) for n in grads)
    said = [r.message for r in caplog.records if "autograd" in r.message]
    assert len(said) == 1 and "torch.no_grad()" in said[0]


def test_gradient_checkpointing_still_applies():
    vae = make_vae("sd")
    vae.enable_gradient_checkpointing()
    vae.train()
    apply(vae, BUDGET)
    calls = []
    for module in vae.modules():
        if getattr(module, "gradient_checkpointing", False):
            module._gradient_checkpointing_func = lambda f, *a, calls=calls, **k: calls.append(1) or f(*a)
    try:
        vae(_images(1, 3, 16, 16)).sample.mean().backward()
    finally:
        unapply(vae)
    assert calls  # the checkpointed blocks ran as diffusers' own forward runs them


def test_train_mode_without_grad_still_streams():
    vae = make_vae("sd").train()
    z = _images(1, 4, 7, 9)
    with torch.no_grad():
        ref, out = _both(vae, lambda: vae.decode(z).sample)
    _close(out, ref)


def test_save_load_round_trips_sharded_and_variants(kl, tmp_path):
    z = _images(1, 4, 7, 9)
    apply(kl, BUDGET)
    try:
        kl.save_pretrained(tmp_path / "plain")
        kl.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
        copy.deepcopy(kl).to(torch.float16).save_pretrained(tmp_path / "variant", variant="fp16")
    finally:
        unapply(kl)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    with torch.no_grad():
        ref = kl.decode(z).sample
        for name in ("plain", "sharded"):
            loaded = apply(AutoencoderKL.from_pretrained(tmp_path / name), BUDGET)
            assert set(loaded.state_dict()) == set(kl.state_dict())  # apply adds no weights or buffers
            _close(loaded.decode(z).sample, ref)
        half = AutoencoderKL.from_pretrained(tmp_path / "variant", variant="fp16", torch_dtype=torch.float16)
        assert half.dtype == torch.float16
        ref_half, out_half = _both(half, lambda: half.decode(z.half()).sample)
        _close(out_half, ref_half, tol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_to_dtype_after_apply(dtype):
    vae = make_vae("sd")
    z = _images(1, 4, 7, 9)
    apply(vae, BUDGET)
    try:
        vae.to(dtype)  # moved after apply: the shadowing methods follow the instance
        with torch.no_grad():
            out = vae.decode(z.to(dtype)).sample
    finally:
        unapply(vae)
    with torch.no_grad():
        ref = vae.decode(z.to(dtype)).sample
    _close(out, ref, tol=3e-2)


def test_deepcopy_streams_the_copy(kl):
    apply(kl, BUDGET)
    try:
        twin = copy.deepcopy(kl)
    finally:
        unapply(kl)
    assert is_applied(twin) and twin.decode.__self__ is twin
    z = _images(1, 4, 7, 9)
    report = vaekit.RunReport()
    vars(twin)["_vaekit_applied"]["options"]["report"] = report
    with torch.no_grad():
        _close(twin.decode(z).sample, kl.decode(z).sample)
    assert report.mode == "stream"


def test_an_applied_vae_dropped_from_a_pipeline_is_freed_at_once():
    import gc
    import weakref

    vae = apply(make_vae("noattn"), BUDGET)
    ref = weakref.ref(vae)
    gc.disable()  # freed by reference counting alone: no cycle through the shadowing methods
    try:
        del vae
        assert ref() is None
    finally:
        gc.enable()


def test_slicing_and_tiling_toggles(kl):
    z = _images(3, 4, 12, 10)
    with torch.no_grad():
        ref = kl.decode(z).sample
        for toggle in ("slicing", "tiling"):
            getattr(kl, f"enable_{toggle}")()
            kl.tile_latent_min_size, kl.tile_sample_min_size = 8, 32
            try:
                _, out = _both(kl, lambda: kl.decode(z).sample)
            finally:
                getattr(kl, f"disable_{toggle}")()
            _close(out, ref)  # tiling too: exact streaming instead of tiles


def test_output_is_the_executors_tensor_not_a_copy(kl, monkeypatch):
    import vaekit.api

    made = []
    execute = vaekit.api.execute
    monkeypatch.setattr(vaekit.api, "execute", lambda *a, **k: made.append(execute(*a, **k)) or made[-1])
    with torch.no_grad():
        _, out = _both(kl, lambda: kl.decode(_images(1, 4, 7, 9)).sample)
    assert out.data_ptr() == made[-1].data_ptr() and not out.is_inference()
    out.add_(1)  # a plain tensor: in-place ops outside inference mode work


def test_dc_ae_and_tiny_forward():
    dc = make_dc("sana")
    torch.manual_seed(0)
    tiny = AutoencoderTiny(**TINY_CONFIG).eval()
    with torch.no_grad():
        for vae, x in ((dc, _images(2, 3, 64, 96)), (tiny, _images(2, 3, 40, 24))):
            ref, out = _both(vae, lambda v=vae, x=x: v(x).sample)
            _close(out, ref)
            ref, out = _both(vae, lambda v=vae, x=x: v(x, return_dict=False)[0])
            _close(out, ref)


def test_dc_ae_in_training_mode_gives_the_models_own_result():
    dc = make_dc("shuffle").train()  # BatchNorm normalizes with batch statistics: not streamable
    x = _images(2, 3, 64, 64)
    with torch.no_grad():
        ref = dc(x).sample
        apply(dc, BUDGET)
        try:
            out = dc(x).sample
        finally:
            unapply(dc)
    assert torch.equal(out, ref)
