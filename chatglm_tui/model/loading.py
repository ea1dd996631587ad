"""Released ChatGLM-6B checkpoints -> a ready ChatGLMForCausalLM, safely.

Reads `config.json` and the weights in any released layout: sharded `.bin` + index (the fp16 repo), a single
`.bin` (the -int4/-int8 repos), `.safetensors` single or sharded. Pickles are read with
`torch.load(weights_only=True)` (memory-mapped where possible), so a checkpoint can never run code; nothing in
the directory is ever imported (its `auto_map` and `*.py` files are ignored). Every problem becomes a
CheckpointError naming the file and what to do.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

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
from chatglm_tui.regular_files import read_checkpoint_json

# progress(stage, done, total): stage "read" (weight files) or "quantize" (tensors converted)
Progress = Callable[[str, int, int], None]
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
_EMBEDDING = "transformer.word_embeddings.weight"
# How torch.load(weights_only=True) names a global it refuses to call: "Unsupported global: GLOBAL os.system
# was not an allowed global" (torch 2.4-2.5) or "Trying to load unsupported GLOBAL posix.system whose module
# posix is blocked" (2.6+).
_REFUSED_GLOBAL = re.compile(r"GLOBAL (.*?) (?:was not an allowed global|whose module)")
# The modules whose globals genuine checkpoints reference (tensor rebuilders, storages, OrderedDict).
_CHECKPOINT_MODULES = ("torch", "collections", "_codecs")


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
        if index.exists():  # not is_file(): a named pipe or device there is refused (read_checkpoint_json)
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
        data = read_checkpoint_json(index)
    except FileNotFoundError as exc:  # removed since exists() above
        raise CheckpointError(f"{index} disappeared while loading; finish the download") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index} is not a valid shard index (no weight_map object); re-download it")
    for value in weight_map.values():
        if not isinstance(value, str) or not value:
            raise CheckpointError(f"{index}: shard entry {_shown(value)} is not a file name; re-download {index.name}")
    names = sorted(set(weight_map.values()))
    for name in names:  # all of them, before any file is looked at
        _check_shard_name(index, name)
    files = [index.parent / name for name in names]
    missing = [f.name if f.name.isprintable() else _shown(f.name) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index.parent}: shard {missing[0]} listed in {index.name} is missing"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                              + "; finish the download")
    return files


def _check_shard_name(index: Path, name: str) -> None:
    """Refuse an index entry that names a file outside the checkpoint directory (`../../etc/passwd`, `/dev/zero`).

    The name must be relative, without `..` (or a backslash or NUL, which no real shard name has), and the folder
    it names must resolve inside the checkpoint directory, so a symlinked folder cannot lead out either. The
    shard file itself may be a symlink: the Hugging Face cache stores every file of a snapshot as a link into
    its blobs/ folder outside the snapshot, and an index (downloaded data) cannot create links.
    """
    relative = PurePosixPath(name)
    escapes = (relative.is_absolute() or ".." in relative.parts or "\\" in name or "\0" in name
               or bool(PureWindowsPath(name).drive))
    if not escapes:
        try:
            directory = index.parent.resolve()
            escapes = not (directory / relative).parent.resolve().is_relative_to(directory)
        except (OSError, RuntimeError):  # a symlink loop: it leads nowhere inside either
            escapes = True
    if escapes:
        raise CheckpointError(f"{index}: shard entry {_shown(name)} points outside the checkpoint directory; "
                              f"refusing it (a genuine index names the files beside it): re-download {index.name}")


def _shown(value: object, limit: int = 200) -> str:
    """repr() of an untrusted value, shortened: control characters become escapes, never terminal codes."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
        called = _code_global(str(exc))
        if called is None:  # not a refused class or function: damaged bytes
            raise CheckpointError(f"{path} is truncated or corrupt (not a readable checkpoint); re-download it") from exc
        raise CheckpointError(
            f"{path} was refused: it tries to run code when loaded (it calls {called}), which a genuine "
            "checkpoint never does; delete it and download the model from its official repository"
        ) from exc
    # Damaged bytes make torch's unpicklers raise nearly any built-in error (measured on truncated and bit-flipped
    # files: EOFError, IndexError, KeyError, TypeError, AssertionError, struct.error, UnicodeDecodeError, ...).
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, LookupError, TypeError,
            AssertionError, struct.error) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}); re-download it") from exc


def _code_global(message: str) -> str | None:
    """The function or class a refused pickle tries to call, from torch's error; None when it is damage.

    A legacy (pre-zip) file cut short inside a global's name makes torch refuse a stump such as "torch." or
    "torch.HalfSto": a name with an empty part, or a name in one of the checkpoint modules that does not exist,
    is truncation. Only modules already imported are looked in, so no module the file names gets imported.
    """
    found = _REFUSED_GLOBAL.search(message)
    parts = found.group(1).split(".") if found else []  # torch shows builtins.print as "print"
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    if parts[0] in _CHECKPOINT_MODULES and not _exists(parts):
        return None
    return ".".join(parts)


def _exists(parts: list[str]) -> bool:
    """Whether the dotted name `parts` is an attribute path in a module that is already imported."""
    for split in range(len(parts) - 1, 0, -1):
        target: object = sys.modules.get(".".join(parts[:split]))
        if target is not None:
            try:
                for attribute in parts[split:]:
                    target = getattr(target, attribute)
            except Exception:  # noqa: BLE001 (AttributeError, or a lazy torch submodule failing to load)
                return False
            return True
    return False


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
