"""Hostile text from the store, the model, a checkpoint or the user never reaches the terminal raw (CLI side).

The attack from the issue: a piped document whose first line carries OSC 52 (write `rm -rf ~` to the terminal's
clipboard), OSC 0 (retitle the window) and a screen wipe. Every human-readable output shows those bytes as
visible glyphs, whatever stdout is; JSON escapes them and decodes back to the exact text.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chatglm_tui.cli import app
from chatglm_tui.store import SessionStore, default_store_path

ATTACK = "Report \x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;DOC\x07\x1b[2J \u202eevil\u202c \x9b2J [/b] [/INST]"
BODY = f"{ATTACK}\n\nThe body \x1b[31mred\x1b[0m, a bell \x07 and DEL \x7f.\n"
# Bytes (UTF-8) that a terminal or a bidi-aware viewer would act on.
ACTIVE = [b"\x1b", b"\x07", b"\x7f", "\x9b".encode(), "\u202e".encode(), "\u202c".encode()]


def _assert_inert(data: bytes) -> None:
    found = [byte for byte in ACTIVE if byte in data]
    assert not found, f"raw control bytes {found} in {data[:200]!r}"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATGLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


@pytest.fixture
def hostile(home):
    """A conversation written before titles were cleaned: the raw title is put in with SQL, as old stores hold."""
    with SessionStore(default_store_path()) as store:
        conversation = store.create_conversation("placeholder", instruction=f"Obey {ATTACK}")
        store.add_message(conversation.id, "user", BODY)
        store.add_message(conversation.id, "assistant", f"Sure: {ATTACK}\n\n```\n\x1b]0;code\x07\n```")
    with sqlite3.connect(default_store_path()) as conn:
        conn.execute("UPDATE conversations SET title = ? WHERE id = ?", (ATTACK, conversation.id))
    return conversation.id


def _run(*args: str) -> tuple[int, bytes]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout_bytes + (result.stderr_bytes or b"")


@pytest.mark.parametrize("args", [("sessions", "list"), ("sessions", "show", "{id}"), ("sessions", "search", "body"),
                                  ("sessions", "export", "{id}")])
def test_human_readable_output_is_inert(hostile, args):
    code, out = _run(*(arg.format(id=hostile) for arg in args))
    assert code == 0, out
    _assert_inert(out)
    text = out.decode()
    assert "␛]52;c;cm0gLXJmIH4K␇" in text or "Report" in text  # shown, or (titles in lists) cleaned
    if args[1] in ("show", "export"):
        assert "␛]52;c;cm0gLXJmIH4K␇␛]0;DOC␇␛[2J <U+202E>evil<U+202C>" in text


def test_markdown_export_file_is_inert(hostile, tmp_path):
    target = tmp_path / "chat.md"
    code, out = _run("sessions", "export", hostile, "-o", str(target))
    assert code == 0, out
    _assert_inert(target.read_bytes())
    assert "␛[31mred␛[0m" in target.read_text(encoding="utf-8")


def test_json_keeps_the_exact_text_escaped(hostile, tmp_path):
    code, out = _run("sessions", "export", hostile, "--format", "json")
    assert code == 0
    _assert_inert(out)
    exported = json.loads(out)
    assert exported["conversation"]["title"] == ATTACK
    assert [m["text"] for m in exported["messages"]][0] == BODY
    code, out = _run("sessions", "list", "--json")
    _assert_inert(out)
    assert json.loads(out)[0]["title"] == ATTACK


def test_the_delete_confirmation_and_errors_are_inert(hostile):
    result = CliRunner().invoke(app, ["sessions", "rm", hostile], input="n\n")
    assert result.exit_code == 1
    _assert_inert(result.stdout_bytes)
    assert "Report" in result.output


def test_titles_made_or_given_are_cleaned(home, hostile):
    code, _ = _run("sessions", "rename", hostile, f"New {ATTACK}\nsecond line")
    assert code == 0
    with SessionStore(default_store_path()) as store:
        title = store.get(hostile).title
        made = store.create_conversation(f"\x1b]0;x\x07Made\tby\nask {ATTACK}")
        assert store.get(made.id).title == "Made by ask Report evil [/b] [/INST]"
    assert title == "New Report evil [/b] [/INST] second line"


def _subprocess(args: list[str], home: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "chatglm_tui", *args], input=stdin, capture_output=True, env=env,
                          timeout=120)


def test_a_piped_hostile_document_gets_a_clean_title_and_is_stored_exactly(fixture_dir, tmp_path):
    home = tmp_path / "home"
    result = _subprocess(["ask", "--model", str(fixture_dir / "fp16"), "--quantization", "none", "--dtype",
                          "float32", "--greedy", "--max-new-tokens", "8", "--json"], home, BODY.encode())
    assert result.returncode == 0, result.stderr
    _assert_inert(result.stdout + result.stderr)
    session = json.loads(result.stdout)["session_id"]
    with SessionStore(home / "data" / "sessions.sqlite3") as store:
        assert store.get(session).title == "Summary: Report evil [/b] [/INST]"
        assert store.messages(session)[0].text == BODY  # the store keeps the exact text


def test_error_messages_that_echo_a_name_are_inert(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "chatglm", "hidden_size": ATTACK}))
    (checkpoint / f"pytorch_model-{ATTACK[:20]}.bin").write_bytes(b"not a checkpoint")
    for args in (["model", "info", str(checkpoint)], ["model", "info", str(checkpoint), "--json"],
                 ["ask", "hi", "--model", str(checkpoint), "--quantization", "none"],
                 ["sessions", "show", ATTACK]):
        result = _subprocess(args, tmp_path / "home")
        _assert_inert(result.stdout + result.stderr)
        assert "Traceback" not in result.stderr.decode()


def test_undecodable_arguments_are_one_line_usage_errors(tmp_path):
    env = {**os.environ, "CHATGLM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    for args in ([b"ask", b"caf\xe9"], [b"ask", b"hi", b"--instruction", b"\xff"], [b"sessions", b"search", b"\xfe"]):
        result = subprocess.run([sys.executable.encode(), b"-m", b"chatglm_tui", *args], capture_output=True,
                                env=env, timeout=60, stdin=subprocess.DEVNULL)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.count("\n") == 1 and "not valid UTF-8" in err, err
        assert "Traceback" not in err
