"""The ComfyUI node pack: installed, loaded and compared with ComfyUI's own nodes in a fresh process
when VAEKIT_COMFYUI names a ComfyUI checkout (and VAEKIT_COMFYUI_PYTHON a Python with ComfyUI's
requirements and vaekit, default this one); what needs no ComfyUI runs always."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from conftest import REL_TOL
from vaekit.cli import main
from vaekit.integrations import comfyui

COMFYUI = os.environ.get("VAEKIT_COMFYUI")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if not COMFYUI:
        pytest.skip("VAEKIT_COMFYUI is not set: it names a ComfyUI checkout to test the nodes against")
    python = os.environ.get("VAEKIT_COMFYUI_PYTHON", sys.executable)
    scratch = tmp_path_factory.mktemp("comfyui")
    done = subprocess.run([python, str(Path(__file__).with_name("comfyui_worker.py")), COMFYUI, str(scratch)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["sd", "flux", "taesd"])
def test_nodes_give_what_comfyuis_untiled_nodes_give(measured, family):
    assert measured["pack_loaded"]
    result = measured[family]
    for case in ("decode_smallest", "decode_4x", "encode_smallest"):
        assert result[case]["shape"] == result[case]["ref_shape"], case
        assert result[case]["rel"] <= REL_TOL, case
    assert result["decode_smallest"]["streamed"]
    assert result["decode_smallest"]["finished"] and 0 < result["decode_smallest"]["ticks"] <= 101  # once a percent
    assert result["unbound"]  # no reference to ComfyUI's weights outlives the call


def test_wan_video_decode_and_encode(measured):
    wan = measured["wan"]
    assert wan["shape"] == wan["ref_shape"] == [9, 48, 40, 3] and wan["streamed"] and wan["rel"] <= REL_TOL
    assert wan["encode_shape"] == wan["ref_encode_shape"] == [1, 16, 3, 6, 5] and wan["encode_rel"] <= REL_TOL


def test_wan22_video_decode_and_encode(measured):
    """Wan 2.2's residual VAE, as ComfyUI builds it from Wan2.2_VAE's keys (mapped by loader.convert_wan22)."""
    wan = measured["wan22"]
    assert wan["shape"] == wan["ref_shape"] == [5, 192, 160, 3] and wan["streamed"] and wan["rel"] <= REL_TOL, wan
    assert wan["encode_shape"] == wan["ref_encode_shape"] == [1, 48, 2, 12, 10] and wan["encode_rel"] <= REL_TOL, wan


def test_ltxv_decode_with_comfyuis_noise_and_encode(measured):
    """ComfyUI's LTX-Video VAE (0.9.1's decoder, 0.9.5's encoder): the decode noise ComfyUI draws for the
    same seed, its per-channel statistics, its reflection padding; a zero-padded decoder (diffusers') or
    another seed's noise is far off."""
    ltxv = measured["ltxv"]
    assert ltxv["shape"] == ltxv["ref_shape"] == [9, 96, 80, 3] and ltxv["streamed"] and ltxv["rel"] <= REL_TOL, ltxv
    assert ltxv["other_noise_rel"] > 100 * REL_TOL and ltxv["zero_padded_rel"] > 100 * REL_TOL, ltxv
    assert ltxv["encode_shape"] == ltxv["ref_encode_shape"] == [1, 128, 3, 8, 12], ltxv
    assert ltxv["encode_streamed"] and ltxv["encode_rel"] <= REL_TOL, ltxv


def test_mochi_decode_and_encode_as_comfyui_computes_them(measured):
    """ComfyUI's Mochi VAE (genmo's code, its one size, seeded): its up blocks drop frames as they unfold
    them and its encoder's attention is not causal; diffusers' decode of the same weights is far off."""
    mochi = measured["mochi"]
    assert mochi["shape"] == mochi["ref_shape"] == [13, 64, 48, 3] and mochi["streamed"] and mochi["rel"] <= REL_TOL
    assert mochi["diffusers_rel"] > 100 * REL_TOL, mochi
    assert mochi["encode_shape"] == mochi["ref_encode_shape"] == [1, 12, 3, 8, 6], mochi
    assert mochi["encode_streamed"] and mochi["encode_rel"] <= REL_TOL, mochi


def test_hunyuan_image_decode_and_encode(measured):
    """HunyuanImage 2.1's VAE, as ComfyUI builds it from the file's keys (mapped by loader.convert_hunyuan_image)."""
    got = measured["hunyuan"]
    assert got["shape"] == got["ref_shape"] == [1, 384, 320, 3] and got["streamed"] and got["rel"] <= REL_TOL, got
    assert got["encode_shape"] == got["ref_encode_shape"] == [1, 64, 12, 10] and got["encode_rel"] <= REL_TOL, got


def test_comfyuis_tiled_fallback_differs_and_the_node_does_not(measured):
    assert measured["tiled_fallback"]["rel"] > 1000 * REL_TOL
    assert measured["tiled_fallback"]["vaekit_rel"] <= REL_TOL


def test_auto_budget_and_comfyuis_model_management(measured):
    assert measured["auto"]["rel"] <= REL_TOL
    assert measured["auto"]["loaded_by_comfyui"]  # the weights went through load_models_gpu


def test_output_file_holds_the_image_and_a_preview_comes_back(measured):
    assert measured["output_file"]["rel"] <= REL_TOL
    assert measured["output_file"]["preview"] == [1, 320, 288, 3]
    assert 0 <= measured["output_file"]["lo"] and measured["output_file"]["hi"] <= 1
    assert measured["output_png"]["max_diff"] <= 1 / 255 + 1e-6  # 8-bit rounding only


def test_errors_name_the_node_and_the_fix(measured):
    assert measured["error"].startswith("VAE Decode (exact, budgeted): ")
    assert "smallest budget that fits" in measured["error"]


def test_one_bridge_per_vae_freed_with_it(measured):
    assert measured["cached"] and measured["freed_with_the_vae"]


# ---- the example workflows through ComfyUI's HTTP API -----------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None) -> dict:
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI's own server (--cpu) on a base folder holding the node pack as a clone of its folder puts
    it, seeded VAE files in models/vae/ and saved latents in input/."""
    import shutil
    import time
    import urllib.error

    if not COMFYUI:
        pytest.skip("VAEKIT_COMFYUI is not set: it names a ComfyUI checkout to test the nodes against")
    python = os.environ.get("VAEKIT_COMFYUI_PYTHON", sys.executable)
    script, base = str(Path(__file__).with_name("comfyui_server.py")), tmp_path_factory.mktemp("comfyui-base")
    shutil.copytree(comfyui.PACK, base / "custom_nodes" / comfyui.PACK_NAME, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([python, script, "prepare", COMFYUI, str(base)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads(done.stdout.strip().splitlines()[-1])
    port, log = _free_port(), open(base / "server.log", "w")
    process = subprocess.Popen([python, script, "serve", COMFYUI, str(base), str(port)], stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # ComfyUI starts in seconds to a minute on 2 cores
            assert process.poll() is None, (base / "server.log").read_text()[-3000:]
            try:
                _http(f"{url}/object_info/VaekitDecode")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        yield url, base, config
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _queue(url: str, workflow: dict) -> dict:
    """POST /prompt, wait for the history entry, return its outputs."""
    import time

    prompt_id = _http(f"{url}/prompt", {"prompt": workflow})["prompt_id"]
    for _ in range(1200):
        history = _http(f"{url}/history/{prompt_id}")
        if prompt_id in history:
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success", entry["status"]
            return entry["outputs"]
        time.sleep(0.5)
    raise AssertionError(f"ComfyUI did not finish prompt {prompt_id} in 10 minutes")


def _frames(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB"), dtype=np.int16) for frame in ImageSequence.Iterator(image)])


@pytest.mark.parametrize("example, saver, frames", [("vaekit_decode_image.json", "SaveImage", 1),
                                                    ("vaekit_decode_video.json", "SaveAnimatedWEBP", 9)])
def test_example_workflows_run_through_comfyuis_http_api(server, example, saver, frames):
    """The pack's example workflow (API format), as shipped, queued with POST /prompt: its decode streams
    (a budget just above the smallest) and gives the pixels of ComfyUI's own VAE Decode, queued beside it."""
    from vaekit.models import sd_vae
    from vaekit.plan import smallest_budget

    url, base, _ = server
    workflow = json.loads((comfyui.PACK / "workflows" / example).read_text())
    assert {node["class_type"] for node in workflow.values()} >= {"VAELoader", "LoadLatent", "VaekitDecode", saver}
    if saver == "SaveImage":  # the decoder's smallest plan for this 13x11 latent (the video's: see comfyui_worker)
        from vaekit.arch import program_for

        workflow["3"]["inputs"]["budget"] = str(int(1.05 * smallest_budget(program_for(sd_vae(), "decode"),
                                                                             (1, 4, 13, 11), 4)))
    else:
        workflow["3"]["inputs"]["budget"] = "64MiB"
    workflow["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}}
    workflow["14"] = {"class_type": saver, "inputs": {**workflow["4"]["inputs"], "images": ["13", 0],
                                                      "filename_prefix": "reference"}}
    outputs = _queue(url, workflow)
    key = "images"
    ours, reference = (base / "output" / outputs[node][key][0]["filename"] for node in ("4", "14"))
    got, want = _frames(ours), _frames(reference)
    assert got.shape == want.shape and got.shape[0] == frames
    assert np.abs(got - want).max() <= 1  # 8-bit rounding of float32 results within 1e-4 of each other


def test_comfyuis_config_parser_reads_the_pack_as_the_registry_wants(server):
    config = server[2]
    assert config["project"]["name"] == "vaekit-nodes" and config["project"]["version"] == vaekit.__version__
    assert config["comfy"]["publisher_id"] and config["comfy"]["display_name"] and config["comfy"]["icon"]
    assert any(dep.startswith("vaekit") for dep in config["project"]["dependencies"])


# ---- without ComfyUI -------------------------------------------------------------------------------------


def _fake_comfyui(tmp_path: Path) -> Path:
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "nodes.py").write_text("")
    return tmp_path


def test_install_links_the_pack_and_says_how_to_undo(tmp_path, capsys):
    root = _fake_comfyui(tmp_path)
    assert main(["comfyui", "install", str(root)]) == 0
    target = root / "custom_nodes" / comfyui.PACK_NAME
    assert target.is_symlink() and target.resolve() == comfyui.PACK.resolve()
    assert f"rm {target}" in capsys.readouterr().out
    assert main(["comfyui", "install", str(root)]) == 0  # again: already there, nothing changes


def test_install_copy_and_refusals(tmp_path, capsys):
    root = _fake_comfyui(tmp_path)
    assert main(["comfyui", "install", str(root), "--copy"]) == 0
    copied = root / "custom_nodes" / comfyui.PACK_NAME
    assert (copied / "__init__.py").is_file() and not copied.is_symlink()
    assert main(["comfyui", "install", str(root)]) == 2  # something else is there: left alone
    assert "already exists" in capsys.readouterr().err
    assert main(["comfyui", "install", str(tmp_path / "nowhere")]) == 2
    assert "not a ComfyUI folder" in capsys.readouterr().err


def test_the_pack_exposes_the_nodes_under_comfyuis_names():
    import importlib.util

    spec = importlib.util.spec_from_file_location("custom_nodes_vaekit_nodes", comfyui.PACK / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    assert pack.NODE_CLASS_MAPPINGS == {"VaekitDecode": comfyui.Decode, "VaekitEncode": comfyui.Encode}
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["VaekitDecode"] == "VAE Decode (exact, budgeted)"
    inputs = comfyui.Decode.INPUT_TYPES()
    assert inputs["required"]["budget"][1]["default"] == "auto" and "output_file" in inputs["optional"]


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".zarr", ".png"])
def test_preview_of_a_written_image(tmp_path, suffix, monkeypatch):
    from vaekit.sinks import open_sink

    monkeypatch.setattr(comfyui, "PREVIEW_PX", 16)
    image = torch.rand(1, 3, 50, 40) * 2 - 1  # 1,3,H,W image px in [-1, 1]
    sink = open_sink(tmp_path / f"out{suffix}", tuple(image.shape))
    sink.write(0, image.permute(0, 2, 3, 1))
    path = sink.close()
    preview = comfyui._preview(Path(path))
    step = 4  # ceil(50 / 16)
    if suffix == ".png":
        assert preview.shape[1:] == (16, 13, 3)  # PIL's thumbnail keeps the aspect
        return
    expected = ((image[0, :, ::step, ::step].permute(1, 2, 0) + 1) / 2).numpy()
    assert preview.shape == (1, 13, 10, 3)
    assert np.abs(preview[0].numpy() - expected).max() <= (1e-6 if suffix == ".npy" else 1 / 255)


def test_the_pack_carries_what_the_registry_manager_and_a_clone_need():
    """pyproject.toml as the Comfy Registry specifies it, requirements.txt for a clone or the Manager."""
    import tomllib

    spec = tomllib.loads((comfyui.PACK / "pyproject.toml").read_text())
    project, comfy = spec["project"], spec["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[._-](?=[A-Za-z0-9]))*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert project["version"] == vaekit.__version__ and re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["license"] and project["urls"]["Repository"]
    assert project["dependencies"] == [f"vaekit>={vaekit.__version__}"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].endswith((".svg", ".png", ".jpg", ".gif"))
    assert Path(comfy["Icon"]).name in {p.name for p in comfyui.PACK.iterdir()}
    requirements = [line for line in (comfyui.PACK / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#")]
    assert requirements == project["dependencies"]


@pytest.mark.parametrize("example", sorted(p.name for p in (comfyui.PACK / "workflows").glob("*.json")))
def test_example_workflows_are_api_format_with_this_packs_nodes(example):
    workflow = json.loads((comfyui.PACK / "workflows" / example).read_text())
    decoders = [node for node in workflow.values() if node["class_type"] == "VaekitDecode"]
    assert len(decoders) == 1 and set(comfyui.Decode.INPUT_TYPES()["required"]) <= set(decoders[0]["inputs"])
    for node in workflow.values():  # every link names a node of the workflow and one of its outputs
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert value[0] in workflow and value[1] == 0
