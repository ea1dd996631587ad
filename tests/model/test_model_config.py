"""config.json values that would fail every reply, or waste minutes first, are refused at load in one line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from chatglm_tui.errors import CheckpointError
from chatglm_tui.model import load_model
from chatglm_tui.model.config import ChatGLMConfig


@pytest.fixture
def config_dir(fixture_dir, tmp_path) -> Path:
    """A checkpoint directory with a copy of the tiny config.json to rewrite (its weights are never reached)."""
    shutil.copyfile(fixture_dir / "fp16" / "config.json", tmp_path / "config.json")
    return tmp_path


def _write_config(directory: Path, raw_values: dict[str, str]) -> None:
    """Set config.json keys to raw JSON text (so NaN, Infinity and 5000-digit numbers can be written)."""
    config = json.loads((directory / "config.json").read_text())
    for key in raw_values:
        config[key] = f"@{key}@"
    text = json.dumps(config)
    for key, raw in raw_values.items():
        text = text.replace(f'"@{key}@"', raw)
    (directory / "config.json").write_text(text)


BAD_VALUES = [
    ("layernorm_epsilon", '"x"', "layernorm_epsilon must be a finite number"),
    ("layernorm_epsilon", "NaN", "layernorm_epsilon must be a finite number"),
    ("layernorm_epsilon", "Infinity", "layernorm_epsilon must be a finite number"),
    ("layernorm_epsilon", "-Infinity", "layernorm_epsilon must be a finite number"),
    ("layernorm_epsilon", "true", "layernorm_epsilon must be a finite number"),
    ("layernorm_epsilon", "1" + "0" * 400, "layernorm_epsilon must be a finite number"),
    ("layernorm_epsilon", "-1e-05", "layernorm_epsilon must be positive"),
    ("layernorm_epsilon", "0", "layernorm_epsilon must be positive"),
    ("num_layers", "10000", "num_layers must be between 1 and 256"),
    ("num_layers", "2.0", "num_layers must be an integer"),
    ("num_layers", "true", "num_layers must be an integer"),
    ("num_layers", '"2"', "num_layers must be an integer"),
    ("num_layers", "[2]", "num_layers must be an integer"),
    ("num_layers", "0", "num_layers must be between 1 and 256"),
    ("hidden_size", "1099511627776", "hidden_size must be between 1 and 32768"),
    ("hidden_size", "false", "hidden_size must be an integer"),
    ("hidden_size", "9" * 5000, "is not readable JSON"),  # Python refuses integers of over 4300 digits
    ("num_attention_heads", "-4", "num_attention_heads must be between 1 and 1024"),
    ("inner_hidden_size", "1e9", "inner_hidden_size must be an integer"),
    ("vocab_size", "4294967296", "vocab_size must be between 1 and 1048576"),
    ("max_sequence_length", "1000000000", "max_sequence_length must be between 1 and 32768"),
    ("bos_token_id", "5", "bos_token_id is 5, but the ChatGLM-6B tokenizer has it at 130004"),
    ("gmask_token_id", "130000", "gmask_token_id is 130000"),
    ("pad_token_id", "130528", "pad_token_id 130528 is not a token id"),
    ("position_encoding_2d", '"yes"', "position_encoding_2d must be a JSON bool"),
    ("quantization_bit", "4.0", "quantization_bit must be an integer"),
    ("torch_dtype", "16", "torch_dtype must be a JSON str"),
]


@pytest.mark.parametrize(("key", "raw", "expected"),
                         [pytest.param(*case, id=f"{case[0]}={case[1][:20]}") for case in BAD_VALUES])
def test_bad_config_values_are_refused_at_load_in_one_line(config_dir, tokenizer, key, raw, expected):
    _write_config(config_dir, {key: raw})
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as error:
        load_model(config_dir, tokenizer=tokenizer)
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert str(config_dir / "config.json") in message or "not readable JSON" in message
    assert time.perf_counter() - started < 2  # refused before any model is built (10,000 layers took 24 s)


def test_shown_values_are_escaped_and_short(fixture_dir):
    config = json.loads((fixture_dir / "fp16" / "config.json").read_text())
    with pytest.raises(CheckpointError) as error:
        ChatGLMConfig.from_dict({**config, "num_layers": "\x1b[2J" + "x" * 500})
    assert "\x1b" not in str(error.value) and "'\\x1b[2J" in str(error.value) and len(str(error.value)) < 200


def test_released_configs_are_accepted(fixture_dir, tokenizer_file):
    tiny = ChatGLMConfig.from_file(fixture_dir / "fp16" / "config.json")
    assert (tiny.hidden_size, tiny.num_layers, tiny.inner_hidden_size) == (64, 2, 256)
    assert ChatGLMConfig.from_file(fixture_dir / "int4" / "config.json").quantization_bit == 4
    assert ChatGLMConfig.from_file(tokenizer_file.parent / "config.json") == ChatGLMConfig()  # the real 6B one


def test_an_integer_epsilon_and_a_missing_inner_size_are_fine(fixture_dir):
    config = json.loads((fixture_dir / "fp16" / "config.json").read_text())
    del config["inner_hidden_size"]
    parsed = ChatGLMConfig.from_dict({**config, "layernorm_epsilon": 1})
    assert parsed.inner_hidden_size == 4 * parsed.hidden_size and parsed.layernorm_epsilon == 1


def test_a_null_required_key_is_reported_missing(fixture_dir):
    config = json.loads((fixture_dir / "fp16" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="missing required keys hidden_size"):
        ChatGLMConfig.from_dict({**config, "hidden_size": None})


# The later GLMs say model_type "chatglm" too; their keys (and tokenizer config) tell them apart.
_LATER = {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "padded_vocab_size": 65024,
          "multi_query_attention": True, "kv_channels": 128, "seq_length": 32768, "ffn_hidden_size": 13696,
          "num_layers": 28, "hidden_size": 4096, "num_attention_heads": 32}


@pytest.mark.parametrize(("config", "tokenizer_config", "family"), [
    ({**_LATER, "_name_or_path": "THUDM/chatglm2-6b"}, None, "ChatGLM2-6B"),
    ({**_LATER, "_name_or_path": "THUDM/chatglm3-6b-32k", "rope_ratio": 50}, None, "ChatGLM3-6B"),
    (_LATER, None, "ChatGLM2-6B or ChatGLM3-6B"),
    ({**_LATER, "padded_vocab_size": 151552, "rope_ratio": 500}, None, "GLM-4"),
    (_LATER, {"tokenizer_class": "ChatGLM4Tokenizer"}, "GLM-4"),
    ({"model_type": "glm", "vocab_size": 151552}, None, "GLM-4"),
])
def test_later_glm_checkpoints_are_named_and_refused_before_anything_is_built(tmp_path, tokenizer, config,
                                                                               tokenizer_config, family):
    (tmp_path / "config.json").write_text(json.dumps(config))
    if tokenizer_config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(CheckpointError) as error:
        ChatGLMConfig.from_file(tmp_path / "config.json")
    assert str(error.value) == (f"{tmp_path / 'config.json'}: this is a {family} checkpoint, which is not supported: "
                                "chatglm-tui runs only ChatGLM-6B (v1); use THUDM/chatglm-6b or THUDM/chatglm-6b-int4")
    with pytest.raises(CheckpointError, match=f"this is a {family} checkpoint"):  # not "missing required keys"
        load_model(tmp_path, tokenizer=tokenizer)


def test_the_family_is_read_from_config_json_alone_when_possible(fixture_dir, tokenizer_file):
    from chatglm_tui.model.config import checkpoint_family, family_in

    for path in (fixture_dir / "fp16" / "config.json", tokenizer_file.parent / "config.json"):
        assert checkpoint_family(json.loads(path.read_text())) == "ChatGLM-6B"
        assert family_in(path.parent, json.loads(path.read_text())) == "ChatGLM-6B"
    assert checkpoint_family({"model_type": "llama"}) is None
    assert checkpoint_family({"hidden_size": 64}) == "ChatGLM-6B"  # released v1 configs all name it; fixtures may not
