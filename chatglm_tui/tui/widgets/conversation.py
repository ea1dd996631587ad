"""The transcript: message views in a scroll pinned to the bottom, with older messages mounted on demand.

Only about a screenful of the newest messages is mounted when a conversation opens, so a 500-message chat opens
about as fast as a short one; scrolling to the top (or the "Show earlier" button) mounts the next `PAGE` above,
keeping the view where it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from textual.containers import VerticalScroll
from textual.widgets import Button, Static

from chatglm_tui.store import Message
from chatglm_tui.tui.widgets.message_view import MessageView, Versions

PAGE = 10  # messages mounted at a time when scrolling up: each page costs a pause of this many

EMPTY_STATE = """\
[b]Ask ChatGLM-6B anything[/b], in Chinese or English.

[dim]Enter[/] send   [dim]ctrl+j[/] new line   [dim]ctrl+g[/] write in $EDITOR
[dim]Esc[/] stop a reply   [dim]ctrl+p[/] every command   [dim]F1[/] help

The meter below counts this chat against the model's 2,048-token window."""


@dataclass(frozen=True)
class Entry:
    """A message to show, with its version position and whether the model will still see it."""

    message: Message
    versions: Versions = Versions()
    left_out: bool = False

    def view(self) -> MessageView:
        return MessageView(self.message, versions=self.versions, left_out=self.left_out)


class Conversation(VerticalScroll, can_focus=False):
    """The messages of the branch on screen, oldest at the top."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._hidden: list[Entry] = []  # older entries not mounted yet, oldest first
        self._loading_earlier = False

    async def show(self, entries: Sequence[Entry]) -> None:
        """Replace the transcript with `entries` and scroll to the end; only about a screenful is mounted."""
        self._loading_earlier = True  # removing children scrolls to the top: that must not load a page
        hidden = list(entries)
        visible = self._take_screenful(hidden)
        await self.remove_children()
        widgets: list[Static | Button | MessageView] = []
        if not entries:
            widgets.append(Static(EMPTY_STATE, id="empty-state"))
        if hidden:
            widgets.append(self._earlier_button(len(hidden)))
        widgets += [entry.view() for entry in visible]
        await self.mount_all(widgets)
        self._hidden = hidden
        self.scroll_end(animate=False, immediate=True)
        self.anchor()
        self._loading_earlier = False
        self.call_after_refresh(self._fill_viewport)

    def _take_screenful(self, hidden: list[Entry]) -> list[Entry]:
        """Take from `hidden` the newest entries that (by a cheap estimate of wrapped lines) fill 1.5 screens."""
        width = max((self.size.width or 80) - 6, 20)
        wanted = max(self.size.height or 40, 10) * 3 // 2
        taken: list[Entry] = []
        rows = 0
        while hidden and (rows < wanted or not taken):
            entry = hidden.pop()
            lines = entry.message.text.splitlines() or [""]
            rows += 3 + sum(max(1, -(-len(line) // width)) for line in lines)
            taken.append(entry)
        taken.reverse()
        return taken

    def _fill_viewport(self) -> None:
        """Short messages may not fill the view (and then it cannot be scrolled up): mount more."""
        if self._hidden and self.virtual_size.height <= self.size.height:
            self.call_later(self.show_earlier)

    @staticmethod
    def _earlier_button(count: int) -> Button:
        return Button(f"↑ Show {min(count, PAGE)} earlier of {count} hidden message{'s' if count != 1 else ''}",
                      id="show-earlier", variant="default")

    async def show_earlier(self) -> None:
        """Mount the next page of older messages above the first one shown, keeping the view where it was."""
        if not self._hidden or self._loading_earlier:
            return
        self._loading_earlier = True
        page, self._hidden = self._hidden[-PAGE:], self._hidden[:-PAGE]
        views = [entry.view() for entry in page]
        height_before, y_before = self.virtual_size.height, self.scroll_y
        button = self.query_one("#show-earlier", Button)
        await self.mount_all(views, after=button)
        if self._hidden:
            button.label = self._earlier_button(len(self._hidden)).label
        else:
            await button.remove()

        def keep_place() -> None:
            self.scroll_to(y=y_before + self.virtual_size.height - height_before, animate=False, immediate=True)
            self._loading_earlier = False
            self._fill_viewport()

        self.call_after_refresh(keep_place)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if new_value < old_value and new_value <= 1 and self._hidden:
            self.call_later(self.show_earlier)  # reached the top while scrolling up: bring the next page

    async def add(self, view: MessageView) -> MessageView:
        """Append a message view (a new question or a streaming reply) and keep the end in sight."""
        for empty in self.query("#empty-state"):
            await empty.remove()
        await self.mount(view)
        self.anchor()
        return view

    def scroll_pages(self, pages: int) -> None:
        """Page up (pages < 0) or down, at once."""
        if pages < 0:
            self.scroll_page_up(animate=False)
        else:
            self.scroll_page_down(animate=False)

    @property
    def views(self) -> list[MessageView]:
        return list(self.query_children(MessageView))

    @property
    def hidden_count(self) -> int:
        return len(self._hidden)

    def mark_left_out(self, message_ids: set[int]) -> None:
        """Mark the mounted messages the model will not see (and unmark the others)."""
        self._hidden = [replace(entry, left_out=entry.message.id in message_ids) for entry in self._hidden]
        for view in self.views:
            view.set_left_out(view.message is not None and view.message.id in message_ids)
