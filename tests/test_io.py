"""Reading inputs: latents are memory-mapped, so a huge latent file is not read before it is used."""

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
