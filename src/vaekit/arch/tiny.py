"""Tiny autoencoders: diffusers ``AutoencoderTiny`` and vaekit's TAESD-family ``TinyAutoencoder``.

Both are a plain sequence of layers, read here one layer at a time:

    Conv2d                  a ConvStage (takes any pending clamp / [0, 1] scaling / upsampling)
    ReLU (after a conv)     that stage's epilogue
    Clamp, Upsample         pending: the next conv's prologue
    Block                   [pool: 1x1 conv -> stats | GroupNorm+ReLU+1x1 conv + x, over x]
                            conv+relu | conv+relu | conv + skip(x), ReLU (over x when the skip is identity)

Images are [-1, 1] outside: the encoder's first conv scales them to [0, 1] in its prologue and the
decoder's last conv scales back in its epilogue, as diffusers does around the layers. The pool
branch's GroupNorm (TAEF2) is the only global operator: its statistics are exact, as everywhere.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from ..errors import InputError, UnsupportedModelError
from ..program import ConvStage, Program, Shortcut
from .builder import ProgramBuilder

__all__ = ["program", "whole", "finish", "scale_factor", "layers_program"]


def _layers(vae, op: str) -> nn.Sequential:
    half = vae.encoder if op == "encode" else vae.decoder
    if half is None:
        other = "decoder" if op == "encode" else "encoder"
        raise InputError(f"this {type(vae).__name__} has no {op}r (it was loaded from a {other} file): "
                         f"load the {op}r weights to {op}")
    return half.layers if hasattr(half, "layers") else half  # diffusers EncoderTiny/DecoderTiny wrap a Sequential


def program(vae, op: str) -> Program:
    diffusers = type(vae).__name__ == "AutoencoderTiny"
    first = "from_signed" if op == "encode" else ("tanh_clamp" if diffusers else None)  # diffusers clamps in forward
    return layers_program(_layers(vae, op), op, first_act=first, last_post="to_signed" if op == "decode" else None)


def layers_program(layers: nn.Sequential, op: str, first_act: str | None = None,
                   last_post: str | None = None) -> Program:
    convs = [m for m in layers.modules() if isinstance(m, nn.Conv2d)]
    b = ProgramBuilder(op, convs[0].in_channels)
    x, act, up = b.input, first_act, 1
    for i, layer in enumerate(layers):
        name = str(i)
        if isinstance(layer, nn.Conv2d):
            x = b.conv(name, x, _checked(name, layer), act=act, upsample=up)
            act, up = None, 1
        elif _act_name(layer) is not None:
            _set_post(b, name, x, _act_name(layer))
        elif type(layer).__name__ == "Clamp":
            _require(x == b.input and act is None, f"{name}: Clamp only on the input")
            act = "tanh_clamp"
        elif isinstance(layer, nn.Upsample):
            _require(layer.mode == "nearest" and float(layer.scale_factor) == int(layer.scale_factor),
                     f"{name}: only nearest upsampling by an integer factor")
            up *= int(layer.scale_factor)
        elif hasattr(layer, "skip") and hasattr(layer, "conv"):
            _require(act is None and up == 1, f"{name}: a block must follow a conv")
            x = _block(b, name, x, layer)
        else:
            raise UnsupportedModelError(f"tiny autoencoder layer {name}: {type(layer).__name__} is not supported")
    if last_post is not None:
        _set_post(b, "output", x, last_post)
    return b.build(output=x)


def _block(b: ProgramBuilder, name: str, x: str, block: nn.Module) -> str:
    conv = block.conv
    _require(len(conv) == 5 and all(isinstance(conv[j], nn.Conv2d) for j in (0, 2, 4)), f"{name}: unknown block")
    act = _act_name(conv[1])
    _require(act is not None and _act_name(block.fuse) == "relu", f"{name}: only ReLU/SiLU blocks")
    pool = getattr(block, "pool", None)
    if pool is not None:  # x = x + conv(relu(groupnorm(conv(x)))), written over x
        _require(isinstance(pool[1], nn.GroupNorm) and _act_name(pool[2]) == "relu", f"{name}: unknown pool branch")
        p = b.conv(f"{name}.pool.0", x, _checked(name, pool[0]))
        out = b.new_map(b.maps[x].channels) if x == b.input else x
        x = b.add(ConvStage(f"{name}.pool.3", p, out, _checked(name, pool[3]), norm=pool[1], act="relu", skip=x),
                  norm=pool[1])
    h = b.conv(f"{name}.conv.0", x, _checked(name, conv[0]), post=act)
    h = b.conv(f"{name}.conv.2", h, _checked(name, conv[2]), post=act)
    shortcut = None if isinstance(block.skip, nn.Identity) else _checked(name, block.skip)
    same = shortcut is None and x != b.input  # never write over the caller's input
    out = x if same else b.new_map(conv[4].out_channels)
    return b.add(ConvStage(f"{name}.conv.4", h, out, _checked(name, conv[4]), skip=x, shortcut=Shortcut.of(shortcut),
                           post="relu"))


def _set_post(b: ProgramBuilder, name: str, x: str, post: str) -> None:
    last = b.stages[-1] if b.stages else None
    _require(last is not None and last.dst == x and isinstance(last, ConvStage) and last.post is None,
             f"{name}: an activation must directly follow a conv")
    b.stages[-1] = dataclasses.replace(last, post=post)


def _act_name(layer: nn.Module) -> str | None:
    return {nn.ReLU: "relu", nn.SiLU: "silu"}.get(type(layer))


def _checked(name: str, conv: nn.Conv2d) -> nn.Conv2d:
    k = conv.kernel_size[0]
    _require(conv.kernel_size == (k, k) and k % 2 == 1 and conv.padding == (k // 2, k // 2)
             and conv.stride[0] == conv.stride[1] and conv.dilation == (1, 1) and conv.groups == 1
             and conv.padding_mode == "zeros", f"{name}: only square zero-padded 'same' convolutions")
    return conv


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UnsupportedModelError(f"tiny autoencoder: {message}")


def whole(vae, op: str, x):
    """The model's own layers, untiled (diffusers' encode/decode would honour enable_tiling())."""
    if type(vae).__name__ == "AutoencoderTiny":
        return vae.encoder(x) if op == "encode" else vae.decoder(x)
    cls = type(vae)  # the class's methods: vaekit.apply may shadow the instance's
    return cls.encode(vae, x) if op == "encode" else cls.decode(vae, x)


def finish(vae, op: str, out, sample: bool = False, generator=None):
    return out  # tiny encoders are deterministic: the latents are the output


def scale_factor(vae) -> int:
    if type(vae).__name__ == "AutoencoderTiny":
        return vae.config.upsampling_scaling_factor ** (len(vae.config.decoder_block_out_channels) - 1)
    return vae.scale_factor
