"""The JSON files of a checkpoint are read only when they are regular files: a named pipe or device never hangs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model import load_model
from chatglm_tui.model.checkpoint import find_weight_files
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.hub import model_info
from chatglm_tui.model.tokenizer import ChatGLMTokenizer
from chatglm_tui.paths import MAX_JSON_BYTES, read_checkpoint_json


@pytest.fixture
def model_dir(fixture_dir, tmp_path) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(fixture_dir / "fp16", directory)
    for f in directory.iterdir():
        f.chmod(0o644)  # the shared fixture is read-only
    return directory


def _replace_with_fifo(path: Path) -> Path:
    path.unlink()
    os.mkfifo(path)
    return path


def _assert_refused(error: BaseException | None, path: Path, kind: str) -> None:
    assert isinstance(error, CheckpointError), error
    message = str(error)
    assert f"{path} is not readable: it is {kind}, not a file" in message and "\n" not in message


def test_config_json_that_is_a_named_pipe_is_refused(model_dir, tokenizer, bounded):
    fifo = _replace_with_fifo(model_dir / "config.json")
    _assert_refused(bounded(lambda: load_model(model_dir, tokenizer=tokenizer), fifo), fifo, "a FIFO (named pipe)")
    _assert_refused(bounded(lambda: ChatGLMConfig.from_file(fifo), fifo), fifo, "a FIFO (named pipe)")


def test_tokenizer_config_that_is_a_named_pipe_is_refused(model_dir, bounded):
    fifo = _replace_with_fifo(model_dir / "tokenizer_config.json")
    _assert_refused(bounded(lambda: ChatGLMTokenizer.from_dir(model_dir), fifo), fifo, "a FIFO (named pipe)")
    _assert_refused(bounded(lambda: load_model(model_dir), fifo), fifo, "a FIFO (named pipe)")


def test_shard_index_that_is_a_named_pipe_is_refused(model_dir, tokenizer, bounded):
    fifo = _replace_with_fifo(model_dir / "pytorch_model.bin.index.json")
    _assert_refused(bounded(lambda: find_weight_files(model_dir), fifo), fifo, "a FIFO (named pipe)")
    _assert_refused(bounded(lambda: load_model(model_dir, tokenizer=tokenizer), fifo), fifo, "a FIFO (named pipe)")


def test_model_info_refuses_a_config_json_that_is_a_named_pipe(model_dir, bounded):
    fifo = _replace_with_fifo(model_dir / "config.json")
    _assert_refused(bounded(lambda: model_info(model_dir), fifo), fifo, "a FIFO (named pipe)")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_config_json_linked_to_an_endless_device_is_refused(model_dir, tokenizer, bounded):
    config = model_dir / "config.json"
    config.unlink()
    config.symlink_to("/dev/zero")  # reading it would never end
    _assert_refused(bounded(lambda: load_model(model_dir, tokenizer=tokenizer)), config, "a character device")


def test_a_directory_in_place_of_config_json_is_refused(model_dir, tokenizer, bounded):
    config = model_dir / "config.json"
    config.unlink()
    config.mkdir()
    _assert_refused(bounded(lambda: load_model(model_dir, tokenizer=tokenizer)), config, "a directory")


def test_an_oversized_json_file_is_refused_without_reading_it_all(tmp_path):
    huge = tmp_path / "config.json"
    with open(huge, "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match="larger than .* it is damaged"):
        read_checkpoint_json(huge)


def test_a_missing_file_is_left_to_the_caller(tmp_path, tokenizer_file):
    with pytest.raises(FileNotFoundError):
        read_checkpoint_json(tmp_path / "absent.json")
    shutil.copyfile(tokenizer_file, tmp_path / "ice_text.model")
    assert ChatGLMTokenizer.from_dir(tmp_path).sop_id == 130004  # tokenizer_config.json is optional
