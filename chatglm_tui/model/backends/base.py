"""What a backend is: the layers, weight formats, KV cache and forward loop one kind of hardware runs well.

The weight pipeline is one path for every backend: `checkpoint.py` reads stored tensors, `convert.py` pairs and
checks them and hands each 2-D weight over as a `StoredWeight`, and the backend turns it into the buffers its
layers want (`convert_weight`). The backend also builds the module tree, sizes the KV cache and runs the forward
passes of a reply (`session`). Which backend runs is decided in one place: `select_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.generate import DecodeSession
from chatglm_tui.model.kv_cache import KVCache
from chatglm_tui.model.modeling import ChatGLMForCausalLM, RotaryEmbedding2D
from chatglm_tui.model.quantize import (
    dequantize_rows,
    quantize_groups,
    quantize_in_slices,
    quantize_rows,
    unpack_int4_rows,
)

EMBEDDING = "transformer.word_embeddings"


@dataclass(frozen=True)
class StoredWeight:
    """One 2-D weight as the checkpoint stores it: float, or quantized per row (the official -int4/-int8 layout).

    `data` is float [out, in], or int8 [out, in * bits / 8] with `scale` float [out]. Every conversion works a
    slice of rows at a time, so quantizing the 130528-row embedding never needs gigabytes of temporaries.
    """

    name: str  # the module path: "transformer.layers.0.mlp.dense_h_to_4h", or EMBEDDING
    kind: Literal["linear", "embedding"]
    shape: tuple[int, int]  # [out, in]
    bits: int  # 0: float
    data: Tensor
    scale: Tensor | None = None

    def values(self) -> Tensor:
        """int8 [out, in]: the quantized values, unpacked (quantized weights only)."""
        return unpack_int4_rows(self.data) if self.bits == 4 else self.data

    def dequantized(self, rows: slice | None = None) -> Tensor:
        """float32 [out, in] (or those `rows`): exactly `q * scale` as the original computes it, or the floats."""
        rows = rows or slice(None)
        if not self.bits:
            return self.data[rows].float()
        assert self.scale is not None
        return dequantize_rows(self.data[rows], self.scale[rows], self.bits)

    def floats(self) -> Tensor:
        """The weight as floats: the stored ones as they are (no float32 copy of a 130528-row table), or the
        exactly dequantized values."""
        return self.data if not self.bits else self.dequantized()

    def row_quantized(self, bits: int) -> tuple[Tensor, Tensor]:
        """(int8 values [out, in], float32 scales [out]) per row: as stored when the widths agree, else the
        original's own per-row quantization of the (dequantized) weight."""
        if self.bits == bits:
            assert self.scale is not None
            return self.values(), self.scale.float()
        return quantize_in_slices(self.shape[0], lambda rows: quantize_rows(self.dequantized(rows), bits))

    def group_quantized(self, group_size: int) -> tuple[Tensor, Tensor]:
        """(int8 values [out, in] in [-8, 7], float32 scales [out, in / group]): the stored per-row int4 exactly
        (the row's scale repeated per group), or a float weight quantized in groups."""
        if self.bits == 4:
            q, scale = self.row_quantized(4)
            return q, scale[:, None].expand(-1, self.shape[1] // group_size).contiguous()
        return quantize_in_slices(self.shape[0], lambda rows: quantize_groups(self.dequantized(rows), group_size))


class Backend(ABC):
    """One way of running the model: its layers and weight buffers, KV cache, decode attention and numerics."""

    name: ClassVar[str]

    def __init__(self, device: torch.device, compute_dtype: torch.dtype) -> None:
        self.device, self.compute_dtype = device, compute_dtype

    @property
    @abstractmethod
    def mode(self) -> str:
        """What runs, in a few words ("int4-g128 kernels, AVX2", "fp16-resident, CUDA graph")."""

    @property
    @abstractmethod
    def numerics(self) -> str:
        """One line on how its numbers relate to the original implementation's."""

    @property
    def weights_label(self) -> str:
        """The weight format, as `chatglm bench` reports it ("int4-g128", "int4-row exact float16")."""
        return self.mode

    def describe(self) -> str:
        """"cpu: int4-g128 kernels, AVX2" (shown by `chatglm bench`, `chatglm model info` and the chat app)."""
        return f"{self.name}: {self.mode}"

    @abstractmethod
    def build(self, config: ChatGLMConfig) -> ChatGLMForCausalLM:
        """The module tree on the meta device, with this backend's layers."""

    @abstractmethod
    def convert_weight(self, weight: StoredWeight) -> dict[str, Tensor]:
        """The buffers of `weight.name`'s module (keyed by attribute: "weight", "weight_scale", ...), on the device."""

    def convert_tensor(self, name: str, tensor: Tensor) -> Tensor:
        """A bias or LayerNorm tensor, as this backend keeps it."""
        return tensor.to(device=self.device, dtype=self.compute_dtype)

    @property
    def cache_tag(self) -> str | None:
        """The name of the format of converted weights worth caching on disk ("int4-g128"); None: conversion is
        cheap, or the weights live on a GPU, so nothing is cached."""
        return None

    def cache_fields(self) -> dict[str, str]:
        """What else a cached file depends on (a kernel layout version): a change means rebuild."""
        return {}

    def kv_cache(self, config: ChatGLMConfig, capacity: int) -> KVCache:
        """The KV cache of one reply of at most `capacity` tokens (prompt included)."""
        return KVCache(config.num_layers, 1, config.num_attention_heads, capacity, config.head_dim,
                       self.compute_dtype, self.device)

    def session(self, model: ChatGLMForCausalLM, capacity: int) -> DecodeSession:
        """What runs the forward passes of one reply."""
        return DecodeSession(model, self.kv_cache(model.config, capacity))

    def finish(self, model: ChatGLMForCausalLM) -> ChatGLMForCausalLM:
        """The loaded model, ready to run (buffers that are computed rather than stored are made here)."""
        model.transformer.rotary = RotaryEmbedding2D(model.config.head_dim).to(self.device)
        return model.eval().requires_grad_(False)
