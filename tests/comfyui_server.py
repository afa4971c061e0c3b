"""Run by test_comfyui.py with ComfyUI's Python, in two fresh processes:

    python comfyui_server.py prepare COMFYUI_DIR BASE_DIR   # the files a user would have in a ComfyUI folder
    python comfyui_server.py serve COMFYUI_DIR BASE_DIR PORT  # ComfyUI's own server on that folder, --cpu

``prepare`` writes seeded VAE files in the layouts users download (models/vae/) and latents as ComfyUI's
Save Latent writes them (input/*.latent), and prints, as JSON, the node pack's pyproject.toml as ComfyUI's
own config parser reads it. Two processes, because ComfyUI parses its command line once,
when its modules are first imported: the server must be the first to import them.
"""

import json
import runpy
import sys
from pathlib import Path

from comfyui_common import seeded, stand_in_torchvision

stand_in_torchvision()
mode, COMFYUI, BASE = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(COMFYUI))

if mode == "prepare":
    import safetensors.torch
    import torch

    from vaekit.models import sd_vae

    sys.argv = ["main.py", "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.ldm.wan.vae

    (BASE / "models" / "vae").mkdir(parents=True, exist_ok=True)
    (BASE / "input").mkdir(parents=True, exist_ok=True)
    # an SD/SDXL-architecture VAE with diffusers' keys (ComfyUI converts them), seeded
    safetensors.torch.save_file(sd_vae(seed=0).state_dict(), BASE / "models" / "vae" / "sdxl_vae.safetensors")
    torch.manual_seed(4)  # Wan 2.1's VAE in its original layout, as ComfyUI's own module holds it, seeded
    network = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                       temperal_downsample=[False, True, True])
    safetensors.torch.save_file(seeded({"": network}, 0.02), BASE / "models" / "vae" / "wan_2.1_vae.safetensors")
    g = torch.Generator().manual_seed(7)
    latents = {"image": torch.randn(1, 4, 13, 11, generator=g),  # B,C,h,w latent px: a 104x88 image
               "video": torch.randn(1, 16, 3, 6, 5, generator=g)}  # B,C,T,h,w: 9 frames of 48x40
    for name, z in latents.items():  # as nodes.SaveLatent writes them (the version key: no rescaling on load)
        safetensors.torch.save_file({"latent_tensor": z.contiguous(), "latent_format_version_0": torch.tensor([])},
                                    BASE / "input" / f"{name}.latent")
    from comfy_config import config_parser  # the pack's pyproject.toml, read as ComfyUI and its registry read it

    config = config_parser.extract_node_configuration(str(BASE / "custom_nodes" / "vaekit_nodes"))
    print(json.dumps({"project": config.project.model_dump(mode="json"), "comfy": config.tool_comfy.model_dump()}))
elif mode == "serve":
    sys.argv = ["main.py", "--cpu", "--base-directory", str(BASE), "--port", sys.argv[4], "--listen", "127.0.0.1",
                "--disable-auto-launch", "--database-url", "sqlite:///:memory:"]
    runpy.run_path(str(COMFYUI / "main.py"), run_name="__main__")
else:
    raise SystemExit(f"unknown mode {mode!r}: prepare or serve")
