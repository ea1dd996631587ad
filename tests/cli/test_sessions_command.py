"""`chatglm sessions export|import|rename|rm` for real: the console entry point in a subprocess, on real store files.

Exit codes and one-line errors come from `main()`, so every command here runs as a user runs it
(`python -m chatglm_tui`), with its own CHATGLM_HOME.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatglm_tui.store import SessionStore
from chatglm_tui.store.export import FORMAT

TIMEOUT_S = 60


def chatglm(home: Path, *args: str, stdin: str | None = None, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run `chatglm ARGS` with CHATGLM_HOME=`home` (stdin: the text given, else /dev/null)."""
    env = {**os.environ, "CHATGLM_HOME": str(home), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "chatglm_tui", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL if stdin is None else None, **options)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def store_at(home: Path, clock=None) -> SessionStore:
    return SessionStore(home / "data" / "sessions.sqlite3", **({"clock": clock} if clock else {}))


def counts(home: Path) -> tuple[int, int]:
    """(conversations, messages) in the store of `home`."""
    with sqlite3.connect(home / "data" / "sessions.sqlite3") as conn:
        return (conn.execute("SELECT count(*) FROM conversations").fetchone()[0],
                conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def fill(store: SessionStore) -> list[str]:
    """Conversations with everything an export holds: branches (a regenerated reply, an edited question with a
    reply of its own), a stopped reply, token counts, stats, params, a multi-line instruction, hostile text,
    an empty conversation. Returns their ids."""
    rich = store.create_conversation("Trip 旅行", model="THUDM/chatglm-6b-int4",
                                     params={"temperature": 0.3, "top_k": 20, "seed": 7},
                                     instruction="Answer briefly.\n## Not a heading")
    question = store.add_message(rich.id, "user", "# Report\n\n```\ncode\n```\n北京?")
    store.add_message(rich.id, "assistant", "Summer Palace.\x1b]0;pwned\x07", prompt_tokens=12, new_tokens=5,
                      stats={"seconds": 0.5, "reason": "eos", "tokens_per_s": 10.0})
    store.add_message(rich.id, "assistant", "The Great Wall", parent_id=question.id, stopped=True,
                      prompt_tokens=12, new_tokens=3, stats={"reason": "cancelled"})
    edited = store.add_message(rich.id, "user", "Shanghai? \u202eevil", parent_id=None)
    store.add_message(rich.id, "assistant", "The Bund.", parent_id=edited.id, prompt_tokens=9, new_tokens=1)
    plain = store.create_conversation("Plain")
    store.add_message(plain.id, "user", "hi")
    store.add_message(plain.id, "assistant", "hello")
    empty = store.create_conversation("Nothing yet")
    return [rich.id, plain.id, empty.id]


def normalised(export: dict[str, Any]) -> dict[str, Any]:
    """An export with its ids taken out: the conversation's, and message ids replaced by their positions (parent
    links follow), which is what an import keeps."""
    position = {m["id"]: index for index, m in enumerate(export["messages"])}
    messages = [{**m, "id": position[m["id"]], "parent_id": position.get(m["parent_id"])}
                for m in export["messages"]]
    return {**export, "messages": messages, "conversation": {**export["conversation"], "id": None}}


def imported_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"imported ([0-9a-f]{12}) “.*” \(\d+ messages?\) from .*\n", result.stdout)
    assert match, result.stdout
    return match.group(1)


# ---------------------------------------------------------------------------------------------- import


def test_export_import_export_round_trip_keeps_everything_but_the_ids(tmp_path, clock):
    source, target = tmp_path / "source", tmp_path / "target"
    with store_at(source, clock) as store:
        ids = fill(store)
    exported: dict[str, dict[str, Any]] = {}
    for conversation_id in ids:
        file = tmp_path / f"{conversation_id}.json"
        written = chatglm(source, "sessions", "export", conversation_id, "--format", "json", "-o", str(file))
        assert written.returncode == 0
        exported[conversation_id] = json.loads(file.read_text(encoding="utf-8"))
    for conversation_id, original in exported.items():
        new_id = imported_id(chatglm(target, "sessions", "import", str(tmp_path / f"{conversation_id}.json")))
        again = json.loads(chatglm(target, "sessions", "export", new_id, "--format", "json").stdout)
        assert new_id != conversation_id and again["conversation"]["id"] == new_id  # a new conversation
        assert normalised(again) == normalised(original)  # text, branches, flags, counts, stats, timestamps...
    assert counts(target) == (3, 7)
    # Into the store it came from: a copy beside the original, which is untouched.
    copy_id = imported_id(chatglm(source, "sessions", "import", str(tmp_path / f"{ids[0]}.json")))
    assert copy_id not in ids and counts(source) == (4, 12)
    with store_at(source) as store:
        assert normalised(store.export_json(copy_id)) == normalised(exported[ids[0]])
        assert store.export_json(ids[0]) == exported[ids[0]]


def test_import_says_what_it_made_inertly(tmp_path):
    with store_at(tmp_path / "a") as store:
        conversation = store.create_conversation("x")
        store.add_message(conversation.id, "user", "one")
        data = store.export_json(conversation.id)
    data["conversation"]["title"] = "evil\x1b]2;retitled\x07 title"
    file = tmp_path / "one.json"
    file.write_text(json.dumps(data), encoding="utf-8")
    result = chatglm(tmp_path / "b", "sessions", "import", str(file))
    assert imported_id(result) and "(1 message)" in result.stdout and "\x1b" not in result.stdout


def _valid_export(tmp_path: Path) -> dict[str, Any]:
    with store_at(tmp_path / "made") as store:
        return store.export_json(fill(store)[0])


@pytest.mark.parametrize(("content", "expected"), [
    (b"not json at all", "it is not JSON text"),
    (b"\xff\xfe{}", "it is not JSON text"),
    (b"[1, 2]", "not a chatglm-tui conversation export"),
    ({"format": "other"}, "not a chatglm-tui conversation export"),
    ({"title": 3}, "conversation.title must be str"),
    ({"messages": "none"}, "'messages' must be a list"),
    ({"last_parent": 10**9}, "has a parent that does not come before it"),
    ({"new_tokens": 10**30}, "new_tokens = 1000000000000000000000000000000 is out of range"),
    ({"created_at": float("nan")}, "created_at = nan is out of range"),
    ({"text": "lone \ud800 surrogate"}, "messages[4].text holds a lone surrogate"),
    ({"stats": {"note": "\udfff"}}, "messages[4].stats holds a lone surrogate"),
])
def test_bad_files_are_one_line_and_import_nothing(tmp_path, content, expected):
    home = tmp_path / "home"
    with store_at(home) as store:
        store.create_conversation("already here")
    if isinstance(content, dict):
        data = _valid_export(tmp_path)
        if "format" in content:
            data["format"] = content["format"]
        if "title" in content:
            data["conversation"]["title"] = content["title"]
        if "messages" in content:
            data["messages"] = content["messages"]
        if "last_parent" in content:  # every message but the last is fine: none of them may be kept
            data["messages"][-1]["parent_id"] = content["last_parent"]
        for key in ("new_tokens", "created_at", "text", "stats"):
            if key in content:
                data["messages"][-1][key] = content[key]
        content = json.dumps(data).encode("utf-8")
    file = tmp_path / "bad.json"
    file.write_bytes(content)
    result = chatglm(home, "sessions", "import", str(file))
    assert result.returncode == 1 and expected in one_line_error(result)
    assert counts(home) == (1, 0)


def test_a_failure_in_the_middle_of_an_import_leaves_nothing_behind(tmp_path):
    home = tmp_path / "home"
    file = tmp_path / "export.json"
    file.write_text(json.dumps(_valid_export(tmp_path)), encoding="utf-8")
    with store_at(home):
        pass
    with sqlite3.connect(home / "data" / "sessions.sqlite3") as conn:  # the third message insert fails, for real
        conn.execute("CREATE TRIGGER third_fails BEFORE INSERT ON messages WHEN (SELECT count(*) FROM messages) >= 2 "
                     "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END")
    result = chatglm(home, "sessions", "import", str(file))
    assert result.returncode == 1 and "simulated failure" in one_line_error(result)
    assert counts(home) == (0, 0)  # the conversation and its first two messages were rolled back


def test_import_refuses_a_fifo_missing_files_and_folders_at_once(tmp_path):
    fifo = tmp_path / "export.json"
    os.mkfifo(fifo)
    result = chatglm(tmp_path / "home", "sessions", "import", str(fifo))  # would hang on a plain open()
    assert result.returncode == 1 and "it is a FIFO (named pipe), not a file" in one_line_error(result)
    missing = chatglm(tmp_path / "home", "sessions", "import", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "there is no such file" in one_line_error(missing)
    folder = chatglm(tmp_path / "home", "sessions", "import", str(tmp_path))
    assert folder.returncode == 1 and "it is a directory, not a file" in one_line_error(folder)


# ---------------------------------------------------------------------------------------------- export -o


@pytest.fixture
def saved(tmp_path) -> tuple[Path, str]:
    home = tmp_path / "home"
    with store_at(home) as store:
        conversation = store.create_conversation("Notes")
        store.add_message(conversation.id, "user", "question " * 20_000)  # an export of about 300 kB
        store.add_message(conversation.id, "assistant", "answer " * 20_000)
    return home, conversation.id


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_export_never_replaces_a_file_without_force(saved, tmp_path):
    home, conversation_id = saved
    out = tmp_path / "out" / "notes.md"
    out.parent.mkdir()
    assert chatglm(home, "sessions", "export", conversation_id, "-o", str(out)).returncode == 0
    first = out.read_text(encoding="utf-8")
    assert first.startswith("# Notes\n") and oct(out.stat().st_mode & 0o777) != "0o600"  # the umask, not mkstemp's
    out.write_text("my own notes", encoding="utf-8")
    refused = chatglm(home, "sessions", "export", conversation_id, "--format", "json", "-o", str(out))
    assert refused.returncode == 1
    assert one_line_error(refused) == f"chatglm: {out} already exists: add --force to replace it, or choose another " \
                                      "file with -o\n"
    assert out.read_text(encoding="utf-8") == "my own notes"
    forced = chatglm(home, "sessions", "export", conversation_id, "--format", "json", "-o", str(out), "--force")
    assert forced.returncode == 0 and json.loads(out.read_text(encoding="utf-8"))["format"] == FORMAT
    assert leftovers(out.parent) == []
    folder = chatglm(home, "sessions", "export", conversation_id, "-o", str(out.parent), "--force")
    assert folder.returncode == 1 and "is a directory" in one_line_error(folder)


def test_export_through_a_symlink_replaces_the_file_it_names(saved, tmp_path):
    home, conversation_id = saved
    real = tmp_path / "real.md"
    real.write_text("old", encoding="utf-8")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    assert chatglm(home, "sessions", "export", conversation_id, "-o", str(link), "--force").returncode == 0
    assert link.is_symlink() and real.read_text(encoding="utf-8").startswith("# Notes")


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: writing past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX file-size limits")
@pytest.mark.parametrize("force", [False, True])
def test_a_failed_export_leaves_no_half_written_file(saved, tmp_path, force):
    home, conversation_id = saved
    out = tmp_path / "out"
    out.mkdir()
    target = out / "notes.json"
    if force:
        target.write_text("the previous export", encoding="utf-8")
    args = ["sessions", "export", conversation_id, "--format", "json", "-o", str(target)] + (["--force"] * force)
    # Above the store's own small writes (its -shm file is 32 kB), far below the export: a real EFBIG midway.
    result = chatglm(home, *args, preexec_fn=_file_size_limit(100_000))
    assert result.returncode == 1 and f"cannot write {target}: File too large" in one_line_error(result)
    assert (target.read_text(encoding="utf-8") == "the previous export") if force else not target.exists()
    assert leftovers(out) == []


def test_export_to_a_stream_writes_it_directly(saved):
    home, conversation_id = saved
    result = chatglm(home, "sessions", "export", conversation_id, "-o", "/dev/stdout")
    assert result.returncode == 0 and result.stdout.startswith("# Notes\n")


# ---------------------------------------------------------------------------------------------- rename, rm


def test_rename_says_what_it_was_renamed_to(saved):
    home, conversation_id = saved
    result = chatglm(home, "sessions", "rename", conversation_id[:5], "Trip\x1b[2J to\n北京")
    assert result.returncode == 0
    assert result.stdout == f"renamed {conversation_id} to “Trip to 北京”\n"  # as saved: escapes and breaks dropped
    with store_at(home) as store:
        assert store.get(conversation_id).title == "Trip to 北京"


@pytest.mark.parametrize("stdin", [None, ""])  # /dev/null, an empty pipe
def test_rm_with_no_answer_on_stdin_deletes_nothing_and_says_how_to_confirm(saved, stdin):
    home, conversation_id = saved
    result = chatglm(home, "sessions", "rm", conversation_id, stdin=stdin)
    assert result.returncode == 2
    assert one_line_error(result) == ("chatglm: nothing was deleted: there was no answer on stdin (it is closed or "
                                      "empty); add --yes to delete without being asked\n")
    assert "interrupted" not in result.stderr and counts(home) == (1, 2)


def test_rm_asks_and_follows_the_answer(saved):
    home, conversation_id = saved
    declined = chatglm(home, "sessions", "rm", conversation_id, stdin="maybe\nn\n")
    assert declined.returncode == 1 and "Answer y or n." in declined.stdout and counts(home) == (1, 2)
    confirmed = chatglm(home, "sessions", "rm", conversation_id, stdin="yes\n")
    assert confirmed.returncode == 0 and f"Delete {conversation_id} “Notes”? [y/N]: " in confirmed.stdout
    assert counts(home) == (0, 0)
