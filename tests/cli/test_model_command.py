"""`chatglm model info` for people and scripts, and checkpoints of other GLM families refused in one line.

The commands run as a user runs them (`python -m chatglm_tui`, so `main()` maps errors to exit codes); the
other families are fake checkpoint folders: their config.json (shaped as the released ones) and stand-in files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT_S = 120

CHATGLM2 = {"_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
            "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                         "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
            "add_bias_linear": False, "add_qkv_bias": True, "ffn_hidden_size": 13696, "hidden_size": 4096,
            "kv_channels": 128, "layernorm_epsilon": 1e-05, "multi_query_attention": True,
            "multi_query_group_num": 2, "num_attention_heads": 32, "num_layers": 28, "padded_vocab_size": 65024,
            "rmsnorm": True, "seq_length": 32768, "torch_dtype": "float16"}
CHATGLM3 = {**CHATGLM2, "_name_or_path": "THUDM/chatglm3-6b", "seq_length": 8192}
GLM4 = {**CHATGLM2, "_name_or_path": "THUDM/glm-4-9b-chat", "padded_vocab_size": 151552, "rope_ratio": 500,
        "num_layers": 40, "seq_length": 131072, "torch_dtype": "bfloat16"}


def chatglm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1", "CHATGLM_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "chatglm_tui", *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)


def checkpoint(folder: Path, config: dict, files: dict[str, bytes] | None = None) -> Path:
    """A checkpoint folder of another family: its config.json, a tokenizer.model and two small weight shards."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name, data in {"tokenizer.model": b"spm", "model-00001-of-00002.safetensors": b"x" * 1500,
                       "model-00002-of-00002.safetensors": b"y" * 2_500_000, **(files or {})}.items():
        (folder / name).write_bytes(data)
    return folder


def test_model_info_is_readable(fixture_dir, tmp_path):
    result = chatglm(tmp_path, "model", "info", str(fixture_dir / "int4"))
    assert result.returncode == 0, result.stderr
    size = (fixture_dir / "int4" / "pytorch_model.bin").stat().st_size
    shown = f"{size / 1e6:.1f} MB"
    lines = result.stdout.splitlines()
    assert lines[:4] == [f"directory: {fixture_dir / 'int4'}", "family: ChatGLM-6B", "layout: int4, single bin file",
                         f"size: {shown} in 1 weight file"]
    assert lines[4:11] == ["config:", "  hidden_size: 64", "  num_layers: 2", "  num_attention_heads: 4",
                           "  vocab_size: 130528", "  max_sequence_length: 2048", "  quantization_bit: 4"]
    assert lines[11] == "weights:" and lines[12].split() == ["pytorch_model.bin", *shown.split()]
    assert lines[13].startswith("backend: cpu: ") and lines[14].startswith("numerics: ")
    assert "{" not in result.stdout and "'" not in result.stdout.split("numerics:")[0]  # no Python reprs
    assert str(size) not in result.stdout  # no raw byte counts


def test_model_info_json_keeps_the_exact_data(fixture_dir, tmp_path):
    data = json.loads(chatglm(tmp_path, "model", "info", str(fixture_dir / "fp16"), "--json").stdout)
    sizes = {path.name: path.stat().st_size for path in (fixture_dir / "fp16").glob("*.bin")}
    assert {w["name"]: w["size"] for w in data["weights"]} == sizes and data["total_size"] == sum(sizes.values())
    assert data["config"]["hidden_size"] == 64 and (data["family"], data["supported"]) == ("ChatGLM-6B", True)


@pytest.mark.parametrize(("config", "extra", "family"), [
    (CHATGLM2, {}, "ChatGLM2-6B"),
    (CHATGLM3, {}, "ChatGLM3-6B"),
    ({**CHATGLM3, "_name_or_path": "/models/mine"}, {}, "ChatGLM2-6B or ChatGLM3-6B"),
    (GLM4, {}, "GLM-4"),
    ({**CHATGLM3, "_name_or_path": "mine", "padded_vocab_size": 65024},
     {"tokenizer_config.json": json.dumps({"tokenizer_class": "ChatGLM4Tokenizer"}).encode()}, "GLM-4"),
    ({"model_type": "glm4", "vocab_size": 151552, "num_hidden_layers": 40}, {}, "GLM-4"),
])
def test_other_families_are_named_by_info_and_refused_by_ask(tmp_path, config, extra, family):
    folder = checkpoint(tmp_path / "model", config, extra)
    info = chatglm(tmp_path, "model", "info", str(folder))
    assert info.returncode == 0, info.stderr
    assert f"family: {family} (not supported: chatglm-tui runs only ChatGLM-6B)\n" in info.stdout
    assert "size: 2.5 MB in 2 weight files" in info.stdout
    assert "backend: none: only ChatGLM-6B checkpoints run here" in info.stdout
    as_json = json.loads(chatglm(tmp_path, "model", "info", str(folder), "--json").stdout)
    assert (as_json["family"], as_json["supported"]) == (family, False)
    asked = chatglm(tmp_path, "ask", "--model", str(folder), "hello")
    assert asked.returncode == 1 and asked.stderr.count("\n") == 1, asked.stderr
    assert asked.stderr == (f"chatglm: {folder / 'config.json'}: this is a {family} checkpoint, which is not "
                            "supported: chatglm-tui runs only ChatGLM-6B (v1); use THUDM/chatglm-6b or "
                            "THUDM/chatglm-6b-int4\n")
    assert chatglm(tmp_path, "model", "path", str(folder)).stdout == f"{folder}\n"  # locating it is fine


def test_a_model_that_is_no_glm_is_described_as_such(tmp_path):
    folder = checkpoint(tmp_path / "llama", {"model_type": "llama", "vocab_size": 32000})
    info = chatglm(tmp_path, "model", "info", str(folder))
    assert "family: not a GLM model (model_type 'llama') (not supported" in info.stdout
    asked = chatglm(tmp_path, "ask", "--model", str(folder), "hello")
    assert asked.returncode == 1 and "model_type is 'llama', not 'chatglm'" in asked.stderr
