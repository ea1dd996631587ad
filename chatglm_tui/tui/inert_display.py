"""Untrusted text on the chat app's screen: always inert, never parsed as Textual markup.

Titles, messages, replies, file names and error messages come from the store, the model, a checkpoint or the
user. Textual parses a `str` given to most widgets as markup (so `[/b]` raises and `[` + 3,000 digits pins a
core), and writes escape sequences it is given to the terminal, so every such text goes through here.
"""

from __future__ import annotations

from textual import events
from textual.content import Content
from textual.widgets import Input

from chatglm_tui.terminal.inert import inert, inert_line


def inert_content(text: str) -> Content:
    """`text` as plain Textual content: controls made visible, no markup."""
    return Content(inert(text))


def inert_label(text: str) -> Content:
    """`text` as plain one-line content (titles, names): controls made visible, whitespace folded."""
    return Content(inert_line(text))


class InertInput(Input):
    """A one-line input whose pasted text is made inert before it is shown (the user's own text is data too)."""

    def _on_paste(self, event: events.Paste) -> None:
        # Runs before Input's own paste handler (Textual dispatches down the MRO), which inserts `event.text`.
        event.text = inert_line(event.text)
