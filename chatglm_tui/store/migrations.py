"""Schema upgrades as an ordered list keyed on `PRAGMA user_version` (simonw/llm's migrations idea).

`MIGRATIONS[n]` takes a database from version n to n + 1, inside one transaction together with the
version bump. Released migrations are never edited: a schema change is a new function appended here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from chatglm_tui.store.connection import transaction
from chatglm_tui.store.errors import StoreError

Migration = Callable[[sqlite3.Connection], None]

SEARCH_TABLE = "messages_fts"

_V1_TABLES = (
    """CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL DEFAULT '{}',
        instruction TEXT
    )""",
    # AUTOINCREMENT: ids are never reused after a delete, so "highest id" always means "newest".
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        text TEXT NOT NULL,
        created_at REAL NOT NULL,
        stopped INTEGER NOT NULL DEFAULT 0 CHECK (stopped IN (0, 1)),
        prompt_tokens INTEGER,
        new_tokens INTEGER,
        stats TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX messages_by_conversation ON messages(conversation_id, id)",
    "CREATE INDEX messages_by_parent ON messages(parent_id)",
    "CREATE INDEX conversations_by_updated ON conversations(updated_at)",
    "CREATE INDEX conversations_by_title ON conversations(title)",
)

# An external-content FTS5 table: the text lives once, in `messages`; triggers keep the index in step.
# The trigram tokenizer matches substrings, so Chinese (written without spaces) is searchable too.
_SEARCH_INDEX = (
    f"""CREATE VIRTUAL TABLE {SEARCH_TABLE} USING fts5(
        text, content='messages', content_rowid='id', tokenize='trigram'
    )""",
    f"""CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO {SEARCH_TABLE}(rowid, text) VALUES (new.id, new.text);
    END""",
    f"""CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    f"""CREATE TRIGGER messages_fts_update AFTER UPDATE OF text ON messages BEGIN
        INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO {SEARCH_TABLE}(rowid, text) VALUES (new.id, new.text);
    END""",
    f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}) VALUES ('rebuild')",  # backfill rows written before
)


def _m001_tables(conn: sqlite3.Connection) -> None:
    for statement in _V1_TABLES:
        conn.execute(statement)


def _m002_search_index(conn: sqlite3.Connection) -> None:
    # Without FTS5 (or its trigram tokenizer, SQLite < 3.34) the version still advances and search uses LIKE.
    if fts5_available(conn):
        create_search_index(conn)


MIGRATIONS: list[Migration] = [_m001_tables, _m002_search_index]
LATEST_VERSION = len(MIGRATIONS)


def fts5_available(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite can build the FTS5 trigram index (probed on a throwaway temp table)."""
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(text, tokenize='trigram')")
    except sqlite3.OperationalError:
        return False
    conn.execute("DROP TABLE temp.fts5_probe")
    return True


def create_search_index(conn: sqlite3.Connection) -> None:
    """Create the full-text index and its triggers, and fill it from the existing messages."""
    for statement in _SEARCH_INDEX:
        conn.execute(statement)


def has_search_index(conn: sqlite3.Connection) -> bool:
    """Whether the database carries the FTS5 message index."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SEARCH_TABLE,))
    return row.fetchone() is not None


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's `PRAGMA user_version` (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """Return the schema version, or raise StoreError if a newer chatglm-tui wrote this file."""
    version = schema_version(conn)
    if version > LATEST_VERSION:
        raise StoreError(
            f"the session store {path} has schema version {version}, newer than this chatglm-tui knows "
            f"({LATEST_VERSION}); upgrade chatglm-tui, or set CHATGLM_HOME to use another store"
        )
    return version


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the pending migrations, one transaction each; safe when several processes open the file at once."""
    while check_version(conn, path) < LATEST_VERSION:
        with transaction(conn):
            # Re-read under the write lock: another process may have migrated while we waited for it.
            version = check_version(conn, path)
            if version < LATEST_VERSION:
                MIGRATIONS[version](conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
    if not has_search_index(conn) and fts5_available(conn):
        # A store migrated by an SQLite without FTS5 gains its index once opened by one that has it.
        with transaction(conn):
            if not has_search_index(conn):
                create_search_index(conn)
