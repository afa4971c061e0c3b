"""ComfyUI nodes: VAE Decode (exact, budgeted) and VAE Encode (exact) for ComfyUI's own ``VAE`` objects.

ComfyUI's ``VAEDecode`` guesses the memory a decode needs from a fixed per-pixel formula and, when the
device runs out, falls back to averaging three passes of overlapping tiles: slower, and not the
untiled pixels. These nodes take the same ``VAE`` (``comfy.sd.VAE``) and give the tensor ComfyUI's own
untiled node gives, streamed inside a budget:

- the network is rebuilt once per ``VAE`` object as the diffusers model (or vaekit's TAESD) it is,
  on the meta device, with the key mapping of its layout (``comfyui_bridges.py``); it is cached in a
  ``WeakKeyDictionary``, so a freed ``VAE`` frees it too;
- for each call ComfyUI's model management loads the weights (``load_models_gpu``, as its own node
  does), the meta model is bound to those very tensors (no copy) and unbound after, and the device's
  cache is emptied: the weights stay ComfyUI's to move or unload;
- ``budget`` "auto" is what ComfyUI says is free on the device once the weights are loaded; or bytes
  ("2GiB", "768MiB");
- progress goes to ComfyUI's progress bar, a cancel in the UI stops the run between bands, and
  vaekit's errors reach the UI as one line that names the node and what would work.

Families: ComfyUI's LDM-format AutoencoderKL (SD 1.x/2.x, SDXL, SD3, FLUX.1 VAEs), its TAESD (taesd,
taesdxl, taesd3, taef1), its Wan 2.1 and 2.2 video VAEs (Qwen-Image's is Wan 2.1's; LATENT (B, 16 or
48, T, h, w) -> the frames as an IMAGE batch, as its VAE Decode gives them), its LTX-Video 0.9.x VAEs (with
the decode noise ComfyUI draws, from the same global generator), its Mochi VAE (computed as genmo's code,
which ComfyUI runs, computes it, not as diffusers does), and HunyuanImage 2.1's VAE.
Other VAEs ComfyUI loads are refused with a message saying so.
``vaekit comfyui install COMFYUI_DIR`` links ``comfyui_pack/`` into ``custom_nodes/``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..extras import require
from .comfyui_bridges import Bound, bridge

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "Decode", "Encode", "bridge", "install", "PACK",
           "PACK_NAME"]

CATEGORY = "latent/vaekit"
#: of what ComfyUI says is free, the share "auto" plans for (the rest: allocator slack, other work)
AUTO_SHARE = 0.9
PACK = Path(__file__).parent / "comfyui_pack"  #: the folder ComfyUI loads from custom_nodes/
PACK_NAME = "vaekit_nodes"  #: its name there (not "vaekit": ComfyUI would register the module under that name)
PREVIEW_PX = 1024  #: with an output file, the IMAGE returned is a preview at most this wide and high


def _run(node: str, vae, op: str, x: torch.Tensor, budget: str, out: Path | None = None) -> torch.Tensor | Path:
    """``op`` of ComfyUI-convention input: weights loaded through ComfyUI, streamed within the budget, the
    device's cache emptied after. Decode returns [-1, 1] images (or ``out``), encode ComfyUI's latents."""
    import comfy.model_management as mm

    import vaekit

    from ..arch import family
    from ..errors import VaekitError
    from ..units import parse_bytes

    try:
        vae.throw_exception_if_invalid()
        the_bridge = bridge(vae)
        named = None if budget.strip().lower() in ("", "auto") else parse_bytes(budget)
        estimate = vae.memory_used_decode if op == "decode" else vae.memory_used_encode
        mm.load_models_gpu([vae.patcher], memory_required=named or estimate(x.shape, vae.vae_dtype),
                           force_full_load=True)  # the stages need every weight on the device
        limit = named or int(mm.get_free_memory(vae.device) * AUTO_SHARE)
        x = x.to(vae.vae_dtype).to(vae.device)  # where ComfyUI's own decode puts them (its noise is drawn there)
        with Bound(the_bridge, vae) as model:
            if op == "decode" and the_bridge.to_model is not None:
                x = the_bridge.to_model(model, x)
            plan = vaekit.plan(model, tuple(x.shape), limit, op, device=vae.device, out=out)
            chunks = len(family(model).chunk_frames(model, op, x.shape[2])) if x.dim() == 5 else 1
            progress = _progress_bar(plan, chunks)
            if op == "decode":
                timestep = None if the_bridge.timestep is None else torch.full((x.shape[0],), the_bridge.timestep)
                return vaekit.decode(model, x, limit, device=vae.device, progress=progress, out=out, timestep=timestep)
            latents = vaekit.encode(model, x, limit, device=vae.device, progress=progress)
            if the_bridge.from_model is not None:
                latents = the_bridge.from_model(model, latents)
        return latents.to(vae.output_device).float()
    except VaekitError as e:
        raise RuntimeError(f"{node}: {e}") from e
    finally:
        mm.soft_empty_cache()


def _progress_bar(plan, chunks: int = 1):
    """vaekit's progress(stage, rows_done, rows_total) on ComfyUI's bar, moved at most once per percent (each
    move is a message to the browser); a cancel in the UI stops the run between bands. A video's
    ``chunks`` of frames run the plan's stages each in turn."""
    import comfy.model_management as mm
    import comfy.utils

    heights = [s.height for s in plan.stages] * chunks
    before = [sum(heights[:i]) for i in range(len(heights))]
    total = max(sum(heights), 1)
    bar, shown = comfy.utils.ProgressBar(total), [-1]

    def callback(stage: int, rows_done: int, _rows_total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        done = before[stage] + rows_done
        if done * 100 // total > shown[0]:
            shown[0] = done * 100 // total
            bar.update_absolute(done)

    return callback


class Decode:
    """LATENT -> IMAGE, the pixels ComfyUI's untiled VAE Decode gives, inside a budget."""

    NAME = "VAE Decode (exact, budgeted)"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Decodes latents exactly as the untiled VAE Decode does, streamed inside a memory budget: "
                   "no out-of-memory, no tiles, no seams.")

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The latents to decode."}),
            "vae": ("VAE",),
            "budget": ("STRING", {"default": "auto", "tooltip": "Memory for the decode's activations: auto (what "
                                  "ComfyUI says is free on the device) or bytes like 2GiB, 768MiB."}),
        }, "optional": {
            "output_file": ("STRING", {"default": "", "tooltip": "For images too large to hold: write the image "
                                       "band by band to this .png/.tif/.npy/.zarr (a video frame by frame to .mp4/"
                                       ".npy/.zarr; relative paths go to ComfyUI's output folder) and return a "
                                       "preview (a video's first frame)."}),
        }}

    def decode(self, samples, vae, budget="auto", output_file=""):
        latents = samples["samples"]  # B,C,h,w latent px, unscaled as ComfyUI keeps them
        if output_file:
            path = _output_path(output_file)
            _run(self.NAME, vae, "decode", latents, budget, out=path)
            return (_preview(path),)
        images = _run(self.NAME, vae, "decode", latents, budget)  # B,3,H,W (or B,3,F,H,W) image px in [-1, 1]
        images = vae.process_output(images.to(vae.output_device).float()).movedim(1, -1)  # B,(F,)H,W,3 in [0, 1]
        return (images.reshape(-1, *images.shape[-3:]),)  # a video's frames one after another, as VAEDecode gives


class Encode:
    """IMAGE -> LATENT, the latents ComfyUI's untiled VAE Encode gives, inside a budget."""

    NAME = "VAE Encode (exact)"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes images exactly as the untiled VAE Encode does, streamed inside a memory budget."

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {"required": {
            "pixels": ("IMAGE",),
            "vae": ("VAE",),
            "budget": ("STRING", {"default": "auto", "tooltip": "auto, or bytes like 2GiB, 768MiB."}),
        }}

    def encode(self, pixels, vae, budget="auto"):
        pixels = vae.vae_encode_crop_pixels(pixels[..., :3])  # B,H,W,3 image px, cropped as ComfyUI crops
        images = vae.process_input(pixels.movedim(-1, 1))  # B,3,H,W image px in [-1, 1]
        if vae.latent_dim == 3 and images.ndim == 4:  # a video VAE: the IMAGE batch is the frames, as VAE.encode
            images = images.movedim(1, 0).unsqueeze(0) if not vae.not_video else images.unsqueeze(2)  # 1,3,F,H,W
        return ({"samples": _run(self.NAME, vae, "encode", images, budget)},)


def _output_path(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.is_absolute():
        import folder_paths

        path = Path(folder_paths.get_output_directory()) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _preview(path: Path) -> torch.Tensor:
    """The written image (a video's first frame) shrunk by a whole step to at most PREVIEW_PX, read without
    holding it whole (.npy memory-mapped, .tif and .zarr through zarr, .png by PIL's reducing decoder,
    .mp4 by PyAV): 1,H,W,3 in [0, 1]."""
    import numpy as np

    suffix = path.suffix.lower()
    if suffix in (".png", ".mp4"):
        from PIL import Image

        if suffix == ".mp4":
            av = require("av", "previewing an .mp4")
            with av.open(str(path)) as container:
                im = next(container.decode(video=0)).to_image()
        else:
            im = Image.open(path)
        with im:
            im.thumbnail((PREVIEW_PX, PREVIEW_PX))
            return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255)[None]
    if suffix == ".npy":
        image = np.load(path, mmap_mode="r")[0]  # 3,H,W (a video: 3,F,H,W) float32 image px in [-1, 1]
        image = image[:, 0] if image.ndim == 4 else image
        step = -(-max(image.shape[1:]) // PREVIEW_PX)
        small = (np.asarray(image[:3, ::step, ::step]).transpose(1, 2, 0) + 1) / 2  # h,w,3
    else:
        tifffile, zarr = require("tifffile", "previewing a .tif"), require("zarr", "previewing a .zarr")
        store = tifffile.imread(path, aszarr=True) if suffix in (".tif", ".tiff") else str(path)
        image = zarr.open_array(store, mode="r")  # H,W,3 (tif), B,H,W,3 or B,F,H,W,3 (zarr) uint8 image px
        first = (0,) * (image.ndim - 3)  # the first image (and frame), read by strides only
        step = -(-max(image.shape[-3:-1]) // PREVIEW_PX)
        small = np.asarray(image[(*first, slice(None, None, step), slice(None, None, step), slice(0, 3))],
                           dtype=np.float32) / 255  # h,w,3
    return torch.from_numpy(np.ascontiguousarray(small.clip(0, 1), dtype=np.float32))[None]


def install(comfyui_dir, copy: bool = False) -> Path:
    """Link (or copy) the node pack into ``COMFYUI_DIR/custom_nodes/vaekit_nodes``; returns that path.
    Undo: remove that link or folder. A path already there that is not this pack is left alone."""
    import shutil

    from ..errors import InputError

    folder = Path(comfyui_dir).expanduser()
    custom = folder / "custom_nodes"
    if not folder.is_dir():
        raise InputError(f"{comfyui_dir} is not a ComfyUI folder: it does not exist; pass the folder of a ComfyUI "
                         "clone, which holds main.py, nodes.py and custom_nodes/")
    missing = [name for name, there in (("nodes.py", (folder / "nodes.py").is_file()),
                                        ("custom_nodes/", custom.is_dir())) if not there]
    if missing:
        raise InputError(f"{comfyui_dir} is not a ComfyUI folder: it has no {' or '.join(missing)}; pass the "
                         "folder of a ComfyUI clone, which holds main.py, nodes.py and custom_nodes/")
    target = custom / PACK_NAME
    if target.is_symlink() and target.resolve() == PACK.resolve():
        return target  # already linked here
    if target.exists() or target.is_symlink():
        raise InputError(f"{target} already exists: remove it first to install this vaekit's nodes")
    if copy:
        shutil.copytree(PACK, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        target.symlink_to(PACK.resolve(), target_is_directory=True)
    return target


NODE_CLASS_MAPPINGS = {"VaekitDecode": Decode, "VaekitEncode": Encode}
NODE_DISPLAY_NAME_MAPPINGS = {key: node.NAME for key, node in NODE_CLASS_MAPPINGS.items()}
