"""`chatglm sessions|model|config` through typer's runner, with an isolated CHATGLM_HOME."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from chatglm_tui.cli import app
from chatglm_tui.store import SessionStore, default_store_path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "home"


@pytest.fixture
def saved(home):
    with SessionStore(default_store_path()) as store:
        conversation = store.create_conversation("Trip planning 旅行")
        store.add_message(conversation.id, "user", "Where should we go in 北京?")
        store.add_message(conversation.id, "assistant", "The Summer Palace.\x1b]0;pwned\x07", stopped=True)
    return conversation


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_sessions_list_show_search(saved):
    listing = invoke("sessions", "list")
    assert listing.exit_code == 0 and saved.id in listing.output and "Trip planning" in listing.output
    shown = invoke("sessions", "show", saved.id[:6])
    assert shown.exit_code == 0 and "Summer Palace" in shown.output
    found = invoke("sessions", "search", "Summer")
    assert found.exit_code == 0 and saved.id in found.output
    as_json = json.loads(invoke("sessions", "list", "--json").output)
    assert as_json[0]["id"] == saved.id


def test_sessions_export_rename_rm(saved, tmp_path):
    out = tmp_path / "conversation.json"
    assert invoke("sessions", "export", "Trip planning 旅行", "--format", "json", "-o", str(out)).exit_code == 0
    data = json.loads(out.read_text())
    assert [m["text"] for m in data["messages"]][0] == "Where should we go in 北京?"
    markdown = invoke("sessions", "export", saved.id).output
    assert "Where should we go" in markdown
    assert invoke("sessions", "rename", saved.id, "Beijing").exit_code == 0
    assert "Beijing" in invoke("sessions", "list").output
    assert invoke("sessions", "rm", saved.id, "--yes").exit_code == 0
    assert saved.id not in invoke("sessions", "list").output


def test_unknown_session_is_one_clear_error(home):
    result = subprocess.run([sys.executable, "-m", "chatglm_tui", "sessions", "show", "nope"],
                            capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_stored_escape_sequences_never_reach_a_terminal(saved):
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "chatglm_tui", "sessions", "show", saved.id],
                               stdout=follower, stderr=subprocess.PIPE, env={**os.environ})
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=30)
    os.close(leader)
    assert b"Summer Palace" in output and b"\x1b]0;pwned" not in output and b"\x07" not in output


def test_model_path_and_info(fixture_dir, home):
    path = invoke("model", "path", str(fixture_dir / "int4"))
    assert path.exit_code == 0 and path.output.strip() == str(fixture_dir / "int4")
    info = json.loads(invoke("model", "info", str(fixture_dir / "int4"), "--json").output)
    assert info["config"]["quantization_bit"] == 4
    if not torch_cuda_available():  # the backend it would run on here, with the configured device (auto)
        assert info["backend"].startswith("cpu: int4-row") and "int8 LM head" in info["numerics"]


def test_model_info_still_describes_the_files_when_the_configured_device_is_missing(fixture_dir, home,
                                                                                     monkeypatch):
    if torch_cuda_available():
        pytest.skip("this machine has the CUDA device the test configures as missing")
    monkeypatch.setenv("CHATGLM_DEVICE", "cuda")
    result = invoke("model", "info", str(fixture_dir / "int4"))
    assert result.exit_code == 0, result.output
    assert "layout: int4" in result.output
    assert "backend: none here: device 'cuda' was asked for but no CUDA GPU is available" in result.output


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
    offline = subprocess.run([sys.executable, "-m", "chatglm_tui", "model", "path", "THUDM/chatglm-6b-int4"],
                             capture_output=True, text=True, env={**os.environ})
    assert offline.returncode == 1 and "chatglm model pull" in offline.stderr


def test_config_show_and_path(home, monkeypatch):
    monkeypatch.setenv("CHATGLM_TEMPERATURE", "0.3")
    shown = invoke("config", "show")
    assert shown.exit_code == 0
    assert "temperature = 0.3" in shown.output and "env CHATGLM_TEMPERATURE" in shown.output
    assert invoke("config", "path").output.strip().endswith("config.toml")
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text("temprature = 1\n")
    bad = subprocess.run([sys.executable, "-m", "chatglm_tui", "config", "show"], capture_output=True, text=True,
                         env={**os.environ})
    assert bad.returncode == 1 and "temprature" in bad.stderr and bad.stderr.count("\n") == 1


def test_usage_errors_exit_2(home):
    result = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "--temperature", "hot"],
                            capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 2


@pytest.mark.parametrize("option", [["--temperature", "-1"], ["--top-p", "2"], ["--max-new-tokens", "0"],
                                    ["--model", " "]])
def test_a_bad_option_value_is_a_usage_error(home, option):
    result = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", *option, "hello"], capture_output=True,
                            text=True, env={**os.environ}, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stderr.startswith("chatglm: invalid ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_bad_value_in_the_environment_or_the_config_file_stays_exit_1(home):
    env = {**os.environ, "CHATGLM_TEMPERATURE": "-1"}
    from_env = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "hello"], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL)
    assert from_env.returncode == 1 and "in environment variable CHATGLM_TEMPERATURE" in from_env.stderr
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text("temperature = -1\n")
    from_file = subprocess.run([sys.executable, "-m", "chatglm_tui", "ask", "--top-p", "0.5", "hello"],
                               capture_output=True, text=True, env={**os.environ}, stdin=subprocess.DEVNULL)
    assert from_file.returncode == 1 and "config.toml" in from_file.stderr and from_file.stderr.count("\n") == 1
