"""How each VAE ComfyUI loads becomes a model vaekit streams (the ComfyUI nodes' side of it: comfyui.py).

A :class:`Bridge` holds the network rebuilt once per ComfyUI ``VAE`` object as the diffusers model (or
vaekit's TAESD) it is, on the meta device, and the mapping of ComfyUI's state dict onto it (diffusers'
single-file converters where they exist, vaekit's ``loader`` where they do not); ``Bound`` binds it to
ComfyUI's current weight tensors for one call. Where ComfyUI computes something differently from diffusers
with the same weights (LTXV's reflection padding and decode noise, genmo's Mochi), the bridge sets the
diffusers modules to compute it as ComfyUI does, and the program follows them.
"""

from __future__ import annotations

import functools
import re
import weakref
from dataclasses import dataclass

import torch

__all__ = ["Bridge", "Bound", "bridge", "LTXV_TIMESTEP", "LTXV_NOISE"]


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


class Bound:
    """``with Bound(bridge, vae):`` the meta model holds ComfyUI's current weight tensors (views, no copy);
    after, meta again, so no reference outlives the call and ComfyUI alone decides where weights live."""

    def __init__(self, the_bridge: Bridge, vae):
        self.bridge, self.vae = the_bridge, vae

    def __enter__(self) -> torch.nn.Module:
        state = self.vae.first_stage_model.state_dict()  # detached tensors, where model management put them
        self.bridge.model.load_state_dict(self.bridge.convert(state), strict=True, assign=True)
        return self.bridge.model

    def __exit__(self, *exc) -> None:
        self.bridge.model.to_empty(device="meta")
