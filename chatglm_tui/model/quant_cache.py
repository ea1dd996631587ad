"""The quantized-weights cache: one safetensors file per (checkpoint, scheme), written once, memory-mapped after.

The file is standard safetensors. Its metadata records the format version, the scheme, the key of the source
files (names, sizes, modification times and the config) and a CRC-32 per tensor. A file is used only when all
of them check out; anything else (a partial write, truncation, damage, a changed source) means rebuild. Writes go
to a temporary name and are renamed into place when complete, so a crash never leaves a file that looks whole.
Tensors are written at precomputed offsets as they are produced, so building the cache never holds the whole
quantized model in memory twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor

FORMAT_VERSION = "1"
_DTYPES = {torch.uint8: "U8", torch.int8: "I8", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_CRC_WIDTH = 8
_CRC = re.compile(f"[0-9a-f]{{{_CRC_WIDTH}}}")
_MAX_HEADER = 1 << 26  # ChatGLM-6B's header is about 40 KB
# `.{cache name}.{pid}.partial`, as CacheWriter names its temporary file (pids are positive, at most 10 digits).
_PARTIAL = re.compile(r"\..+\.([1-9][0-9]{0,9})\.partial", re.ASCII)

# name -> (dtype, shape) of every tensor the fast model expects
Specs = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def cache_location(cache_dir: Path, directory: Path, tag: str) -> Path:
    """Where the converted weights of a checkpoint directory live (one file per directory and format)."""
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{directory.resolve().name}-{digest}.{tag}.safetensors"


class CacheMiss(Exception):
    """The cache file cannot be used (the message says why); the caller rebuilds it."""


def source_key(files: list[Path], extra: dict[str, object]) -> str:
    """A digest of the source files' names, sizes and modification times plus `extra` (config, scheme)."""
    entries = []
    for f in sorted(files):
        stat = f.stat()
        entries.append([f.name, stat.st_size, stat.st_mtime_ns])
    payload = json.dumps({"files": entries, "extra": extra, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _layout(specs: Specs) -> tuple[dict[str, tuple[int, int]], int]:
    """The data offsets of every tensor (packed in name order) and the data size."""
    offsets: dict[str, tuple[int, int]] = {}
    position = 0
    for name in sorted(specs):
        dtype, shape = specs[name]
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        offsets[name] = (position, position + size)
        position += size
    return offsets, position


def _entries(specs: Specs, offsets: dict[str, tuple[int, int]]) -> dict[str, dict[str, object]]:
    """The header entry of every tensor: dtype, shape and data_offsets.

    The writer writes exactly these and the reader accepts exactly these, so any header that differs in any
    way (a tensor added, removed or renamed, another dtype or shape, offsets moved) is a stale or damaged cache.
    """
    return {name: {"dtype": _DTYPES[specs[name][0]], "shape": list(specs[name][1]), "data_offsets": list(span)}
            for name, span in offsets.items()}


def partial_name(path: Path, pid: int) -> Path:
    """The temporary file a process `pid` writes `path` under until it is complete."""
    return path.with_name(f".{path.name}.{pid}.partial")


def remove_stale_partials(directory: Path) -> None:
    """Delete the temporary files of cache writers that died (killed, crashed) before renaming them into place.

    A killed build leaves one as large as the cache (about 3.9 GB for ChatGLM-6B INT4). Only files whose
    writer's pid no longer runs are removed: one of a live process may be a build in progress right now.
    """
    if os.name != "posix":  # os.kill(pid, 0) is a liveness probe only on POSIX (it terminates on Windows)
        return
    try:
        names = os.listdir(directory)
    except OSError:  # no cache directory yet, or unreadable: nothing to clean
        return
    for name in names:
        match = _PARTIAL.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):  # gone already, or not ours to delete
                os.unlink(directory / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # beyond any pid: nothing runs under it
        return False
    except OSError:  # PermissionError: it runs, as another user; anything else: keep its file, to be safe
        return True
    return True


class CacheWriter:
    """Writes a safetensors file tensor by tensor, in any order, then renames it into place."""

    def __init__(self, path: Path, specs: Specs, metadata: dict[str, str]) -> None:
        self.path, self.specs = path, specs
        self.offsets, self.data_size = _layout(specs)
        self.metadata = {**metadata, "format": FORMAT_VERSION}
        self.crcs = {name: "0" * _CRC_WIDTH for name in specs}
        self.written: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_name(path, os.getpid())
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed in commit/abort)
        self.header_size = len(self._header())
        self.file.truncate(8 + self.header_size + self.data_size)

    def _header(self) -> bytes:
        header = {"__metadata__": {**self.metadata, "crc32": json.dumps(self.crcs, sort_keys=True)},
                  **_entries(self.specs, self.offsets)}
        raw = json.dumps(header, separators=(",", ":")).encode()
        return raw + b" " * (-len(raw) % 8)  # safetensors allows trailing spaces; keeps the data aligned

    def write(self, name: str, tensor: Tensor) -> None:
        dtype, shape = self.specs[name]
        assert tensor.dtype == dtype and tuple(tensor.shape) == tuple(shape), (name, tensor.dtype, tensor.shape)
        data = tensor.detach().contiguous().cpu().view(torch.uint8).reshape(-1).numpy()
        self.file.seek(8 + self.header_size + self.offsets[name][0])
        self.file.write(memoryview(data))
        self.crcs[name] = f"{zlib.crc32(memoryview(data)):0{_CRC_WIDTH}x}"
        self.written.add(name)

    def commit(self) -> None:
        missing = set(self.specs) - self.written
        assert not missing, f"cache tensors never written: {sorted(missing)[:3]}"
        header = self._header()
        assert len(header) == self.header_size  # CRCs have a fixed width, so the header keeps its size
        self.file.seek(0)
        self.file.write(struct.pack("<Q", len(header)) + header)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _verify(mapped: mmap.mmap, data_start: int, offsets: dict[str, tuple[int, int]], crcs: dict[str, str]) -> None:
    """Check every tensor's CRC-32, on all cores (zlib releases the GIL): about 0.5 s for ChatGLM-6B INT4."""
    view = memoryview(mapped)

    def crc_matches(name: str) -> bool:
        begin, end = (data_start + o for o in offsets[name])
        return f"{zlib.crc32(view[begin:end]):0{_CRC_WIDTH}x}" == crcs[name]

    # Largest first, so the threads finish together.
    names = sorted(offsets, key=lambda name: offsets[name][0] - offsets[name][1])
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for name, ok in zip(names, pool.map(crc_matches, names)):
            if not ok:
                raise CacheMiss(f"checksum mismatch in {name}")


def _read_header(file: BinaryIO, entries: dict[str, dict[str, object]], data_size: int,
                 metadata: dict[str, str]) -> tuple[int, dict[str, str], dict[str, str]]:
    """(header size, metadata, CRCs) of an open cache file, checked against everything the loader expects;
    CacheMiss for any difference or parse problem, so a damaged or stale header always means "rebuild"."""
    size = os.fstat(file.fileno()).st_size
    raw = file.read(8)
    header_size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
    if not 0 < header_size <= min(size - 8, _MAX_HEADER) or 8 + header_size + data_size != size:
        raise CacheMiss("truncated, padded, or sized for other tensors")
    try:
        header = json.loads(file.read(header_size))
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON
        raise CacheMiss(f"unreadable header ({str(exc)[:100]})") from exc
    meta = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("crc32"), str):
        raise CacheMiss("no metadata")
    if {k: v for k, v in meta.items() if k != "crc32"} != {**metadata, "format": FORMAT_VERSION}:
        raise CacheMiss("made by another version or from other source files")
    # Compared as JSON text: that tells 1 from 1.0 and from true, which == does not.
    if json.dumps(header, sort_keys=True) != json.dumps(entries, sort_keys=True):
        raise CacheMiss("its tensors (names, dtypes, shapes or offsets) are not the ones this model needs")
    try:
        crcs = json.loads(meta["crc32"])
    except (ValueError, RecursionError):
        crcs = None
    if not isinstance(crcs, dict) or crcs.keys() != entries.keys() or not all(
            isinstance(crc, str) and _CRC.fullmatch(crc) for crc in crcs.values()):
        raise CacheMiss("no valid checksum table")
    return header_size, meta, crcs


def read_cache(path: Path, metadata: dict[str, str], specs: Specs) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Memory-map a cache file and verify it fully; raise CacheMiss (with the reason) if it cannot be used.

    The header must be exactly what CacheWriter writes for `specs` (the tensors the model expects) and
    `metadata` (source key, scheme, ...), and every tensor's CRC must match.
    """
    if not path.is_file():
        raise CacheMiss("no cache file yet")
    offsets, data_size = _layout(specs)
    try:
        with open(path, "rb") as f:
            header_size, meta, crcs = _read_header(f, _entries(specs, offsets), data_size, metadata)
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: pages shared until written
    except (OSError, ValueError) as exc:  # unreadable, or cannot be mapped
        raise CacheMiss(f"unreadable ({exc})") from exc
    data_start = 8 + header_size
    _verify(mapped, data_start, offsets, crcs)
    tensors: dict[str, Tensor] = {}
    for name, (dtype, shape) in specs.items():
        begin, end = (data_start + o for o in offsets[name])
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin, offset=begin) if end > begin \
            else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(shape)
    return tensors, meta
