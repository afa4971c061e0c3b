"""The optional packages: ``import vaekit`` and the core never import them, and a feature whose package is
missing says which extra brings it, before any work (the CLI: one line, exit 9, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import vaekit
from vaekit.errors import DependencyError
from vaekit.extras import EXTRAS, require

CORE = """
import sys
import vaekit, vaekit.api, vaekit.planning, vaekit.sinks, vaekit.io, vaekit.cli, vaekit.tools.gpu_check
import vaekit.integrations.diffusers
optional = sorted(m for m in {optional!r} if m in sys.modules)
assert not optional, optional
"""


def test_the_core_imports_none_of_them():
    done = subprocess.run([sys.executable, "-c", CORE.format(optional=set(EXTRAS))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_a_missing_one_names_its_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as if not installed
    package, extra = EXTRAS[module]
    with pytest.raises(DependencyError, match=rf"pip install 'vaekit\[{extra}\]' \(or pip install {package}\)"):
        require(module, "this feature")
    assert issubclass(DependencyError, ImportError) and DependencyError.exit_code == 9


def test_a_video_file_without_pyav_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    from test_wan import make as make_wan
    from vaekit.cli import main

    monkeypatch.setitem(sys.modules, "av", None)
    vae, z = make_wan(), torch.randn(1, 4, 2, 3, 5)
    called = []
    monkeypatch.setattr(vaekit.arch.family(vae), "whole", lambda *a: called.append(a))
    with pytest.raises(DependencyError, match=r"writing \.mp4 files needs av"):
        vaekit.decode(vae, z, "64MiB", out=tmp_path / "v.mp4")
    assert not called and not list(tmp_path.iterdir())

    monkeypatch.setitem(sys.modules, "png", None)
    latents = tmp_path / "lat.pt"
    torch.save(torch.randn(1, 32, 3, 4), latents)
    assert main(["decode", str(latents), str(tmp_path / "out.png"), "--budget", "1MiB"]) == 9
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vaekit[files]" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lat.pt"]
