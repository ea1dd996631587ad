"""Every released layout loads; every broken checkpoint gives one clear CheckpointError naming the problem."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model import load_model
from chatglm_tui.model.checkpoint import find_weight_files, read_weight_file


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)  # the shared fixture is read-only
    return dst


def _state(directory: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in find_weight_files(directory):
        state.update(read_weight_file(path))
    return state


def _remove_weights(directory: Path) -> None:
    for f in directory.glob("pytorch_model*"):
        f.unlink()


def _top_logits(glm, text: str = "你好") -> torch.Tensor:
    return glm.logits(glm.tokenizer.encode(text))[-1]


@pytest.fixture
def fp16_copy(fixture_dir, tmp_path) -> Path:
    return _copy(fixture_dir / "fp16", tmp_path / "fp16")


def test_single_bin_and_safetensors_layouts_load_identically(fixture_dir, tmp_path, tiny_fp16):
    state = _state(fixture_dir / "fp16")
    expected = _top_logits(tiny_fp16)
    single = _copy(fixture_dir / "fp16", tmp_path / "single")
    _remove_weights(single)
    torch.save(state, single / "pytorch_model.bin")
    assert torch.equal(_top_logits(load_model(single, dtype="float32")), expected)

    safetensors_dir = _copy(fixture_dir / "fp16", tmp_path / "st")
    _remove_weights(safetensors_dir)
    tensors = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    save_file(tensors, str(safetensors_dir / "model.safetensors"))
    assert torch.equal(_top_logits(load_model(safetensors_dir, dtype="float32")), expected)

    sharded = _copy(fixture_dir / "fp16", tmp_path / "sharded")
    _remove_weights(sharded)
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / file))
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(_top_logits(load_model(sharded, dtype="float32")), expected)


def test_quantizing_fp16_on_load_gives_the_official_int4_values(fixture_dir, tiny_int4):
    quantized = load_model(fixture_dir / "fp16", quantization="int4", dtype="float32")
    ours = quantized.model.state_dict()
    official = tiny_int4.model.state_dict()
    for name in official:
        if name.endswith((".weight", ".weight_scale")) and "attention.query_key_value" in name:
            assert torch.equal(ours[name].float(), official[name].float()), name
    torch.testing.assert_close(_top_logits(quantized), _top_logits(tiny_int4), atol=1e-5, rtol=0)


def test_other_dtypes_run_and_stay_close(fixture_dir, tiny_fp16):
    expected = _top_logits(tiny_fp16)
    for dtype in ("bfloat16", "float16"):
        glm = load_model(fixture_dir / "fp16", dtype=dtype)
        assert glm.dtype == getattr(torch, dtype)
        got = _top_logits(glm)
        assert got.dtype == torch.float32
        assert got.argmax() == expected.argmax()
        torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)


def test_missing_directory_and_file_instead_of_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "file.bin")


def test_missing_config_and_weights(fp16_copy):
    _remove_weights(fp16_copy)
    with pytest.raises(CheckpointError, match="has no weights"):
        load_model(fp16_copy)
    (fp16_copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(fp16_copy)


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_unknown_model_type(fp16_copy):
    _edit_config(fp16_copy, model_type="chatglm2")
    with pytest.raises(CheckpointError, match="model_type is 'chatglm2'"):
        load_model(fp16_copy)


def test_old_150528_vocabulary(fp16_copy):
    _edit_config(fp16_copy, vocab_size=150528, bos_token_id=150004)
    with pytest.raises(CheckpointError, match="150528"):
        load_model(fp16_copy)


def test_shape_mismatch_names_the_tensor_and_file(fp16_copy):
    inner = json.loads((fp16_copy / "config.json").read_text())["inner_hidden_size"]
    _edit_config(fp16_copy, inner_hidden_size=inner * 2)
    with pytest.raises(CheckpointError, match=r"pytorch_model-0000\d-of-00004.bin: .*dense_h_to_4h"):
        load_model(fp16_copy)


def test_missing_shard(fp16_copy):
    (fp16_copy / "pytorch_model-00002-of-00004.bin").unlink()
    with pytest.raises(CheckpointError, match="shard pytorch_model-00002-of-00004.bin .* is missing"):
        load_model(fp16_copy)


def test_truncated_and_corrupt_shards(fp16_copy):
    shard = fp16_copy / "pytorch_model-00002-of-00004.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="00002-of-00004.bin is truncated or corrupt"):
        load_model(fp16_copy)
    shard.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="00002-of-00004.bin is truncated or corrupt"):
        load_model(fp16_copy)


def test_corrupt_safetensors(fp16_copy):
    _remove_weights(fp16_copy)
    (fp16_copy / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors is truncated or corrupt"):
        load_model(fp16_copy)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_would_run_code_is_refused(fp16_copy, capsys):
    _remove_weights(fp16_copy)
    torch.save({"transformer.word_embeddings.weight": _Payload()}, fp16_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"was refused: it tries to run code when loaded \(it calls .*print\)"):
        load_model(fp16_copy)
    assert "this must never run" not in capsys.readouterr().out


def test_incomplete_checkpoint(fp16_copy):
    state = _state(fp16_copy)
    _remove_weights(fp16_copy)
    del state["transformer.layers.1.mlp.dense_4h_to_h.bias"]
    torch.save(state, fp16_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="lacks 1 tensor.*dense_4h_to_h.bias"):
        load_model(fp16_copy)


def test_unexpected_tensor(fp16_copy):
    state = _state(fp16_copy)
    _remove_weights(fp16_copy)
    state["transformer.prefix_encoder.embedding.weight"] = torch.zeros(2, 2)
    torch.save(state, fp16_copy / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        load_model(fp16_copy)


def test_requantizing_an_int4_checkpoint_to_int8_is_refused(fixture_dir):
    with pytest.raises(CheckpointError, match="stored as int4"):
        load_model(fixture_dir / "int4", quantization="int8")


def test_remote_code_is_never_imported(fp16_copy):
    (fp16_copy / "modeling_chatglm.py").write_text("raise SystemExit('remote code ran')\n")
    (fp16_copy / "configuration_chatglm.py").write_text("raise SystemExit('remote code ran')\n")
    glm = load_model(fp16_copy, dtype="float32")
    assert glm.config.extra["auto_map"]  # it is there, and ignored


def _point_shard_2_at(directory: Path, entry: str) -> None:
    index = directory / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: entry if v == "pytorch_model-00002-of-00004.bin" else v
                          for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))


def _outside_copy_of_shard_2(fp16_copy: Path) -> Path:
    """A real, loadable shard outside the checkpoint directory: what an escaping entry would get opened."""
    outside = fp16_copy.parent / "outside"
    outside.mkdir()
    shutil.copyfile(fp16_copy / "pytorch_model-00002-of-00004.bin", outside / "shard.bin")
    return outside / "shard.bin"


@pytest.mark.parametrize("form", ["relative", "deep", "absolute", "symlinked folder", "control characters"])
def test_index_entries_outside_the_checkpoint_are_refused(fp16_copy, form):
    target = _outside_copy_of_shard_2(fp16_copy)
    (fp16_copy / "link").symlink_to(target.parent, target_is_directory=True)
    entry = {"relative": "../outside/shard.bin", "deep": "../" * 12 + str(target).lstrip("/"),
             "absolute": str(target), "symlinked folder": "link/shard.bin",
             "control characters": "../outside/\x1b[2J\rshard.bin"}[form]
    if form == "control characters":
        os.rename(target, target.parent / "\x1b[2J\rshard.bin")
    _point_shard_2_at(fp16_copy, entry)
    with pytest.raises(CheckpointError) as error:
        load_model(fp16_copy)
    message = str(error.value)
    assert f"shard entry {entry!r} points outside the checkpoint directory" in message
    assert "\n" not in message and "\r" not in message and "\x1b" not in message


def test_index_entries_that_are_not_names_are_refused(fp16_copy):
    _point_shard_2_at(fp16_copy, "shard.bin")
    index = fp16_copy / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["transformer.final_layernorm.bias"] = ["a list"]
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"shard entry \['a list'\] is not a file name"):
        load_model(fp16_copy)


def test_a_shard_that_is_a_link_out_of_the_folder_still_loads(fp16_copy, tiny_fp16):
    # The Hugging Face cache stores every snapshot file as a link into its blobs/ folder, outside the snapshot.
    target = _outside_copy_of_shard_2(fp16_copy)
    (fp16_copy / "pytorch_model-00002-of-00004.bin").unlink()
    (fp16_copy / "pytorch_model-00002-of-00004.bin").symlink_to(target)
    glm = load_model(fp16_copy, dtype="float32")
    assert torch.equal(_top_logits(glm), _top_logits(tiny_fp16))


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > '{self.marker}'",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_that_runs_a_command_is_refused_and_never_runs(fp16_copy, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    _remove_weights(fp16_copy)
    weights = fp16_copy / "pytorch_model.bin"
    torch.save({"transformer.word_embeddings.weight": _RunsACommand(marker)}, weights,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as error:
        load_model(fp16_copy)
    message = str(error.value)
    assert message.startswith(f"{weights} was refused: it tries to run code when loaded (it calls ")
    assert re.search(r"calls (posix|nt|os)\.system\)", message) and "a genuine checkpoint never does" in message
    assert "truncated or corrupt" not in message and "\n" not in message
    assert not marker.exists()


def test_truncated_legacy_pickles_are_reported_as_truncated(fp16_copy, tmp_path):
    # The pre-zip torch.save format: truncation makes torch raise IndexError, struct.error, ... not only EOFError.
    legacy = tmp_path / "legacy.bin"
    state = torch.load(fp16_copy / "pytorch_model-00004-of-00004.bin", weights_only=True)
    small = {name: tensor[:2].clone() for name, tensor in list(state.items())[:4]}  # a few tensors are enough
    torch.save(small, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    damaged = tmp_path / "damaged.bin"
    for cut in range(1, len(data), max(1, len(data) // 60)):
        damaged.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="damaged.bin is truncated or corrupt"):
            list(read_weight_file(damaged))
