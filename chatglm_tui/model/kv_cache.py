"""The key/value cache: static buffers sized for one request, written in place as tokens arrive."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache(nn.Module):
    """Keys (after rotary) and values of every layer, (layers, B, H, capacity, D) each.

    Sized once per request for prompt + reply, so memory follows the conversation rather than the 2048-token
    maximum, and decoding never reallocates. Backends with their own storage or decode attention subclass it
    (the CPU kernels keep float16 keys for a float32 model; the CUDA graph attends over a fixed window).
    """

    def __init__(self, num_layers: int, batch: int, num_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        shape = (num_layers, batch, num_heads, capacity, head_dim)
        # Uninitialised on purpose: positions are read only after they are written, and untouched pages of a
        # reply that has not been generated yet then cost no memory.
        self.register_buffer("keys", torch.empty(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.empty(shape, dtype=dtype, device=device), persistent=False)
        self.capacity = capacity

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T, D) at positions [start, start+T) of `layer`; return everything up to there."""
        end = start + k.shape[2]
        assert end <= self.capacity, f"KV cache overflow: {end} > {self.capacity}"
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def attention(self, layer: int, start: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Store k, v (B, H, T, D) of the new tokens and return their attention output (B, H, T, D)."""
        keys, values = self.update(layer, start, k, v)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
