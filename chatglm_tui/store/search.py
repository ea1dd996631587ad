"""Full-text search over message text: FTS5 trigram MATCH where the index exists, LIKE otherwise.

User input never reaches FTS5 query syntax: each whitespace-separated term becomes a quoted phrase
(inner quotes doubled), so operators, brackets and stray quotes are matched literally.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from chatglm_tui.store.migrations import SEARCH_TABLE

# The trigram index cannot match terms shorter than three characters (common in Chinese: 北京);
# those terms are checked with LIKE on the rows the index (or a scan) yields.
MIN_INDEXED_TERM = 3


def escape_like(text: str) -> str:
    """Escape LIKE wildcards with backslash (use with `ESCAPE '\\'`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fts_phrase(term: str) -> str:
    """`term` as an FTS5 string literal: matched as plain text whatever it contains."""
    return '"' + term.replace('"', '""') + '"'


def search_rows(conn: sqlite3.Connection, text: str, limit: int, conversation_columns: str,
                message_columns: str, *, use_index: bool) -> list[tuple[Any, ...]]:
    """Rows of conversation columns then message columns for messages containing every term of `text`.

    With the index, rows are ranked by bm25 (best first); otherwise, and for short-terms-only
    queries, the newest messages come first.
    """
    terms = text.split()
    if not terms or limit <= 0:
        return []
    indexed = [term for term in terms if len(term) >= MIN_INDEXED_TERM] if use_index else []
    scanned = [term for term in terms if term not in indexed]
    conditions = ["m.text LIKE ? ESCAPE '\\'"] * len(scanned)
    args: list[Any] = [f"%{escape_like(term)}%" for term in scanned]
    select = f"SELECT {conversation_columns}, {message_columns} FROM messages m " \
             "JOIN conversations c ON c.id = m.conversation_id"
    if indexed:
        select += f" JOIN {SEARCH_TABLE} f ON f.rowid = m.id"
        conditions.insert(0, f"{SEARCH_TABLE} MATCH ?")
        args.insert(0, " ".join(fts_phrase(term) for term in indexed))
        order = f"bm25({SEARCH_TABLE}), m.id DESC"
    else:
        order = "m.id DESC"
    sql = f"{select} WHERE {' AND '.join(conditions)} ORDER BY {order} LIMIT ?"
    return conn.execute(sql, (*args, limit)).fetchall()
