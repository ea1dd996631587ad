"""The prompt: a multi-line editor where Enter sends, ctrl+j adds a line, and ↑/↓ recall earlier prompts.

Pasted text (bracketed paste) is inserted with its newlines and never sends by itself. Text put into the prompt
(a paste, a question being edited, a recalled prompt, $EDITOR's result) is made inert first: its escape
sequences are shown, never sent to the terminal.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea

from chatglm_tui.terminal.inert import inert


class PromptInput(TextArea):
    """Where the user writes; posts `Submitted` on Enter and `Changed`-driven budget updates via TextArea."""

    BINDINGS = [
        Binding("enter", "submit", "Send", id="chat.send", priority=True, tooltip="Send the message"),
        Binding("ctrl+j,alt+enter,shift+enter", "newline", "New line", id="chat.newline", priority=True,
                tooltip="Insert a line break"),
        Binding("up", "history(-1)", "Earlier prompt", show=False, id="chat.history_previous",
                tooltip="On the first line: recall the previous prompt"),
        Binding("down", "history(1)", "Later prompt", show=False, id="chat.history_next",
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

    def load_text(self, text: str) -> None:
        super().load_text(inert(text))

    async def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea's own paste handler (Textual dispatches down the MRO), which inserts `event.text`.
        event.text = inert(event.text)

    def action_submit(self) -> None:
        if self.text.strip():
            self.post_message(self.Submitted(self, self.text))

    def action_newline(self) -> None:
        self.insert("\n")

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
