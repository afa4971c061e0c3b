"""Reading latents and writing outputs. Outputs are written beside the target and renamed into
place, so a failed or interrupted run never leaves a partial file or clobbers an existing one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from .errors import CheckpointError, DiskError, InputError
from .extras import require

__all__ = ["load_latents", "load_image", "save_output", "save_latents", "atomic_path", "temp_beside", "open_mode",
           "check_writable", "check_folder", "output_folder", "to_uint8", "quantize"]

LATENT_SUFFIXES = (".safetensors", ".pt", ".pth", ".npy")
OUTPUT_SUFFIXES = (".png", ".npy", ".pt", ".tif", ".tiff", ".zarr", ".mp4")  # .mp4: videos
LATENT_OUTPUT_SUFFIXES = (".safetensors", ".npy", ".pt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def load_latents(path) -> torch.Tensor:
    """A latent tensor from .safetensors (key "latents" or the only tensor), .pt (weights_only) or .npy."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"latents file {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return _mapped_safetensors(path)
        if suffix in (".pt", ".pth"):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict):
                loaded = loaded[_latents_key(loaded, path)]
            if not isinstance(loaded, torch.Tensor):
                raise InputError(f"{path} holds a {type(loaded).__name__}, not a latents tensor: save the tensor "
                                 "itself (torch.save(latents, path)) or a dict holding it under 'latents'")
            return loaded
        if suffix == ".npy":  # memory-mapped: rows are read as the first stage needs them
            return torch.from_numpy(np.load(path, allow_pickle=False, mmap_mode="c"))
    except InputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"cannot read latents from {path}: {e}") from None
    raise InputError(f"cannot read latents from {path}: use one of {', '.join(LATENT_SUFFIXES)}")


#: safetensors dtype names -> torch dtypes (the formats latents come in)
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _mapped_safetensors(path: Path) -> torch.Tensor:
    """The latents tensor of a .safetensors file, memory-mapped: pages are read as the first stage
    reaches their rows. The format is an 8-byte little-endian header size, a JSON header with each
    tensor's dtype, shape and byte range, then the data."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # validates the file; names its tensors
        name = _latents_key(f.keys(), path)
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(size))[name]
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    begin, end = (8 + size + offset for offset in entry["data_offsets"])
    if dtype is None or begin % dtype.itemsize:  # an unusual dtype or an unaligned file: read it whole
        from safetensors.torch import load_file

        return load_file(str(path))[name]
    raw = torch.from_file(str(path), shared=False, size=end, dtype=torch.uint8)  # copy-on-write mapping
    return raw[begin:end].view(dtype).view(entry["shape"])


def _latents_key(keys, path: Path) -> str:
    """The entry named "latents", or the only one."""
    keys = list(keys)
    if "latents" in keys:
        return "latents"
    if len(keys) == 1:
        return keys[0]
    raise InputError(f"{path} holds several tensors and none is named 'latents'")


def load_image(path) -> torch.Tensor:
    """An RGB image file as (1, 3, H, W) float32 in [-1, 1] (8- or 16-bit; TIFF through tifffile)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"cannot read an image from {path}: use one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        if suffix in (".tif", ".tiff"):
            tifffile = require("tifffile", "reading a .tif image")
            pixels = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read an image from {path}: {e}") from None
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)  # grey -> RGB
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise InputError(f"{path} has shape {pixels.shape}: expected an RGB image")
    peak = 65535.0 if pixels.dtype == np.uint16 else 255.0 if pixels.dtype == np.uint8 else 1.0
    image = torch.from_numpy(pixels[..., :3].astype(np.float32) / peak)  # (H, W, 3) in [0, 1]
    return (image * 2 - 1).permute(2, 0, 1)[None].contiguous()  # (1, 3, H, W) image px


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi")


def load_video(path) -> torch.Tensor:
    """A video for a video model's encode as (B, 3, F, H, W): a video file's frames (PyAV) as float32 in
    [-1, 1], or a tensor file (.npy, .safetensors, .pt) as it is."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in LATENT_SUFFIXES:
        video = load_latents(path)
        if video.dim() != 5:
            raise InputError(f"{path} holds a tensor of shape {tuple(video.shape)}: a video is (B, C, F, H, W)")
        return video
    if suffix not in VIDEO_SUFFIXES:
        raise InputError(f"cannot read a video from {path}: use one of {', '.join(VIDEO_SUFFIXES + LATENT_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"video file {path} does not exist")
    av = require("av", "reading a video file")

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # (H, W, 3) uint8 each
    except (OSError, ValueError, av.error.FFmpegError) as e:
        raise InputError(f"cannot read a video from {path}: {e}") from None
    if not frames:
        raise InputError(f"{path} has no video frames")
    video = torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0)  # (F, H, W, 3) in [0, 1]
    return (video * 2 - 1).permute(3, 0, 1, 2)[None].contiguous()  # (1, 3, F, H, W) image px


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8."""
    return quantize(image.permute(1, 2, 0))


def quantize(pixels: torch.Tensor) -> np.ndarray:
    """[-1, 1] -> uint8, element by element, in the layout given (channels last for files)."""
    scaled = pixels.float().clamp(-1, 1).add_(1).mul_(127.5).round_()  # one float32 copy, then in place
    return scaled.to(torch.uint8).cpu().numpy()


def temp_beside(target: Path, directory: bool = False) -> Path:
    """A new empty temporary file (or directory) beside ``target``, to be renamed onto it when complete.

    mkstemp/mkdtemp make it private (0600/0700), and a rename keeps that mode: it is given the mode a
    plain ``open()`` (``mkdir``) would, 0666 (0777) less the umask, so others can read what vaekit wrote.
    The folder must exist: a typo in it is a DiskError, not a new folder."""
    check_writable(target, directory=directory)
    prefix, suffix = f".{target.name}.", ".part" + target.suffix
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
        os.close(fd)
    os.chmod(tmp, open_mode(directory))
    return Path(tmp)


def open_mode(directory: bool = False) -> int:
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only set it,
    and setting it for a moment would race with threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(target, what: str = "the output", directory: bool = False) -> None:
    """DiskError, before any work, unless a file (``directory``: a folder, as .zarr is) can be written at
    ``target``: its folder exists and takes a new file, and nothing of the other kind stands at ``target``."""
    target = Path(target)
    folder = target.parent
    if target.is_dir() and not directory:
        raise DiskError(f"cannot write {what} {target}: a folder of that name is there; name a file")
    if target.is_file() and directory:
        raise DiskError(f"cannot write {what} {target}: a file of that name is there, and this output is a folder")
    check_folder(folder, f"{what} {target}")  # "cannot write the output x.png: the folder ..."


def check_folder(folder, what: str) -> None:
    """DiskError ("cannot write ``what``: ...") unless ``folder`` exists and takes a new file (one is made
    and removed at once: permissions alone do not say, root ignores them and a read-only mount overrides)."""
    folder = Path(folder)
    if not folder.is_dir():
        why = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DiskError(f"cannot write {what}: the folder {folder} {why}; name an existing folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vaekit-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DiskError(f"cannot write {what}: the folder {folder} takes no new file ({e.strerror or e}); choose "
                        "another folder") from None


def output_folder(folder, what: str) -> Path:
    """A tool's output folder (demo, bench, gpu-check), made if missing, before any work: DiskError where a
    file stands there or it takes no new file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DiskError(f"cannot write {what}: {folder} is a file, not a folder; name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiskError(f"cannot write {what}: the folder {folder} cannot be made ({e.strerror or e})") from None
    check_folder(folder, what)
    return folder


@contextmanager
def atomic_path(target):
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.
    An OSError on the way (a full disk, a folder made read-only) is a DiskError naming the folder."""
    target = Path(target)
    tmp = str(temp_beside(target))
    try:
        yield Path(tmp)
        os.chmod(tmp, open_mode())  # again: some writers (safetensors) replace the file with a 0600 one
        os.replace(tmp, target)
    except DiskError:
        raise
    except OSError as e:
        raise DiskError(f"cannot write {target} in the folder {target.parent}: {e.strerror or e} (its disk is full, "
                        "or it is read-only); nothing was written and an existing file is left as it was") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def output_paths(out, batch: int) -> list[Path]:
    """One PNG per sample (name_0.png, name_1.png, ...) when batch > 1; one file otherwise."""
    out = Path(out)
    if out.suffix.lower() != ".png" or batch == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(batch)]


def check_output(out) -> None:
    if Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"cannot write {out}: the output must end in {', '.join(OUTPUT_SUFFIXES)}")


def save_output(images: torch.Tensor, out) -> list[Path]:
    """Write decoded images (B, C, H, W) in [-1, 1] to ``out`` (.png, .npy or .pt), atomically."""
    from PIL import Image

    check_output(out)
    suffix = Path(out).suffix.lower()
    paths = output_paths(out, images.shape[0])
    for i, path in enumerate(paths):
        with atomic_path(path) as tmp:
            if suffix == ".png":
                Image.fromarray(to_uint8(images[i])).save(tmp, format="PNG")
            elif suffix == ".npy":
                with open(tmp, "wb") as f:
                    np.save(f, images.float().cpu().numpy())
            else:
                torch.save(images.cpu(), tmp)
    return paths


def save_latents(latents: torch.Tensor, out) -> Path:
    """Write latents to .safetensors (key "latents"), .npy or .pt, atomically."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in LATENT_OUTPUT_SUFFIXES:
        raise InputError(f"cannot write latents to {out}: use one of {', '.join(LATENT_OUTPUT_SUFFIXES)}")
    latents = latents.detach().cpu().contiguous()
    with atomic_path(out) as tmp:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({"latents": latents}, str(tmp))
        elif suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, latents.float().numpy())
        else:
            torch.save(latents, tmp)
    return out
