"""The optional packages: imported where their feature is used, never by ``import vaekit``.

The core (planning, ``decode``/``encode`` to tensors, ``apply``, the GPU check) needs only torch,
diffusers, safetensors, numpy, pillow, psutil and tqdm, which is what a locked-down GPU machine has. A
file format's writer or reader, and the benchmark's plot, take one more package each; a missing one is
a ``DependencyError`` that names the extra to install (``pyproject.toml`` lists them).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DependencyError

__all__ = ["EXTRAS", "require"]

#: module -> (its distribution on PyPI, the vaekit extra that installs it)
EXTRAS = {
    "av": ("av", "video"),
    "zarr": ("zarr", "files"),
    "tifffile": ("tifffile", "files"),
    "png": ("pypng", "files"),
    "matplotlib": ("matplotlib", "plot"),
    "transformers": ("transformers", "examples"),
    "skimage": ("scikit-image", "examples"),
}


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or a DependencyError saying that ``purpose`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if module.split(".")[0] not in EXTRAS:
            raise
        package, extra = EXTRAS[module.split(".")[0]]
        raise DependencyError(f"{purpose} needs {package}, which is not installed: pip install 'vaekit[{extra}]' "
                              f"(or pip install {package})") from None
