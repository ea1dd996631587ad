"""Conversation titles: one line of plain text, made from a message or given by the user, cleaned when made.

A title is shown in lists, headers and prompts, so it never carries escape sequences, control characters or
line breaks (a piped document's first line can hold all three); they are dropped, whitespace is folded.
"""

from __future__ import annotations

from chatglm_tui.terminal.inert import strip_escapes

TITLE_LENGTH = 60
UNTITLED = "New chat"


def clean_title(title: str) -> str:
    """`title` as one clean line: escape sequences and controls dropped, whitespace folded (may be empty)."""
    return " ".join(strip_escapes(title).split())


def title_from(text: str, prefix: str = "") -> str:
    """A title from a message: `prefix` and its first line with text, cleaned, at most 60 characters."""
    line = next((cleaned for cleaned in map(clean_title, text.splitlines()) if cleaned), "")
    line = (prefix + line) if line else (prefix.strip() or UNTITLED)
    return line if len(line) <= TITLE_LENGTH else line[:TITLE_LENGTH - 1] + "…"
