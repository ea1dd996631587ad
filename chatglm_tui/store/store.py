"""SessionStore: conversations and their branching messages in one SQLite file (WAL), shared by processes.

Each thread or process opens its own `SessionStore` (a connection refuses use from another thread).
Every write is one short `BEGIN IMMEDIATE` transaction committed before the method returns, so a
crash loses at most the reply still being generated, and two processes writing at once both succeed
(the busy timeout makes each wait for the other's few-millisecond transaction).
"""

from __future__ import annotations

import enum
import functools
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar

from chatglm_tui import paths
from chatglm_tui.store import export, migrations
from chatglm_tui.store.connection import connect, enable_wal, store_error, transaction
from chatglm_tui.store.errors import StoreError
from chatglm_tui.store.models import ROLES, Conversation, Message, Role
from chatglm_tui.store.rounds import rounds_of
from chatglm_tui.store.search import escape_like, search_rows
from chatglm_tui.store.titles import clean_title

P = ParamSpec("P")
R = TypeVar("R")

CONVERSATION_COLUMNS = "c.id, c.title, c.created_at, c.updated_at, c.model, c.params, c.instruction"
MESSAGE_COLUMNS = ("m.id, m.conversation_id, m.role, m.text, m.created_at, m.parent_id, m.stopped, "
                   "m.prompt_tokens, m.new_tokens, m.stats")
_CONVERSATION_WIDTH = CONVERSATION_COLUMNS.count(",") + 1


class _Default(enum.Enum):
    """Sentinels for 'argument not given' where None is a meaningful value."""

    LAST = "the current branch's last message"
    KEEP = "unchanged"


def default_store_path() -> Path:
    """Where the session store lives: `<data dir>/sessions.sqlite3` (`CHATGLM_HOME` moves it)."""
    return paths.data_dir() / "sessions.sqlite3"


def conversation_from_row(row: Sequence[Any]) -> Conversation:
    """Build a Conversation from a row selected with CONVERSATION_COLUMNS."""
    return Conversation(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])


def message_from_row(row: Sequence[Any]) -> Message:
    """Build a Message from a row selected with MESSAGE_COLUMNS."""
    return Message(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8],
                   json.loads(row[9]))


def _dump(value: dict[str, Any] | None) -> str:
    return json.dumps(value or {}, ensure_ascii=False, sort_keys=True)


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Turn SQLite failures inside a public method into a one-line StoreError naming the file."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.ProgrammingError:
            raise  # misuse (closed store, wrong thread) is a bug, not a user problem
        except sqlite3.DatabaseError as error:
            store = args[0]
            assert isinstance(store, SessionStore)
            raise store_error(store.path, error) from error

    return wrapper


class SessionStore:
    """Conversations and messages in one SQLite file; usable as a context manager."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        """Open (creating if missing) and migrate the store at `path`; StoreError if it cannot be used.

        Args:
            path: the SQLite file; its parent folders are created if missing.
            clock: the source of timestamps, replaceable so tests and snapshots are deterministic.
        """
        self.path = Path(path)
        self._clock = clock
        self._conn = connect(self.path)
        try:
            migrations.check_version(self._conn, self.path)
            enable_wal(self._conn, self.path)
            migrations.migrate(self._conn, self.path)
            self._has_search_index = migrations.has_search_index(self._conn)
        except sqlite3.DatabaseError as error:
            self._conn.close()
            raise store_error(self.path, error) from error
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # Conversations ------------------------------------------------------------------------------------

    @_translated
    def create_conversation(self, title: str, model: str = "", params: dict[str, Any] | None = None,
                            instruction: str | None = None) -> Conversation:
        """Create and return an empty conversation with a fresh 12-hex-character id (its title cleaned)."""
        now = self._clock()
        with transaction(self._conn):
            conversation_id = self._unused_id()
            self._conn.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at, model, params, instruction) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, clean_title(title), now, now, model, _dump(params), instruction))
        return self.get(conversation_id)

    def _unused_id(self) -> str:
        while True:  # 48 random bits: a collision is astronomically rare, but cheap to rule out
            candidate = secrets.token_hex(6)
            if not self._conn.execute("SELECT 1 FROM conversations WHERE id = ?", (candidate,)).fetchone():
                return candidate

    @_translated
    def get(self, conversation_id: str) -> Conversation:
        """The conversation with exactly this id; StoreError if there is none."""
        row = self._conn.execute(f"SELECT {CONVERSATION_COLUMNS} FROM conversations c WHERE c.id = ?",
                                 (conversation_id,)).fetchone()
        if row is None:
            raise StoreError(f"no conversation with id {conversation_id!r}; "
                             "`chatglm sessions list` shows the saved ones")
        return conversation_from_row(row)

    @_translated
    def resolve(self, ref: str) -> Conversation:
        """Find a conversation by exact id, unique id prefix, or exact title (the most recent of equal titles)."""
        exact = self._select_conversations("WHERE c.id = ?", (ref,))
        if exact:
            return exact[0]
        prefix = ref.lower()  # ids are lowercase hex; a prefix copied in capitals still finds them
        by_prefix = self._select_conversations("WHERE substr(c.id, 1, ?) = ?", (len(prefix), prefix)) if ref else []
        by_title = self._select_conversations("WHERE c.title = ?", (ref,))[:1]
        candidates = {conversation.id: conversation for conversation in by_prefix + by_title}
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        if not candidates:
            raise StoreError(f"no conversation matches {ref!r} (by id, id prefix or title); "
                             "`chatglm sessions list` shows the saved ones")
        shown = ", ".join(f"{c.id} ({c.title!r})" for c in list(candidates.values())[:5])
        raise StoreError(f"{ref!r} matches {len(candidates)} conversations: {shown}; give more of the id")

    @_translated
    def latest(self) -> Conversation | None:
        """The most recently updated conversation, or None when the store is empty."""
        found = self._select_conversations("", (), limit=1)
        return found[0] if found else None

    @_translated
    def list_conversations(self, limit: int | None = None, title_filter: str | None = None) -> list[Conversation]:
        """Conversations, most recently updated first; `title_filter` keeps titles containing it (ASCII case-blind)."""
        if title_filter:
            return self._select_conversations("WHERE c.title LIKE ? ESCAPE '\\'",
                                              (f"%{escape_like(title_filter)}%",), limit=limit)
        return self._select_conversations("", (), limit=limit)

    def _select_conversations(self, where: str, args: tuple[Any, ...], limit: int | None = None) -> list[Conversation]:
        # rowid breaks ties between equal timestamps so the order is stable (newest insert first).
        sql = f"SELECT {CONVERSATION_COLUMNS} FROM conversations c {where} ORDER BY c.updated_at DESC, c.rowid DESC"
        if limit is not None:
            sql, args = sql + " LIMIT ?", (*args, limit)
        return [conversation_from_row(row) for row in self._conn.execute(sql, args)]

    @_translated
    def rename(self, conversation_id: str, title: str) -> Conversation:
        """Give a conversation a new title, cleaned (its `updated_at`, which orders the list, is left alone)."""
        return self._set(conversation_id, "title = ?", (clean_title(title),))

    @_translated
    def update(self, conversation_id: str, *, params: dict[str, Any] | None = None,
               instruction: str | None | Literal[_Default.KEEP] = _Default.KEEP) -> Conversation:
        """Replace the params (None keeps them) and/or the instruction (omitted keeps it, None clears it)."""
        assignments: list[str] = []
        args: list[str | None] = []
        if params is not None:
            assignments.append("params = ?")
            args.append(_dump(params))
        if instruction is not _Default.KEEP:
            assignments.append("instruction = ?")
            args.append(instruction)
        if not assignments:
            return self.get(conversation_id)
        return self._set(conversation_id, ", ".join(assignments), tuple(args))

    def _set(self, conversation_id: str, assignments: str, args: tuple[Any, ...]) -> Conversation:
        with transaction(self._conn):
            cursor = self._conn.execute(f"UPDATE conversations SET {assignments} WHERE id = ?",
                                        (*args, conversation_id))
        if cursor.rowcount == 0:
            self.get(conversation_id)  # raises the "no conversation" error
        return self.get(conversation_id)

    @_translated
    def delete(self, conversation_id: str) -> None:
        """Delete a conversation and (by ON DELETE CASCADE) all its messages, however many; StoreError if missing."""
        with transaction(self._conn):
            # Detach the messages from their parents first: left linked, the parent_id cascade would recurse one
            # trigger level per message down the chain and fail past SQLite's depth limit (1000) on a long chat.
            # Changing parent_id fires no trigger (the search index follows `text` only) and no cascade.
            self._conn.execute("UPDATE messages SET parent_id = NULL WHERE conversation_id = ? "
                               "AND parent_id IS NOT NULL", (conversation_id,))
            cursor = self._conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        if cursor.rowcount == 0:
            self.get(conversation_id)

    # Messages -----------------------------------------------------------------------------------------

    @_translated
    def add_message(self, conversation_id: str, role: Role, text: str,
                    parent_id: int | None | Literal[_Default.LAST] = _Default.LAST, stopped: bool = False,
                    prompt_tokens: int | None = None, new_tokens: int | None = None,
                    stats: dict[str, Any] | None = None) -> Message:
        """Append a message and commit it at once; its parent defaults to the current branch's last message.

        Pass an earlier message as `parent_id` to branch (regenerate: the user message; edit: its parent),
        or None for a new root. Bumps the conversation's `updated_at`.
        """
        if role not in ROLES:
            raise StoreError(f"a message role must be 'user' or 'assistant', not {role!r}")
        now = self._clock()
        with transaction(self._conn):
            self.get(conversation_id)
            parent = self._newest_message_id(conversation_id) if parent_id is _Default.LAST else parent_id
            if parent is not None:
                self._require_message(conversation_id, parent)
            cursor = self._conn.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, text, created_at, stopped, "
                "prompt_tokens, new_tokens, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (conversation_id, parent, role, text, now, int(stopped), prompt_tokens, new_tokens, _dump(stats)))
            self._conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
        assert cursor.lastrowid is not None
        return Message(cursor.lastrowid, conversation_id, role, text, now, parent, stopped, prompt_tokens,
                       new_tokens, json.loads(_dump(stats)))

    def _newest_message_id(self, conversation_id: str) -> int | None:
        row = self._conn.execute("SELECT max(id) FROM messages WHERE conversation_id = ?",
                                 (conversation_id,)).fetchone()
        return None if row[0] is None else int(row[0])

    def _require_message(self, conversation_id: str, message_id: int) -> Message:
        row = self._conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = ?",
                                 (message_id,)).fetchone()
        if row is None or row[1] != conversation_id:
            raise StoreError(f"conversation {conversation_id} has no message {message_id}")
        return message_from_row(row)

    @_translated
    def messages(self, conversation_id: str, leaf_id: int | None = None) -> list[Message]:
        """The branch ending at `leaf_id` (default: the newest message), root first; [] for an empty chat."""
        self.get(conversation_id)
        leaf = self._newest_message_id(conversation_id) if leaf_id is None else leaf_id
        if leaf is None:
            return []
        self._require_message(conversation_id, leaf)
        rows = self._conn.execute(
            "WITH RECURSIVE branch(id, depth) AS (SELECT ?, 0 UNION ALL "
            "SELECT m.parent_id, b.depth + 1 FROM messages m JOIN branch b ON m.id = b.id "
            "WHERE m.parent_id IS NOT NULL) "
            f"SELECT {MESSAGE_COLUMNS} FROM branch b JOIN messages m ON m.id = b.id ORDER BY b.depth DESC",
            (leaf,))
        return [message_from_row(row) for row in rows]

    @_translated
    def branches(self, message_id: int) -> list[Message]:
        """The versions of a message: it and its siblings (same parent, same conversation), oldest first."""
        row = self._conn.execute("SELECT conversation_id, parent_id FROM messages WHERE id = ?",
                                 (message_id,)).fetchone()
        if row is None:
            raise StoreError(f"no message with id {message_id}")
        rows = self._conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = ? AND m.parent_id IS ? "
            "ORDER BY m.id", (row[0], row[1]))
        return [message_from_row(found) for found in rows]

    @_translated
    def all_messages(self, conversation_id: str) -> list[Message]:
        """Every message of a conversation, on all branches, oldest first."""
        self.get(conversation_id)
        rows = self._conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.conversation_id = ? "
                                  "ORDER BY m.id", (conversation_id,))
        return [message_from_row(row) for row in rows]

    def history(self, conversation_id: str) -> list[tuple[str, str]]:
        """(user, assistant) pairs of the current branch, as the model's history for the next question.

        A question without a reply (followed by another question, or the last one, whose reply failed) is paired
        with an empty reply, so nothing is dropped and the history of a turn never changes later.
        """
        return rounds_of(self.messages(conversation_id))[0]

    @_translated
    def search(self, text: str, limit: int = 20) -> list[tuple[Conversation, Message]]:
        """Messages containing every whitespace-separated term of `text` (any input is safe), best match first."""
        rows = search_rows(self._conn, text, limit, CONVERSATION_COLUMNS, MESSAGE_COLUMNS,
                           use_index=self._has_search_index)
        return [(conversation_from_row(row[:_CONVERSATION_WIDTH]), message_from_row(row[_CONVERSATION_WIDTH:]))
                for row in rows]

    # Export and import --------------------------------------------------------------------------------

    def export_markdown(self, conversation_id: str, leaf_id: int | None = None) -> str:
        """A branch (default: the newest message's) as Markdown: title, metadata, a heading per message;
        stopped replies marked."""
        return export.render_markdown(self.get(conversation_id), self.messages(conversation_id, leaf_id))

    def export_json(self, conversation_id: str) -> dict[str, Any]:
        """The whole conversation, every branch included, as a `json.dumps`-able dict (see `import_json`)."""
        return export.export_dict(self.get(conversation_id), self.all_messages(conversation_id))

    @_translated
    def import_json(self, data: object, *, fresh_id: bool = False) -> Conversation:
        """Add a conversation from `export_json` output in one transaction: all of it, or nothing on any error.

        Everything exported is kept (title, model, params, instruction, timestamps, and every message of every
        branch with its parent link, stopped flag, token counts and stats) except the ids: message ids are
        store-wide, so each gets a new one; the conversation keeps its id unless that id is taken or `fresh_id`
        asks for a new one (`chatglm sessions import` does: an import is a new conversation, never mistaken for
        the one it was exported from).
        """
        fields, rows = export.parse_export(data)
        with transaction(self._conn):
            taken = self._conn.execute("SELECT 1 FROM conversations WHERE id = ?", (fields["id"],)).fetchone()
            if fresh_id or taken or not is_conversation_id(fields["id"]):
                fields["id"] = self._unused_id()
            self._conn.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at, model, params, instruction) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fields["id"], clean_title(fields["title"]), fields["created_at"], fields["updated_at"],
                 fields["model"], _dump(fields["params"]), fields["instruction"]))
            new_ids: dict[int, int] = {}  # message ids are store-wide, so each gets a fresh one
            for row in rows:
                cursor = self._conn.execute(
                    "INSERT INTO messages (conversation_id, parent_id, role, text, created_at, stopped, "
                    "prompt_tokens, new_tokens, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (fields["id"], new_ids.get(row["parent_id"]), row["role"], row["text"], row["created_at"],
                     int(row["stopped"]), row["prompt_tokens"], row["new_tokens"], _dump(row["stats"])))
                assert cursor.lastrowid is not None
                new_ids[row["id"]] = cursor.lastrowid
        return self.get(fields["id"])


def is_conversation_id(value: str) -> bool:
    """Whether `value` has the shape of a conversation id (12 lowercase hex characters)."""
    return len(value) == 12 and all(char in "0123456789abcdef" for char in value)
