"""A released ChatGLM-6B checkpoint directory, read safely: config.json parsed once, weight files listed once.

Reads `config.json` and the weights in any released layout: sharded `.bin` + index (the fp16 repo), a single
`.bin` (the -int4/-int8 repos), `.safetensors` single or sharded. Pickles are read with
`torch.load(weights_only=True)` (memory-mapped where possible), so a checkpoint can never run code; nothing in
the directory is ever imported (its `auto_map` and `*.py` files are ignored). Every problem becomes a
CheckpointError naming the file and what to do.
"""

from __future__ import annotations

import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.paths import read_checkpoint_json

_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLES = ("model.safetensors", "pytorch_model.bin")
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


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory with its config parsed and its weight files listed, once per load."""

    directory: Path
    config: ChatGLMConfig
    weight_files: tuple[Path, ...]

    @classmethod
    def open(cls, path: Path | str) -> Checkpoint:
        """Check the directory, parse config.json and find the weights; CheckpointError says what is wrong."""
        directory = checkpoint_directory(path)
        config = ChatGLMConfig.from_file(directory / "config.json")
        return cls(directory, config, tuple(find_weight_files(directory)))

    @property
    def source_files(self) -> list[Path]:
        """Every file the loaded weights depend on (a cache built from them is stale when one changes)."""
        return [*self.weight_files, self.directory / "config.json"]

