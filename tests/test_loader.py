"""vaekit.load: diffusers folders, TAESD-family .pth (detected from keys), LDM single files, bad files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import vaekit
from conftest import BUILTIN_DIR, REL_TOL, TAESD_DIR, budgets_for, make_vae, needs_taesana, relative_error, untiled
from vaekit.errors import CheckpointError
from vaekit.loader import detect_taesd
from vaekit.taesd import TinyAutoencoder


def to_ldm(vae, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights in the original LDM key layout (as A1111/ComfyUI files have)."""
    levels = len(vae.config.block_out_channels)
    rules = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"mid_block\.resnets\.0\.", "mid.block_1."), (r"mid_block\.resnets\.1\.", "mid.block_2."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_(q|k|v)\.", r"mid.attn_1.\1."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block."),
        (r"conv_norm_out", "norm_out"), (r"conv_shortcut", "nin_shortcut"),
    ]
    out = {}
    for key, value in vae.state_dict().items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        if ".attn_1." in key and value.dim() == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convs
        out[prefix + key] = value.clone()
    return out


def to_wan_original(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKLWan's weights in the original Wan repository's layout (Wan2.1_VAE.pth,
    ComfyUI's wan_2.1_vae.safetensors): the inverse of diffusers' convert_wan_vae_to_diffusers. Wan 2.2
    (is_residual) nests each level's blocks: ``encoder.downsamples.i.downsamples.j``."""
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2", "encoder.conv_in": "encoder.conv1",
           "decoder.conv_in": "decoder.conv1", "encoder.norm_out": "encoder.head.0", "decoder.norm_out": "decoder.head.0",
           "encoder.conv_out": "encoder.head.2", "decoder.conv_out": "decoder.head.2"}
    resnet = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
              "conv_shortcut": "shortcut"}
    out, blocks = {}, vae.config.num_res_blocks
    for key, value in vae.state_dict().items():
        if not vae.config.is_residual:
            pass
        elif m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
            out[f"{m[1]}.{m[2]}samples.{m[3]}.{m[2]}samples.{m[4]}.{resnet[m[5]]}.{m[6]}"] = value.clone()  # Wan 2.2
            continue
        elif m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)sampler\.(.+)", key):
            last = blocks if m[1] == "encoder" else blocks + 1  # the resampler follows the level's res blocks
            out[f"{m[1]}.{m[2]}samples.{m[3]}.{m[2]}samples.{last}.{m[5]}"] = value.clone()
            continue
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(\w+)\.(.+)", key):
            new = f"encoder.downsamples.{m[1]}.{resnet.get(m[2], m[2])}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(.+)", key):
            new = f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{resnet[m[3]]}.{m[4]}"  # 3 res blocks, a resampler
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            new = f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
        elif m := re.fullmatch(r"(\w+)\.mid_block\.resnets\.(\d)\.(\w+)\.(.+)", key):
            new = f"{m[1]}.middle.{2 * int(m[2])}.{resnet[m[3]]}.{m[4]}"
        elif m := re.fullmatch(r"(\w+)\.mid_block\.attentions\.0\.(.+)", key):
            new = f"{m[1]}.middle.1.{m[2]}"
        else:
            module, name = key.rsplit(".", 1)
            new = f"{top[module]}.{name}"
        out[new] = value.clone()
    return out


def to_hunyuan_original(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKLHunyuanImage's weights in the original layout (as ComfyUI loads the file):
    per level ``down.i.block.j`` and ``down.i.downsample``, LDM names in the mid block."""
    c = vae.config
    shuffles, levels = int(math.log2(c.spatial_compression_ratio)), len(c.block_out_channels)
    where = {}  # (part, index in diffusers' flat list) -> the original's module path
    for part, blocks, per in (("encoder", "down", c.layers_per_block), ("decoder", "up", c.layers_per_block + 1)):
        flat = [f"{blocks}.{i}.block.{j}" for i in range(levels) for j in range(per)]
        for i in reversed(range(min(shuffles, levels - 1))):  # each resampler after its level's blocks
            flat.insert((i + 1) * per, f"{blocks}.{i}.{blocks}sample")
        where.update({(part, n): module for n, module in enumerate(flat)})
    names = {"conv_shortcut": "nin_shortcut", "to_q": "q", "to_k": "k", "to_v": "v", "proj": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        if parts[1] in ("down_blocks", "up_blocks"):
            parts = [parts[0], *where[(parts[0], int(parts[2]))].split("."), *parts[3:]]
        elif parts[1] == "mid_block":
            parts = [parts[0], "mid", {"resnets.0": "block_1", "resnets.1": "block_2", "attentions.0": "attn_1"}[
                f"{parts[2]}.{parts[3]}"], *parts[4:]]
        parts[-2] = names.get(parts[-2], parts[-2])
        out[".".join(parts)] = value.clone()
    return out


def test_diffusers_folder(tmp_path):
    vae = make_vae("sd")
    vae.save_pretrained(tmp_path / "vae")
    loaded = vaekit.load(tmp_path / "vae")
    z = torch.randn(1, 4, 9, 11)
    assert relative_error(vaekit.decode(loaded, z, "2MiB"), untiled(vae, z)) <= REL_TOL


@pytest.mark.parametrize("config", ["sdxl", "flux"])
def test_ldm_single_file_is_converted_offline(tmp_path, config):
    vae = make_vae(config, norm_num_groups=32)  # LDM files always have 32 groups
    path = tmp_path / "vae.safetensors"
    save_file(to_ldm(vae, prefix="" if config == "flux" else "first_stage_model."), path)
    loaded = vaekit.load(path)
    assert type(loaded).__name__ == "AutoencoderKL"
    assert loaded.config.latent_channels == vae.config.latent_channels
    z = torch.randn(1, vae.config.latent_channels, 9, 11)
    assert relative_error(vaekit.decode(loaded, z, "2MiB"), untiled(vae, z)) <= REL_TOL


def test_wan_single_file_is_converted_offline(tmp_path):
    """Wan 2.1's VAE as its original repository saves it (scaled down: same layout, fewer channels)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2).eval()
    original = to_wan_original(vae)
    assert convert_wan_vae_to_diffusers(original).keys() == vae.state_dict().keys()  # the test's inverse is right
    save_file(original, tmp_path / "wan_2.1_vae.safetensors")
    loaded = vaekit.load(tmp_path / "wan_2.1_vae.safetensors")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert type(loaded).__name__ == "AutoencoderKLWan" and public(loaded.config) == public(vae.config)
    z = torch.randn(1, 4, 2, 5, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert relative_error(vaekit.decode(loaded, z, "4MiB"), ref) <= REL_TOL
    with_vae_prefix = {f"vae.{k}": v for k, v in original.items() if not k.startswith("encoder.")}  # a decoder only
    save_file(with_vae_prefix, tmp_path / "decoder.safetensors")
    with pytest.raises(CheckpointError, match="Wan"):
        vaekit.load(tmp_path / "decoder.safetensors")


def test_wan22_single_file_is_converted_offline(tmp_path):
    """Wan 2.2's residual VAE as its original repository saves it (Wan2.2_VAE.pth; scaled down)."""
    from test_wan import make_wan22
    from vaekit.loader import convert_wan22

    vae = make_wan22()
    original = to_wan_original(vae)
    assert any(k.startswith("decoder.upsamples.0.upsamples.") for k in original)  # the nested layout
    assert convert_wan22(original).keys() == vae.state_dict().keys()
    save_file(original, tmp_path / "Wan2.2_VAE.safetensors")
    loaded = vaekit.load(tmp_path / "Wan2.2_VAE.safetensors")
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(vae.config)
    z = torch.randn(1, 4, 2, 5, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = vae.decode(z).sample
    assert relative_error(vaekit.decode(loaded, z, "4MiB"), ref) <= REL_TOL


def test_hunyuan_image_single_file_is_converted_offline(tmp_path):
    """HunyuanImage 2.1's VAE in its original layout (scaled down), told from an LDM file by its shuffles."""
    from test_hunyuan import make_hunyuan
    from vaekit.loader import convert_hunyuan_image

    vae = make_hunyuan()
    original = to_hunyuan_original(vae)
    assert convert_hunyuan_image(original).keys() == vae.state_dict().keys()  # the test's inverse is right
    save_file(original, tmp_path / "hunyuan_image_2.1_vae.safetensors")
    loaded = vaekit.load(tmp_path / "hunyuan_image_2.1_vae.safetensors")
    assert type(loaded).__name__ == "AutoencoderKLHunyuanImage"
    z = torch.randn(1, 4, 9, 11, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = vae.decode(z).sample
    low = budgets_for(loaded, tuple(z.shape))["smallest"]
    assert vaekit.plan(loaded, tuple(z.shape), low).mode == "stream"
    assert relative_error(vaekit.decode(loaded, z, low), ref) <= REL_TOL


def to_ltx_original(state: dict) -> dict[str, torch.Tensor]:
    """An AutoencoderKLLTXVideo state dict in the original LTX-Video layout (ComfyUI's, the released files'):
    each side's modules one flat list. The encoder: per block its resnets, downsampler and channel-changing
    resnet, then the mid block; the decoder: the mid block, then per block its channel-changing resnet,
    upsampler, and resnets (with the block's time embedder)."""
    top = {"decoder.time_embedder.": "decoder.last_time_embedder.",
           "decoder.scale_shift_table": "decoder.last_scale_shift_table",
           "latents_mean": "per_channel_statistics.mean-of-means", "latents_std": "per_channel_statistics.std-of-means"}
    out = {}
    for part, blocks in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
        n = len({k.split(".")[2] for k in state if k.startswith(f"{part}.{blocks}.")})
        subs = ("", ".downsamplers.0", ".conv_out") if part == "encoder" else (".conv_in", ".upsamplers.0", "")
        modules = [f"{blocks}.{i}{sub}" for i in range(n) for sub in subs]
        modules = [*modules, "mid_block"] if part == "encoder" else ["mid_block", *modules]
        owner = {}  # key -> the module of the list it belongs to (the longest that prefixes it)
        for key in state:
            rest = key[len(part) + 1:]
            if key.startswith(f"{part}.") and (found := [m for m in modules if rest.startswith(m + ".")]):
                owner[key] = max(found, key=len)
        index = {m: i for i, m in enumerate(m for m in modules if m in owner.values())}
        for key, module in owner.items():
            tail = key[len(part) + len(module) + 2:]
            for old, new in (("resnets.", "res_blocks."), ("conv_shortcut.conv.", "conv_shortcut."),
                             ("norm3.", "norm3.norm.")):
                tail = tail.replace(old, new)
            out[f"{part}.{blocks}.{index[module]}.{tail}"] = state[key]
    for key, value in state.items():
        if not any(key.startswith(f"{part}.{b}.") for part in ("encoder", "decoder")
                   for b in ("down_blocks", "up_blocks", "mid_block")):
            out[next((new + key[len(old):] for old, new in top.items() if key.startswith(old)), key)] = value
    return out


#: LTX-Video's released VAE configs (diffusers' conversion script), built on the meta device only
LTX_RELEASED = {
    "0.9.0": {},
    "0.9.1": dict(decoder_block_out_channels=(256, 512, 1024), decoder_layers_per_block=(5, 6, 7, 8),
                  decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(True, True, True, False),
                  upsample_residual=(True,) * 3, upsample_factor=(2,) * 3, timestep_conditioning=True),
}
LTX_RELEASED["0.9.5"] = dict(
    LTX_RELEASED["0.9.1"], block_out_channels=(128, 256, 512, 1024, 2048), layers_per_block=(4, 6, 6, 2, 2),
    down_block_types=("LTXVideo095DownBlock3D",) * 4, decoder_layers_per_block=(5, 5, 5, 5),
    spatio_temporal_scaling=(True,) * 4, decoder_inject_noise=(False,) * 4,
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"), spatial_compression_ratio=32,
    temporal_compression_ratio=8)


@pytest.mark.parametrize("version", LTX_RELEASED)
def test_ltx_video_released_layouts_convert_as_diffusers_converts_them(version):
    """At the released sizes (meta tensors: shapes only), vaekit's converter gives the keys diffusers' own
    single-file converter gives, and the config read from the shapes builds the same model."""
    from diffusers import AutoencoderKLLTXVideo
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    from vaekit.loader import convert_ltx_video, ltx_video_config

    with torch.device("meta"):
        vae = AutoencoderKLLTXVideo(**LTX_RELEASED[version])
    state = vae.state_dict()
    original = to_ltx_original(state)
    theirs = convert_ltx_vae_checkpoint_to_diffusers({f"vae.{k}": v for k, v in original.items()})
    ours = convert_ltx_video(original)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()} == \
        {k: v.shape for k, v in state.items()}
    config = ltx_video_config(ours)
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vae.config.items() if k in config and v is not None}
    assert {k: config[k] for k in given} == given
    assert (config["spatial_compression_ratio"], config["temporal_compression_ratio"]) == (32, 8)  # as released


@pytest.mark.parametrize("version", ["0.9.0", "0.9.1", "0.9.5"])
def test_ltx_video_single_file_is_converted_offline(tmp_path, version):
    """A scaled-down LTX-Video VAE in the original layout, in a whole checkpoint (its vae. keys beside the
    transformer's, which are not read): the sizes diffusers' converter would group wrongly (it reads 0.9.5's
    grouping from one width), loaded exactly."""
    from test_ltx_video import V090, V091, V095, make

    vae = make({"0.9.0": V090, "0.9.1": V091, "0.9.5": V095}[version], seed=2)
    transformer = {"model.diffusion_model.patchify_proj.weight": torch.zeros(64, 128)}  # a whole checkpoint's
    save_file({**transformer, **{f"vae.{k}": v.clone() for k, v in to_ltx_original(vae.state_dict()).items()}},
              tmp_path / "ltx-video.safetensors")
    loaded = vaekit.load(tmp_path / "ltx-video.safetensors")
    assert type(loaded).__name__ == "AutoencoderKLLTXVideo"
    assert loaded.state_dict().keys() == vae.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vae.state_dict().items())
    z = torch.randn(1, 8, 2, 3, 5, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.05]) if vae.config.timestep_conditioning else None
    torch.manual_seed(1)
    with torch.no_grad():
        ref = vae.decode(z, t).sample
    torch.manual_seed(1)
    out = vaekit.decode(loaded, z, budgets_for(loaded, tuple(z.shape))["smallest"], timestep=t)
    assert relative_error(out, ref) <= REL_TOL


def _taesd_state(variant: str, part: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return getattr(TinyAutoencoder(variant), part).state_dict()


@pytest.mark.parametrize("variant", ["taesd", "taesdxl", "taesd3", "taef1", "taef2", "taesana"])
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_taesd_variant_detected_from_keys(variant, part):
    state = _taesd_state(variant, part)
    # twins share an architecture: the file name tells them apart, the keys tell everything else
    assert detect_taesd(state, f"{variant}_{part}.pth") == (part, variant)
    family_default = {"taesdxl": "taesd", "taef1": "taesd3"}.get(variant, variant)
    assert detect_taesd(state, "weights.pth") == (part, family_default)


def test_taesd_file_name_does_not_override_the_keys(tmp_path):
    path = tmp_path / "taesd_decoder.pth"  # named taesd, holds a taef2 decoder
    torch.save(_taesd_state("taef2", "decoder"), path)
    model = vaekit.load(path)
    assert model.variant.name == "taef2" and model.encoder is None


def test_taesd_halves_combine(tmp_path):
    for part in ("encoder", "decoder"):
        torch.save(_taesd_state("taesd3", part), tmp_path / f"taesd3_{part}.pth")
    model = vaekit.load(tmp_path / "taesd3_decoder.pth", tmp_path / "taesd3_encoder.pth")
    assert model.encoder is not None and model.decoder is not None and model.latent_channels == 16


def test_real_taef2_weights_load_strictly():
    model = vaekit.load(BUILTIN_DIR / "taef2_encoder.pth", BUILTIN_DIR / "taef2_decoder.pth")
    assert model.variant.name == "taef2"


@needs_taesana
def test_real_taesana_weights_load_strictly():
    sana = vaekit.load(TAESD_DIR / "taesana_encoder.pth")
    assert sana.variant.name == "taesana" and sana.decoder is None


def _bad(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bad_files_raise_checkpoint_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(to_ldm(make_vae("sd")), good)
    data = good.read_bytes()
    torch.save(_taesd_state("taesd", "decoder"), tmp_path / "good.pth")
    pth = (tmp_path / "good.pth").read_bytes()

    cases = {
        "missing": (tmp_path / "nope.safetensors", "does not exist"),
        "empty": (_bad(tmp_path, "empty.safetensors", b""), "empty"),
        "truncated": (_bad(tmp_path, "half.safetensors", data[: len(data) // 2]), "truncated or corrupt"),
        "truncated pth": (_bad(tmp_path, "half.pth", pth[: len(pth) // 2]), "truncated or corrupt"),
        "junk": (_bad(tmp_path, "junk.pth", b"not a checkpoint at all" * 10), "truncated or corrupt|refused"),
        "format": (_bad(tmp_path, "vae.onnx", b"1234"), "unknown weights format"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            vaekit.load(path)
        assert name


class _Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickle_only_file_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        vaekit.load(path)


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"down_blocks.0.attentions.0.proj_in.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(CheckpointError, match="not a VAE vaekit recognises"):
        vaekit.load(path)
    state = _taesd_state("taesd", "decoder")
    state["3.conv.0.weight"] = torch.zeros(64, 64, 5, 5)  # right keys, wrong shape
    torch.save(state, tmp_path / "bad_taesd_decoder.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        vaekit.load(tmp_path / "bad_taesd_decoder.pth")


def test_taef2_is_built_in(tmp_path, monkeypatch):
    vae = vaekit.load("taef2")
    assert type(vae).__name__ == "TinyAutoencoder" and vae.encoder is not None and vae.decoder is not None
    monkeypatch.setenv("VAEKIT_WEIGHTS", str(tmp_path))  # an empty folder first: the package's copy still found
    assert vaekit.load("taef2") is not None
    monkeypatch.setattr(vaekit.loader, "__file__", str(tmp_path / "loader.py"))  # nowhere: a clear error
    with pytest.raises(vaekit.errors.CheckpointError, match="VAEKIT_WEIGHTS"):
        vaekit.load("taef2")


def test_ltx2_released_layout_converts_as_diffusers_converts_it():
    """LTX-2's original layout is LTX-Video 0.9.5's: at the released size (meta tensors) vaekit's converter
    gives diffusers' LTX-2 keys, and the sizes read from the shapes are the released config's."""
    from diffusers import AutoencoderKLLTX2Video
    from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers

    from vaekit.loader import convert_ltx_video, ltx2_model

    with torch.device("meta"):
        vae = AutoencoderKLLTX2Video(decoder_causal=False, spatial_compression_ratio=32, temporal_compression_ratio=8)
    state = vae.state_dict()
    original = to_ltx_original(state)
    theirs = convert_ltx2_vae_to_diffusers({f"vae.{k}": v for k, v in original.items()})
    assert {k: v.shape for k, v in convert_ltx_video(original).items()} == {k: v.shape for k, v in theirs.items()} == \
        {k: v.shape for k, v in state.items()}
    model, _ = ltx2_model(original, {"causal_decoder": False})  # the decoder's padding: reflect, by default
    public = {k: tuple(v) if isinstance(v, list) else v for k, v in model.config.items() if not k.startswith("_")}
    assert public == {k: tuple(v) if isinstance(v, list) else v for k, v in vae.config.items() if not k.startswith("_")}


def _ltx2_file(vae, path: Path, config: dict | None) -> Path:
    import json

    metadata = None if config is None else {"config": json.dumps({"vae": config})}
    save_file({f"vae.{k}": v.clone() for k, v in to_ltx_original(vae.state_dict()).items()}, path, metadata=metadata)
    return path


def test_ltx2_single_file_reads_the_config_it_carries(tmp_path):
    """An LTX-2 file (scaled down) with the config its metadata carries, as the released ones do: loaded as
    AutoencoderKLLTX2Video with its padding and causality, read with the keys and defaults of Lightricks' own
    loader (ltx_core's video VAE configurator, 2026-08: the decoder's padding is "spatial_padding_mode",
    reflect by default), decoded exactly. Without the config it is refused (its padding is not in the
    weights), and so is a VAE class diffusers does not have; its padding read from the config matters."""
    from test_ltx2 import LTX2, make

    vae = make(seed=3)
    blocks = [["res_x", {"num_layers": 1}], ["compress_all", {"residual": True, "multiplier": 2}]] * 3 + [["res_x", {}]]
    config = {"_class_name": "CausalVideoAutoencoder", "encoder_spatial_padding_mode": "zeros", "causal_decoder": False,
              "decoder_blocks": blocks}
    z = torch.randn(1, 8, 2, 3, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = vae.decode(z).sample
    for name, extra in [("default", {}), ("reflect", {"spatial_padding_mode": "reflect"})]:
        loaded = vaekit.load(_ltx2_file(vae, tmp_path / f"{name}.safetensors", {**config, **extra}))
        assert type(loaded).__name__ == "AutoencoderKLLTX2Video"
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in vae.state_dict().items())
        assert relative_error(vaekit.decode(loaded, z, budgets_for(loaded, tuple(z.shape))["smallest"]), ref) <= REL_TOL
    zeros = vaekit.load(_ltx2_file(vae, tmp_path / "zeros.safetensors", {**config, "spatial_padding_mode": "zeros"}))
    assert zeros.config.decoder_spatial_padding_mode == "zeros"
    with torch.no_grad():
        assert relative_error(zeros.decode(z).sample, ref) > 100 * REL_TOL
    with pytest.raises(CheckpointError, match="LTX-2 VAE without the config"):
        vaekit.load(_ltx2_file(vae, tmp_path / "bare.safetensors", None))
    with pytest.raises(CheckpointError, match="CausalDiffusionVAE, which has no diffusers class"):
        vaekit.load(_ltx2_file(vae, tmp_path / "diffusion.safetensors", {**config, "_class_name": "CausalDiffusionVAE"}))
    assert LTX2["decoder_spatial_padding_mode"] == "reflect"
