"""Precision: dtype policy, pipeline audit, and the NaN/Inf guard that recomputes overflowing bands."""

from __future__ import annotations

import copy

import pytest
import torch

import vaekit
from conftest import make_vae, untiled
from vaekit.errors import PrecisionError
from vaekit.precision import check_dtype, choose_dtype
from vaekit.testing import fidelity


def _overflowing(kind: str):
    """A VAE whose float16 decode overflows: at one conv ("activations"), or only inside a residual
    stage before its output scale brings the values back ("intermediate")."""
    vae = make_vae("noattn")
    with torch.no_grad():
        resnet = vae.decoder.up_blocks[0].resnets[0]
        if kind == "activations":
            resnet.conv1.weight.mul_(1e5)  # the next GroupNorm brings it back, float16 cannot hold it
        else:
            resnet.conv2.weight.mul_(3e4)
            resnet.conv2.bias.mul_(3e4)
            resnet.output_scale_factor = 3e4  # (skip + conv) / 3e4: fine in the end, not on the way
    return vae


@pytest.mark.parametrize("kind", ["activations", "intermediate"])
def test_float16_overflow_gives_a_finite_image_close_to_float32(kind):
    vae = _overflowing(kind)
    z = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = vae.decode(z).sample
        half = vae.half()
        assert not bool(torch.isfinite(half.decode(z.half()).sample).all())  # diffusers: NaN/Inf
    truth = untiled(copy.deepcopy(half).double(), z.half().double())  # the same weights, in float64
    for budget in (None, "2MiB"):
        report = vaekit.RunReport()
        out = vaekit.decode(half, z.half(), budget, report=report)
        assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
        assert float((out.float() - ref).abs().max()) < 0.02  # float16 rounding, not garbage
        assert fidelity(out, half.decode(z.half()).sample, truth).ok  # the half rule: nearer the truth than NaN
        assert report.upcasts, report
        expected = "from here on" if kind == "activations" else "recomputed in float32"
        assert any(expected in e.action for e in report.upcasts), report


def test_float32_overflow_is_a_precision_error():
    vae = make_vae("noattn")
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e38)
    with pytest.raises(PrecisionError, match="NaN or Inf"):
        vaekit.decode(vae, torch.randn(1, 4, 8, 8), "2MiB")


def test_choose_dtype(monkeypatch):
    vae = make_vae("noattn")
    assert choose_dtype(vae, "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    assert choose_dtype(vae, "cuda") == torch.float32  # SD-style VAE: force_upcast
    vae.register_to_config(force_upcast=False)
    assert choose_dtype(vae, "cuda") == torch.float16
    with pytest.raises(PrecisionError, match="emulated"):
        check_dtype(torch.bfloat16, "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    assert choose_dtype(vae, "cuda") == torch.bfloat16
