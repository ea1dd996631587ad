"""The fast quantized model: convert any checkpoint into the kernel layout once, cache it, memory-map it after.

The four linears of every block become Int4Linear (or Int8Linear), the tied embedding/head an Int8Embedding;
LayerNorms and biases stay float32. An fp16 checkpoint is quantized one tensor at a time as it is read, and each
result is written straight to the cache file, so peak memory stays near one layer, not the model. The official
-int4/-int8 checkpoints map exactly (their per-row scales are a group as wide as the row).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from chatglm_tui import paths
from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.kernels import cpu as kernels
from chatglm_tui.model.loading import Progress, find_weight_files, read_weight_file
from chatglm_tui.model.modeling import ChatGLMForCausalLM, RotaryEmbedding2D
from chatglm_tui.model.quant_cache import CacheMiss, CacheWriter, read_cache, remove_stale_partials, source_key
from chatglm_tui.model.quantize import (
    QUANTIZED_LINEARS,
    dequantize_rows,
    quantize_groups,
    quantize_rows,
    replace_linears,
    unpack_int4_rows,
)
from chatglm_tui.model.quantized_layers import Int4Linear, Int8Embedding, Int8Linear, supports_int4

log = logging.getLogger(__name__)
DEFAULT_INT4_GROUP = 128  # chosen by measured logit error and speed: see README "Performance"
_EMBEDDING = "transformer.word_embeddings."

Sink = Callable[[str, Tensor], None]


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


def choose_scheme(config: ChatGLMConfig, bits: int, group_size: int | None = None) -> QuantScheme:
    """The scheme for a checkpoint: what it stores if it is quantized, else `bits` with our default groups."""
    if config.quantization_bit:
        return QuantScheme(config.bits_for(bits), None)
    if bits == 4:
        return QuantScheme(4, group_size or DEFAULT_INT4_GROUP)
    return QuantScheme(8, None)


def supports_fast_path(config: ChatGLMConfig, scheme: QuantScheme) -> bool:
    """Whether the kernel layouts fit these sizes (the released model's always do)."""
    sizes = (config.hidden_size, config.inner_hidden_size)
    if scheme.bits == 4:
        groups_fit = all(size % scheme.group_for(size) == 0 for size in sizes)
        return all(supports_int4(size) for size in sizes) and groups_fit
    return all(size % 32 == 0 for size in sizes)


def build_fast_model(config: ChatGLMConfig, scheme: QuantScheme) -> ChatGLMForCausalLM:
    """The fast module tree on the meta device."""
    config = dataclasses.replace(config, quantization_bit=scheme.bits)
    with torch.device("meta"):
        model = ChatGLMForCausalLM(config)
        if scheme.bits == 4:
            replace_linears(model, lambda old: Int4Linear(old.in_features, old.out_features,
                                                          scheme.group_for(old.in_features)))
        else:
            replace_linears(model, lambda old: Int8Linear(old.in_features, old.out_features))
        model.transformer.word_embeddings = Int8Embedding(config.vocab_size, config.hidden_size)
    # float16 keys/values halve the cache (458 KB instead of 917 KB per token for ChatGLM-6B); the decode kernel
    # reads them directly, and a prompt attends to its exact float32 keys before they are stored.
    model.kv_cache_dtype = torch.float16
    return model


def state_specs(model: ChatGLMForCausalLM) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {name: (t.dtype, tuple(t.shape)) for name, t in model.state_dict().items()}


def _in_slices(rows: Tensor, quantize: Callable[[Tensor], tuple[Tensor, Tensor]],
               size: int = 1024) -> tuple[Tensor, Tensor]:
    """Quantize a weight a slice of rows at a time: its float32 temporaries then stay small (rows are
    independent), which keeps quantize-on-load of the 130528-row embedding from needing gigabytes."""
    parts = [quantize(rows[i:i + size]) for i in range(0, rows.shape[0], size)]
    return torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])


class _Converter:
    """Source tensors in, fast-layout tensors out (to `sink`), pairing quantized weights with their scales."""

    def __init__(self, model: ChatGLMForCausalLM, scheme: QuantScheme, sink: Sink) -> None:
        self.config, self.scheme, self.sink = model.config, scheme, sink
        self.specs = state_specs(model)
        # [out, in] of every quantized weight, as the checkpoint holds it unpacked
        self.logical_shapes = {name: (m.out_features, m.in_features) for name, m in model.named_modules()
                               if isinstance(m, (Int4Linear, Int8Linear))}
        embedding = model.transformer.word_embeddings
        self.logical_shapes[_EMBEDDING.rstrip(".")] = (embedding.num_embeddings, embedding.embedding_dim)
        self.pending: dict[str, Tensor] = {}
        self.emitted: set[str] = set()

    def add(self, name: str, tensor: Tensor, source: Path) -> None:
        if name.endswith(".rotary_emb.inv_freq") or name.startswith("lm_head."):
            return
        if name.startswith(_EMBEDDING):
            self._pair(name, tensor, source, self._embedding)
        elif name.removesuffix(".weight").removesuffix(".weight_scale").endswith(QUANTIZED_LINEARS):
            self._pair(name, tensor, source, self._linear)
        elif name in self.specs:
            self._emit(name, tensor.to(torch.float32), source)
        else:
            raise CheckpointError(f"{source}: unexpected tensor {name!r}: this is not a ChatGLM-6B (v1) checkpoint")

    def _pair(self, name: str, tensor: Tensor, source: Path, convert: Callable) -> None:
        base = name.removesuffix("_scale").removesuffix(".weight")
        if name.endswith(".weight") and tensor.is_floating_point():
            convert(base, tensor, None, source)  # a float weight needs no scale
            return
        self.pending[name] = tensor
        weight, scale = self.pending.get(base + ".weight"), self.pending.get(base + ".weight_scale")
        if weight is not None and scale is not None:
            del self.pending[base + ".weight"], self.pending[base + ".weight_scale"]
            convert(base, weight, scale, source)

    def _embedding(self, base: str, weight: Tensor, scale: Tensor | None, source: Path) -> None:
        packing = 2 if scale is not None and self.config.quantization_bit == 4 else 1  # two int4 per byte
        self._check(base, (weight.shape[0], weight.shape[1] * packing), source)
        if scale is None:
            q, row_scale = _in_slices(weight, lambda rows: quantize_rows(rows, 8))
        else:
            bits = self.config.quantization_bit
            q, row_scale = _in_slices(torch.arange(weight.shape[0]), lambda index: quantize_rows(
                dequantize_rows(weight[index], scale[index], bits), 8))
        self._emit(base + ".weight_q", q, source)
        self._emit(base + ".weight_scale", row_scale, source)

    def _linear(self, base: str, weight: Tensor, scale: Tensor | None, source: Path) -> None:
        stored = self.config.quantization_bit
        if scale is None:  # float weight: quantize it now
            self._check(base, weight.shape, source)
            if self.scheme.bits == 4:
                group = self.scheme.group_for(weight.shape[1])
                q, scales = _in_slices(weight, lambda rows: quantize_groups(rows, group))
            else:
                q, row = _in_slices(weight, lambda rows: quantize_rows(rows, 8))
                scales = row[:, None]
        else:  # the official layout: per-row scale, exactly as stored
            if weight.dtype != torch.int8:
                raise CheckpointError(f"{source}: {base}.weight should be int8 in an int{stored} checkpoint")
            q = unpack_int4_rows(weight) if stored == 4 else weight
            self._check(base, q.shape, source)
            scales = scale.float()[:, None]
        if self.scheme.bits == 4:
            packed = kernels.pack_int4(q, scales, self.scheme.group_for(q.shape[1]))
            self._emit(base + ".weight_packed", packed.data, source)
            self._emit(base + ".weight_scales", packed.scales, source)
        else:
            self._emit(base + ".weight_q", q, source)
            self._emit(base + ".weight_scale", scales[:, 0].contiguous(), source)

    def _check(self, base: str, shape: tuple[int, ...], source: Path) -> None:
        want = self.logical_shapes.get(base)
        if want is None or tuple(shape) != tuple(want):
            raise CheckpointError(f"{source}: {base}.weight has shape {list(shape)}, config.json implies "
                                  f"{list(want) if want else 'no such tensor'}: config.json does not match the weights")

    def _emit(self, name: str, tensor: Tensor, source: Path) -> None:
        if name not in self.specs:
            raise CheckpointError(f"{source}: unexpected tensor {name!r}: this is not a ChatGLM-6B (v1) checkpoint")
        dtype, shape = self.specs[name]
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{source}: {name} has shape {list(tensor.shape)}, config.json implies "
                                  f"{list(shape)}: config.json does not match the weights")
        self.sink(name, tensor.to(dtype).contiguous())
        self.emitted.add(name)

    def finish(self) -> None:
        missing = sorted(set(self.specs) - self.emitted)
        if self.pending or missing:
            first = sorted(self.pending)[0] if self.pending else missing[0]
            raise CheckpointError(f"the checkpoint lacks {max(len(missing), 1)} tensor(s), e.g. around {first!r}: "
                                  "it is incomplete or for a different model size; re-download it")


def cache_file(directory: Path, scheme: QuantScheme) -> Path:
    """Where the quantized cache of a checkpoint directory lives (one file per directory and scheme)."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    return paths.cache_dir() / "quantized" / f"{directory.resolve().name}-{digest}.{scheme.tag}.safetensors"


def _convert(directory: Path, model: ChatGLMForCausalLM, scheme: QuantScheme, sink: Sink,
             progress: Progress | None = None) -> None:
    total = len(state_specs(model))

    def counting_sink(name: str, tensor: Tensor) -> None:
        sink(name, tensor)
        if progress:
            progress("quantize", len(converter.emitted) + 1, total)

    converter = _Converter(model, scheme, counting_sink if progress else sink)
    for path in find_weight_files(directory):
        for name, tensor in read_weight_file(path):
            converter.add(name, tensor, path)
    converter.finish()


def _in_memory(directory: Path, model: ChatGLMForCausalLM, scheme: QuantScheme,
               progress: Progress | None) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    _convert(directory, model, scheme, tensors.__setitem__, progress)
    return tensors


def _fast_tensors(directory: Path, model: ChatGLMForCausalLM, scheme: QuantScheme,
                  progress: Progress | None) -> dict[str, Tensor]:
    files = find_weight_files(directory) + [directory / "config.json"]
    key = source_key(files, {"scheme": scheme.tag, "kernel_layout": kernels.LAYOUT_TAG})
    target, specs = cache_file(directory, scheme), state_specs(model)
    remove_stale_partials(target.parent)  # what killed builds left, before this load reads or builds the cache
    metadata = {"source_key": key, "scheme": scheme.tag, "source": str(directory.resolve())}
    try:
        if progress:
            progress("read", 0, 1)
        tensors = read_cache(target, metadata, specs)[0]
        if progress:
            progress("read", 1, 1)
        return tensors
    except CacheMiss as miss:  # absent, stale or damaged in any way: rebuild it, never fail
        log.info("quantized cache %s: %s; building it", target, miss)
    if not _build_cache(directory, model, scheme, target, metadata, progress):
        return _in_memory(directory, model, scheme, progress)
    try:
        return read_cache(target, metadata, specs)[0]
    except CacheMiss as miss:  # replaced or damaged since it was written (another process, the disk)
        log.warning("the quantized cache %s cannot be read back (%s); quantizing in memory", target, miss)
        return _in_memory(directory, model, scheme, progress)


def _build_cache(directory: Path, model: ChatGLMForCausalLM, scheme: QuantScheme, target: Path,
                 metadata: dict[str, str], progress: Progress | None) -> bool:
    """Convert the checkpoint into the cache file `target`; False (with a warning) when it cannot be written."""
    try:
        writer = CacheWriter(target, state_specs(model), metadata)
    except OSError as exc:  # read-only cache directory: quantize in memory, every time
        log.warning("cannot write the quantized cache at %s (%s); quantizing in memory", target, exc)
        return False
    try:
        _convert(directory, model, scheme, writer.write, progress)
        writer.commit()
    except OSError as exc:  # the disk filled up while writing: drop the partial file, keep going in memory
        writer.abort()
        log.warning("could not finish the quantized cache at %s (%s); quantizing in memory", target, exc)
        return False
    except BaseException:
        writer.abort()
        raise
    return True


def load_fast(directory: Path, bits: int, group_size: int | None = None,
              progress: Progress | None = None) -> ChatGLMForCausalLM:
    """Load a checkpoint into the fast quantized model on the CPU, through the cache."""
    config = ChatGLMConfig.from_file(directory / "config.json")
    scheme = choose_scheme(config, bits, group_size)
    model = build_fast_model(config, scheme)
    tensors = _fast_tensors(directory, model, scheme, progress)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.transformer.rotary = RotaryEmbedding2D(config.head_dim)
    return model.eval().requires_grad_(False)


def iter_random_state(model: ChatGLMForCausalLM, seed: int = 0) -> Iterator[tuple[str, Tensor]]:
    """Random weights in the fast layout, for benchmarks: no checkpoint and no float copy of the model."""
    generator = torch.Generator().manual_seed(seed)
    # Random bytes are slow to draw (~0.2 GB/s); windows into one random pool make 3.5 GB in a few seconds.
    pool = torch.randint(0, 256, (1 << 24,), dtype=torch.uint8, generator=generator)
    for name, (dtype, shape) in state_specs(model).items():
        if dtype in (torch.uint8, torch.int8):
            data = torch.empty(torch.Size(shape).numel(), dtype=torch.uint8)
            for begin in range(0, data.numel(), pool.numel() // 2):
                offset = int(torch.randint(0, pool.numel() // 2, (), generator=generator))
                chunk = data[begin: begin + pool.numel() // 2]
                chunk.copy_(pool[offset: offset + chunk.numel()])
            yield name, data.view(dtype).reshape(shape)
        elif name.endswith("layernorm.weight"):
            yield name, torch.ones(shape)
        elif "scale" in name:
            yield name, torch.full(shape, 0.02 / 7)
        else:
            yield name, torch.randn(shape, generator=generator) * 0.02
