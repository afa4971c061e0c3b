"""A pytest plugin: every VAE of a class vaekit streams (CLASSES) made during the run gets
``vaekit.apply``, and every call vaekit takes streams (as at a budget too small for the whole model).

It runs diffusers' own model tests for these classes with vaekit applied: the specification of what
a drop-in must keep. Nothing of diffusers is copied here; point it at a diffusers checkout's tests:

    cd DIFFUSERS/ && python -m pytest -p apply_everywhere tests/models/autoencoders/test_models_autoencoder_kl.py

with this folder on PYTHONPATH (``tests/test_diffusers_suite.py`` does that, given VAEKIT_DIFFUSERS).
At the end it prints how many encode/decode calls vaekit streamed and how many it gave back to the
model's own method (autograd recording, inputs it does not take), so a run that never reached
vaekit cannot pass for one that did.
"""

from __future__ import annotations

import functools

import diffusers

import vaekit
from vaekit import api

CLASSES = ("AutoencoderKL", "AutoencoderDC", "AutoencoderTiny", "AutoencoderKLFlux2", "AutoencoderKLHunyuanImage",
           "AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLQwenImage21", "AutoencoderKLLTX2Video",
           "AutoencoderKLHunyuanVideo15", "AutoencoderKLMiniMaxH3", "AutoencoderKLLTXVideo", "AutoencoderKLHunyuanVideo",
           "AutoencoderKLMochi", "AutoencoderKLKVAEVideo", "AutoencoderKLCogVideoX")
counts = {"streamed": 0, "own": 0}


def _wrap_init(cls) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        vaekit.apply(self)

    cls.__init__ = __init__


def pytest_configure(config):
    for name in CLASSES:
        _wrap_init(getattr(diffusers, name))
    run = api.run

    def streaming_run(*args, **kwargs):
        counts["streamed"] += 1
        return run(*args, **{**kwargs, "stream": True})

    api.run = streaming_run
    from vaekit.integrations import diffusers as integration

    own = getattr(integration, "_own_method", None)
    if own is None:  # a vaekit before the fallback existed
        return

    def counted_own(*args, **kwargs):
        counts["own"] += 1
        return own(*args, **kwargs)

    integration._own_method = counted_own


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"vaekit apply_everywhere: {counts['streamed']} calls streamed by vaekit, "
                                f"{counts['own']} run by the model's own method")
