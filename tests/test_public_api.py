"""The public surface is explicit: this test fails when a name appears or disappears unnoticed."""

from __future__ import annotations

import importlib

import pytest

import vaekit

PUBLIC = {"decode", "encode", "plan", "load", "apply", "unapply", "audit", "VaeManager", "Plan", "RunReport",
          "errors", "testing", "VaekitError", "BudgetError", "__version__"}
ERRORS = {"VaekitError", "InputError", "UnsupportedModelError", "BudgetError", "CheckpointError",
          "PrecisionError", "DeviceError", "DiskError", "DependencyError"}


def test_top_level_all():
    assert set(vaekit.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(vaekit, name)


def test_error_tree_has_one_root():
    assert set(vaekit.errors.__all__) == ERRORS
    for name in ERRORS:
        assert issubclass(getattr(vaekit.errors, name), vaekit.errors.VaekitError)
    for name in ERRORS:  # the docstring draws the tree: every class is in it
        assert name in vaekit.errors.__doc__


def _modules() -> list[str]:
    """Every module of the package, found by walking it: a new module cannot be left out."""
    import pkgutil

    found = pkgutil.walk_packages(vaekit.__path__, prefix="vaekit.")
    return sorted(m.name.removeprefix("vaekit.") for m in found if not m.name.endswith("__main__"))


@pytest.mark.parametrize("module", _modules())
def test_every_module_declares_all(module):
    mod = importlib.import_module(f"vaekit.{module}")
    assert isinstance(mod.__all__, list)
    for name in mod.__all__:
        assert hasattr(mod, name), (module, name)


def test_input_errors_are_typed(vaes):
    import torch

    vae = vaes("noattn")
    with pytest.raises(vaekit.errors.InputError, match="expects 4"):
        vaekit.decode(vae, torch.randn(1, 3, 8, 8))
    with pytest.raises(vaekit.errors.InputError, match="4-D"):
        vaekit.decode(vae, torch.randn(4, 8, 8))
    with pytest.raises(vaekit.errors.InputError, match="floating"):
        vaekit.decode(vae, torch.zeros(1, 4, 8, 8, dtype=torch.long))
    with pytest.raises(vaekit.errors.UnsupportedModelError):
        vaekit.decode(torch.nn.Linear(2, 2), torch.randn(1, 4, 8, 8))
    bad = torch.randn(1, 4, 8, 8)
    bad[0, 2, 3, 4] = float("nan")
    with pytest.raises(vaekit.errors.InputError, match=r"NaN or Inf \(first at index \(0, 2, 3, 4\)\)"):
        vaekit.decode(vae, bad)
