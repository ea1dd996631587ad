"""The CPU backend: int4/int8 weights on the C kernels, float16 KV cache, converted weights cached on disk.

The four linears of every block become Int4Linear (or Int8Linear), the tied embedding/head an Int8Embedding;
LayerNorms and biases stay float32. Their buffers are exactly what the cache file stores, so a cached model
loads by memory-mapping. The official -int4/-int8 checkpoints map exactly (their per-row scales are a group as
wide as the row); an fp16 checkpoint is quantized in groups of 128 inputs. Activations enter and leave as
float32; the kernels (chatglm_tui.model.kernels.cpu) pick the integer GEMV for a few rows and dequantize + MKL
for many; on AVX512_BF16 CPUs prefill unpacks to bfloat16 for oneDNN instead (the "avx512-bf16" level). Where
the C extension is missing (no compiler, not x86) or level "pytorch" is asked for, every layer runs the exact
PyTorch math on the same buffers.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatglm_tui.errors import DeviceError
from chatglm_tui.model.backends.base import Backend, StoredWeight
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.kernels import cpu as kernels
from chatglm_tui.model.kernels.attention import decode_attention
from chatglm_tui.model.kv_cache import KVCache
from chatglm_tui.model.modeling import ChatGLMForCausalLM
from chatglm_tui.model.quantize import QuantScheme, replace_linears, required_int4pack_group


def int4_packed_shape(out_features: int, in_features: int) -> tuple[int, ...]:
    """Shape of the packed int4 data of a [out, in] weight in the kernel layout."""
    segment = kernels.SEGMENT if in_features % kernels.SEGMENT == 0 else in_features
    return (in_features // segment, -(-out_features // kernels.ROWS), segment // kernels.CHUNK, kernels.ROWS, 32)


def supports_int4(in_features: int) -> bool:
    """Whether the kernel layout can hold a weight with this many inputs."""
    return in_features % kernels.CHUNK == 0


class Int4Linear(nn.Module):
    """y = x W^T + b with W symmetric int4, one float32 scale per `group_size` inputs."""

    def __init__(self, in_features: int, out_features: int, group_size: int, level: str = "avx2") -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.level = level
        self.register_buffer("weight_packed", torch.empty(int4_packed_shape(out_features, in_features),
                                                          dtype=torch.uint8))
        self.register_buffer("weight_scales", torch.empty(out_features, in_features // group_size))
        self.register_buffer("bias", torch.empty(out_features))

    def packed(self) -> kernels.PackedInt4:
        return kernels.PackedInt4(self.weight_packed, self.weight_scales, self.out_features, self.in_features,
                                  self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.int4_linear(x, self.packed(), self.bias, self.level).to(x.dtype)


class Int8Linear(nn.Module):
    """y = x W^T + b with W symmetric int8, one float32 scale per output row."""

    def __init__(self, in_features: int, out_features: int, level: str = "avx2") -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.level = level
        self.register_buffer("weight_q", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features))
        self.register_buffer("bias", torch.empty(out_features))

    def packed(self) -> kernels.PackedInt8:
        return kernels.PackedInt8(self.weight_q, self.weight_scale, self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return kernels.int8_linear(x, self.packed(), self.bias, self.level).to(x.dtype)


class Int8Embedding(nn.Module):
    """The tied word embedding / language-model head, int8 per row: half the memory and bandwidth of fp16."""

    def __init__(self, num_embeddings: int, embedding_dim: int, level: str = "avx2") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.level = num_embeddings, embedding_dim, level
        self.register_buffer("weight_q", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(num_embeddings))

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight_q[ids].float() * self.weight_scale[ids].unsqueeze(-1)

    def project(self, x: Tensor) -> Tensor:
        """Hidden states (..., H) -> logits (..., V)."""
        packed = kernels.PackedInt8(self.weight_q, self.weight_scale, self.num_embeddings, self.embedding_dim)
        return kernels.int8_linear(x, packed, level=self.level)


class TorchInt4Linear(nn.Module):
    """y = x W^T + b with W int4 in PyTorch's packed CPU layout (`_weight_int4pack_mm_for_cpu`, bfloat16
    activations): the "torch" level, for CPUs the C kernels do not run on (ARM, or no compiler)."""

    def __init__(self, in_features: int, out_features: int, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_packed", torch.empty(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("weight_scales_zeros",
                             torch.empty(in_features // group_size, out_features, 2, dtype=torch.bfloat16))
        self.register_buffer("bias", torch.empty(out_features))

    def forward(self, x: Tensor) -> Tensor:
        return kernels.torch_int4_linear(x, self.weight_packed, self.group_size, self.weight_scales_zeros,
                                         self.bias).to(x.dtype)


class RoundedKVCache(KVCache):
    """Keys and values stored as float16 for a float32 model: half the memory (458 KB instead of 917 KB per
    token for ChatGLM-6B). The decode kernel reads float16 directly; a fresh prompt attends to its exact float32
    keys before they are stored."""

    def __init__(self, config: ChatGLMConfig, capacity: int, level: str) -> None:
        super().__init__(config.num_layers, 1, config.num_attention_heads, capacity, config.head_dim,
                         torch.float16, "cpu")
        self.level = level

    def attention(self, layer: int, start: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        keys, values = self.update(layer, start, k, v)
        if start == 0:  # a fresh prompt: attend to the exact new keys, not their rounded copies
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if q.shape[2] == 1 and q.shape[0] == 1:
            return decode_attention(q, keys, values, self.level).to(q.dtype)
        return F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)


def supports_sizes(config: ChatGLMConfig, scheme: QuantScheme) -> bool:
    """Whether the kernel layouts fit these sizes (the released model's always do)."""
    sizes = (config.hidden_size, config.inner_hidden_size)
    if scheme.bits == 4:
        groups_fit = all(size % scheme.group_for(size) == 0 for size in sizes)
        return all(supports_int4(size) for size in sizes) and groups_fit
    return all(size % 32 == 0 for size in sizes)


class CpuBackend(Backend):
    """int4 or int8 weights (`scheme`) on the CPU kernels at `level` (one of kernels.LEVELS; None: the fastest
    this CPU runs, or the one $CHATGLM_CPU_LEVEL names). Level "pytorch" runs the exact PyTorch math instead."""

    name = "cpu"

    def __init__(self, scheme: QuantScheme, level: str | None = None) -> None:
        super().__init__(torch.device("cpu"), torch.float32)
        try:
            self.level = level or kernels.chosen_level()
        except ValueError as exc:  # a bad $CHATGLM_CPU_LEVEL
            raise DeviceError(str(exc)) from exc
        if self.level not in kernels.available_levels():
            raise DeviceError(f"the CPU level {self.level!r} does not run here: use one of "
                              f"{', '.join(kernels.available_levels())}")
        self.scheme = scheme

    @property
    def mode(self) -> str:
        name = kernels.LEVEL_NAMES[self.level]
        kernel = name if self.level in ("torch", "pytorch") else "C kernels, " + name
        return f"{self.scheme.tag} ({kernel})"

    @property
    def weights_label(self) -> str:
        return self.scheme.tag

    @property
    def numerics(self) -> str:
        if self.level == "pytorch":
            return "the original's float32 arithmetic on our int4/int8 weights, with an int8 LM head"
        if self.level == "torch":
            return ("bfloat16 activations into PyTorch's int4/int8 matmuls (scales rounded to bfloat16), an int8 "
                    "LM head")
        prefill = ("; prompts through bfloat16 (inputs rounded to 8 significant bits, float32 sums)"
                   if self.level == "avx512-bf16" else "")
        return ("int8 activations in the integer GEMV and an int8 LM head: the top logits move by about 2% of "
                "their size against the original's float32" + prefill)

    def build(self, config: ChatGLMConfig) -> ChatGLMForCausalLM:
        config = dataclasses.replace(config, quantization_bit=self.scheme.bits)
        scheme, level = self.scheme, self.level
        with torch.device("meta"):
            model = ChatGLMForCausalLM(config)
            if scheme.bits == 4 and level == "torch":
                replace_linears(model, lambda old: TorchInt4Linear(old.in_features, old.out_features,
                                                                   required_int4pack_group(old.in_features, scheme)))
            elif scheme.bits == 4:
                replace_linears(model, lambda old: Int4Linear(old.in_features, old.out_features,
                                                              scheme.group_for(old.in_features), level))
            else:
                replace_linears(model, lambda old: Int8Linear(old.in_features, old.out_features, level))
            model.transformer.word_embeddings = Int8Embedding(config.vocab_size, config.hidden_size, level)
        return model

    def convert_weight(self, weight: StoredWeight) -> dict[str, Tensor]:
        if weight.kind == "embedding":
            q, scale = weight.row_quantized(8)
            return {"weight_q": q, "weight_scale": scale}
        if self.scheme.bits == 8:
            q, scale = weight.row_quantized(8)
            return {"weight_q": q, "weight_scale": scale.contiguous()}
        if self.level == "torch":
            q, scales = weight.group_quantized(required_int4pack_group(weight.shape[1], self.scheme))
            packed_torch, scales_zeros = kernels.pack_torch_int4(q, scales)
            return {"weight_packed": packed_torch, "weight_scales_zeros": scales_zeros}
        q, scales = weight.group_quantized(self.scheme.group_for(weight.shape[1]))
        packed = kernels.pack_int4(q, scales, self.scheme.group_for(weight.shape[1]))
        return {"weight_packed": packed.data, "weight_scales": packed.scales}

    def convert_tensor(self, name: str, tensor: Tensor) -> Tensor:
        return tensor.to(torch.float32)

    @property
    def cache_tag(self) -> str | None:
        return self.scheme.tag + ("-torch" if self.level == "torch" else "")

    def cache_fields(self) -> dict[str, str]:
        if self.level == "torch":  # torch's packed layout is its own, and may change between its versions
            return {"scheme": self.scheme.tag, "kernel_layout": "torch-int4pack", "torch": torch.__version__}
        return {"scheme": self.scheme.tag, "kernel_layout": kernels.LAYOUT_TAG}

    def kv_cache(self, config: ChatGLMConfig, capacity: int) -> KVCache:
        return RoundedKVCache(config, capacity, self.level)
