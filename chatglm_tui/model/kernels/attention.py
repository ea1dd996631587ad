"""Decode-step attention over a float16 KV cache (C kernel, with an exact PyTorch fallback)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from chatglm_tui.model.kernels import cpu

try:  # torch first (imported above), so the extension shares torch's OpenMP runtime
    from chatglm_tui.model.kernels import _attention as _ext
except ImportError:  # not built: the fallback below
    _ext = None


def decode_attention(q: Tensor, keys: Tensor, values: Tensor, level: str | None = None) -> Tensor:
    """softmax(q k^T / sqrt(D)) v for one new token.

    q: float32 (1, H, 1, D); keys, values: float16 (1, H, T, D) views of the cache (rows contiguous, heads
    strided). Returns float32 (1, H, 1, D). Level "pytorch" runs the PyTorch math even where the C kernel exists.
    """
    _, heads, length, dim = keys.shape
    usable = (level != "pytorch" and _ext is not None and cpu.is_available() and keys.device.type == "cpu"
              and dim % 8 == 0 and dim <= 256 and keys.stride(2) == dim and keys.stride(3) == 1
              and values.stride() == keys.stride())
    if not usable:
        return F.scaled_dot_product_attention(q.float(), keys.float(), values.float())
    query = q.reshape(heads, dim).contiguous().float()
    out = torch.empty(heads, dim, dtype=torch.float32)
    _ext.decode_f16(query.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(), heads, length, dim,
                    keys.stride(1), 1.0 / math.sqrt(dim), torch.get_num_threads())
    return out.view(1, heads, 1, dim)
