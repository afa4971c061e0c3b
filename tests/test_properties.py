"""Property: whatever the shape and budget, vaekit returns the exact untiled result or raises a
VaekitError, nothing else (hypothesis explores; the models are small so each example is quick)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vaekit
from conftest import REL_TOL, make_vae, relative_error
from vaekit.errors import VaekitError

MODELS = {}


def _model(name: str):
    if name not in MODELS:
        if name == "tiny":
            from diffusers import AutoencoderTiny

            torch.manual_seed(0)
            MODELS[name] = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).eval()
        else:
            MODELS[name] = make_vae(name)
    return MODELS[name]


BUDGETS = st.one_of(st.none(), st.integers(min_value=1, max_value=32 << 20),
                    st.sampled_from(["1KiB", "512KiB", "3MiB", "lots", "-1"]))
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(model=st.sampled_from(["sd", "noattn", "tiny"]), batch=st.integers(1, 2), h=st.integers(1, 20),
       w=st.integers(1, 20), budget=BUDGETS)
def test_decode_exact_or_typed_error(model, batch, h, w, budget):
    vae = _model(model)
    z = torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(h * 31 + w))
    try:
        out = vaekit.decode(vae, z, budget)
    except VaekitError:
        return
    with torch.no_grad():
        ref = vae.decode(z).sample if model != "tiny" else vae.decoder(z)
    assert relative_error(out, ref) <= REL_TOL


@SETTINGS
@given(model=st.sampled_from(["noattn", "tiny"]), h=st.integers(1, 70), w=st.integers(1, 70), budget=BUDGETS)
def test_encode_exact_or_typed_error(model, h, w, budget):
    vae = _model(model)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 71 + w)) * 2 - 1
    try:
        out = vaekit.encode(vae, x, budget)
    except VaekitError:
        return
    with torch.no_grad():
        ref = vae.encode(x).latent_dist.mode() if model != "tiny" else vae.encoder(x)
    assert relative_error(out, ref) <= REL_TOL


@pytest.mark.parametrize("bad", [torch.zeros(0, 4, 8, 8), "latents", torch.zeros(1, 4, 8), torch.zeros(1, 5, 8, 8)])
def test_bad_inputs_are_typed(bad):
    with pytest.raises(VaekitError):
        vaekit.decode(_model("noattn"), bad)
