"""``vaekit.load``: any VAE file or folder users have, as a model ``decode``/``encode`` accept.

    "taef2"                     the built-in TAEF2 (MIT; src/vaekit/weights/) -> taesd.TinyAutoencoder
    a diffusers folder          config.json + safetensors                 -> its diffusers class
    a TAESD-family .pth         encoder or decoder, variant from the keys  -> taesd.TinyAutoencoder
    an LDM single-file VAE      A1111 / ComfyUI .safetensors (or .pt/.ckpt) -> AutoencoderKL, converted
                                by diffusers' own single-file utilities, config derived from the
                                weights' shapes (nothing fetched)
    a Wan 2.1/2.2, HunyuanImage 2.1, LTX-Video 0.9.x or LTX-2 single-file VAE (the original repositories'
                                layout, as ComfyUI loads them) -> its diffusers class, configured from the
                                shapes (and LTX-2's from the config its file carries)

Weights are read only with safetensors or ``torch.load(weights_only=True)``: a file that needs
arbitrary unpickling is refused, as is a truncated or empty one, each with a CheckpointError.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from .errors import CheckpointError
from .taesd import VARIANTS, TinyAutoencoder

__all__ = ["load", "read_state_dict", "detect_taesd", "ldm_vae_config", "BUILTIN", "builtin_paths"]

#: models vaekit knows by name: their weight files (src/vaekit/weights/README.md says where they come from)
BUILTIN = {"taef2": ("taef2_encoder.pth", "taef2_decoder.pth")}
#: the rest of the TAESD family: streamed, not built in (their weights are madebyollin/taesd's files)
TAESD_FAMILY = ("taesd", "taesdxl", "taesd3", "taef1", "taesana")

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
LDM_PREFIXES = ("first_stage_model.", "vae.")


def load(path, *more, dtype: torch.dtype | None = None, device=None):
    """Load a VAE from a folder or weights files, as a model ``decode``/``encode`` accept.

    Reads a diffusers folder, an LDM single-file VAE (A1111/ComfyUI), Wan 2.1/2.2, HunyuanImage 2.1,
    LTX-Video 0.9.x and LTX-2 single files, TAESD-family ``.pth`` files, or "taef2" (built in). Weights
    are read only with safetensors or ``torch.load(weights_only=True)``.

    Args:
        path: a folder, a weights file, or "taef2".
        *more: TAESD-family encoders and decoders come in separate files: pass both (in any order) to
            get one model that encodes and decodes, e.g. ``load("taef2_encoder.pth", "taef2_decoder.pth")``.
        dtype: cast the model to this dtype (default: the checkpoint's).
        device: move the model there (default: the CPU).

    Returns:
        The model in eval mode: its diffusers class, or vaekit's TinyAutoencoder for TAESD files.

    Raises:
        CheckpointError: a path that does not exist, or a file that is truncated, junk, pickle-only or
            of a layout vaekit does not read.
    """
    if not more and str(path) in BUILTIN and not Path(path).exists():
        path, *more = builtin_paths(str(path))
    paths = [Path(p) for p in (path, *more)]
    for p in paths:
        if not p.exists() and str(p) in TAESD_FAMILY:
            raise CheckpointError(f"{p} is not built in (only taef2 is): pass its files, e.g. {p}_encoder.pth "
                                  f"{p}_decoder.pth (MIT, github.com/madebyollin/taesd)")
        if not p.exists():
            raise CheckpointError(f"{p} does not exist: pass a diffusers VAE folder (with config.json), a weights "
                                  "file (.safetensors, .pth), or taef2 (built in)")
    if paths[0].is_dir():
        if more:
            raise CheckpointError("a diffusers folder is a whole model: pass it alone")
        from .models import load_model

        model = load_model(paths[0], dtype)
    else:
        model = _load_files(paths)
        if dtype is not None:
            model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


def builtin_paths(name: str) -> list[Path]:
    """The weight files of a built-in model: in the package's ``weights/`` or in ``$VAEKIT_WEIGHTS``."""
    folders = [Path(__file__).parent / "weights"]
    if os.environ.get("VAEKIT_WEIGHTS"):
        folders.insert(0, Path(os.environ["VAEKIT_WEIGHTS"]))
    for folder in folders:
        paths = [folder / f for f in BUILTIN[name]]
        if all(p.is_file() for p in paths):
            return paths
    raise CheckpointError(f"the built-in {name} weights ({', '.join(BUILTIN[name])}) are missing from "
                          f"{folders[-1]}: reinstall vaekit (the wheel and the repository carry them), or put them "
                          "in a folder named by VAEKIT_WEIGHTS (MIT, github.com/madebyollin/taesd)")


def _load_files(paths: list[Path]):
    states = {p: read_state_dict(p) for p in paths}
    if all(detect_taesd(s, p.name) for p, s in states.items()):
        return _taesd(states)
    if len(paths) == 1 and _is_hunyuan_image_vae(states[paths[0]]):
        return _converted(states[paths[0]], paths[0], hunyuan_image_model, "HunyuanImage 2.1")
    if len(paths) == 1 and _is_ldm_vae(states[paths[0]]):
        return _ldm_vae(states[paths[0]], paths[0])
    if len(paths) == 1 and _is_wan_vae(states[paths[0]]):
        return _converted(states[paths[0]], paths[0], wan_model, "Wan 2.1 or 2.2")
    if len(paths) == 1 and _is_ltx_video_vae(states[paths[0]]):
        config = read_vae_config(paths[0])
        if _is_ltx2_layout(_strip_prefix(states[paths[0]])) or "encoder_spatial_padding_mode" in (config or {}):
            return _ltx2(states[paths[0]], paths[0], config)
        return _converted(states[paths[0]], paths[0], ltx_video_model, "LTX-Video 0.9.x")
    names = ", ".join(p.name for p in paths)
    raise CheckpointError(f"{names}: not a VAE vaekit recognises (a TAESD-family .pth, an LDM single-file VAE "
                          "with encoder./decoder. keys, a Wan, HunyuanImage 2.1 or LTX-Video 0.9.x VAE file); for a "
                          "diffusers model pass its folder")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, through safetensors or torch.load(weights_only=True) only."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:  # memory-mapped: only the tensors taken are read
                keys = list(f.keys())
                # a whole checkpoint (SD's first_stage_model., LTX's vae. beside a 2-19 B transformer): its VAE only
                prefix = next((p for p in LDM_PREFIXES if any(k.startswith(p) for k in keys)), "")
                state = {k: f.get_tensor(k) for k in keys if k.startswith(prefix)}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}): truncated or corrupt?") from None
    elif path.suffix in TORCH_SUFFIXES:
        state = _torch_load(path)
    else:
        raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}: use .safetensors or .pth")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning-style checkpoints
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return state


def read_vae_config(path: Path) -> dict | None:
    """The VAE's section of the config a safetensors file carries in its metadata (LTX's files: the
    original config's ``vae``), or None."""
    if path.suffix != ".safetensors":
        return None
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    try:
        config = json.loads(metadata.get("config", "{}"))
    except json.JSONDecodeError:
        return None
    return config.get("vae") if isinstance(config, dict) and isinstance(config.get("vae"), dict) else None


def _torch_load(path: Path):
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0] if str(e) else "unsafe content"
        raise CheckpointError(f"{path} was refused: it needs full unpickling, which can run arbitrary code "
                              f"({reason}); convert it to .safetensors") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e}): truncated or corrupt?") from None


# ---- TAESD family ---------------------------------------------------------------------------------


def detect_taesd(state: dict[str, torch.Tensor], file_name: str = "") -> tuple[str, str] | None:
    """("encoder" | "decoder", variant) from the keys and shapes, or None if not a TAESD-family file.

    Variants with the same architecture (taesd / taesdxl, taesd3 / taef1) are told apart by the file
    name, defaulting to the first of each pair.
    """
    if not state or not all(re.match(r"\d+\.", k) for k in state):
        return None
    if "0.weight" in state and state["0.weight"].shape[1] == 3:
        part, first = "encoder", state["0.weight"]
        last_conv = max((k for k in state if re.fullmatch(r"\d+\.weight", k)), key=lambda k: int(k.split(".")[0]))
        latent = state[last_conv].shape[0]
        f32 = first.shape[0] == 32
    elif "1.weight" in state and "0.weight" not in state:
        part, latent = "decoder", state["1.weight"].shape[1]
        f32 = state["1.weight"].shape[0] == 256
    else:
        return None
    pooled = any(".pool." in k for k in state)
    name = file_name.lower()
    for variant in VARIANTS.values():
        if (variant.latent_channels, variant.scale == 32, variant.pooled) != (latent, f32, pooled):
            continue
        twins = [v.name for v in VARIANTS.values() if (v.latent_channels, v.scale, v.pooled) ==
                 (variant.latent_channels, variant.scale, variant.pooled)]
        named = [t for t in twins if t in name.replace("-", "").replace("_", "")]
        return part, (named[-1] if named else twins[0])  # taesdxl contains "taesd": prefer the longer match
    return None


def _taesd(states: dict[Path, dict]) -> TinyAutoencoder:
    found = {p: detect_taesd(s, p.name) for p, s in states.items()}
    parts = [part for part, _ in found.values()]
    variants = {variant for _, variant in found.values()}
    if len(parts) != len(set(parts)) or len(variants) != 1:
        described = ", ".join(f"{p.name}: {v} {part}" for p, (part, v) in found.items())
        raise CheckpointError(f"these files do not make one TAESD model ({described}): pass one encoder and/or "
                              "one decoder of the same variant")
    model = TinyAutoencoder(variants.pop(), encoder="encoder" in parts, decoder="decoder" in parts)
    for path, (part, variant) in found.items():
        try:
            getattr(model, part).load_state_dict(states[path], strict=True)
        except RuntimeError as e:
            detail = str(e).splitlines()[1:3]
            raise CheckpointError(f"{path.name} looks like a {variant} {part} but its weights do not fit: "
                                  f"{' '.join(d.strip() for d in detail)}") from None
    return model


# ---- LDM single-file AutoencoderKL ----------------------------------------------------------------


def _strip_prefix(state: dict) -> dict:
    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _is_ldm_vae(state: dict) -> bool:
    vae = _strip_prefix(state)
    return "decoder.conv_in.weight" in vae and any(k.startswith("decoder.up.") for k in vae)


def _ldm_vae(state: dict, path: Path):
    """Convert with diffusers' single-file utilities; the ddconfig they need comes from the shapes."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        config = ldm_vae_config(state)
        converted = convert_ldm_vae_checkpoint(state, config)
        with torch.device("meta"):
            model = AutoencoderKL(**config)
        model.load_state_dict(converted, strict=True, assign=True)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path.name} has encoder./decoder. keys but is not a VAE diffusers can convert: "
                              f"{str(e).splitlines()[0]}") from None
    return model


def ldm_vae_config(state: dict) -> dict:
    """The diffusers AutoencoderKL config of an LDM-format VAE state dict, from its shapes alone (diffusers'
    ``create_vae_diffusers_config_from_ldm`` given the ddconfig it would otherwise read from a yaml)."""
    from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

    vae = _strip_prefix(state)
    levels = sorted({int(k.split(".")[2]) for k in vae if k.startswith("encoder.down.")})
    ch = vae["encoder.conv_in.weight"].shape[0]
    ch_mult = [vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in levels]
    blocks = {int(k.split(".")[4]) for k in vae if k.startswith("encoder.down.0.block.")}
    ddconfig = dict(ch=ch, ch_mult=ch_mult, num_res_blocks=len(blocks),
                    in_channels=vae["encoder.conv_in.weight"].shape[1], out_ch=vae["decoder.conv_out.weight"].shape[0],
                    z_channels=vae["decoder.conv_in.weight"].shape[1])
    original = {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ddconfig}}}}}
    config = create_vae_diffusers_config_from_ldm(original, state)
    config["use_quant_conv"] = "quant_conv.weight" in vae
    config["use_post_quant_conv"] = "post_quant_conv.weight" in vae
    return config


# ---- Wan single-file VAEs (the original repositories' layout: Wan2.1_VAE.pth, Wan2.2_VAE.pth) -----------


def _is_wan_vae(state: dict) -> bool:
    vae = _strip_prefix(state)
    return "decoder.head.0.gamma" in vae and any(k.startswith("decoder.upsamples.") for k in vae)


def _converted(state: dict, path: Path, make_model, what: str):
    """A single file of a family diffusers' single-file loader does not take: ``make_model`` gives the
    model on the meta device and the mapping of the file's keys to its own; the file's tensors are
    assigned to it as they are (no copy)."""
    vae = _strip_prefix(state)
    try:
        model, convert = make_model(vae)
        model.load_state_dict(convert(vae), strict=True, assign=True)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path.name} looks like a {what} VAE but its weights do not fit: "
                              f"{str(e).splitlines()[0]}") from None
    return model


def wan_model(vae: dict):
    """The AutoencoderKLWan (on the meta device) of an original-layout Wan VAE state dict, configured from
    its shapes, and the function that maps such a state dict to diffusers' keys: diffusers' own
    ``convert_wan_vae_to_diffusers`` for Wan 2.1 (and Qwen-Image, the same layout); for Wan 2.2, whose
    levels are nested blocks diffusers ships no converter for, ``convert_wan22`` maps the blocks and
    leaves the rest (middle, head, quant convs: the same keys in both) to diffusers'."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    config = wan_vae_config(vae)
    if not config.get("is_residual") and (config["num_res_blocks"] != 2 or len(config["dim_mult"]) != 4):
        raise ValueError(f"{config['num_res_blocks']} res blocks a level and {len(config['dim_mult'])} levels, "
                         "where diffusers' Wan 2.1 converter knows 2 and 4")
    with torch.device("meta"):
        model = AutoencoderKLWan(**config).eval()
    return model, (convert_wan22 if config.get("is_residual") else convert_wan_vae_to_diffusers)


def _is_wan22(vae: dict) -> bool:
    return any(k.startswith("decoder.upsamples.0.upsamples.") for k in vae)


def wan_vae_config(vae: dict) -> dict:
    """The AutoencoderKLWan config of an original-layout Wan VAE state dict, from its shapes. Wan 2.1's
    encoder ``downsamples`` is a flat list: each level's res blocks, then a resampler between levels (a
    time conv where it also halves time). Wan 2.2 nests each level (``downsamples.i.downsamples.j``), works
    on 2x2 patches (12 channels in and out) and has a wider decoder."""
    base = vae["encoder.conv1.weight"].shape[0]
    levels, time = [], []
    if _is_wan22(vae):
        count = 1 + max(int(k.split(".")[2]) for k in vae if k.startswith("encoder.downsamples."))
        for i in range(count):
            prefix = f"encoder.downsamples.{i}.downsamples."
            items = sorted({int(k.split(".")[4]) for k in vae if k.startswith(prefix)})
            levels.append([vae[f"{prefix}{j}.residual.6.weight"].shape[0] for j in items
                           if f"{prefix}{j}.residual.6.weight" in vae])
            if i < count - 1:
                time.append(f"{prefix}{items[-1]}.time_conv.weight" in vae)
    else:
        levels.append([])
        for i in sorted({int(k.split(".")[2]) for k in vae if k.startswith("encoder.downsamples.")}):
            prefix = f"encoder.downsamples.{i}."
            if prefix + "resample.1.weight" in vae:  # a resampler ends a level
                time.append(prefix + "time_conv.weight" in vae)
                levels.append([])
            else:
                levels[-1].append(vae[prefix + "residual.6.weight"].shape[0])  # the block's output channels
    blocks = {len(level) for level in levels}
    if len(blocks) != 1:
        raise ValueError(f"levels with different numbers of res blocks: {[len(level) for level in levels]}")
    dim_mult = [level[-1] // base for level in levels]
    config = dict(base_dim=base, z_dim=vae["decoder.conv1.weight"].shape[1], dim_mult=dim_mult,
                  num_res_blocks=blocks.pop(), temperal_downsample=time, attn_scales=[])
    if _is_wan22(vae):
        channels_in, channels_out = vae["encoder.conv1.weight"].shape[1], vae["decoder.head.2.weight"].shape[0]
        patch = math.isqrt(channels_in // 3)
        config.update(is_residual=True, in_channels=channels_in, out_channels=channels_out, patch_size=patch,
                      decoder_base_dim=vae["decoder.head.2.weight"].shape[1] // dim_mult[0],
                      scale_factor_spatial=patch * 2 ** (len(dim_mult) - 1))
    return config


#: a res block's parts: the original's nn.Sequential indices -> diffusers' names
_RESNET = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
           "shortcut": "conv_shortcut"}


def convert_wan22(state: dict) -> dict:
    """An original-layout Wan 2.2 VAE state dict in diffusers' AutoencoderKLWan keys (is_residual): each
    level's blocks are ``resnets`` and its resampler the ``downsampler``/``upsampler``; the rest has Wan
    2.1's keys and goes through diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    out, rest = {}, {}
    for key, value in state.items():
        found = re.fullmatch(r"(encoder|decoder)\.(?:down|up)samples\.(\d+)\.(?:down|up)samples\.\d+\.(.+)", key)
        if found is None:
            rest[key] = value
            continue
        part, level, tail = found.groups()
        blocks = "down_blocks" if part == "encoder" else "up_blocks"
        if tail.startswith(("resample.", "time_conv.")):  # the level's resampler
            out[f"{part}.{blocks}.{level}.{'downsampler' if part == 'encoder' else 'upsampler'}.{tail}"] = value
        else:
            index = key.split(".")[4]
            module, name = tail.rsplit(".", 1)
            out[f"{part}.{blocks}.{level}.resnets.{index}.{_RESNET[module]}.{name}"] = value
    return {**convert_wan_vae_to_diffusers(rest), **out}


# ---- HunyuanImage 2.1 single-file VAE (the original layout, as ComfyUI loads it) ------------------------


def _is_hunyuan_image_vae(state: dict) -> bool:
    """LDM-like keys, but the downsamplers are pixel shuffles: their conv changes the channels (an LDM
    downsampler's stride-2 conv keeps them)."""
    vae = _strip_prefix(state)
    conv = vae.get("encoder.down.0.downsample.conv.weight")
    return conv is not None and "decoder.up.0.block.0.conv1.weight" in vae and conv.shape[0] != conv.shape[1]


def hunyuan_image_model(vae: dict):
    """The AutoencoderKLHunyuanImage (meta device) of an original-layout state dict, configured from its
    shapes, and the function mapping such a state dict to diffusers' keys (diffusers ships none)."""
    from diffusers import AutoencoderKLHunyuanImage

    levels = sorted({int(k.split(".")[2]) for k in vae if k.startswith("encoder.down.")})
    blocks = {int(k.split(".")[4]) for k in vae if k.startswith("encoder.down.0.block.")}
    shuffles = sum(f"encoder.down.{i}.downsample.conv.weight" in vae for i in levels)
    config = dict(in_channels=vae["encoder.conv_in.weight"].shape[1], out_channels=vae["decoder.conv_out.weight"].shape[0],
                  latent_channels=vae["decoder.conv_in.weight"].shape[1], layers_per_block=len(blocks),
                  block_out_channels=tuple(vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in levels),
                  spatial_compression_ratio=2**shuffles, sample_size=512)  # the released config's; only tiling reads it
    with torch.device("meta"):
        model = AutoencoderKLHunyuanImage(**config).eval()
    return model, convert_hunyuan_image


def convert_hunyuan_image(state: dict) -> dict:
    """Original (ComfyUI's) HunyuanImage 2.1 VAE keys -> diffusers': each level's ``block.j`` and
    ``downsample``/``upsample`` become entries of one flat ``down_blocks``/``up_blocks`` list, and the mid
    block's LDM names become diffusers'."""
    names = {"nin_shortcut": "conv_shortcut", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "proj"}
    flat: dict[tuple[str, int, str, int], int] = {}  # (part, level, kind, j) -> index in the flat list
    for part, blocks in (("encoder", "down"), ("decoder", "up")):
        items = sorted({(int(k.split(".")[2]), k.split(".")[3], int(k.split(".")[4]) if k.split(".")[3] == "block"
                         else 0) for k in state if k.startswith(f"{part}.{blocks}.")},
                       key=lambda t: (t[0], t[1] != "block", t[2]))  # a level's blocks, then its resampler
        for n, (level, kind, j) in enumerate(items):
            flat[(part, level, kind, j)] = n
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[1] in ("down", "up"):
            level, kind = int(parts[2]), parts[3]
            j, rest = (int(parts[4]), parts[5:]) if kind == "block" else (0, parts[4:])
            new = [parts[0], f"{parts[1]}_blocks", str(flat[(parts[0], level, kind, j)]), *rest]
        elif parts[1] == "mid":
            where = {"block_1": ["resnets", "0"], "block_2": ["resnets", "1"], "attn_1": ["attentions", "0"]}[parts[2]]
            new = [parts[0], "mid_block", *where, *parts[3:]]
        else:
            new = parts
        new[-2] = names.get(new[-2], new[-2])
        out[".".join(new)] = value
    return out


# ---- LTX single-file VAEs: LTX-Video 0.9.x and LTX-2 (the original layout, as ComfyUI loads it) ------------


def _is_ltx_video_vae(state: dict) -> bool:
    return "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight" in _strip_prefix(state)  # ComfyUI's test


def _is_ltx2_layout(vae: dict) -> bool:
    """LTX-2's VAE: space/time-to-depth downsamplers (as 0.9.5's) and a decoder without timestep conditioning
    (every LTX-Video release from 0.9.5 on has one)."""
    folds = any(re.fullmatch(r"encoder\.down_blocks\.\d+\.conv\.conv\.weight", k) for k in vae)
    return folds and "decoder.timestep_scale_multiplier" not in vae


def ltx_video_model(vae: dict, *, decoder_causal: bool = False, upsample_residual=None):
    """The AutoencoderKLLTXVideo (meta device) of an original-layout LTX-Video 0.9.x VAE state dict, configured
    from its shapes, and the function mapping such a state dict to diffusers' keys. Two things shapes cannot
    say come as arguments: whether the decoder is causal (no released one is) and whether each upsampler adds
    its input back (``upsample_residual``, in the decoder's order; default: those that halve channels do, as
    in every release)."""
    from diffusers import AutoencoderKLLTXVideo

    config = ltx_video_config(convert_ltx_video(vae), decoder_causal=decoder_causal,
                              upsample_residual=upsample_residual)
    with torch.device("meta"):
        model = AutoencoderKLLTXVideo(**config).eval()
    return model, convert_ltx_video


def convert_ltx_video(state: dict) -> dict:
    """Original LTX-Video 0.9.x VAE keys -> diffusers'. The original lists each side's blocks flat (stacks of
    resnets, resamplers, channel-changing resnets); diffusers groups them. diffusers' own converter picks its
    grouping by one tensor's width, so it maps only the released sizes: this one reads the grouping from
    what each entry holds, and so maps any size."""
    out, groups = {}, {}
    for part, blocks in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
        entries = sorted({int(k.split(".")[2]) for k in state if k.startswith(f"{part}.{blocks}.")})
        groups.update(_ltx_groups(part, blocks, entries, state))
    renames = {"res_blocks.": "resnets.", "conv_shortcut.": "conv_shortcut.conv.", "norm3.norm.": "norm3.",
               "decoder.last_time_embedder.": "decoder.time_embedder.",
               "decoder.last_scale_shift_table": "decoder.scale_shift_table",
               "per_channel_statistics.mean-of-means": "latents_mean",
               "per_channel_statistics.std-of-means": "latents_std"}
    for key, value in state.items():
        if key.startswith("per_channel_statistics.") and key[23:] not in ("mean-of-means", "std-of-means"):
            continue  # the other statistics: no tensor of the model
        parts = key.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            key = ".".join([parts[0], groups[parts[0], int(parts[2])], *parts[3:]])
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _ltx_groups(part: str, blocks: str, entries: list[int], state: dict) -> dict:
    """(part, entry) -> the diffusers module it becomes. A stack of resnets (``res_blocks``) is a block's
    resnets (the encoder's last one and the decoder's first: the mid block); a resampler is the
    downsampler after, or the upsampler before, a stack; a lone resnet is the encoder's ``conv_out`` after a
    stack or the decoder's ``conv_in`` before one."""
    def kind(i: int) -> str:
        keys = [k[len(f"{part}.{blocks}.{i}."):] for k in state if k.startswith(f"{part}.{blocks}.{i}.")]
        return "stack" if any(k.startswith("res_blocks.") for k in keys) else \
            "resnet" if "conv1.conv.weight" in keys else "resampler"

    kinds = {i: kind(i) for i in entries}
    stacks = [i for i in entries if kinds[i] == "stack"]
    groups, block = {}, -1
    if part == "encoder":  # down_blocks.i = [stack, (downsampler), (conv_out)]; the last stack: the mid block
        for i in entries:
            block += kinds[i] == "stack"
            where = {"stack": "", "resampler": ".downsamplers.0", "resnet": ".conv_out"}[kinds[i]]
            groups[part, i] = "mid_block" if i == stacks[-1] else f"down_blocks.{block}{where}"
    else:  # the first stack: the mid block; up_blocks.i = [(conv_in), (upsampler), stack]
        for i in entries:
            where = {"stack": "", "resampler": ".upsamplers.0", "resnet": ".conv_in"}[kinds[i]]
            groups[part, i] = "mid_block" if i == stacks[0] else f"up_blocks.{block + 1}{where}"
            block += kinds[i] == "stack" and i != stacks[0]
    return groups


#: the original config's names of LTX's upsamplers -> diffusers' upsample_type
LTX_UPSAMPLERS = {"compress_all": "spatiotemporal", "compress_space": "spatial", "compress_time": "temporal"}


def _ltx2(state: dict, path: Path, config: dict | None):
    """An LTX-2 single file, configured as Lightricks' own loader (ltx_core's video VAE configurator)
    configures it: from the config its safetensors metadata carries."""
    if config is None:
        raise CheckpointError(f"{path.name} is an LTX-2 VAE without the config its released files carry "
                              "(safetensors metadata 'config'): its padding and causality are not in the "
                              "weights; load its diffusers folder (e.g. Lightricks/LTX-2, subfolder vae)")
    kind = config.get("_class_name", "CausalVideoAutoencoder")
    if kind != "CausalVideoAutoencoder":
        raise CheckpointError(f"{path.name} is an LTX {kind}, which has no diffusers class; vaekit loads LTX-2's "
                              "CausalVideoAutoencoder (diffusers' AutoencoderKLLTX2Video)")
    return _converted(state, path, lambda vae: ltx2_model(vae, config), "LTX-2")


def ltx2_model(vae: dict, config: dict):
    """The AutoencoderKLLTX2Video (meta device) of an original-layout LTX-2 VAE state dict, and its key
    mapping. Its layout is LTX-Video 0.9.5's (``convert_ltx_video``), its sizes come from the shapes; what the
    shapes do not say comes from the file's own config (safetensors metadata): the padding of each side,
    whether the decoder is causal, each upsampler's kind and whether it adds its input back."""
    from diffusers import AutoencoderKLLTX2Video

    upsamplers = [(LTX_UPSAMPLERS[name], (params if isinstance(params, dict) else {}).get("residual", False))
                  for name, params in config.get("decoder_blocks", []) if name in LTX_UPSAMPLERS]  # from the pixels
    residual = [r for _, r in reversed(upsamplers)] if upsamplers else None  # from the latents, as the up blocks
    shapes = ltx_video_config(convert_ltx_video(vae), decoder_causal=bool(config.get("causal_decoder", False)),
                              upsample_residual=residual)
    downs = len(shapes["down_block_types"])
    kinds = tuple(kind for kind, _ in upsamplers) or ("spatiotemporal",) * len(shapes["decoder_block_out_channels"])
    settings = {**shapes, "block_out_channels": shapes["block_out_channels"][1:],  # each down block's output
                "down_block_types": ("LTX2VideoDownBlock3D",) * downs, "upsample_type": kinds,
                # the keys and defaults of Lightricks' loader (ltx_core, 2026-08): the decoder's padding is the
                # config's plain "spatial_padding_mode"
                "encoder_spatial_padding_mode": config.get("encoder_spatial_padding_mode", "zeros"),
                "decoder_spatial_padding_mode": config.get("spatial_padding_mode", "reflect")}
    with torch.device("meta"):
        model = AutoencoderKLLTX2Video(**settings).eval()
    return model, convert_ltx_video


def ltx_video_config(state: dict, *, decoder_causal: bool = False, upsample_residual=None) -> dict:
    """The AutoencoderKLLTXVideo config of a diffusers-layout state dict, from its shapes."""
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    def width(key: str, dim: int = 0) -> int:
        return state[key].shape[dim]

    patch = math.isqrt(width("encoder.conv_in.conv.weight", 1) // 3)  # RGB folded into channels by patch x patch
    # the encoder: down blocks of resnets at their input width, each maybe with a downsampler; 0.9.5's change
    # channels in the downsampler (a space/time-to-depth fold), 0.9.0's in a resnet after it
    downs = count("encoder.down_blocks.")
    folds = any(f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight" in state for i in range(downs))
    widths = [width(f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight") for i in range(downs)]
    widths += [width("encoder.mid_block.resnets.0.conv1.conv.weight")] if folds else []
    kinds, space, time = [], 0, 0
    for i in range(downs):
        if f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight" in state:  # folds stride's cells into channels
            cells = widths[i + 1] // width(f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight")
            kinds.append({4: "spatial", 2: "temporal", 8: "spatiotemporal"}[cells])
        else:
            kinds.append("conv")  # a strided 3x3x3 conv (or none)
        if f"encoder.down_blocks.{i}.downsamplers.0.conv.weight" in state or kinds[-1] != "conv":
            space += kinds[-1] != "temporal"
            time += kinds[-1] != "spatial"
    # the decoder, from the latents: the mid block, then up blocks of (upsampler) + resnets; an upsampler
    # whose input is `factor` times its block's width halves the channels as it unfolds
    ups = count("decoder.up_blocks.")
    resamples = [f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.weight" in state for i in range(ups)]
    up_widths = [width(f"decoder.up_blocks.{i}.resnets.0.conv1.conv.weight") for i in range(ups)]
    factors = [width(f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.weight", 1) // up_widths[i] if resamples[i] else 1
               for i in range(ups)]
    noise = [f"decoder.{b}.resnets.0.per_channel_scale1" in state
             for b in ["mid_block", *(f"up_blocks.{i}" for i in range(ups))]]
    residual = upsample_residual if upsample_residual is not None else [f > 1 for f in factors]
    return dict(
        in_channels=3, out_channels=width("decoder.conv_out.conv.weight") // patch**2,
        latent_channels=width("decoder.conv_in.conv.weight", 1), block_out_channels=tuple(widths),
        down_block_types=("LTXVideo095DownBlock3D" if folds else "LTXVideoDownBlock3D",) * downs,
        layers_per_block=tuple(count(f"encoder.down_blocks.{i}.resnets.") for i in range(downs))
        + (count("encoder.mid_block.resnets."),),
        spatio_temporal_scaling=tuple(f"encoder.down_blocks.{i}.downsamplers.0.conv.weight" in state
                                      or f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight" in state
                                      for i in range(downs)),
        downsample_type=tuple(kinds),
        decoder_block_out_channels=tuple(reversed([w * f for w, f in zip(up_widths, factors, strict=True)])),
        decoder_layers_per_block=tuple(reversed([count("decoder.mid_block.resnets."),
                                                 *(count(f"decoder.up_blocks.{i}.resnets.") for i in range(ups))])),
        decoder_spatio_temporal_scaling=tuple(reversed(resamples)), decoder_inject_noise=tuple(reversed(noise)),
        upsample_residual=tuple(reversed(residual)), upsample_factor=tuple(reversed(factors)),
        timestep_conditioning="decoder.timestep_scale_multiplier" in state, patch_size=patch, patch_size_t=1,
        encoder_causal=True, decoder_causal=decoder_causal,
        spatial_compression_ratio=patch * 2**space, temporal_compression_ratio=2**time)
