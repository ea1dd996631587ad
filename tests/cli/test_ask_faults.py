"""`chatglm ask` under faults, as real processes on the tiny checkpoint: the reply is saved whatever happens to
stdout or the process (signals, a reader that leaves, a full disk, a closed stdout), and under its own question
when several run at once on one conversation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatglm_tui.store import SessionStore

GREEDY = ["--quantization", "none", "--dtype", "float32", "--greedy"]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and shells")


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "CHATGLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}


def _args(fixture_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "chatglm_tui", "ask", *args, "--model", str(fixture_dir / "fp16"), *GREEDY]


def _store(env: dict[str, str]) -> SessionStore:
    return SessionStore(Path(env["CHATGLM_HOME"]) / "data" / "sessions.sqlite3")


def _long_reply(fixture_dir: Path, env: dict[str, str], **streams) -> subprocess.Popen:
    process = subprocess.Popen(_args(fixture_dir, "写一篇很长的文章", "--max-new-tokens", "1800"),
                               stdin=subprocess.DEVNULL, env=env, **streams)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_saves_the_partial_reply_like_ctrl_c(fixture_dir, env, signum):
    process = _long_reply(fixture_dir, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = os.read(process.stdout.fileno(), 1)  # the reply has started
    assert first
    time.sleep(0.2)
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, err.decode()
    with _store(env) as store:
        messages = store.messages(store.latest().id)
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[-1].stopped and (first + out).decode().startswith(messages[-1].text[:5])


def test_a_reader_that_leaves_stops_the_reply_and_it_is_saved(fixture_dir, env):
    process = _long_reply(fixture_dir, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = os.read(process.stdout.fileno(), 20)  # `| head -c 20`
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=30) == 141, err.decode()  # as for SIGPIPE, and quietly
    assert err == b""
    with _store(env) as store:
        reply = store.messages(store.latest().id)[-1]
        assert reply.role == "assistant" and reply.stopped and reply.text.startswith(head.decode(errors="ignore")[:3])


@pytest.mark.parametrize("redirect", [">/dev/full", ">&-"])
def test_unwritable_stdout_is_one_line_and_the_whole_reply_is_saved(fixture_dir, env, redirect):
    command = " ".join(f"'{arg}'" for arg in _args(fixture_dir, "你好", "--max-new-tokens", "24")) + f" {redirect}"
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "could not be written to stdout" in err and "chatglm sessions show" in err
    with _store(env) as store:
        reply = store.messages(store.latest().id)[-1]
        assert reply.role == "assistant" and not reply.stopped and reply.new_tokens == 24


def test_a_question_refused_as_too_long_is_not_saved(fixture_dir, env):
    question = "".join(chr(0x4E00 + (n * 7919) % 20000) for n in range(3000))  # ~3,000 tokens: over the window
    result = subprocess.run(_args(fixture_dir, question, "--max-new-tokens", "16"), env=env, capture_output=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "does not fit" in result.stderr.decode()
    with _store(env) as store:
        assert store.latest() is None


def test_concurrent_asks_on_one_conversation_each_save_under_their_own_question(fixture_dir, env):
    first = subprocess.run(_args(fixture_dir, "开始", "--max-new-tokens", "4", "--json"), env=env,
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    session = json.loads(first.stdout)["session_id"]
    questions = [f"问题{n}：{'甲乙丙丁'[n] * (n + 1)}" for n in range(4)]
    processes = [subprocess.Popen(_args(fixture_dir, question, "-s", session, "--max-new-tokens", "12", "--json"),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
                 for question in questions]
    replies = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err.decode()
        replies.append(json.loads(out)["reply"])
    with _store(env) as store:
        messages = store.all_messages(session)
    by_id = {message.id: message for message in messages}
    for question, reply in zip(questions, replies):
        asked = [m for m in messages if m.role == "user" and m.text == question]
        assert len(asked) == 1
        answers = [m for m in messages if m.parent_id == asked[0].id]
        assert [m.text for m in answers] == [reply]
        # It follows the end of the branch its history was read from (the first reply, unless another ask had
        # already finished when it started): never another ask's unanswered question.
        assert by_id[asked[0].parent_id].role == "assistant"
