"""Released ChatGLM-6B checkpoints -> a ready ChatGLMForCausalLM, safely.

Reads `config.json` and the weights in any released layout: sharded `.bin` + index (the fp16 repo), a single
`.bin` (the -int4/-int8 repos), `.safetensors` single or sharded. Pickles are read with
`torch.load(weights_only=True)` (memory-mapped where possible), so a checkpoint can never run code; nothing in
the directory is ever imported (its `auto_map` and `*.py` files are ignored). Every problem becomes a
CheckpointError naming the file and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.modeling import ChatGLMForCausalLM, RotaryEmbedding2D
from chatglm_tui.model.quantize import (
    QuantizedLinear,
    dequantize_rows,
    pack_int4_rows,
    quantize_rows,
    replace_linears,
)

# progress(stage, done, total): stage "read" (weight files) or "quantize" (tensors converted)
Progress = Callable[[str, int, int], None]
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
_EMBEDDING = "transformer.word_embeddings.weight"


def checkpoint_directory(path: Path | str) -> Path:
    """The checkpoint directory `path` names, or a CheckpointError saying what is wrong with it."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory: pass the checkpoint directory, not a file")
    return directory


def find_weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, preferring safetensors, following an index if present."""
    for index_name in _INDEXES:
        index = directory / index_name
        if index.is_file():
            return _files_from_index(index)
    for name in _SINGLES:
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(
        f"{directory} has no weights: expected pytorch_model.bin, model.safetensors or a sharded index "
        f"({' / '.join(_INDEXES)})"
    )


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index ({exc}); re-download it") from exc
    files = [index.parent / name for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index.parent}: shard {missing[0]} listed in {index.name} is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                              + "; finish the download")
    return files


def read_weight_file(path: Path) -> Iterator[tuple[str, Tensor]]:
    """Yield (name, tensor) from one .bin or .safetensors file, memory-mapped where the format allows."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}); re-download it") from exc
        return
    state = _torch_load(path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a plain dictionary of tensors; it is not a model checkpoint")
    yield from state.items()


def _torch_load(path: Path) -> object:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not a refused class or function: damaged bytes
            raise CheckpointError(f"{path} is truncated or corrupt (not a readable checkpoint); re-download it") from exc
        raise CheckpointError(
            f"{path} contains pickled objects that would run code when loaded; refusing it "
            "(only plain tensors are accepted): use a checkpoint from the official repository"
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}); re-download it") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def build_empty_model(config: ChatGLMConfig) -> ChatGLMForCausalLM:
    """The module tree on the meta device (no memory), with quantized linears where the config says so."""
    with torch.device("meta"):
        model = ChatGLMForCausalLM(config)
        if config.quantization_bit:
            bits = config.quantization_bit
            replace_linears(model, lambda old: QuantizedLinear(old.in_features, old.out_features, bits))
    return model


class _StateCollector:
    """Checks each stored tensor against the expected key, shape and kind, and converts it as it arrives."""

    def __init__(self, model: ChatGLMForCausalLM, dtype: torch.dtype, device: torch.device,
                 quantize_bits: int = 0) -> None:
        self.expected = {k: v for k, v in model.state_dict().items()}
        self.config = model.config
        self.dtype, self.device = dtype, device
        self.quantize_bits = quantize_bits  # quantize float linear weights as they arrive
        self.loaded: dict[str, Tensor] = {}
        self.quantized_embedding: dict[str, Tensor] = {}

    def add(self, name: str, tensor: Tensor, source: Path) -> None:
        if name.endswith(".rotary_emb.inv_freq") or name == "lm_head.weight":
            return  # recomputed / tied to the word embedding, as in the original
        if name.startswith("transformer.word_embeddings.") and (tensor.dtype == torch.int8 or
                                                               name.endswith("weight_scale")):
            self.quantized_embedding[name] = tensor  # -int4-qe: dequantized once both parts are in
            return
        if name.startswith("lm_head."):
            return  # -int4-qe stores a quantized copy of the tied head
        if name not in self.expected:
            raise CheckpointError(f"{source}: unexpected tensor {name!r}: this is not a ChatGLM-6B (v1) checkpoint "
                                  "or its config.json does not match its weights")
        want = self.expected[name]
        if self.quantize_bits and want.dtype == torch.int8 and tensor.is_floating_point():
            self._add_quantized(name, tensor, source)
            return
        if tuple(tensor.shape) != tuple(want.shape) or (want.dtype == torch.int8) != (tensor.dtype == torch.int8):
            raise CheckpointError(
                f"{source}: {name} has shape {list(tensor.shape)} ({tensor.dtype}), config.json implies "
                f"{list(want.shape)} ({want.dtype if want.dtype == torch.int8 else 'float'}): "
                "config.json does not match the weights"
            )
        self.loaded[name] = self._convert(name, tensor)

    def _add_quantized(self, name: str, tensor: Tensor, source: Path) -> None:
        want = self.expected[name]
        shape = (want.shape[0], want.shape[1] * 8 // self.quantize_bits)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{source}: {name} has shape {list(tensor.shape)}, config.json implies "
                                  f"{list(shape)}: config.json does not match the weights")
        q, scale = quantize_rows(tensor, self.quantize_bits)
        self.loaded[name] = (pack_int4_rows(q) if self.quantize_bits == 4 else q).to(self.device)
        self.loaded[name.removesuffix("weight") + "weight_scale"] = scale.to(self.device)

    def _convert(self, name: str, tensor: Tensor) -> Tensor:
        if tensor.dtype == torch.int8:
            return tensor.to(self.device)
        if name.endswith("weight_scale"):
            return tensor.to(device=self.device, dtype=torch.float32)
        return tensor.to(device=self.device, dtype=self.dtype)

    def finish(self) -> dict[str, Tensor]:
        if self.quantized_embedding:
            self.loaded[_EMBEDDING] = self._dequantized_embedding()
        missing = [k for k in self.expected if k not in self.loaded]
        if missing:
            raise CheckpointError(f"the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]!r}: "
                                  "it is incomplete or for a different model size; re-download it")
        return self.loaded

    def _dequantized_embedding(self) -> Tensor:
        weight = self.quantized_embedding.get(_EMBEDDING)
        scale = self.quantized_embedding.get("transformer.word_embeddings.weight_scale")
        if weight is None or scale is None or weight.dtype != torch.int8:
            raise CheckpointError("quantization_embeddings is set but the quantized word embedding is incomplete")
        return dequantize_rows(weight, scale, self.config.quantization_bit).to(device=self.device, dtype=self.dtype)


def load_checkpoint(directory: Path, dtype: torch.dtype, device: torch.device,
                    quantize_bits: int = 0, progress: Progress | None = None) -> ChatGLMForCausalLM:
    """Load a checkpoint directory into a model on `device` computing in `dtype`.

    Weights stored quantized stay quantized. `quantize_bits` (4 or 8) quantizes the linear layers of a float
    checkpoint one tensor at a time as they are read, so the float model never exists in memory.
    """
    config = ChatGLMConfig.from_file(checkpoint_directory(directory) / "config.json")
    stored_bits = config.quantization_bit
    config = dataclasses.replace(config, quantization_bit=config.bits_for(quantize_bits))
    model = build_empty_model(config)
    collector = _StateCollector(model, dtype, device, 0 if stored_bits else quantize_bits)
    files = find_weight_files(directory)
    for index, path in enumerate(files):
        if progress:
            progress("read", index, len(files))
        for name, tensor in read_weight_file(path):
            collector.add(name, tensor, path)
    if progress:
        progress("read", len(files), len(files))
    model.load_state_dict(collector.finish(), strict=True, assign=True)
    model.transformer.rotary = RotaryEmbedding2D(config.head_dim).to(device)  # buffers built on meta above
    return model.eval().requires_grad_(False)
