"""Opening one SQLite file safely: refuse non-databases before SQLite touches them, then set the pragmas."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chatglm_tui.store.errors import StoreError

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000
MOVE_ASIDE = "move it aside (chatglm-tui never deletes or overwrites it) and a new store will be created"


def unreadable(path: Path, reason: object) -> StoreError:
    """The error for a store we cannot open at all (permissions, a directory in the way, a full disk)."""
    return StoreError(f"cannot open the session store {path}: {reason}; check the path and its permissions")


def corrupt(path: Path, reason: object) -> StoreError:
    """The error for a file that is not, or no longer, a healthy SQLite database."""
    return StoreError(f"the session store {path} is damaged ({reason}); {MOVE_ASIDE}")


def _check_header(path: Path) -> None:
    # Reading the 16-byte magic ourselves means a stray file is rejected before SQLite could write to it.
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as error:
        raise unreadable(path, error.strerror or error) from error
    if header and header != SQLITE_HEADER:  # an empty file is fine: SQLite makes it a new database
        raise corrupt(path, "not an SQLite database")


def _first_problem(rows: list[tuple[str]]) -> str | None:
    lines = [line for row in rows for line in str(row[0]).splitlines() if not line.startswith("***")]
    return None if lines == ["ok"] else (lines[0] if lines else "quick_check failed")


def connect(path: Path) -> sqlite3.Connection:
    """Open `path` (creating parent folders), check it is a healthy database, and set per-connection pragmas.

    Journal mode is left alone here: switching to WAL writes the header, which must wait until the
    schema version has been checked.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unreadable(path, error.strerror or error) from error
    if path.is_dir():
        raise unreadable(path, "it is a directory")
    _check_header(path)
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so transactions stay short.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as error:
        raise unreadable(path, error) from error
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        problem = _first_problem(conn.execute("PRAGMA quick_check").fetchall())
    except sqlite3.DatabaseError as error:
        conn.close()
        raise corrupt(path, error) from error
    if problem is not None:
        conn.close()
        raise corrupt(path, problem)
    return conn


def enable_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Switch to WAL (persistent; readers never block the writer) with synchronous=NORMAL."""
    # NORMAL in WAL mode: a commit survives the process being killed; only a power cut may lose the last
    # few commits, and the file stays consistent either way. FULL would fsync every message for little gain.
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as error:
        raise unreadable(path, error) from error
    if str(mode).lower() != "wal":
        raise unreadable(path, f"the file system refused WAL journaling (got {mode!r})")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A short write transaction that takes the write lock up front (BEGIN IMMEDIATE) and commits on exit."""
    # Taking the lock at BEGIN lets the busy timeout wait for another writer instead of failing mid-way.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
