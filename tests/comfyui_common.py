"""What the ComfyUI helpers (comfyui_worker.py, comfyui_server.py) share, run with ComfyUI's Python.

ComfyUI imports torchvision for models not built here, and the package index's torchvision does not load
with this CPU torch: ``stand_in_torchvision`` puts an empty module in its place, after diffusers and
transformers have looked for the real one (they must find none).
"""

import importlib.machinery
import sys
import types

import torch
from diffusers import AutoencoderKL  # noqa: F401  (imported before the stand-in: it must see no torchvision)


def stand_in_torchvision() -> None:
    for name in ("torchvision", "torchvision.transforms"):
        stand_in = types.ModuleType(name)
        stand_in.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stand_in
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]


def seeded(modules: dict, spread: float) -> dict:
    """The state dict of ComfyUI's ``modules`` (prefix -> module), whose layers skip weight init: norm
    scales near 1, other parameters small and random."""
    state = {}
    with torch.no_grad():
        for prefix, module in modules.items():
            for name, value in module.state_dict().items():
                norm = name.endswith("gamma") or (value.dim() == 1 and "norm" in name and name.endswith("weight"))
                state[prefix + name] = torch.randn_like(value) * 0.2 + 1 if norm else torch.randn_like(value) * spread
    return state
