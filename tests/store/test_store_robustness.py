"""The store under hostile conditions: very long conversations, a FIFO for a file, read-only and full disks.

Every condition is real: real SQLite files, a real FIFO, a real folder without write permission (as root, in a
child process that has given up the capability to override permissions), a genuine SQLITE_FULL from
`max_page_count`, a genuine I/O error from a file-size limit. Anything that could hang runs with a timeout.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatglm_tui.store import SessionStore, StoreError
from chatglm_tui.store.connection import store_error
from chatglm_tui.store.export import FORMAT, FORMAT_VERSION

ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60


def _export(title: str, chain: int, branch_every: int = 0, word: str = "needle") -> dict[str, Any]:
    """An export (the import format) of one conversation: a `chain` of replies, plus a 3-message side branch
    hanging off every `branch_every`-th message. Importing it is one transaction, so long chats build fast."""
    rows: list[dict[str, Any]] = []

    def add(parent: int | None, text: str) -> int:
        rows.append({"id": len(rows) + 1, "parent_id": parent, "role": "user" if len(rows) % 2 == 0 else "assistant",
                     "text": text, "created_at": 1.0 + len(rows), "stopped": False, "prompt_tokens": None,
                     "new_tokens": None, "stats": {}})
        return len(rows)

    parent = None
    for index in range(chain):
        parent = add(parent, f"{word} {index}")
        if branch_every and index % branch_every == 0:
            side = parent
            for step in range(3):
                side = add(side, f"{word} side {index}.{step}")
    conversation = {"id": "0123456789ab", "title": title, "created_at": 1.0, "updated_at": 2.0, "model": "m",
                    "params": {}, "instruction": None}
    return {"format": FORMAT, "version": FORMAT_VERSION, "conversation": conversation, "messages": rows}


def _checks(store: SessionStore) -> tuple[str, str]:
    """(PRAGMA integrity_check, FTS5 integrity-check) of the store's database: both must be healthy."""
    integrity = store._conn.execute("PRAGMA integrity_check").fetchone()[0]
    try:  # raises SQLITE_CORRUPT_VTAB if the index and the messages disagree
        store._conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as error:
        return integrity, str(error)
    return integrity, "ok"


@pytest.mark.parametrize("chain", [1_500, 5_000])
def test_deleting_a_very_long_conversation_with_branches(store, chain):
    kept = store.create_conversation("kept")
    store.add_message(kept.id, "user", "haystack needle kept")
    long = store.import_json(_export("long", chain, branch_every=100, word="needle"))
    assert len(store.all_messages(long.id)) == chain + 3 * (chain // 100)
    assert store.search("needle", limit=10_000)

    store.delete(long.id)  # used to fail: "too many levels of trigger recursion"

    with pytest.raises(StoreError, match="no conversation"):
        store.get(long.id)
    assert [(c.id, m.text) for c, m in store.search("needle", limit=10_000)] == [(kept.id, "haystack needle kept")]
    assert store._conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    assert _checks(store) == ("ok", "ok")


def test_long_chains_read_export_and_import(store):
    original = store.import_json(_export("long", 5_000, word="chain"))
    branch = store.messages(original.id)  # a recursive query 5,000 levels deep
    assert [m.text for m in branch] == [f"chain {i}" for i in range(5_000)]
    assert len(store.history(original.id)) == 2_500
    copy = store.import_json(store.export_json(original.id))
    assert copy.id != original.id
    assert [m.text for m in store.messages(copy.id)] == [m.text for m in branch]
    assert store.export_markdown(copy.id).count("\n## ") == 5_000
    store.delete(original.id)
    assert len(store.messages(copy.id)) == 5_000  # the copy is separate: untouched by the delete
    assert _checks(store) == ("ok", "ok")


def test_a_failure_that_is_not_damage_never_says_damaged(store_path):
    # The real error the old delete hit: FK cascades along a 1,200-message chain, past SQLite's trigger depth.
    conn = sqlite3.connect(":memory:")
    conn.executescript("PRAGMA foreign_keys = ON; CREATE TABLE m (id INTEGER PRIMARY KEY, "
                       "parent INTEGER REFERENCES m(id) ON DELETE CASCADE);")
    conn.executemany("INSERT INTO m VALUES (?, ?)", [(i, i - 1 if i else None) for i in range(1_200)])
    with pytest.raises(sqlite3.OperationalError, match="trigger recursion") as raised:
        conn.execute("DELETE FROM m WHERE id = 0")
    message = str(store_error(store_path, raised.value))
    assert str(store_path) in message and "too many levels of trigger recursion" in message
    assert "damaged" not in message and "aside" not in message and "\n" not in message


def test_a_fifo_as_the_store_file_is_refused_without_hanging(store_path, bounded):
    store_path.parent.mkdir(parents=True)
    os.mkfifo(store_path)
    error = bounded(lambda: SessionStore(store_path), store_path)
    assert isinstance(error, StoreError)
    assert str(error) == (f"cannot open the session store {store_path}: it is a FIFO (named pipe), not a file; "
                          "check the path and its permissions")
    assert store_path.is_fifo() and os.listdir(store_path.parent) == [store_path.name]


@pytest.mark.parametrize("make", [os.mkdir, os.mkfifo], ids=["directory", "fifo"])
def test_a_side_file_in_the_way_is_named_not_called_damage(store, store_path, make):
    conversation = store.create_conversation("before")
    store.close()
    wal = store_path.with_name(store_path.name + "-wal")
    make(wal)  # SQLite cannot use its write-ahead log: it fails to open (directory) or to write (FIFO)
    with pytest.raises(StoreError) as raised:
        with SessionStore(store_path) as reopened:
            reopened.add_message(conversation.id, "user", "lost")
    message = str(raised.value)
    assert f"{wal} is a {'directory' if make is os.mkdir else 'FIFO (named pipe)'}, not a file" in message
    assert str(store_path) in message and "damaged" not in message and "aside" not in message
    os.rmdir(wal) if make is os.mkdir else wal.unlink(missing_ok=True)  # SQLite removes a FIFO log on close
    with SessionStore(store_path) as healed:
        assert [m.text for m in healed.all_messages(conversation.id)] == []


def test_a_full_database_says_full_not_damaged(store, store_path):
    conversation = store.create_conversation("full")
    store.add_message(conversation.id, "user", "saved")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # a genuine SQLITE_FULL on the next growth
    with pytest.raises(StoreError) as raised:
        store.add_message(conversation.id, "assistant", "x" * 200_000)
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert raised.value.__cause__.sqlite_errorname == "SQLITE_FULL"
    assert str(raised.value) == (f"cannot write to the session store {store_path}: database or disk is full; "
                                 "free some disk space or fix what blocks the folder, then try again")
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    assert [m.text for m in store.all_messages(conversation.id)] == ["saved"]  # the failed write left no trace
    store.add_message(conversation.id, "assistant", "x" * 200_000)


def test_a_read_only_connection_says_read_only_not_damaged(store, store_path):
    conversation = store.create_conversation("ro")
    store._conn.execute("PRAGMA query_only = ON")  # SQLite itself refuses every write: SQLITE_READONLY
    with pytest.raises(StoreError) as raised:
        store.rename(conversation.id, "new")
    assert raised.value.__cause__.sqlite_errorname == "SQLITE_READONLY"
    message = str(raised.value)
    assert message.startswith(f"cannot write to the session store {store_path}: "
                              "attempt to write a readonly database;")
    assert "damaged" not in message and "aside" not in message


# Opens the store given in argv[1] and, with argv[2] == "write", writes to it; prints the StoreError, if any.
CHILD = """
import sys
from pathlib import Path
from chatglm_tui.store import SessionStore, StoreError
try:
    with SessionStore(Path(sys.argv[1])) as store:
        if sys.argv[2] == "write":
            store.create_conversation("x")
except StoreError as error:
    print(error)
"""


def _drop_permission_override() -> None:
    """In the child, as root: give up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (from the bounding set, so the
    exec'd Python never regains them), so file permissions bind root as they bind anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run_restricted(path: Path, action: str) -> str:
    """The child's output when run without the power to ignore permissions (a plain user, or root without it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    preexec = _drop_permission_override if os.geteuid() == 0 else None
    try:
        result = subprocess.run([sys.executable, "-c", CHILD, str(path), action], capture_output=True, text=True,
                                env=env, timeout=CHILD_TIMEOUT_S, preexec_fn=preexec)
    except subprocess.SubprocessError as error:
        pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE here ({error}), so permissions never bind")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(("folder_mode", "file_mode", "action"),
                         [(0o555, 0o644, "open"), (0o755, 0o444, "write")],
                         ids=["read-only-folder", "read-only-file"])
def test_no_write_permission_says_permission_denied(store, store_path, folder_mode, file_mode, action):
    store.create_conversation("saved")
    store.close()
    os.chmod(store_path, file_mode)
    os.chmod(store_path.parent, folder_mode)
    try:
        message = _run_restricted(store_path, action)
    finally:
        os.chmod(store_path.parent, 0o755)
        os.chmod(store_path, 0o644)
    assert message.startswith(f"cannot write to the session store {store_path}: permission denied; ")
    assert "damaged" not in message and "aside" not in message
    with SessionStore(store_path) as reopened:
        assert [c.title for c in reopened.list_conversations()] == ["saved"]


# Writes a big message under a file-size limit: the OS refuses the write (EFBIG), SQLite reports an I/O error.
LIMITED_WRITER = """
import resource, signal, sys
from pathlib import Path
from chatglm_tui.store import SessionStore, StoreError
with SessionStore(Path(sys.argv[1])) as store:
    conversation = store.create_conversation("x")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    try:
        store.add_message(conversation.id, "user", "x" * 300_000)
    except StoreError as error:
        print(error)
"""


def test_a_refused_disk_write_is_an_io_error_not_damage(store_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", LIMITED_WRITER, str(store_path)], capture_output=True,
                            text=True, env=env, timeout=CHILD_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"cannot write to the session store {store_path}: disk I/O error; ")
    assert "damaged" not in message and "aside" not in message
    with SessionStore(store_path) as reopened:
        assert reopened._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
