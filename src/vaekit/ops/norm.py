"""GroupNorm made exact for streaming: statistics gathered band by band, applied in the next prologue.

Per band we take (count, mean, M2) per (sample, channel) in fp32, merge channels into groups and bands
in float64 with Chan's parallel formula, so the result does not depend on the number of bands beyond
float rounding.
"""

from __future__ import annotations

import torch

from .act import activate

__all__ = ["GroupStats", "norm_act", "group_scale_shift", "local_norm", "pixel_norm"]


#: values per slice of a band's squared deviations: 1 MiB in float32, which stays in a core's L2 cache
#: between the subtraction, the squaring and the sum
STATS_SLICE = 1 << 18


class GroupStats:
    """Running mean and variance per (sample, group) of an NHWC map, fed one band at a time."""

    def __init__(self, groups: int):
        self.groups = groups
        self.count = 0
        self.mean: torch.Tensor | None = None  # (B, G) float64
        self.m2: torch.Tensor | None = None  # (B, G) float64
        self.scratch: torch.Tensor | None = None  # the slice's deviations, reused by every band of a stage

    def update(self, band: torch.Tensor) -> None:
        """Add a band of shape (B, rows, W, C).

        Per channel first, then per group: a sum over pixels with channels innermost is one vectorized
        pass, where ``var_mean`` over (pixels, channels of a group) strides and took a fifth of a streamed
        SD decode (Intel Xeon, 2026-12-02). Sums of squares are of deviations from the band's channel
        mean (no cancellation), a slice of at most STATS_SLICE values at a time, in one buffer the
        collector keeps: a fresh temporary per slice was a new mmap whose pages fault and are zeroed
        (store._bound_heap), which made this pass 3x slower (Intel Xeon, 2026-12-02).
        """
        b, rows, w, c = band.shape  # map px
        x = band.reshape(b, rows * w, c)  # (B, pixels, C)
        if x.dtype != torch.float32:
            x = x.float()
        n = rows * w
        mean = x.sum(1) / n  # (B, C) float32
        m2 = torch.zeros(b, c, dtype=torch.float64, device=band.device)
        step = max(1, STATS_SLICE // (b * c))
        if self.scratch is None or self.scratch.numel() < b * step * c or self.scratch.device != band.device:
            self.scratch = torch.empty(b * step * c, dtype=torch.float32, device=band.device)
        for p0 in range(0, n, step):
            k = min(step, n - p0)
            deviations = self.scratch[: b * k * c].view(b, k, c)  # (B, pixels of the slice, C)
            m2 += torch.sub(x[:, p0 : p0 + k], mean[:, None], out=deviations).square_().sum(1)
        mean = mean.double().view(b, self.groups, -1)  # (B, G, C/G): channels to groups, Chan's formula
        group_mean = mean.mean(-1)
        group_m2 = m2.view(b, self.groups, -1).sum(-1) + n * (mean - group_mean[..., None]).square().sum(-1)
        self.merge(n * (c // self.groups), group_mean, group_m2)

    def merge(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Add ``n`` values per group with this ``mean`` and sum of squared deviations ``m2`` (Chan et al.)."""
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance), each (B, G) float64."""
        if self.mean is None:
            raise RuntimeError("no band was added")
        return self.mean, self.m2 / self.count


def norm_act(band: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor], norm, act: str | None,
             weights, out: torch.Tensor | None = None) -> torch.Tensor:
    """GroupNorm with known global ``stats`` (then ``act``) of an NHWC band, in one fused multiply-add.

    ``weights`` holds the norm's affine ``weight`` and ``bias`` on the compute device. ``out``: where
    a float32 band's result goes (in the same pass); other dtypes' are returned as new tensors.
    """
    b, _, _, c = band.shape
    scale, shift = group_scale_shift(stats, norm.eps, weights, b, c)
    if out is not None and band.dtype == torch.float32:
        return activate(torch.addcmul(shift, band, scale, out=out), act, inplace=True)
    result = activate(torch.addcmul(shift, band, scale), act, inplace=True)  # fp32 for any compute dtype
    return result if result.dtype == band.dtype else result.to(band.dtype)


def group_scale_shift(stats: tuple[torch.Tensor, torch.Tensor], eps: float, weights, b: int, c: int):
    """GroupNorm with global statistics as y = x * scale + shift: two float32 (B, 1, 1, C) tensors,
    computed in float64."""
    mean, var = stats  # (B, G): a video's statistics over all its frames serve each of them (B*F bands)
    if mean.shape[0] != b:
        mean, var = mean.repeat_interleave(b // mean.shape[0], 0), var.repeat_interleave(b // var.shape[0], 0)
    per_channel = c // mean.shape[1]
    rstd = torch.rsqrt(var + eps).repeat_interleave(per_channel, dim=1)  # (B, C) float64
    scale = rstd * weights["weight"].double()  # (x - mean) * rstd * w + b == x * scale + shift
    shift = weights["bias"].double() - mean.repeat_interleave(per_channel, dim=1) * scale
    return scale.to(torch.float32).view(b, 1, 1, c), shift.to(torch.float32).view(b, 1, 1, c)


def normalize(band: torch.Tensor, stats, norm, act: str | None, weights: dict, inplace: bool = True,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(norm(band))`` for any norm a stage applies to its source: a GroupNorm with the map's
    global ``stats``, a per-pixel norm, or none (``inplace`` False when ``band`` may be a stored map).
    ``out``: a tensor of the band's shape to write the result into (a slot of a conv's input), returned;
    GroupNorm and Wan's RMS norm of a float32 band write it in their last pass, the rest is copied there."""
    if isinstance(norm, torch.nn.GroupNorm):
        result = norm_act(band, stats, norm, act, weights, out)
    elif out is not None and hasattr(norm, "gamma") and band.dtype == torch.float32:
        result = activate(l2_norm(band, weights, out), act, inplace=True)
    else:
        band = local_norm(band, norm, weights) if norm is not None else band
        result = activate(band, act, inplace=inplace and norm is not None)
    return result if out is None or result is out else out.copy_(result)  # an activation that is not in place


def local_norm(band: torch.Tensor, norm, weights: dict) -> torch.Tensor:
    """A per-pixel norm of an NHWC band: diffusers' RMSNorm over channels, an eval-mode BatchNorm2d
    (a per-channel affine map with the running statistics), Wan's RMS norm (an L2 normalization
    scaled by sqrt(C), with ``gamma``), LTX's pixel norm (x / sqrt(mean(x^2) + eps), no affine) or a
    LayerNorm over channels. All are local: no statistics to gather."""
    if hasattr(norm, "gamma"):
        return l2_norm(band, weights)
    if isinstance(norm, torch.nn.LayerNorm):  # MiniMax H3's last norm, over each token's channels
        return torch.nn.functional.layer_norm(band, norm.normalized_shape, weights.get("weight"), weights.get("bias"),
                                              norm.eps)
    if hasattr(norm, "channel_dim"):  # LTX's PerChannelRMSNorm: no affine, in the band's dtype
        return band / torch.sqrt(band.square().mean(-1, keepdim=True) + norm.eps)
    return pixel_norm(band, isinstance(norm, torch.nn.BatchNorm2d), norm.eps, weights)


def l2_norm(band: torch.Tensor, weights: dict, out: torch.Tensor | None = None) -> torch.Tensor:
    """Wan's RMS norm of an NHWC band, as diffusers computes it: F.normalize over channels (in float32
    for half types), times sqrt(C), times gamma, plus bias. ``out``: where a float32 band's goes."""
    if band.dtype in (torch.float16, torch.bfloat16):  # as diffusers: normalized in float32, then rounded
        result = torch.nn.functional.normalize(band.float(), dim=-1).to(band.dtype) * band.shape[-1] ** 0.5
        result = result * weights["gamma"].flatten()
        return result + weights["bias"].flatten() if "bias" in weights else result
    # one product and one in-place division: x * (sqrt(C) gamma) / max(|x|, eps), the same to rounding
    norm = torch.linalg.vector_norm(band, dim=-1, keepdim=True).clamp_min_(1e-12)  # F.normalize's eps
    result = torch.mul(band, weights["gamma"].flatten() * band.shape[-1] ** 0.5, out=out).div_(norm)
    return result.add_(weights["bias"].flatten()) if "bias" in weights else result


def pixel_norm(band: torch.Tensor, batch: bool, eps: float, weights: dict) -> torch.Tensor:
    """local_norm by kind (``batch``: BatchNorm2d, else RMSNorm) rather than by module."""
    if batch:
        out = torch.nn.functional.batch_norm(band.permute(0, 3, 1, 2), weights["running_mean"], weights["running_var"],
                                             weights.get("weight"), weights.get("bias"), False, 0.0, eps)
        return out.permute(0, 2, 3, 1)  # (B, rows, W, C)
    variance = band.to(torch.float32).pow(2).mean(-1, keepdim=True)  # as diffusers' RMSNorm computes it
    out = band * torch.rsqrt(variance + eps)
    if "weight" not in weights:
        return out.to(band.dtype)
    if weights["weight"].dtype in (torch.float16, torch.bfloat16):
        out = out.to(weights["weight"].dtype)
    out = out * weights["weight"]
    return out + weights["bias"] if "bias" in weights else out
