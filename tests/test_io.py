"""Reading inputs: latents are memory-mapped, so a huge latent file is not read before it is used; a video
model's input comes from a video file (PyAV) or a 5-D tensor file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vaekit.errors import CheckpointError, InputError
from vaekit.io import load_latents


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_latents_are_mapped_not_read(tmp_path, dtype):
    z = torch.randn(1, 4, 37, 29).to(dtype)
    save_file({"other": torch.zeros(3), "latents": z}, tmp_path / "z.safetensors")
    loaded = load_latents(tmp_path / "z.safetensors")
    assert loaded.dtype == dtype and torch.equal(loaded, z)
    # a view into the file's mapping (its storage starts with the header), not a fresh tensor
    assert loaded.storage_offset() > 0 and loaded.untyped_storage().nbytes() > loaded.nbytes


def test_a_file_of_several_unnamed_tensors_is_refused(tmp_path):
    save_file({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "z.safetensors")
    with pytest.raises(InputError, match="none is named 'latents'"):
        load_latents(tmp_path / "z.safetensors")


def test_a_junk_safetensors_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "z.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="cannot read latents"):
        load_latents(tmp_path / "z.safetensors")


def test_a_video_file_reads_as_one_video_in_signed_range(tmp_path):
    """.mp4 frames through PyAV: (1, 3, F, H, W) in [-1, 1]; a tensor file as it is, if 5-D."""
    import av
    import numpy as np

    from vaekit.io import load_video

    path = tmp_path / "clip.mp4"
    frames = np.zeros((5, 16, 24, 3), dtype=np.uint8)
    frames[:, :, :12] = 255  # the left half white
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuv444p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    video = load_video(path)
    assert video.shape == (1, 3, 5, 16, 24) and video.min() >= -1 and video.max() <= 1
    assert video[..., :10].mean() > 0.9 and video[..., 14:].mean() < -0.9
    np.save(tmp_path / "v.npy", np.zeros((1, 3, 5, 8, 8), dtype=np.float32))
    assert load_video(tmp_path / "v.npy").shape == (1, 3, 5, 8, 8)
    np.save(tmp_path / "image.npy", np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match=r"\(B, C, F, H, W\)"):
        load_video(tmp_path / "image.npy")
