"""compile=True: conv stages through torch.compile graphs shared by every resolution, still exact."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

import vaekit
from conftest import REL_TOL, budgets_for, make_vae, relative_error, untiled

#: eight latent sizes, odd and even, wide and tall
SIZES = [(20, 24), (17, 29), (24, 20), (31, 33), (9, 45), (40, 13), (22, 22), (15, 18)]


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_no_new_graph_after_the_first_resolution():
    vae = make_vae("sd")
    first = True
    for i, (h, w) in enumerate(SIZES):
        z = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(i))
        budget = budgets_for(vae, tuple(z.shape), compiled=True)["smallest" if i % 2 else "mixed"]
        if first:
            out = vaekit.decode(vae, z, budget, compile=True)  # warm-up: the graphs are made here
            graphs, first = _graphs(), False
        else:
            with torch.compiler.set_stance("fail_on_recompile"):  # a recompile would raise
                out = vaekit.decode(vae, z, budget, compile=True)
        assert relative_error(out, untiled(vae, z)) <= REL_TOL, (h, w)
    assert _graphs() == graphs


def test_dc_ae_decode_and_kl_encode_compiled():
    from test_dc import make_dc

    dc, kl = make_dc("sana"), make_vae("noattn")
    for i, (h, w) in enumerate([(17, 23), (13, 9), (20, 26)]):
        z = torch.randn(1, 8, h, w, generator=torch.Generator().manual_seed(i))
        x = torch.rand(1, 3, 4 * h + 3, 4 * w + 1, generator=torch.Generator().manual_seed(i)) * 2 - 1
        stance = "default" if i == 0 else "fail_on_recompile"
        with torch.compiler.set_stance(stance):
            out = vaekit.decode(dc, z, budgets_for(dc, tuple(z.shape), compiled=True)["smallest"], compile=True)
            low = budgets_for(kl, tuple(x.shape), "encode", compiled=True)["smallest"]
            latents = vaekit.encode(kl, x, low, compile=True)
        with torch.no_grad():
            assert relative_error(out, dc.decode(z).sample) <= REL_TOL
            assert relative_error(latents, kl.encode(x).latent_dist.mode()) <= REL_TOL


def test_compile_through_apply():
    vae = make_vae("noattn")
    z = torch.randn(1, 4, 12, 14)
    ref = untiled(vae, z)
    vaekit.apply(vae, "1MiB", compile=True)
    try:
        out = vae.decode(z).sample
    finally:
        vaekit.unapply(vae)
    assert relative_error(out, ref) <= REL_TOL
