"""The store on disk: several processes, a killed writer, damaged and newer files, schema upgrades."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chatglm_tui.store import SessionStore, StoreError, migrations

ROOT = Path(__file__).resolve().parents[2]

# Opens the store, says "ready", waits for a line on stdin, then adds messages and prints each id once committed.
WRITER = """
import sys
from pathlib import Path
from chatglm_tui.store import SessionStore
path, conversation_id, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
with SessionStore(path) as store:
    print("ready", flush=True)
    sys.stdin.readline()
    for index in range(count):
        role = "user" if index % 2 == 0 else "assistant"
        message = store.add_message(conversation_id, role, f"{conversation_id} message {index}")
        print(message.id, flush=True)
"""


def _start_writer(path: Path, conversation_id: str, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), conversation_id, str(count)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def _integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA quick_check").fetchone()[0]


def test_two_processes_write_at_once(store, store_path):
    first, second = store.create_conversation("first"), store.create_conversation("second")
    writers = [_start_writer(store_path, conversation.id, 200) for conversation in (first, second)]
    for writer in writers:  # both are connected and waiting: release them together
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    outputs = [writer.communicate(timeout=60)[0] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0]
    for conversation, output in zip((first, second), outputs, strict=True):
        saved = store.all_messages(conversation.id)
        assert [m.id for m in saved] == [int(line) for line in output.split()]
        assert [m.text for m in saved] == [f"{conversation.id} message {i}" for i in range(200)]
        assert len(store.messages(conversation.id)) == 200  # each a child of the one before
    assert _integrity(store_path) == "ok"


def test_kill_9_mid_reply_loses_no_saved_message(store, store_path):
    conversation = store.create_conversation("crash")
    writer = _start_writer(store_path, conversation.id, 1_000_000)
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write("go\n")
    writer.stdin.flush()
    printed = [int(writer.stdout.readline()) for _ in range(50)]
    os.kill(writer.pid, signal.SIGKILL)
    rest = writer.stdout.read()
    writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    printed += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    store.close()
    assert _integrity(store_path) == "ok"
    with SessionStore(store_path) as reopened:
        saved = {m.id for m in reopened.all_messages(conversation.id)}
        assert set(printed) <= saved and len(saved) - len(printed) <= 1  # at most the one in flight
        branch = reopened.messages(conversation.id)
        assert [m.id for m in branch] == sorted(saved)


def test_garbage_file_is_refused_and_left_alone(store_path):
    store_path.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 64
    store_path.write_bytes(garbage)
    with pytest.raises(StoreError) as raised:
        SessionStore(store_path)
    message = str(raised.value)
    assert str(store_path) in message and "move it aside" in message and "\n" not in message
    assert store_path.read_bytes() == garbage
    assert sorted(p.name for p in store_path.parent.iterdir()) == [store_path.name]


def test_damaged_pages_fail_quick_check(store, store_path):
    conversation = store.create_conversation("big")
    for index in range(300):
        store.add_message(conversation.id, "user", f"message {index} " + "x" * 300)
    store.close()
    data = bytearray(store_path.read_bytes())
    page = 4096
    for number in range(2, len(data) // page):  # smash every b-tree page header but the schema page
        data[number * page: number * page + 12] = b"\xff" * 12
    store_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is damaged") as raised:
        SessionStore(store_path)
    assert str(store_path) in str(raised.value) and "\n" not in str(raised.value)
    assert store_path.read_bytes() == bytes(data)


def test_a_directory_in_the_way_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open the session store"):
        SessionStore(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open the session store"):
        SessionStore(tmp_path / "file" / "sessions.sqlite3")


def test_newer_schema_is_refused_untouched(store_path):
    store_path.parent.mkdir(parents=True)
    with sqlite3.connect(store_path) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute(f"PRAGMA user_version = {migrations.LATEST_VERSION + 1}")
    conn.close()
    before = store_path.read_bytes()
    with pytest.raises(StoreError, match="newer than this chatglm-tui") as raised:
        SessionStore(store_path)
    assert str(store_path) in str(raised.value)
    assert store_path.read_bytes() == before


# Migration 1 exactly as released: a test of upgrades must not borrow the code it is testing.
V1_SCHEMA = """
CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, model TEXT NOT NULL DEFAULT '', params TEXT NOT NULL DEFAULT '{}', instruction TEXT);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), text TEXT NOT NULL, created_at REAL NOT NULL,
    stopped INTEGER NOT NULL DEFAULT 0 CHECK (stopped IN (0, 1)), prompt_tokens INTEGER, new_tokens INTEGER,
    stats TEXT NOT NULL DEFAULT '{}');
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
CREATE INDEX messages_by_parent ON messages(parent_id);
CREATE INDEX conversations_by_updated ON conversations(updated_at);
CREATE INDEX conversations_by_title ON conversations(title);
INSERT INTO conversations VALUES ('0123456789ab', 'Old chat', 100.0, 102.0, 'chatglm-6b', '{"top_p": 0.7}', NULL);
INSERT INTO messages VALUES (1, '0123456789ab', NULL, 'user', '上海的天气如何', 101.0, 0, NULL, NULL, '{}');
INSERT INTO messages VALUES (2, '0123456789ab', 1, 'assistant', 'Sunny in Shanghai', 102.0, 1, 7, 3, '{"s": 1}');
PRAGMA user_version = 1;
"""


def test_upgrade_from_schema_1_indexes_old_rows(store_path):
    store_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(store_path)
    conn.executescript(V1_SCHEMA)
    conn.close()
    with SessionStore(store_path) as store:
        assert migrations.schema_version(store._conn) == migrations.LATEST_VERSION == 2
        assert migrations.has_search_index(store._conn)
        assert [m.id for _, m in store.search("shanghai")] == [2]
        assert [(c.title, m.id) for c, m in store.search("上海的天气")] == [("Old chat", 1)]
        assert store.history("0123456789ab") == [("上海的天气如何", "Sunny in Shanghai")]
        store.add_message("0123456789ab", "user", "and tomorrow in Shanghai?")
        assert len(store.search("shanghai")) == 2  # the triggers index new rows too


def test_without_fts5_search_falls_back_to_like(store_path, monkeypatch):
    monkeypatch.setattr(migrations, "fts5_available", lambda conn: False)
    with SessionStore(store_path) as store:
        assert not migrations.has_search_index(store._conn)
        conversation = store.create_conversation("plain")
        hit = store.add_message(conversation.id, "user", '北京 "foo AND ( bar')
        assert [m.id for _, m in store.search('"foo AND (')] == [hit.id]
        assert [m.id for _, m in store.search("北京")] == [hit.id]
    monkeypatch.undo()
    with SessionStore(store_path) as store:  # a later SQLite with FTS5 builds and backfills the index
        assert migrations.has_search_index(store._conn)
        assert [m.id for _, m in store.search("foo bar")] == [hit.id]


def test_a_writer_held_past_the_busy_timeout_gives_a_store_error(store_path, monkeypatch):
    monkeypatch.setattr("chatglm_tui.store.connection.BUSY_TIMEOUT_MS", 50)
    with SessionStore(store_path) as store:
        conversation = store.create_conversation("busy")
        blocker = sqlite3.connect(store_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process mid-write, for longer than we wait
        try:
            with pytest.raises(StoreError, match="busy; try again") as raised:
                store.add_message(conversation.id, "user", "waits")
            assert str(store_path) in str(raised.value)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert store.add_message(conversation.id, "user", "goes through").text == "goes through"
