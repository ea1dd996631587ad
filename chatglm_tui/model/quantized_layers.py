"""Layers of the fast quantized model: int4/int8 linears and the int8 tied embedding, on the CPU kernels.

Their buffers are exactly what the quantized cache file stores, so a cached model loads by memory-mapping.
Activations enter and leave as float32; the kernels (chatglm_tui.model.kernels.cpu) pick the integer GEMV for a
few rows and dequantize + MKL for many, and fall back to exact PyTorch math where the C extension is missing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chatglm_tui.model.kernels import cpu as kernels


def int4_packed_shape(out_features: int, in_features: int) -> tuple[int, ...]:
    """Shape of the packed int4 data of a [out, in] weight in the kernel layout."""
    segment = kernels.SEGMENT if in_features % kernels.SEGMENT == 0 else in_features
    return (in_features // segment, -(-out_features // kernels.ROWS), segment // kernels.CHUNK, kernels.ROWS, 32)


def supports_int4(in_features: int) -> bool:
    """Whether the kernel layout can hold a weight with this many inputs."""
    return in_features % kernels.CHUNK == 0


class Int4Linear(nn.Module):
    """y = x W^T + b with W symmetric int4, one float32 scale per `group_size` inputs."""

    def __init__(self, in_features: int, out_features: int, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_packed", torch.empty(int4_packed_shape(out_features, in_features),
                                                          dtype=torch.uint8))
        self.register_buffer("weight_scales", torch.empty(out_features, in_features // group_size))
        self.register_buffer("bias", torch.empty(out_features))

    def packed(self) -> kernels.PackedInt4:
        return kernels.PackedInt4(self.weight_packed, self.weight_scales, self.out_features, self.in_features,
                                  self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.int4_linear(x, self.packed(), self.bias).to(x.dtype)


class Int8Linear(nn.Module):
    """y = x W^T + b with W symmetric int8, one float32 scale per output row."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features))
        self.register_buffer("bias", torch.empty(out_features))

    def packed(self) -> kernels.PackedInt8:
        return kernels.PackedInt8(self.weight_q, self.weight_scale, self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.int8_linear(x, self.packed(), self.bias).to(x.dtype)


class Int8Embedding(nn.Module):
    """The tied word embedding / language-model head, int8 per row: half the memory and bandwidth of fp16."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.dtype = num_embeddings, embedding_dim, dtype
        self.register_buffer("weight_q", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(num_embeddings))

    def forward(self, ids: Tensor) -> Tensor:
        return (self.weight_q[ids].float() * self.weight_scale[ids].unsqueeze(-1)).to(self.dtype)

    def project(self, x: Tensor) -> Tensor:
        """Hidden states (..., H) -> logits (..., V)."""
        packed = kernels.PackedInt8(self.weight_q, self.weight_scale, self.num_embeddings, self.embedding_dim)
        return kernels.int8_linear(x, packed)
