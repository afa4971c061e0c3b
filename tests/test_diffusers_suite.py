"""diffusers' own model tests for AutoencoderKL, AutoencoderDC, AutoencoderTiny, AutoencoderKLWan,
AutoencoderKLLTX2Video, AutoencoderKLLTXVideo, AutoencoderKLHunyuanVideo, AutoencoderKLMiniMaxH3,
AutoencoderKLMochi, AutoencoderKLKVAEVideo and AutoencoderKLCogVideoX, run twice in fresh processes: as
they are, and with every VAE under ``vaekit.apply`` streaming (the ``apply_everywhere`` plugin). The same
tests must pass both ways.

diffusers' tests are not in its wheel: set VAEKIT_DIFFUSERS to a diffusers checkout (its ``tests/``
needs ``parameterized`` installed besides). Without it the test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = os.environ.get("VAEKIT_DIFFUSERS")
MODULES = [f"tests/models/autoencoders/test_models_{name}.py" for name in (
    "autoencoder_kl", "autoencoder_dc", "autoencoder_tiny", "autoencoder_wan", "autoencoder_ltx2_video",
    "autoencoder_ltx_video", "autoencoder_hunyuan_video", "autoencoder_kl_minimax_h3", "autoencoder_mochi",
    "autoencoder_kl_kvae_video", "autoencoder_kl_cogvideox")]

pytestmark = [
    pytest.mark.skipif(not CHECKOUT, reason="set VAEKIT_DIFFUSERS to a diffusers checkout to run its VAE tests"),
    pytest.mark.skipif(not importlib.util.find_spec("parameterized"),
                       reason="diffusers' tests need parameterized installed"),
]


def _outcomes(*plugin: str) -> tuple[dict[str, str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *plugin, *MODULES],
                          cwd=CHECKOUT, env=env, capture_output=True, text=True, timeout=3000)
    found = re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", done.stdout, flags=re.M)
    return {test: outcome for outcome, test in found}, done.stdout


def test_diffusers_own_vae_tests_pass_with_apply():
    plain, _ = _outcomes()
    applied, log = _outcomes("-p", "apply_everywhere")
    assert sum(o == "PASSED" for o in plain.values()) > 50, "diffusers' tests did not run"
    broken = sorted(t for t, o in applied.items() if o != "PASSED" and plain.get(t) == "PASSED")
    assert not broken, broken
    streamed = int(re.search(r"(\d+) calls streamed by vaekit", log).group(1))
    assert streamed > 50  # vaekit really took the calls
