"""The prompt: a multi-line editor where Enter sends, ctrl+j adds a line, and ↑/↓ recall earlier prompts.

alt+enter adds a line too. tmux, and terminals whose Alt sends an escape, send it as ESC CR, which Textual would
read as a bare Enter (it names ESC + a letter alt+letter, but not ESC + CR): the prompt teaches Textual's reader
that sequence (`recognize_alt_enter`). ctrl+j is the key every terminal sends alike.

Pasted text (bracketed paste) is inserted with its newlines and never sends by itself. Text put into the prompt
(a paste, a question being edited, a recalled prompt, $EDITOR's result) is made inert first: its escape
sequences are shown, never sent to the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import cast

from textual import events
from textual._ansi_sequences import ANSI_SEQUENCES_KEYS
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from chatglm_tui.config.keymap import default_keys
from chatglm_tui.terminal.inert import inert


class _Key(str, Enum):
    """Key names for sequences Textual's reader does not know (it reports a sequence's keys by `.value`)."""

    ALT_ENTER = "alt+enter"


ALT_ENTER_SEQUENCE = "\x1b\r"  # ESC CR: alt+enter from tmux and from terminals whose Alt key sends an escape


def recognize_alt_enter() -> None:
    """Make Textual's input reader report ESC CR as alt+enter, not Enter (which would send); idempotent."""
    cast(dict[str, object], ANSI_SEQUENCES_KEYS).setdefault(ALT_ENTER_SEQUENCE, (_Key.ALT_ENTER,))


class PromptInput(TextArea):
    """Where the user writes; posts `Submitted` on Enter and `Changed`-driven budget updates via TextArea."""

    BINDINGS = [
        Binding(default_keys("chat.send"), "submit", "Send", id="chat.send", priority=True,
                tooltip="Send the message"),
        Binding(default_keys("chat.newline"), "newline", "New line", id="chat.newline", priority=True,
                tooltip="Insert a line break"),
        Binding(default_keys("chat.history_previous"), "history(-1)", "Earlier prompt", show=False,
                id="chat.history_previous", tooltip="On the first line: recall the previous prompt"),
        Binding(default_keys("chat.history_next"), "history(1)", "Later prompt", show=False, id="chat.history_next",
                tooltip="On the last line: recall the next prompt"),
    ]

    @dataclass
    class Submitted(Message):
        prompt_input: PromptInput
        text: str

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         placeholder="Ask anything…  (Enter send · ctrl+j new line · F1 help)")
        self.recall: list[str] = []
        self._history_index: int | None = None  # position while recalling; None while editing a fresh draft
        self._draft = ""
        self._recalled = ""  # the prompt last recalled: a different text means the user edited it

    def on_mount(self) -> None:
        recognize_alt_enter()  # here, not at import: it changes Textual's table for the whole process

    def load_text(self, text: str) -> None:
        super().load_text(inert(text))

    async def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea's own paste handler (Textual dispatches down the MRO), which inserts `event.text`.
        event.text = inert(event.text)

    # Enter and ctrl+j are priority bindings: they run as the app reads the key, while the characters typed just
    # before it are still queued for this widget (a burst: fast typing, one read from the terminal, the first
    # instants while the screen mounts). So both act from this widget's queue, after those characters.

    def action_submit(self) -> None:
        self.call_later(self._submit)

    def _submit(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.call_later(self.insert, "\n")

    def remember(self, text: str) -> None:
        """Add a sent prompt to the recall list (consecutive duplicates are kept once)."""
        if not self.recall or self.recall[-1] != text:
            self.recall.append(text)
        self._history_index = None

    def on_text_area_changed(self) -> None:
        # Typing into a recalled prompt makes it a new draft: ↑/↓ start again from the newest prompt.
        if self._history_index is not None and self.text != self._recalled:
            self._history_index = None

    def action_history(self, step: int) -> None:
        """↑ on the first screen row / ↓ on the last one walks the prompt history; elsewhere they move the cursor.

        Rows are the wrapped rows on screen, so ↑ in a long wrapped line still moves up within it.
        """
        location = self.cursor_location
        navigator = self.navigator
        at_edge = (navigator.is_first_wrapped_line(location) if step < 0
                   else navigator.is_last_wrapped_line(location))
        if not at_edge or not self.recall or (self._history_index is None and step > 0):
            self.action_cursor_up() if step < 0 else self.action_cursor_down()
            return
        if self._history_index is None:
            self._draft, self._history_index = self.text, len(self.recall)
        index = self._history_index + step
        if index < 0:
            return
        if index >= len(self.recall):
            self._history_index = None
            self.load_text(self._draft)
        else:
            self._history_index, self._recalled = index, inert(self.recall[index])
            self.load_text(self._recalled)
        self.move_cursor(self.document.end)
