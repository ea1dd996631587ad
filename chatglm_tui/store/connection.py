"""Opening one SQLite file safely: refuse non-databases before SQLite touches them, then set the pragmas."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chatglm_tui.paths import file_kind, open_regular_file
from chatglm_tui.store.errors import StoreError

SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000
MOVE_ASIDE = "move it aside (chatglm-tui never deletes or overwrites it) and a new store will be created"
LOW_SPACE_BYTES = 1 << 20  # less free space than this on the store's file system reads as a full disk

# SQLite's primary result codes (the low byte of `sqlite_errorcode`): part of its stable C API. Named here because
# Python 3.10 has neither the sqlite3.SQLITE_* constants nor `sqlite_errorcode`.
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26
# Without `sqlite_errorcode` (Python 3.10) the code is recovered from SQLite's standard message for it.
_CODE_BY_MESSAGE = {
    "access permission denied": _PERM, "database is locked": _BUSY, "database table is locked": _LOCKED,
    "attempt to write a readonly database": _READONLY, "disk I/O error": _IOERR,
    "database disk image is malformed": _CORRUPT, "database or disk is full": _FULL,
    "unable to open database file": _CANTOPEN, "file is not a database": _NOTADB,
}
_ADVICE = {
    "read-only file system": "set CHATGLM_HOME to a folder on a writable disk",
    "permission denied": "make the file and its folder writable by you, or set CHATGLM_HOME to another folder",
    "no space left on device": "free some disk space, then try again",
}


def unreadable(path: Path, reason: object) -> StoreError:
    """The error for a store we cannot open at all (permissions, a directory or FIFO in the way)."""
    return StoreError(f"cannot open the session store {path}: {reason}; check the path and its permissions")


def corrupt(path: Path, reason: object) -> StoreError:
    """The error for a file that is not, or no longer, a healthy SQLite database."""
    return StoreError(f"the session store {path} is damaged ({reason}); {MOVE_ASIDE}")


def unwritable(path: Path, reason: str) -> StoreError:
    """The error for a store SQLite cannot write: a read-only disk or folder, a full disk, a failing disk."""
    advice = _ADVICE.get(reason, "free some disk space or fix what blocks the folder, then try again")
    return StoreError(f"cannot write to the session store {path}: {reason}; {advice}")


def store_error(path: Path, error: sqlite3.Error) -> StoreError:
    """The one-line StoreError for an SQLite failure on the store at `path`, worded by its real cause.

    Only SQLITE_CORRUPT and SQLITE_NOTADB mean the file is damaged; a read-only or full disk, a lock held by
    another process and other failures each say what really happened, and never advise moving the file aside.
    """
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else _CODE_BY_MESSAGE.get(str(error))
    if primary in (_CORRUPT, _NOTADB):
        return corrupt(path, error)
    if primary in (_BUSY, _LOCKED):
        return StoreError(f"the session store {path} failed: {error}; another process kept it busy; try again")
    reason = _disk_problem(path) if primary in (_PERM, _READONLY, _IOERR, _FULL, _CANTOPEN) else None
    if primary == _CANTOPEN:
        return unreadable(path, reason or error)
    if primary in (_PERM, _READONLY, _IOERR, _FULL):
        return unwritable(path, reason or str(error))
    return StoreError(f"the session store {path} failed: {error}; try again, and report a bug if it persists")


def _disk_problem(path: Path) -> str | None:
    """What about the file system, folder or SQLite's side files stops the store being written, if we can tell."""
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        try:
            mode = side.stat().st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            return f"{side} is {file_kind(mode)}, not a file"
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return None
    if disk.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if disk.f_bavail * disk.f_frsize < LOW_SPACE_BYTES:
        return "no space left on device"
    if any(place.exists() and not os.access(place, os.W_OK) for place in (path, path.parent)):
        return "permission denied"
    return None


def _check_header(path: Path) -> None:
    # Reading the 16-byte magic ourselves means a stray file is rejected before SQLite could write to it, and
    # a FIFO or device (which would hang or never end) is refused unread.
    try:
        with open_regular_file(path) as file:
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
    _check_header(path)
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so transactions stay short.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as error:
        raise store_error(path, error) from error
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        problem = _first_problem(conn.execute("PRAGMA quick_check").fetchall())
    except sqlite3.DatabaseError as error:
        conn.close()
        raise store_error(path, error) from error
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
        raise store_error(path, error) from error
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
