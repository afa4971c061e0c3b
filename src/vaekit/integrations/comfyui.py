"""ComfyUI nodes: VAE Decode (exact, budgeted) and VAE Encode (exact) for ComfyUI's own ``VAE`` objects.

ComfyUI's ``VAEDecode`` guesses the memory a decode needs from a fixed per-pixel formula and, when the
device runs out, falls back to averaging three passes of overlapping tiles: slower, and not the
untiled pixels. These nodes take the same ``VAE`` (``comfy.sd.VAE``) and give the tensor ComfyUI's own
untiled node gives, streamed inside a budget:

- the network is rebuilt once per ``VAE`` object as the diffusers model (or vaekit's TAESD) it is,
  on the meta device, with diffusers' single-file converter giving the key mapping; it is cached in a
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

import functools
import re
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "Decode", "Encode", "bridge", "install", "PACK",
           "PACK_NAME"]

CATEGORY = "latent/vaekit"
#: of what ComfyUI says is free, the share "auto" plans for (the rest: allocator slack, other work)
AUTO_SHARE = 0.9
PACK = Path(__file__).parent / "comfyui_pack"  #: the folder ComfyUI loads from custom_nodes/
PACK_NAME = "vaekit_nodes"  #: its name there (not "vaekit": ComfyUI would register the module under that name)
PREVIEW_PX = 1024  #: with an output file, the IMAGE returned is a preview at most this wide and high


@dataclass
class Bridge:
    """A ComfyUI VAE's network as a model vaekit streams: ``model`` on the meta device, and how
    ComfyUI's state dict becomes its weights. Where ComfyUI's VAE object maps latents itself (TAESD's
    unscaled latents; LTXV's per-channel statistics and decode noise), ``to_model(model, latents)`` and
    ``from_model(model, latents)`` do what it does, and ``timestep`` is what its decoder is given."""

    model: torch.nn.Module
    convert: object  # ComfyUI state dict -> the model's state dict (same tensors, renamed or viewed)
    to_model: object = None  # (model, ComfyUI's latents) -> the model's, before a decode
    from_model: object = None  # (model, the model's latents) -> ComfyUI's, after an encode
    timestep: float | None = None


_BRIDGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bridge(vae) -> Bridge:
    """The cached :class:`Bridge` of a ``comfy.sd.VAE`` (made on first use)."""
    found = _BRIDGES.get(vae)
    if found is None:
        found = _BRIDGES[vae] = _make_bridge(vae)
    return found


def _make_bridge(vae) -> Bridge:
    from ..errors import UnsupportedModelError

    network = vae.first_stage_model
    if network is None:
        raise UnsupportedModelError("this VAE holds no weights (ComfyUI found none in the checkpoint)")
    state = network.state_dict()
    kind = type(network).__name__
    if kind == "TAESD":
        return _taesd_bridge(state)
    if kind == "WanVAE" and type(network).__module__ in ("comfy.ldm.wan.vae", "comfy.ldm.wan.vae2_2"):
        return _wan_bridge(state)
    if kind == "VideoVAE" and type(network).__module__ == "comfy.ldm.lightricks.vae.causal_video_autoencoder":
        return _ltxv_bridge(network, state)
    if kind == "VideoVAE" and type(network).__module__ == "comfy.ldm.genmo.vae.model":
        return _mochi_bridge()
    decoder = getattr(network, "decoder", None)
    if type(decoder).__module__ == "comfy.ldm.hunyuan_video.vae":  # HunyuanImage 2.1 (its file's layout)
        from ..loader import hunyuan_image_model

        return Bridge(*hunyuan_image_model(state))
    ldm = type(decoder).__module__ == "comfy.ldm.modules.diffusionmodules.model" and type(decoder).__name__ == "Decoder"
    if ldm and "decoder.conv_in.weight" in state:
        return _kl_bridge(state)
    raise UnsupportedModelError(
        f"vaekit cannot stream ComfyUI's {kind} ({type(decoder).__module__}.{type(decoder).__name__}): it streams "
        "the SD 1.x/2.x, SDXL, SD3, FLUX.1, HunyuanImage 2.1, Wan 2.1/2.2, Qwen-Image, LTX-Video 0.9.x and Mochi "
        "VAEs and TAESD; use ComfyUI's VAE Decode for this one")


def _kl_bridge(state: dict) -> Bridge:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from ..loader import ldm_vae_config

    config = ldm_vae_config(state)
    with torch.device("meta"):
        model = AutoencoderKL(**config).eval()
    return Bridge(model, lambda sd: convert_ldm_vae_checkpoint(sd, config))


def _wan_bridge(state: dict) -> Bridge:
    """ComfyUI's Wan 2.1 or 2.2 VAE (the original checkpoints' layout; Qwen-Image's is Wan 2.1's) as
    diffusers' AutoencoderKLWan, configured from the shapes and mapped as ``vaekit.load`` maps the files."""
    from ..loader import wan_model

    return Bridge(*wan_model(state))


def _taesd_bridge(state: dict) -> Bridge:
    from ..taesd import TinyAutoencoder

    latent = state["taesd_decoder.1.weight"].shape[1]
    variant = {4: "taesd", 16: "taesd3"}[latent]  # ComfyUI's TAESD has these two shapes (taesdxl, taef1 alike)
    with torch.device("meta"):
        model = TinyAutoencoder(variant).eval()
    names = {"taesd_encoder.": "encoder.", "taesd_decoder.": "decoder."}

    def convert(sd: dict) -> dict:
        return {names[k[:14]] + k[14:]: v for k, v in sd.items() if k[:14] in names}

    scale, shift = float(state["vae_scale"]), float(state["vae_shift"])
    return Bridge(model, convert, lambda _, x: (x - shift) * scale, lambda _, z: z / scale + shift)


#: ComfyUI's LTXV decode (VideoVAE.decode's defaults): a timestep-conditioned decoder is given this timestep,
#: and its latents this share of noise from the global generator first
LTXV_TIMESTEP, LTXV_NOISE = 0.05, 0.025


def _ltxv_bridge(network, state: dict) -> Bridge:
    """ComfyUI's LTX-Video 0.9.x VAE (the original layout) as diffusers' AutoencoderKLLTXVideo, configured from
    the shapes; what shapes do not say comes from ComfyUI's modules: whether the decoder is causal, which
    upsamplers add their input back, and the spatial padding of each side (ComfyUI's decoder pads by
    reflection where diffusers' pads zeros). Latents are normalized per channel, as its VideoVAE does."""
    from ..loader import ltx_video_model

    residual = [m.residual for m in network.decoder.up_blocks if hasattr(m, "residual")]  # DepthToSpaceUpsample
    model, convert = ltx_video_model(state, decoder_causal=network.decoder.causal, upsample_residual=residual)
    for side in ("encoder", "decoder"):
        padding = getattr(network, side).conv_in.conv.padding_mode  # one mode for every conv of a side
        for conv in getattr(model, side).modules():
            if isinstance(conv, torch.nn.Conv3d):
                conv.padding_mode = padding
    timestep = LTXV_TIMESTEP if model.config.timestep_conditioning else None

    def stats(model, x: torch.Tensor):
        return model.latents_std.view(1, -1, 1, 1, 1).to(x), model.latents_mean.view(1, -1, 1, 1, 1).to(x)

    def to_model(model, x: torch.Tensor) -> torch.Tensor:
        if timestep is not None:  # as VideoVAE.decode: noise first, drawn like its randn_like
            x = torch.randn_like(x) * LTXV_NOISE + (1.0 - LTXV_NOISE) * x
        std, mean = stats(model, x)
        return x * std + mean

    def from_model(model, z: torch.Tensor) -> torch.Tensor:
        std, mean = stats(model, z)
        return (z - mean) / std

    return Bridge(model, convert, to_model, from_model, timestep)


def _mochi_bridge() -> Bridge:
    """ComfyUI's Mochi VAE (genmo's layout and code, one size) as diffusers' AutoencoderKLMochi, which has
    the same weights but computes two things differently; the model is set to compute them as ComfyUI
    does: each up block drops its first t - 1 frames as it unfolds them (diffusers drops 5 once, at the
    end), and the encoder's attention over each pixel's frames is not causal, its queries and keys
    L2-normed with F.normalize's own eps."""
    from diffusers import AutoencoderKLMochi

    with torch.device("meta"):
        model = AutoencoderKLMochi().eval()  # diffusers' defaults: the released Mochi 1 VAE, ComfyUI's one size
    model.drop_last_temporal_frames = False
    for block in model.decoder.up_blocks:
        block.__class__ = _unfold_then_drop()
    for block in (*model.encoder.down_blocks, model.encoder.block_out):
        for attn in block.attentions:
            attn.is_causal, attn.norm_q.eps, attn.norm_k.eps = False, 1e-12, 1e-12
    return Bridge(model, _mochi_keys)


@functools.cache
def _unfold_then_drop() -> type:
    from diffusers.models.autoencoders.autoencoder_kl_mochi import MochiUpBlock3D

    class MochiUnfoldThenDrop(MochiUpBlock3D):
        """genmo's (ComfyUI's) up block: after unfolding frames, the first temporal_expansion - 1 dropped."""

        drops_first_frames = True

        def forward(self, hidden_states, conv_cache=None):
            out, cache = super().forward(hidden_states, conv_cache)
            return out[:, :, self.temporal_expansion - 1:], cache  # B,C,F,H,W image frames

    return MochiUnfoldThenDrop


def _mochi_keys(state: dict) -> dict:
    """ComfyUI's (genmo's) Mochi keys -> diffusers': each side's flat ``layers``/``blocks`` into diffusers'
    blocks; a resnet's ``stack.0/2/3/5`` into norm1/conv1/norm2/conv2; an attention's joint qkv into thirds."""
    resnet = {"0": "norm1.norm_layer", "2": "conv1.conv", "3": "norm2.norm_layer", "5": "conv2.conv"}
    out = {}

    def block_layer(prefix: str, j: int, rest: list[str], value) -> None:  # resnet j of a diffusers block
        if rest[0] == "stack":
            out[f"{prefix}.resnets.{j}.{resnet[rest[1]]}.{rest[2]}"] = value
        elif rest[:2] == ["attn_block", "norm"]:
            out[f"{prefix}.norms.{j}.norm_layer.{rest[2]}"] = value
        elif rest[2] == "qkv":
            for name, third in zip(("to_q", "to_k", "to_v"), value.chunk(3), strict=True):
                out[f"{prefix}.attentions.{j}.{name}.{rest[3]}"] = third
        else:  # attn.out
            out[f"{prefix}.attentions.{j}.to_out.0.{rest[3]}"] = value

    downs = sorted({int(k.split(".")[2]) for k in state if re.match(r"encoder\.layers\.\d+\.layers\.", k)})
    ups = sorted({int(k.split(".")[2]) for k in state if re.match(r"decoder\.blocks\.\d+\.proj\.", k)})
    last = max(int(k.split(".")[2]) for k in state if k.startswith("decoder.blocks."))
    for key, value in state.items():
        part, parts = key.split(".")[0], key.split(".")
        if parts[1] in ("output_proj", "output_norm"):
            out[f"{part}.{'proj_out' if parts[1] == 'output_proj' else 'norm_out.norm_layer'}.{parts[-1]}"] = value
        elif part == "encoder":
            i = int(parts[2])
            if i == 0:
                out[f"encoder.proj_in.{parts[3]}"] = value
            elif i in downs:  # layers.0: the strided conv; then resnets (and attention)
                d, j = downs.index(i), int(parts[4])
                if j == 0:
                    out[f"encoder.down_blocks.{d}.conv_in.conv.{parts[5]}"] = value
                else:
                    block_layer(f"encoder.down_blocks.{d}", j - 1, parts[5:], value)
            elif i < downs[0]:
                block_layer("encoder.block_in", i - 1, parts[3:], value)
            else:
                block_layer("encoder.block_out", i - downs[-1] - 1, parts[3:], value)
        elif parts[2] == "0":  # decoder.blocks.0: conv_in, then resnets
            j = int(parts[3])
            if j == 0:
                out[f"decoder.conv_in.{parts[4]}"] = value
            else:
                block_layer("decoder.block_in", j - 1, parts[4:], value)
        elif int(parts[2]) in ups:
            u = ups.index(int(parts[2]))
            if parts[3] == "proj":
                out[f"decoder.up_blocks.{u}.proj.{parts[4]}"] = value
            else:
                block_layer(f"decoder.up_blocks.{u}", int(parts[4]), parts[5:], value)
        elif int(parts[2]) == last:
            block_layer("decoder.block_out", int(parts[3]), parts[4:], value)
    return out


class _Bound:
    """``with _Bound(bridge, vae):`` the meta model holds ComfyUI's current weight tensors (views, no copy);
    after, meta again, so no reference outlives the call and ComfyUI alone decides where weights live."""

    def __init__(self, the_bridge: Bridge, vae):
        self.bridge, self.vae = the_bridge, vae

    def __enter__(self) -> torch.nn.Module:
        state = self.vae.first_stage_model.state_dict()  # detached tensors, where model management put them
        self.bridge.model.load_state_dict(self.bridge.convert(state), strict=True, assign=True)
        return self.bridge.model

    def __exit__(self, *exc) -> None:
        self.bridge.model.to_empty(device="meta")


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
        with _Bound(the_bridge, vae) as model:
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
            import av

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
        import tifffile
        import zarr

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

    custom = Path(comfyui_dir).expanduser() / "custom_nodes"
    if not custom.is_dir() or not (custom.parent / "nodes.py").is_file():
        raise InputError(f"{comfyui_dir} is not a ComfyUI folder (no nodes.py and custom_nodes/ in it): pass the "
                         "folder ComfyUI's main.py is in")
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
