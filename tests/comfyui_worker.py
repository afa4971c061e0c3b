"""Run in a fresh process by test_comfyui.py: ComfyUI (a checkout, --cpu) loads vaekit's node pack as it
loads any custom node, and its VAE objects, built from seeded random state dicts, go through both
ComfyUI's own VAEDecode/VAEEncode and vaekit's nodes. Prints one JSON object of measurements.

    python comfyui_worker.py COMFYUI_DIR SCRATCH_DIR

ComfyUI imports torchvision for models not built here: an empty module stands in for it (comfyui_common.py).
"""

import asyncio
import gc
import json
import sys
import weakref
from pathlib import Path

from comfyui_common import seeded, stand_in_torchvision

stand_in_torchvision()
COMFYUI, SCRATCH = Path(sys.argv[1]), Path(sys.argv[2])
sys.argv = ["main.py", "--cpu"]
sys.path.insert(0, str(COMFYUI))
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import comfyui_version  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402

import vaekit  # noqa: E402
from vaekit.integrations import comfyui as vk  # noqa: E402
from vaekit.models import sd_vae  # noqa: E402
from vaekit.plan import smallest_budget  # noqa: E402
from vaekit.planning import smallest_video_budget  # noqa: E402
from vaekit.taesd import TinyAutoencoder  # noqa: E402

results: dict = {"comfyui_version": comfyui_version.__version__}


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# ---- the pack, installed and loaded as ComfyUI loads custom nodes ------------------------------------
root = SCRATCH / "ComfyUI"
(root / "custom_nodes").mkdir(parents=True)
(root / "nodes.py").write_text("")  # install() checks it is given a ComfyUI folder
pack = vk.install(root)
loaded = asyncio.run(nodes.load_custom_node(str(pack)))
results["pack_loaded"] = bool(loaded) and {"VaekitDecode", "VaekitEncode"} <= set(nodes.NODE_CLASS_MAPPINGS)
Decode, Encode = nodes.NODE_CLASS_MAPPINGS["VaekitDecode"], nodes.NODE_CLASS_MAPPINGS["VaekitEncode"]

# ---- ComfyUI VAE objects from seeded random weights ---------------------------------------------------
ticks: list = []
comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: ticks.append((value, total)))


def smallest(vae, shape, op) -> int:
    model = vk.bridge(vae).model
    program = vaekit.arch.program_for(model, op)
    if len(shape) == 5:  # a video runs in chunks of frames (Wan: one latent frame; LTX: all): the first's and the rest's
        return smallest_video_budget(program, model, shape, op, 4)
    return smallest_budget(program, shape, 4)


def compare(name: str, vae, latents, images) -> None:
    """Decode and encode through ComfyUI's nodes and vaekit's at the smallest budget and a larger one."""
    out = results[name] = {}
    with torch.inference_mode():
        ref = nodes.VAEDecode().decode(vae, {"samples": latents})[0]
        low = smallest(vae, tuple(latents.shape), "decode")
        for label, budget in (("smallest", low), ("4x", 4 * low)):
            plan = vaekit.plan(vk.bridge(vae).model, tuple(latents.shape), budget)
            ticks.clear()
            got = Decode().decode({"samples": latents}, vae, budget=str(budget))[0]
            out[f"decode_{label}"] = dict(rel=rel(got, ref), streamed=plan.mode == "stream", shape=list(got.shape),
                                          ref_shape=list(ref.shape), ticks=len(ticks),
                                          finished=bool(ticks) and ticks[-1][0] == ticks[-1][1])
        ref_z = nodes.VAEEncode().encode(vae, images)[0]["samples"]
        shape = (images.shape[0], 3, *images.shape[1:3])
        got_z = Encode().encode(images, vae, budget=str(smallest(vae, shape, "encode")))[0]["samples"]
        out["encode_smallest"] = dict(rel=rel(got_z, ref_z), shape=list(got_z.shape), ref_shape=list(ref_z.shape))
        out["unbound"] = all(p.device.type == "meta" for p in vk.bridge(vae).model.parameters())


def compare_smallest(name: str, vae, latents, pixels, encode_budget: str) -> None:
    """Decode at the smallest budget and encode, through ComfyUI's nodes and vaekit's (the video and
    real-size models, where one budget each is enough)."""
    with torch.inference_mode():
        ref = nodes.VAEDecode().decode(vae, {"samples": latents})[0]
        low = smallest(vae, tuple(latents.shape), "decode")
        got = Decode().decode({"samples": latents}, vae, budget=str(low))[0]
        ref_z = nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
        got_z = Encode().encode(pixels, vae, budget=encode_budget)[0]["samples"]
    results[name] = dict(rel=rel(got, ref), shape=list(got.shape), ref_shape=list(ref.shape),
                         streamed=vaekit.plan(vk.bridge(vae).model, tuple(latents.shape), low).mode == "stream",
                         encode_rel=rel(got_z, ref_z), encode_shape=list(got_z.shape), ref_encode_shape=list(ref_z.shape))


torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
images = torch.rand(1, 100, 84, 3, generator=g)  # B,H,W,C image px in [0, 1]; ComfyUI crops to 96x80

sd = comfy.sd.VAE(sd=sd_vae(seed=0).state_dict())  # SD 1.x: 4 channels, quant convs (diffusers keys, converted)
compare("sd", sd, torch.randn(1, 4, 13, 11, generator=g), images)

flux_like = sd_vae(seed=1, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
flux = comfy.sd.VAE(sd=flux_like.state_dict())  # SD3 / FLUX.1 shape: 16 channels, no quant convs
compare("flux", flux, torch.randn(2, 16, 9, 12, generator=g), images.expand(2, -1, -1, -1))

tiny = TinyAutoencoder("taesd")
state = {f"taesd_{part}.{k}": v for part in ("encoder", "decoder") for k, v in
         getattr(tiny, part).state_dict().items()}
state.update(vae_scale=torch.tensor(0.18215), vae_shift=torch.tensor(0.0))  # as ComfyUI's loader sets them
taesd = comfy.sd.VAE(sd=state)
compare("taesd", taesd, torch.randn(1, 4, 13, 11, generator=g), images)

# ---- Wan 2.1 video: ComfyUI's own WanVAE module (the original layout), seeded ------------------------------
import comfy.ldm.wan.vae  # noqa: E402

torch.manual_seed(4)
network = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True])
wan = comfy.sd.VAE(sd=seeded({"": network}, 0.02))
z = torch.randn(1, 16, 3, 6, 5, generator=g)  # 3 latent frames: 9 frames of 48x40
compare_smallest("wan", wan, z, torch.rand(9, 48, 40, 3, generator=g), "64MiB")  # frames: an IMAGE batch

# ---- Wan 2.2's residual VAE: ComfyUI's vae2_2 module builds it at its real size from the keys, seeded -------
import comfy.ldm.wan.vae2_2  # noqa: E402

torch.manual_seed(5)
network = comfy.ldm.wan.vae2_2.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                      attn_scales=[], temperal_downsample=[False, True, True])
wan22 = comfy.sd.VAE(sd=seeded({"": network}, 0.01))
del network
# 5 frames of 192x160: smaller runs whole (the smallest budget, ~220 MiB, is set by the 1024-channel convs' weights)
z = torch.randn(1, 48, 2, 12, 10, generator=g)
compare_smallest("wan22", wan22, z, torch.rand(5, 192, 160, 3, generator=g), "256MiB")
del wan22

# ---- HunyuanImage 2.1's VAE: ComfyUI builds its own modules from the file's keys (real size), seeded ------
import comfy.ldm.hunyuan_video.vae as hunyuan_vae  # noqa: E402

torch.manual_seed(6)
ddconfig = dict(in_channels=3, out_channels=3, z_channels=64, block_out_channels=[128, 256, 512, 512, 1024, 1024],
                num_res_blocks=2, ffactor_spatial=32)
hunyuan = comfy.sd.VAE(sd=seeded({"encoder.": hunyuan_vae.Encoder(**ddconfig),
                                  "decoder.": hunyuan_vae.Decoder(**ddconfig)}, 0.02))
z = torch.randn(1, 64, 12, 10, generator=g)  # 384x320: large enough to stream at the smallest budget
compare_smallest("hunyuan", hunyuan, z, torch.rand(1, 384, 320, 3, generator=g), "512MiB")
del hunyuan

# ---- LTX-Video 0.9.x: ComfyUI's own VideoVAE, built from the config a file's metadata carries, seeded ------------
import comfy.ldm.lightricks.vae.causal_video_autoencoder as ltxv_vae  # noqa: E402

# 0.9.1's decoder (timestep-conditioned, noise injected, residual upsamplers; ComfyUI pads it by reflection) and
# 0.9.5's encoder (space-and-time-to-depth), two levels deep; ComfyUI fixes 128 latent and base channels
LTXV = {"dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128, "patch_size": 2,
        "norm_layer": "pixel_norm", "latent_log_var": "uniform", "causal_decoder": False, "timestep_conditioning": True,
        "encoder_blocks": [["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}], ["compress_all_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 1}]],
        "decoder_blocks": [["res_x", {"num_layers": 1, "inject_noise": True}],
                           ["compress_all", {"residual": True, "multiplier": 2}],
                           ["res_x", {"num_layers": 1, "inject_noise": True}],
                           ["compress_all", {"residual": True, "multiplier": 2}],
                           ["res_x", {"num_layers": 1, "inject_noise": False}]]}
torch.manual_seed(7)
state = seeded({"": ltxv_vae.VideoVAE(config=LTXV)}, 0.02)
for name in state:
    if "per_channel_scale" in name:
        state[name] = torch.randn_like(state[name])  # noise that shows
state["per_channel_statistics.std-of-means"] = torch.rand(128, generator=g) + 0.5
ltxv = comfy.sd.VAE(sd=state, metadata={"config": json.dumps({"vae": LTXV})})
z = torch.randn(1, 128, 3, 12, 10, generator=g)  # 9 frames of 96x80 (smaller runs whole at the smallest budget)
pixels = torch.rand(9, 64, 96, 3, generator=g)
with torch.inference_mode():
    torch.manual_seed(11)
    ref = nodes.VAEDecode().decode(ltxv, {"samples": z})[0]
    low = smallest(ltxv, tuple(z.shape), "decode")
    torch.manual_seed(11)  # ComfyUI's decode noise: the global generator, drawn where and as ComfyUI draws it
    got = Decode().decode({"samples": z}, ltxv, budget=str(low))[0]
    torch.manual_seed(12)
    other_noise = nodes.VAEDecode().decode(ltxv, {"samples": z})[0]
    convs = [m for m in vk.bridge(ltxv).model.decoder.modules() if isinstance(m, torch.nn.Conv3d)]
    for conv in convs:  # a mutation: diffusers' zero padding
        conv.padding_mode = "zeros"
    torch.manual_seed(11)
    zero_padded = Decode().decode({"samples": z}, ltxv, budget=str(low))[0]
    for conv in convs:
        conv.padding_mode = "reflect"
    ref_z = nodes.VAEEncode().encode(ltxv, pixels)[0]["samples"]
    low_encode = smallest(ltxv, (1, 3, 9, 64, 96), "encode")
    got_z = Encode().encode(pixels, ltxv, budget=str(low_encode))[0]["samples"]
model = vk.bridge(ltxv).model
results["ltxv"] = dict(rel=rel(got, ref), shape=list(got.shape), ref_shape=list(ref.shape),
                       streamed=vaekit.plan(model, tuple(z.shape), low).mode == "stream",
                       other_noise_rel=rel(other_noise, ref), zero_padded_rel=rel(zero_padded, ref),
                       encode_rel=rel(got_z, ref_z), encode_shape=list(got_z.shape), ref_encode_shape=list(ref_z.shape),
                       encode_streamed=vaekit.plan(model, (1, 3, 9, 64, 96), low_encode, "encode").mode == "stream")
del ltxv, model

# ---- Mochi: ComfyUI's own (genmo's) VideoVAE at its one size, seeded ------------------------------------------
import comfy.ldm.genmo.vae.model as mochi_vae  # noqa: E402

torch.manual_seed(8)
mochi = comfy.sd.VAE(sd=seeded({"": mochi_vae.VideoVAE()}, 0.03))  # 0.01: outputs ~ 0.01, every video alike
z = torch.randn(1, 12, 3, 8, 6, generator=g)  # 6 * 3 - 5 = 13 frames of 64x48
pixels = torch.rand(13, 64, 48, 3, generator=g)
with torch.inference_mode():
    ref = nodes.VAEDecode().decode(mochi, {"samples": z})[0]
    low = smallest(mochi, tuple(z.shape), "decode")
    got = Decode().decode({"samples": z}, mochi, budget=str(low))[0]
    ref_z = nodes.VAEEncode().encode(mochi, pixels)[0]["samples"]
    low_encode = smallest(mochi, (1, 3, 13, 64, 48), "encode")
    got_z = Encode().encode(pixels, mochi, budget=str(low_encode))[0]["samples"]
    from diffusers import AutoencoderKLMochi  # noqa: E402

    diffusers_mochi = AutoencoderKLMochi().eval()  # what diffusers computes with the same weights: another video
    diffusers_mochi.load_state_dict(vk.bridge(mochi).convert(mochi.first_stage_model.state_dict()))
    other, raw = diffusers_mochi.decode(z).sample, mochi.first_stage_model.decode(z)  # B,3,F,H,W in [-1, 1]
model = vk.bridge(mochi).model
results["mochi"] = dict(rel=rel(got, ref), shape=list(got.shape), ref_shape=list(ref.shape),
                        streamed=vaekit.plan(model, tuple(z.shape), low).mode == "stream",
                        diffusers_rel=rel(other, raw),
                        encode_rel=rel(got_z, ref_z), encode_shape=list(got_z.shape), ref_encode_shape=list(ref_z.shape),
                        encode_streamed=vaekit.plan(model, (1, 3, 13, 64, 48), low_encode, "encode").mode == "stream")
del mochi, model, diffusers_mochi

# ---- what ComfyUI does after an out-of-memory: three passes of overlapping tiles ------------------------
with torch.inference_mode():
    z = torch.randn(1, 4, 40, 36, generator=g)
    ref = nodes.VAEDecode().decode(sd, {"samples": z})[0]
    tiled = sd.decode_tiled(z, tile_x=16, tile_y=16, overlap=4)  # the fallback's code, small tiles for small z
    exact = Decode().decode({"samples": z}, sd, budget=str(smallest(sd, tuple(z.shape), "decode")))[0]
    results["tiled_fallback"] = dict(rel=rel(tiled, ref), vaekit_rel=rel(exact, ref))
    auto = Decode().decode({"samples": z}, sd)[0]  # budget "auto": what ComfyUI says is free
    import comfy.model_management as mm

    loaded = any(m.model is sd.patcher for m in mm.current_loaded_models)  # through load_models_gpu
    results["auto"] = dict(rel=rel(auto, ref), loaded_by_comfyui=loaded)

    # ---- an output file: written band by band, a preview returned ----------------------------------------
    preview = Decode().decode({"samples": z}, sd, budget="24MiB", output_file=str(SCRATCH / "big.npy"))[0]
    import numpy as np

    written = torch.from_numpy(np.load(SCRATCH / "big.npy"))  # 1,3,H,W in [-1, 1]
    results["output_file"] = dict(rel=rel(sd.process_output(written).movedim(1, -1), ref),
                                  preview=list(preview.shape), lo=float(preview.min()), hi=float(preview.max()))
    preview_png = Decode().decode({"samples": z}, sd, budget="24MiB", output_file=str(SCRATCH / "big.png"))[0]
    results["output_png"] = dict(preview=list(preview_png.shape),
                                 max_diff=float((preview_png - ref).abs().max()))

    # ---- errors reach the UI as one line naming the node ---------------------------------------------------
    try:
        Decode().decode({"samples": z}, sd, budget="1KiB")
        results["error"] = None
    except RuntimeError as e:
        results["error"] = str(e)

# ---- one bridge per VAE object, freed with it ------------------------------------------------------------
first = vk.bridge(sd)
results["cached"] = vk.bridge(sd) is first
watch = weakref.ref(first.model)
del sd, first, compare
gc.collect()
results["freed_with_the_vae"] = watch() is None

print(json.dumps(results))
