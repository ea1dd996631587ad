"""`chatglm ask` end to end, as real processes on the shared tiny checkpoint (exact float32 path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

GREEDY = ["--quantization", "none", "--dtype", "float32", "--greedy"]


@pytest.fixture
def run(fixture_dir, tmp_path):
    env = {**os.environ, "CHATGLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "NO_COLOR": "1"}

    def run(*args: str, stdin: bytes | None = None, model: bool = True) -> subprocess.CompletedProcess:
        extra = ["--model", str(fixture_dir / "fp16"), *GREEDY] if model and args and args[0] == "ask" else []
        return subprocess.run([sys.executable, "-m", "chatglm_tui", *args, *extra], input=stdin or b"",
                              capture_output=True, env=env, timeout=120)

    run.env = env
    return run


def _text(result: subprocess.CompletedProcess) -> str:
    return result.stdout.decode()


def test_ask_streams_the_reply_and_saves_it(run, reference):
    turn = reference["chats"][0][0]
    result = run("ask", turn["query"], "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr.decode()
    assert _text(result) == turn["response"] + "\n"
    assert result.stderr == b""  # stderr is not a terminal: no progress, no notices
    listing = run("sessions", "list")
    assert listing.returncode == 0 and turn["query"] in _text(listing)


def test_continue_uses_the_saved_history(run, reference):
    first, second = reference["chats"][1][:2]
    assert run("ask", first["query"], "--max-new-tokens", "24").returncode == 0
    result = run("ask", second["query"], "-c", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr.decode()
    assert _text(result).rstrip("\n") == second["response"]


def test_json_output(run, reference):
    turn = reference["chats"][0][0]
    result = run("ask", turn["query"], "--max-new-tokens", "24", "--json")
    report = json.loads(_text(result))
    assert report["reply"] == turn["response"] and report["session_id"]
    assert report["prompt_tokens"] == len(turn["prompt_ids"]) and report["new_tokens"] > 0


def test_no_save(run):
    assert run("ask", "你好", "--max-new-tokens", "4", "--no-save").returncode == 0
    assert _text(run("sessions", "list")).strip() == ""


def test_piped_document_with_and_without_a_question(run):
    document = "The meeting approved the budget. The team will hire two engineers.\n\nRisks: supply delays.\n"
    summary = run("ask", "--max-new-tokens", "16", stdin=document.encode())
    assert summary.returncode == 0 and _text(summary).strip()
    answer = run("ask", "what are the risks?", "--max-new-tokens", "16", stdin=document.encode())
    assert answer.returncode == 0 and _text(answer).strip()


def test_document_far_over_the_window_is_summarized(run):
    paragraph = "委员会审查了年度预算、招聘计划以及新产品线的风险。The committee asked for more detail. "
    document = "\n\n".join(f"{i}. {paragraph * 3}" for i in range(150))
    result = run("ask", "--max-new-tokens", "24", stdin=document.encode())
    assert result.returncode == 0, result.stderr.decode()
    assert _text(result).strip()


@pytest.mark.parametrize("data,message", [(b"\x00\x01binary\x00", "binary"), (b"\xff\xfe\xfa bad", "UTF-8")])
def test_bad_stdin_is_one_clear_line(run, data, message):
    result = run("ask", stdin=data)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_nothing_to_ask_is_a_usage_error(run):
    result = run("ask", stdin=b"   \n")
    assert result.returncode == 2 and "nothing to ask" in result.stderr.decode()


def test_missing_model_path(run, tmp_path):
    result = run("ask", "hi", "--model", str(tmp_path / "nowhere"), model=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err


def test_offline_hub_says_what_to_do(run):
    result = run("ask", "hi", "--model", "THUDM/chatglm-6b-int4", model=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "chatglm model pull" in err and "--model" in err


def test_ctrl_c_saves_a_stopped_reply_and_exits_130(fixture_dir, run):
    process = subprocess.Popen(
        [sys.executable, "-m", "chatglm_tui", "ask", "写一篇很长的文章", "--model", str(fixture_dir / "fp16"),
         *GREEDY, "--max-new-tokens", "1800"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run.env)
    first = os.read(process.stdout.fileno(), 1)  # the reply has started (unbuffered: communicate() reads the rest)
    assert first
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err.decode()
    from chatglm_tui.store import SessionStore

    store = SessionStore(Path(run.env["CHATGLM_HOME"]) / "data" / "sessions.sqlite3")
    conversation = store.latest()
    messages = store.messages(conversation.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[-1].stopped and messages[-1].text and (first + out).decode().startswith(messages[-1].text[:5])
    store.close()


def test_session_option_and_instruction(run, reference):
    first = run("ask", "第一个问题", "--max-new-tokens", "4", "--json")
    session = json.loads(_text(first))["session_id"]
    run("ask", "另一个对话", "--max-new-tokens", "4")  # now the latest conversation is another one
    result = run("ask", "继续", "--session", session[:6], "--instruction", "Be brief.", "--max-new-tokens", "4",
                 "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(_text(result))["session_id"] == session
    show = _text(run("sessions", "show", session))
    assert "第一个问题" in show and "继续" in show


def test_render_on_a_pipe_prints_plain_text(run, reference):
    turn = reference["chats"][0][0]
    result = run("ask", turn["query"], "--max-new-tokens", "24", "--render")
    assert result.returncode == 0 and _text(result) == turn["response"] + "\n"
