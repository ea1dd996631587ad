"""The exact backend: the original implementation's arithmetic on any device (the reference every other path
is tested against).

Quantized linears keep the official per-row layout and are dequantized exactly (`q * scale` in float32, then
cast to the compute dtype) at every call, as the original's CPU and GPU kernels do. In float32 this reproduces
the original's logits; in float16 on a GPU, its GPU numerics. It is the slow path: no kernel is fused.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from chatglm_tui.model.backends.base import Backend, StoredWeight
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.modeling import ChatGLMForCausalLM
from chatglm_tui.model.quantize import QuantizedLinear, pack_int4_rows, replace_linears


class ExactBackend(Backend):
    """Weights as stored (or quantized per row to `bits` on load), computed in `compute_dtype` on `device`."""

    name = "exact"

    def __init__(self, device: torch.device, compute_dtype: torch.dtype, bits: int) -> None:
        super().__init__(device, compute_dtype)
        self.bits = bits

    @property
    def _dtype_name(self) -> str:
        return str(self.compute_dtype).removeprefix("torch.")

    @property
    def mode(self) -> str:
        weights = f", int{self.bits}-row weights dequantized per call" if self.bits else ""
        return f"{self._dtype_name}{weights}"

    @property
    def weights_label(self) -> str:
        return f"int{self.bits}-row exact {self._dtype_name}" if self.bits else self._dtype_name

    @property
    def numerics(self) -> str:
        if self.compute_dtype == torch.float32:
            return "the original implementation's float32 numbers (its reference logits to 1e-3)"
        return f"the original's arithmetic in {self._dtype_name} (its GPU numerics in float16)"

    def build(self, config: ChatGLMConfig) -> ChatGLMForCausalLM:
        config = dataclasses.replace(config, quantization_bit=self.bits)
        with torch.device("meta"):
            model = ChatGLMForCausalLM(config)
            model.to(self.compute_dtype)
            if self.bits:  # their scales stay float32: dequantizing is exact in float32, then cast
                replace_linears(model, lambda old: QuantizedLinear(old.in_features, old.out_features, self.bits)
                                .to(self.compute_dtype).to_float32_scale())
        return model

    def convert_weight(self, weight: StoredWeight) -> dict[str, Tensor]:
        if weight.kind == "embedding" or not self.bits:
            return {"weight": weight.floats().to(device=self.device, dtype=self.compute_dtype)}
        if weight.bits == self.bits:  # already in the official layout: keep the stored bytes
            stored, scale = weight.data, weight.scale
        else:
            q, scale = weight.row_quantized(self.bits)
            stored = pack_int4_rows(q) if self.bits == 4 else q
        assert scale is not None
        return {"weight": stored.to(self.device), "weight_scale": scale.to(device=self.device, dtype=torch.float32)}
