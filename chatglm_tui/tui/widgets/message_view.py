"""One message of the transcript: a header (who, version, stopped, left out, speed) and its text.

Finished replies are static Markdown; a streaming reply appends only its new text through `MarkdownStream`,
then is rendered once in full when it ends (a code fence open mid-stream would otherwise stay unstyled). The
text is shown inert (`chatglm_tui.terminal.inert`): escape sequences in a message or reply are made visible, never sent
to the terminal; `self.text` keeps the exact text (for copying).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message as TextualMessage
from textual.widgets import Markdown, Static

from chatglm_tui.config.keymap import default_keys
from chatglm_tui.store import Message
from chatglm_tui.terminal.inert import StreamingInert, inert
from chatglm_tui.tui.inert_display import inert_content

if TYPE_CHECKING:
    from textual.widgets._markdown import MarkdownStream


@dataclass(frozen=True)
class Versions:
    """Which version of a message this is (1-based) and how many there are."""

    index: int = 1
    count: int = 1


class MessageView(Vertical, can_focus=True):
    """A user message or a reply; focus it (shift+tab from the prompt, then ↑/↓) to act on it, Esc to go back."""

    BINDINGS = [
        Binding(default_keys("message.previous"), "neighbour(-1)", "Previous message", show=False,
                id="message.previous", tooltip="Focus the message above"),
        Binding(default_keys("message.next"), "neighbour(1)", "Next message", show=False, id="message.next",
                tooltip="Focus the message below"),
        Binding(default_keys("message.copy"), "copy", "Copy", id="message.copy", tooltip="Copy this message's text"),
        Binding(default_keys("message.copy_code"), "copy_code", "Copy code", id="message.copy_code",
                tooltip="Copy a code block of this message"),
        Binding(default_keys("message.edit"), "edit", "Edit", id="message.edit",
                tooltip="Edit this question and send it as a new version"),
        Binding(default_keys("message.older_version"), "version(-1)", "Older version", id="message.older_version",
                tooltip="Show the previous version of this message (and its branch)"),
        Binding(default_keys("message.newer_version"), "version(1)", "Newer version", id="message.newer_version",
                tooltip="Show the next version of this message (and its branch)"),
    ]

    @dataclass
    class CopyRequested(TextualMessage):
        view: MessageView

    @dataclass
    class CodeCopyRequested(TextualMessage):
        view: MessageView

    @dataclass
    class EditRequested(TextualMessage):
        view: MessageView

    @dataclass
    class VersionRequested(TextualMessage):
        view: MessageView
        step: int  # -1: the older version, +1: the newer one

    @dataclass
    class Left(TextualMessage):
        """Esc, or a character typed that no key binding takes: back to the prompt, with the character."""

        view: MessageView
        typed: str | None

    def __init__(self, message: Message | None, *, role: str = "assistant", versions: Versions = Versions(),
                 left_out: bool = False) -> None:
        super().__init__(classes=f"-{message.role if message else role}")
        self.message = message
        self.role = message.role if message else role
        self.versions = versions
        self.text = message.text if message else ""
        self.streaming = message is None
        self.note = ""  # what a streaming reply is waiting for (model load, reading the prompt)
        self._stream: MarkdownStream | None = None
        self._inert = StreamingInert()
        self.set_class(left_out, "-left-out")
        self.set_class(bool(message and message.stopped), "-stopped")

    def compose(self) -> ComposeResult:
        yield Static(self.header_text(), classes="message-header")
        if self.role == "user":
            yield Static(inert_content(self.text), classes="message-body")
        else:
            yield Markdown(inert(self.text), classes="message-body")

    # ---------------------------------------------------------------- header

    def header_text(self) -> Text:
        header = Text("You" if self.role == "user" else "ChatGLM", style="bold")
        if self.versions.count > 1:
            header.append(f"  ‹ {self.versions.index}/{self.versions.count} ›", style="italic")
        if self.streaming:
            header.append(f"  {self.note or 'writing…'}", style="italic")
        if self.message is not None and self.message.stopped:
            header.append("  ■ stopped", style="bold")
        elif self.message is not None and self.message.stats.get("reason") == "length":
            # It looks finished but is not: the reply limit ended it. F9 (chat.continue) goes on from here.
            header.append("  ✂ cut off at the reply limit · F9 continues it", style="bold")
        if self.has_class("-left-out"):
            header.append("  ⊘ left out of the model's context", style="italic")
        stats = self.message.stats if self.message else {}
        if self.message is not None and self.message.new_tokens:
            rate = stats.get("tokens_per_s")
            header.append(f"   {self.message.new_tokens} tokens" + (f" · {rate:.1f} tok/s" if rate else ""),
                          style="dim")
        return header

    def refresh_header(self) -> None:
        self.query_one(".message-header", Static).update(self.header_text())

    def set_left_out(self, left_out: bool) -> None:
        if left_out != self.has_class("-left-out"):
            self.set_class(left_out, "-left-out")
            self.refresh_header()

    # ---------------------------------------------------------------- streaming

    async def append(self, text: str) -> None:
        """Add streamed text; only the new part is parsed and rendered."""
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(Markdown))
        self.text += text
        shown = self._inert.feed(text)
        if shown:
            await self._stream.write(shown)

    async def finish(self, message: Message | None, text: str | None = None) -> None:
        """End the stream: the saved message (None if the reply failed and `text` says why) is shown in full."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        self.streaming = False
        self.message = message
        self.text = message.text if message else (text or self.text)
        self.set_class(bool(message and message.stopped), "-stopped")
        self.set_class(message is None, "-failed")
        self._inert = StreamingInert()
        await self.query_one(Markdown).update(inert(self.text))
        self.refresh_header()

    # ---------------------------------------------------------------- actions

    def on_key(self, event: events.Key) -> None:
        """Esc, or typing (a character no binding takes), leaves the message for the prompt: the text goes there."""
        bound = self.screen.active_bindings.get(event.key)
        if bound is not None and bound.node is self:
            return  # this message's own key (y, c, e, ←/→ or what the keymap made them)
        if event.key == "escape" or (event.is_printable and bound is None):
            event.stop()
            event.prevent_default()
            self.post_message(self.Left(self, None if event.key == "escape" else event.character))

    def action_neighbour(self, step: int) -> None:
        views = list(self.parent.query_children(MessageView)) if self.parent else []
        index = views.index(self) + step
        if 0 <= index < len(views):
            views[index].focus()
            views[index].scroll_visible()

    def action_copy(self) -> None:
        self.post_message(self.CopyRequested(self))

    def action_copy_code(self) -> None:
        self.post_message(self.CodeCopyRequested(self))

    def action_edit(self) -> None:
        self.post_message(self.EditRequested(self))

    def action_version(self, step: int) -> None:
        self.post_message(self.VersionRequested(self, step))
