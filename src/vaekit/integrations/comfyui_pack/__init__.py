"""vaekit's ComfyUI nodes: this folder is what ``vaekit comfyui install`` links into ComfyUI's custom_nodes/.

ComfyUI imports it by its folder name (vaekit_nodes), so it holds no code of its own: the nodes live in
vaekit.integrations.comfyui, imported from the Python ComfyUI runs with (pip install vaekit there). A
source checkout works too: its src/ folder is tried when that Python has no vaekit.
"""

import sys
from pathlib import Path

try:
    from vaekit.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError:
    sys.path.append(str(Path(__file__).resolve().parents[3]))  # .../src, holding this file's vaekit package
    try:
        from vaekit.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    except ImportError as e:
        raise ImportError(f"vaekit's ComfyUI nodes need vaekit and its dependencies in the Python that runs "
                          f"ComfyUI ({sys.executable}): pip install vaekit there ({e})") from e

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
