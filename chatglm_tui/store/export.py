"""Conversations to Markdown and JSON, and JSON back again (validated): pure functions, no SQL.

Markdown is for reading (`sessions show`, a file opened in a pager), so its text is inert: escape sequences and
controls are shown, never passed on (`chatglm_tui.terminal.inert`). Each message's text is fenced, so a pasted
document's headings, rules or lists stay inside its message instead of becoming the export's own sections. The JSON
export keeps the exact text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from chatglm_tui.store.errors import StoreError
from chatglm_tui.store.models import ROLES, Conversation, Message
from chatglm_tui.terminal.inert import inert, inert_line

FORMAT = "chatglm-tui/conversation"
FORMAT_VERSION = 1

_CONVERSATION_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "title": (str,), "created_at": (int, float), "updated_at": (int, float),
    "model": (str,), "params": (dict,), "instruction": (str, type(None)),
}
_MESSAGE_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (int,), "parent_id": (int, type(None)), "role": (str,), "text": (str,),
    "created_at": (int, float), "stopped": (bool,), "prompt_tokens": (int, type(None)),
    "new_tokens": (int, type(None)), "stats": (dict,),
}


_BACKTICK_RUNS = re.compile("`+")


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def fenced(text: str) -> str:
    """`text` in a fenced block that nothing inside it can close: its fence has more backticks than the text's
    longest run (and at least three), as CommonMark requires of a closing fence. The text is shown as written."""
    longest = max((len(run) for run in _BACKTICK_RUNS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}" if text else f"{fence}\n{fence}"


def render_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """A readable transcript: title, a metadata list, then one heading per message; stopped replies marked."""
    lines = [f"# {inert_line(conversation.title) or 'Untitled'}", "", f"- id: `{inert_line(conversation.id)}`"]
    if conversation.model:
        lines.append(f"- model: {inert_line(conversation.model)}")
    lines += [f"- created: {_when(conversation.created_at)}", f"- updated: {_when(conversation.updated_at)}"]
    if conversation.params:
        params = ", ".join(f"{key}={value}" for key, value in sorted(conversation.params.items()))
        lines.append(f"- params: {inert_line(params)}")
    if conversation.instruction:
        instruction = inert(conversation.instruction)
        if "\n" in instruction:  # more than one line would spill out of the list: a fence of its own
            lines += ["- instruction:", "", fenced(instruction)]
        else:
            lines.append(f"- instruction: {instruction}")
    for message in messages:
        heading = "User" if message.role == "user" else "Assistant"
        lines += ["", f"## {heading}{' (stopped)' if message.stopped else ''}", "", fenced(inert(message.text))]
        if message.stopped:
            lines += ["", "*The reply was stopped before it finished.*"]
    return "\n".join(lines) + "\n"


def export_dict(conversation: Conversation, messages: list[Message]) -> dict[str, Any]:
    """The JSON-ready export: format tag, the conversation, and every message (all branches), oldest first."""
    rows = []
    for message in messages:
        row = dataclasses.asdict(message)
        del row["conversation_id"]  # implied by the enclosing conversation; ids are remapped on import
        rows.append(row)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "conversation": dataclasses.asdict(conversation),
        "messages": rows,
    }


def _checked(record: object, fields: dict[str, tuple[type, ...]], where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise StoreError(f"cannot import: {where} is not a JSON object")
    for name, types in fields.items():
        value = record.get(name)
        # bool is an int subclass: refuse True where a number is meant, and 1 where a flag is meant.
        is_bool_mismatch = isinstance(value, bool) != (bool in types) and value is not None
        if name not in record or not isinstance(value, types) or is_bool_mismatch:
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise StoreError(f"cannot import: {where}.{name} must be {expected}")
        problem = _unstorable(value)
        if problem:
            raise StoreError(f"cannot import: {where}.{name} {problem}")
    return {name: record[name] for name in fields}


def _unstorable(value: object) -> str | None:
    """Why SQLite cannot hold `value` as it is, or None. JSON allows integers of any size, Python's json reads NaN
    and Infinity, and a "\\ud800" escape decodes to a lone surrogate, which is not text SQLite can store."""
    if isinstance(value, (str, dict)):
        try:
            (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).encode("utf-8")
        except UnicodeEncodeError:
            return "holds a lone surrogate (\\ud800-\\udfff): it is not valid Unicode text"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    fits = -(1 << 63) <= value < (1 << 63) if isinstance(value, int) else math.isfinite(value)
    return None if fits else f"= {str(value)[:40]} is out of range"


def parse_export(data: object) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate an export made by `export_dict`; return the conversation fields and the message rows."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"cannot import: not a chatglm-tui conversation export (expected format {FORMAT!r})")
    if data.get("version") != FORMAT_VERSION:
        raise StoreError(f"cannot import: export version {data.get('version')!r} is not supported; "
                         "upgrade chatglm-tui")
    conversation = _checked(data.get("conversation"), _CONVERSATION_FIELDS, "conversation")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list):
        raise StoreError("cannot import: 'messages' must be a list")
    messages, seen = [], set()
    for index, raw in enumerate(raw_messages):
        message = _checked(raw, _MESSAGE_FIELDS, f"messages[{index}]")
        if message["role"] not in ROLES:
            raise StoreError(f"cannot import: messages[{index}].role must be 'user' or 'assistant'")
        if message["parent_id"] is not None and message["parent_id"] not in seen:
            raise StoreError(f"cannot import: messages[{index}] has a parent that does not come before it")
        if message["id"] in seen:
            raise StoreError(f"cannot import: messages[{index}] repeats id {message['id']}")
        seen.add(message["id"])
        messages.append(message)
    return conversation, messages
