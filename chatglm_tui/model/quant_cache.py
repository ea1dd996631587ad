"""The quantized-weights cache: one safetensors file per (checkpoint, scheme), written once, memory-mapped after.

The file is standard safetensors. Its metadata records the format version, the scheme, the key of the source
files (names, sizes, modification times and the config) and a CRC-32 per tensor. A file is used only when all
of them check out; anything else (a partial write, truncation, damage, a changed source) means rebuild. Writes go
to a temporary name and are renamed into place when complete, so a crash never leaves a file that looks whole.
Tensors are written at precomputed offsets as they are produced, so building the cache never holds the whole
quantized model in memory twice.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

FORMAT_VERSION = "1"
_DTYPES = {torch.uint8: "U8", torch.int8: "I8", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_TORCH = {v: k for k, v in _DTYPES.items()}
_CRC_WIDTH = 8


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


class CacheWriter:
    """Writes a safetensors file tensor by tensor, in any order, then renames it into place."""

    def __init__(self, path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str]) -> None:
        self.path, self.specs = path, specs
        self.offsets: dict[str, tuple[int, int]] = {}
        position = 0
        for name in sorted(specs):
            dtype, shape = specs[name]
            size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            self.offsets[name] = (position, position + size)
            position += size
        self.data_size = position
        self.metadata = {**metadata, "format": FORMAT_VERSION}
        self.crcs = {name: "0" * _CRC_WIDTH for name in specs}
        self.written: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed in commit/abort)
        self.header_size = len(self._header())
        self.file.truncate(8 + self.header_size + self.data_size)

    def _header(self) -> bytes:
        header: dict[str, object] = {
            "__metadata__": {**self.metadata, "crc32": json.dumps(self.crcs, sort_keys=True)}}
        for name, (begin, end) in self.offsets.items():
            dtype, shape = self.specs[name]
            header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [begin, end]}
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


def _verify(mapped: mmap.mmap, data_start: int, header: dict, crcs: dict[str, str]) -> None:
    """Check every tensor's CRC-32, on all cores (zlib releases the GIL): about 0.5 s for ChatGLM-6B INT4."""
    view = memoryview(mapped)

    def crc_matches(item: tuple[str, dict]) -> bool:
        name, info = item
        begin, end = (data_start + o for o in info["data_offsets"])
        return f"{zlib.crc32(view[begin:end]):0{_CRC_WIDTH}x}" == crcs.get(name)

    # Largest first, so the threads finish together.
    items = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0] - item[1]["data_offsets"][1])
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for (name, _), ok in zip(items, pool.map(crc_matches, items)):
            if not ok:
                raise CacheMiss(f"checksum mismatch in {name}")


def read_cache(path: Path, key: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Memory-map a cache file and verify it; raise CacheMiss (with the reason) if it cannot be used."""
    if not path.is_file():
        raise CacheMiss("no cache file yet")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > min(size, 1 << 26):
                raise ValueError("header size out of range")
            header = json.loads(f.read(header_size))
            meta = header.pop("__metadata__")
            crcs = json.loads(meta["crc32"])
        except (struct.error, ValueError, KeyError, TypeError) as exc:
            raise CacheMiss(f"unreadable header ({exc})") from exc
        if meta.get("format") != FORMAT_VERSION or meta.get("source_key") != key:
            raise CacheMiss("made by another version or from other source files")
        data_start = 8 + header_size
        ends = [info["data_offsets"][1] for info in header.values()]
        if data_start + max(ends, default=0) != size:
            raise CacheMiss("truncated or padded file")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: pages shared until written
    _verify(mapped, data_start, header, crcs)
    tensors: dict[str, Tensor] = {}
    for name, info in header.items():
        begin, end = (data_start + o for o in info["data_offsets"])
        dtype = _TORCH[info["dtype"]]
        flat = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin, offset=begin) if end > begin \
            else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(info["shape"])
    return tensors, meta
