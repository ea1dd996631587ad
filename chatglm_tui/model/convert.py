"""The one converter: stored checkpoint tensors in, the chosen backend's buffers out, checked on the way.

Every released layout arrives here as (name, tensor) pairs: float weights, or the official per-row quantized
weights as int8 data plus a `weight_scale` (which may come in either order, from different shards). The
converter pairs them, checks each against the shape config.json implies, hands each 2-D weight to the backend
as a `StoredWeight`, checks what the backend makes against the module tree it built, and passes every result
to a sink (a dict, or the cache file being written). One tensor is converted at a time, so peak memory stays
near one layer however the backend stores the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.backends.base import EMBEDDING, Backend, StoredWeight
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.modeling import ChatGLMForCausalLM

Sink = Callable[[str, Tensor], None]
_NOT_V1 = "this is not a ChatGLM-6B (v1) checkpoint or its config.json does not match its weights"


def logical_shapes(config: ChatGLMConfig) -> dict[str, tuple[int, int]]:
    """[out, in] of every 2-D weight a checkpoint of `config` holds (the embedding is the tied LM head)."""
    h, inner = config.hidden_size, config.inner_hidden_size
    per_layer = {"attention.query_key_value": (3 * h, h), "attention.dense": (h, h),
                 "mlp.dense_h_to_4h": (inner, h), "mlp.dense_4h_to_h": (h, inner)}
    shapes = {EMBEDDING: (config.vocab_size, h)}
    for i in range(config.num_layers):
        shapes.update({f"transformer.layers.{i}.{path}": shape for path, shape in per_layer.items()})
    return shapes


def mismatch(source: Path, name: str, shape: Sequence[int], expected: Sequence[int] | None) -> CheckpointError:
    """The one message for a tensor whose shape is not what config.json implies."""
    implied = list(expected) if expected is not None else "no such tensor"
    return CheckpointError(f"{source}: {name} has shape {list(shape)}, config.json implies {implied}: "
                           "config.json does not match the weights")


class WeightConverter:
    """Feeds a checkpoint's tensors through `backend` into `sink`, for the module tree `model` it built."""

    def __init__(self, config: ChatGLMConfig, backend: Backend, model: ChatGLMForCausalLM, sink: Sink) -> None:
        self.config, self.backend, self.sink = config, backend, sink
        self.stored_bits = config.quantization_bit
        self.specs = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        self.shapes = logical_shapes(config)
        self.pending: dict[str, Tensor] = {}
        self.emitted: set[str] = set()

    @property
    def total(self) -> int:
        """How many tensors the model takes (progress: `len(emitted)` of them are done)."""
        return len(self.specs)

    def add(self, name: str, tensor: Tensor, source: Path) -> None:
        if name.endswith(".rotary_emb.inv_freq") or name.startswith("lm_head."):
            return  # recomputed / tied to the word embedding (-int4-qe stores a quantized copy), as in the original
        base = name.removesuffix("_scale").removesuffix(".weight")
        if base in self.shapes and name in (base + ".weight", base + ".weight_scale"):
            self._pair(base, name, tensor, source)
        elif name in self.specs and not name.endswith(".weight_scale"):
            self._emit(name, self.backend.convert_tensor(name, tensor), source)  # _emit checks its shape
        else:
            raise CheckpointError(f"{source}: unexpected tensor {name!r}: {_NOT_V1}")

    def _pair(self, base: str, name: str, tensor: Tensor, source: Path) -> None:
        if name.endswith(".weight") and tensor.is_floating_point():
            self._weight(base, tensor, None, source)  # a float weight needs no scale
            return
        self.pending[name] = tensor
        weight, scale = self.pending.get(base + ".weight"), self.pending.get(base + ".weight_scale")
        if weight is not None and scale is not None:
            del self.pending[base + ".weight"], self.pending[base + ".weight_scale"]
            self._weight(base, weight, scale, source)

    def _weight(self, base: str, data: Tensor, scale: Tensor | None, source: Path) -> None:
        shape = self.shapes[base]
        kind = "embedding" if base == EMBEDDING else "linear"
        bits = 0
        if scale is not None:
            bits = self.stored_bits
            if not bits or data.dtype.is_floating_point or data.dtype.itemsize != 1:
                raise CheckpointError(f"{source}: {base}.weight is {data.dtype} with a weight_scale, but config.json "
                                      f"says the weights are {f'int{bits}' if bits else 'not quantized'}: "
                                      "config.json does not match the weights")
            stored = (shape[0], shape[1] * bits // 8)
            if tuple(data.shape) != stored or tuple(scale.shape) != (shape[0],):
                raise mismatch(source, base + ".weight", data.shape, stored)
            data = data.view(torch.int8)
        elif tuple(data.shape) != shape:
            raise mismatch(source, base + ".weight", data.shape, shape)
        elif self.stored_bits and kind == "linear":
            raise CheckpointError(f"{source}: {base}.weight should be int8 in an int{self.stored_bits} checkpoint: "
                                  "config.json does not match the weights")
        made = self.backend.convert_weight(StoredWeight(base, kind, shape, bits, data, scale))
        for attribute, tensor in made.items():
            self._emit(f"{base}.{attribute}", tensor, source)

    def _emit(self, name: str, tensor: Tensor, source: Path) -> None:
        expected = self.specs.get(name)
        if expected is None:
            raise CheckpointError(f"{source}: unexpected tensor {name!r}: {_NOT_V1}")
        if tuple(tensor.shape) != expected:
            raise mismatch(source, name, tensor.shape, expected)
        self.sink(name, tensor.contiguous())
        self.emitted.add(name)

    def finish(self) -> None:
        """Check that every tensor the model takes was made (and no weight waits for its scale)."""
        missing = sorted(set(self.specs) - self.emitted)
        if self.pending or missing:
            first = sorted(self.pending)[0] if self.pending else missing[0]
            raise CheckpointError(f"the checkpoint lacks {max(len(missing), 1)} tensor(s), e.g. around {first!r}: "
                                  "it is incomplete or for a different model size; re-download it")

