"""A quantized cache whose header is wrong in any way is rebuilt, never fatal; dead writers' temp files go away."""

from __future__ import annotations

import json
import logging
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from chatglm_tui import paths
from chatglm_tui.model import load_model as load_uncached
from chatglm_tui.model import loading
from chatglm_tui.model.kernels import cpu as kernels
from chatglm_tui.model.quant_cache import CacheMiss, partial_name, read_cache

IDS = [5, 74874, 130001, 130004]


def load_model(*args, **kwargs):
    """Load as the app does: through the converted-weights cache under $CHATGLM_HOME (set by cache_home)."""
    return load_uncached(*args, cache_dir=paths.quantized_cache_dir(), **kwargs)


@pytest.fixture
def cache_home(tmp_path, monkeypatch, fixture_dir) -> Path:
    config = json.loads((fixture_dir / "int4" / "config.json").read_text())
    if config["hidden_size"] % kernels.CHUNK or config["inner_hidden_size"] % kernels.CHUNK:
        pytest.skip("the fixture's sizes do not fit the fast kernels, so there is no quantized cache")
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def built(fixture_dir, cache_home, tokenizer, monkeypatch) -> dict:
    """Load the official int4 checkpoint once (writing its cache); record what the loader asks read_cache for."""
    calls: list[tuple] = []
    real = loading.read_cache

    def spy(path, metadata, specs):
        calls.append((path, metadata, specs))
        return real(path, metadata, specs)

    monkeypatch.setattr(loading, "read_cache", spy)
    glm = load_model(fixture_dir / "int4", tokenizer=tokenizer)
    path, metadata, specs = calls[-1]
    assert path.is_file()
    return {"path": path, "metadata": metadata, "specs": specs, "logits": glm.logits(IDS),
            "bytes": path.read_bytes(), "load": lambda: load_model(fixture_dir / "int4", tokenizer=tokenizer)}


def _split(data: bytes) -> tuple[dict, bytes]:
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + size]), data[8 + size:]


def _join(header: object, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body  # the data keeps its size, so only the header is wrong


def _tensor_names(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def _first(header: dict) -> dict:
    return header[_tensor_names(header)[0]]


def _biggest(header: dict) -> dict:
    return max((header[k] for k in _tensor_names(header)), key=lambda e: e["data_offsets"][1] - e["data_offsets"][0])


def _overlap(header: dict) -> None:
    a, b = (header[k] for k in _tensor_names(header)[:2])
    b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]


DAMAGES: dict[str, Callable[[dict], object]] = {
    "dtype XX": lambda h: _first(h).update(dtype="XX"),
    "another dtype": lambda h: _biggest(h).update(dtype="I8" if _biggest(h)["dtype"] == "U8" else "U8"),
    "changed shape": lambda h: _biggest(h).update(shape=list(reversed(_biggest(h)["shape"]))),
    "missing data_offsets": lambda h: _first(h).pop("data_offsets"),
    "tensor removed": lambda h: h.pop(_tensor_names(h)[-1]),
    "tensor added": lambda h: h.update({"transformer.extra": {"dtype": "U8", "shape": [0],
                                                              "data_offsets": [0, 0]}}),
    "offsets out of range": lambda h: _biggest(h).update(data_offsets=[0, 10 ** 15]),
    "negative offsets": lambda h: _first(h).update(data_offsets=[-8, _first(h)["data_offsets"][1]]),
    "overlapping offsets": _overlap,
    "offsets as floats": lambda h: _first(h).update(data_offsets=[float(o) for o in _first(h)["data_offsets"]]),
    "offsets as bools": lambda h: _first(h).update(data_offsets=[False, _first(h)["data_offsets"][1]]),
    "metadata missing": lambda h: h.pop("__metadata__"),
    "metadata not an object": lambda h: h.update(__metadata__=["format", "1"]),
    "checksum table missing": lambda h: h["__metadata__"].pop("crc32"),
    "checksum table not JSON": lambda h: h["__metadata__"].update(crc32="{"),
    "checksum entry missing": lambda h: h["__metadata__"].update(crc32=json.dumps(
        dict(list(json.loads(h["__metadata__"]["crc32"]).items())[1:]))),
    "scheme changed": lambda h: h["__metadata__"].update(scheme="int8-row"),
    "header not an object": lambda h: list(h),
}


def _damage(data: bytes, damage: Callable[[dict], object]) -> bytes:
    header, body = _split(data)
    result = damage(header)
    return _join(result if isinstance(result, list) else header, body)


def _assert_rebuilt_and_used(built: dict, monkeypatch) -> None:
    """The file is valid again: the next load reads it without converting anything, with the same logits."""
    read_cache(built["path"], built["metadata"], built["specs"])
    with monkeypatch.context() as patch:
        patch.setattr(loading, "convert", lambda *a, **k: pytest.fail("the rebuilt cache was not used"))
        assert torch.equal(built["load"]().logits(IDS), built["logits"])


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_wrong_header_means_rebuild_never_failure(built, name, monkeypatch, caplog):
    path = built["path"]
    path.write_bytes(_damage(built["bytes"], DAMAGES[name]))
    with pytest.raises(CacheMiss):
        read_cache(path, built["metadata"], built["specs"])
    with caplog.at_level(logging.INFO, logger=loading.__name__):
        glm = built["load"]()
    assert torch.equal(glm.logits(IDS), built["logits"])
    assert any(str(path) in record.getMessage() for record in caplog.records)  # a message names the file
    _assert_rebuilt_and_used(built, monkeypatch)


@pytest.mark.parametrize("prefix", [0, 7, 1 << 40, 2 ** 64 - 1])
def test_a_wrong_header_size_means_rebuild(built, prefix, monkeypatch):
    built["path"].write_bytes(struct.pack("<Q", prefix) + built["bytes"][8:])
    assert torch.equal(built["load"]().logits(IDS), built["logits"])
    _assert_rebuilt_and_used(built, monkeypatch)


def test_random_bit_flips_in_the_header_never_fail_a_load(built, monkeypatch):
    rng = random.Random(1234)
    header_end = 8 + struct.unpack("<Q", built["bytes"][:8])[0]
    path = built["path"]
    for attempt in range(50):
        data = bytearray(built["bytes"])
        bit = rng.randrange(header_end * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
        try:  # every flip is detected, unless it leaves an equivalent header ("\u00e9" -> "\u00E9")
            read_cache(path, built["metadata"], built["specs"])
            assert _split(bytes(data))[0] == _split(built["bytes"])[0], bit  # so the same tensors, CRC-checked
        except CacheMiss:
            pass
        if attempt % 10 == 0:  # the full load and rebuild for every tenth flip (each costs a conversion)
            assert torch.equal(built["load"]().logits(IDS), built["logits"]), bit
            _assert_rebuilt_and_used(built, monkeypatch)


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid now names no process
    return child.pid


def test_dead_writers_partial_files_are_removed_live_ones_kept(built):
    path = built["path"]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead, live = partial_name(path, _exited_pid()), partial_name(path, sleeper.pid)
    other_dead = path.with_name(f".other-model.int8-row.safetensors.{_exited_pid()}.partial")
    unrelated = [path.with_name(".notes.partial"), path.with_name(f"x.{_exited_pid()}.partial")]
    try:
        for f in (dead, live, other_dead, *unrelated):
            with open(f, "wb") as out:
                out.truncate(1 << 20)  # a leftover build; sparse, so it costs no disk
        assert torch.equal(built["load"]().logits(IDS), built["logits"])  # a cache hit: reading cleans up too
        assert not dead.exists() and not other_dead.exists()
        assert live.exists() and all(f.exists() for f in unrelated)
        assert sleeper.poll() is None  # still running: its file was never touched
    finally:
        sleeper.kill()
        sleeper.wait()
        for f in (live, *unrelated):  # other tests look for stray .partial files under the pytest base folder
            f.unlink(missing_ok=True)


def test_a_build_cleans_up_too(built):
    path = built["path"]
    path.unlink()
    dead = partial_name(path, _exited_pid())
    dead.write_bytes(b"\0" * 4096)
    assert torch.equal(built["load"]().logits(IDS), built["logits"])
    assert path.is_file() and not dead.exists()
