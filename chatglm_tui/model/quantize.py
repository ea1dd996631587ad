"""Weight-only quantization in the layout of the official `chatglm-6b-int4` / `-int8` checkpoints.

Those repos quantize the four linears of every block symmetrically per output row:
`scale[r] = max|W[r]| / (2^(bits-1) - 1)`, `q = round(W / scale)`. INT8 weights are stored as int8 [out, in];
INT4 weights two per byte as int8 [out, in/2], the even input index in the high nibble, both two's complement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The projections the official checkpoints quantize, as attribute paths inside a GLMBlock.
QUANTIZED_LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
DEFAULT_INT4_GROUP = 128  # chosen by measured logit error and speed: see README "Performance"


@dataclass(frozen=True)
class QuantScheme:
    """How the block linears are stored: `bits` 4 or 8, `group_size` inputs per scale (None: one per row)."""

    bits: int
    group_size: int | None = None

    @property
    def tag(self) -> str:
        return f"int{self.bits}-" + (f"g{self.group_size}" if self.group_size else "row")

    def group_for(self, in_features: int) -> int:
        """Inputs per scale for a weight with `in_features` inputs (a group never exceeds the row)."""
        return min(self.group_size or in_features, in_features)


def choose_scheme(stored_bits: int, bits: int, group_size: int | None = None) -> QuantScheme:
    """The scheme for a checkpoint: what it stores if it is quantized, else `bits` with our default groups."""
    if stored_bits:
        return QuantScheme(stored_bits, None)
    if bits == 4:
        return QuantScheme(4, group_size or DEFAULT_INT4_GROUP)
    return QuantScheme(8, None)


# Group sizes torch's packed int4 matmuls take (`_weight_int4pack_mm` on CUDA, `_for_cpu` on the CPU).
INT4PACK_GROUPS = (256, 128, 64, 32)


def int4pack_group(in_features: int, scheme: QuantScheme) -> int | None:
    """The group size torch's int4 matmuls use for a weight with this many inputs under `scheme` (a per-row
    scale is repeated per 128-input group); None when they cannot hold it."""
    wanted = scheme.group_for(in_features) if scheme.group_size else min(DEFAULT_INT4_GROUP, in_features)
    if in_features % 32:
        return None
    return next((g for g in INT4PACK_GROUPS if g <= wanted and wanted % g == 0 and in_features % g == 0), None)


def required_int4pack_group(in_features: int, scheme: QuantScheme) -> int:
    """int4pack_group, for sizes already checked to fit (ValueError otherwise)."""
    group = int4pack_group(in_features, scheme)
    if group is None:
        raise ValueError(f"torch's int4 matmuls need inputs in multiples of 32, got {in_features}")
    return group


def int4pack_scales(scales: Tensor) -> Tensor:
    """float32 scales [N, K / group] -> the bfloat16 (scale, zero) pairs [K / group, N, 2] torch's int4 matmuls
    read: they dequantize `(u - 8) * scale + zero`, so zero 0 with u = q + 8 gives q * scale."""
    scale = scales.t().to(torch.bfloat16)
    return torch.stack((scale, torch.zeros_like(scale)), dim=-1).contiguous()


def quantize_in_slices(rows: int, quantize: Callable[[slice], tuple[Tensor, Tensor]],
                       size: int = 1024) -> tuple[Tensor, Tensor]:
    """Quantize a weight of `rows` rows a slice at a time (`quantize(rows_slice)` -> values, scales): its float32
    temporaries then stay small, which keeps quantize-on-load of the 130528-row embedding from needing
    gigabytes. Rows are independent, so the result is the same as in one go."""
    parts = [quantize(slice(i, min(i + size, rows))) for i in range(0, rows, size)]
    return torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])


def unpack_int4_rows(packed: Tensor) -> Tensor:
    """int8 [N, K/2] (even k in the high nibble) -> int8 [N, K] with values in [-8, 7]."""
    high = packed >> 4  # arithmetic shift keeps the sign
    low = (packed << 4) >> 4  # sign-extend the low nibble
    return torch.stack((high, low), dim=-1).reshape(packed.shape[0], -1)


def dequantize_rows(stored: Tensor, scale: Tensor, bits: int) -> Tensor:
    """The official layout back to float32 [N, K]: exactly `q * scale`, as the original's kernels compute it."""
    q = unpack_int4_rows(stored) if bits == 4 else stored
    return q.float() * scale.float()[:, None]


def pack_int4_rows(q: Tensor) -> Tensor:
    """int8 [N, K] in [-8, 7] -> int8 [N, K/2], the official layout (inverse of `unpack_int4_rows`)."""
    pairs = q.reshape(q.shape[0], -1, 2).to(torch.int16)
    packed = (pairs[..., 0] << 4) | (pairs[..., 1] & 0xF)
    return packed.to(torch.uint8).view(torch.int8)


def quantize_rows(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Symmetric per-row quantization as the original does it: (int8 values [N, K], float32 scales [N]).

    The scale is rounded to fp16 first, as the official checkpoints store it, so quantizing the fp16 weights
    here gives the same values as the released -int4/-int8 files.
    """
    limit = 2 ** (bits - 1) - 1
    scale = (weight.float().abs().amax(dim=1) / limit).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(weight.float() / scale[:, None]).clamp_(-limit, limit).to(torch.int8)
    return q, scale


def quantize_groups(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Symmetric int4 with one scale per `group_size` inputs: (int8 values [N, K] in [-8, 7], scales [N, K/G]).

    Each group tries a few scales just below abs-max/7 and keeps the one with the least squared error: a
    slightly smaller scale resolves the bulk of the weights better at the price of clipping the largest one
    to -8/7, which often wins.
    """
    n, k = weight.shape
    w = weight.float().reshape(n, k // group_size, group_size)
    absmax = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    best_q = best_scale = best_err = None
    for shrink in (1.0, 0.95, 0.9, 0.85, 0.8):
        scale = absmax * shrink / 7
        q = torch.round(w / scale).clamp_(-8, 7)
        err = ((q * scale - w) ** 2).sum(dim=-1, keepdim=True)
        if best_err is None:
            best_q, best_scale, best_err = q, scale, err
        else:
            better = err < best_err
            best_q = torch.where(better, q, best_q)
            best_scale = torch.where(better, scale, best_scale)
            best_err = torch.minimum(err, best_err)
    return best_q.to(torch.int8).reshape(n, k), best_scale.reshape(n, k // group_size)


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is stored quantized per row; the forward dequantizes exactly (int * scale)."""

    def __init__(self, in_features: int, out_features: int, bits: int) -> None:
        super().__init__()
        assert bits in (4, 8)
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        stored = in_features * bits // 8
        self.register_buffer("weight", torch.empty(out_features, stored, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)

    def to_float32_scale(self) -> QuantizedLinear:
        """Keep the scales float32 after the module was cast to a narrower compute dtype (returns self)."""
        self.weight_scale = self.weight_scale.float()
        return self

    def dequantized_weight(self, dtype: torch.dtype) -> Tensor:
        """The float weight [out, in]: exactly `q * scale` computed in float32, then cast to `dtype`."""
        return dequantize_rows(self.weight, self.weight_scale, self.bits).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)


def replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> None:
    """Swap the four quantized projections of every GLMBlock for `make(old_linear)` (before loading)."""
    for layer in model.transformer.layers:
        for path in QUANTIZED_LINEARS:
            parent_name, name = path.split(".")
            parent = getattr(layer, parent_name)
            setattr(parent, name, make(getattr(parent, name)))
