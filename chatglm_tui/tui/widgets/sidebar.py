"""The conversations sidebar: newest first, filtered as you type (titles and message text).

In the filter, ↓ goes into the list and Enter opens the first match (or the one highlighted) at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widget import Widget
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from chatglm_tui.config.keymap import default_keys
from chatglm_tui.store import Conversation
from chatglm_tui.terminal.inert import inert_line
from chatglm_tui.tui.inert_display import InertInput


def age(seconds: float, now: float) -> str:
    """A short relative time: 'now', '5m', '3h', '2d', or the date."""
    delta = max(now - seconds, 0)
    if delta < 60:
        return "now"
    for limit, unit_seconds, unit in ((3600, 60, "m"), (86400, 3600, "h"), (7 * 86400, 86400, "d")):
        if delta < limit:
            return f"{int(delta // unit_seconds)}{unit}"
    return time.strftime("%Y-%m-%d", time.localtime(seconds))


TITLE_CELLS = 27  # the sidebar is 32 cells wide, less padding and the scrollbar


class Sidebar(Vertical):
    """A filter box over the list of saved conversations."""

    # On the list itself its own ↓ (next conversation) comes first: this one only works in the filter.
    BINDINGS = [Binding(default_keys("sidebar.list"), "focus_list", "To the list", id="sidebar.list", show=False,
                        tooltip="From the filter into the list, the first match highlighted")]

    @dataclass
    class FilterChanged(Message):
        text: str

    @dataclass
    class Selected(Message):
        conversation_id: str

    def __init__(self, *, id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(id=id)
        self.conversations: list[Conversation] = []
        self.now = clock  # fixed in snapshot tests, so the ages shown stay the same

    def compose(self) -> ComposeResult:
        yield InertInput(placeholder="Filter conversations…", id="conversation-filter")
        yield OptionList(id="conversation-list")

    @property
    def option_list(self) -> OptionList:
        return self.query_one(OptionList)

    def show(self, conversations: Sequence[Conversation], current: str | None) -> None:
        """List `conversations` (already ordered); highlight the first match while filtering, else the current one."""
        self.conversations = list(conversations)
        now = self.now()
        options = []
        for conversation in conversations:
            label = Text(inert_line(conversation.title) or "Untitled")
            label.truncate(TITLE_CELLS, overflow="ellipsis")  # one line per title; the full one is in the pane
            label.append(f"\n{age(conversation.updated_at, now)}", style="dim")
            options.append(Option(label, id=conversation.id))
        option_list = self.option_list
        option_list.set_options(options)
        ids = [conversation.id for conversation in conversations]
        if self.filter_text.strip() and ids:
            option_list.highlighted = 0  # filtering: the best match is the one Enter opens
        elif current in ids:
            option_list.highlighted = ids.index(current)
        if not conversations:
            option_list.add_option(Option(Text("No conversations yet" if not self.filter_text
                                               else "No match", style="dim italic"), disabled=True))

    @property
    def filter_text(self) -> str:
        return self.query_one(InertInput).value

    def on_input_changed(self, event: InertInput.Changed) -> None:
        event.stop()
        self.post_message(self.FilterChanged(event.value))

    def on_input_submitted(self, event: InertInput.Submitted) -> None:
        """Enter in the filter opens the highlighted conversation (the first match while filtering) at once."""
        event.stop()
        # The list is already filtered by the text: the screen refreshes it on FilterChanged, which it receives
        # before the Enter key that led here has gone through it to the app's bindings.
        self.open_highlighted()

    def open_highlighted(self) -> None:
        if self.conversations:
            highlighted = self.option_list.highlighted
            index = highlighted if highlighted is not None and highlighted < len(self.conversations) else 0
            self.post_message(self.Selected(self.conversations[index].id))

    def action_focus_list(self) -> None:
        """Move to the list with the first (or current) conversation highlighted, ready for Enter."""
        option_list = self.option_list
        if option_list.highlighted is None and self.conversations:
            option_list.highlighted = 0
        option_list.focus()

    def find(self) -> None:
        """Show the sidebar (it may be hidden) and put the cursor in the filter."""
        self.display = True
        self.query_one(InertInput).focus()

    def toggle(self) -> None:
        self.display = not self.display

    @property
    def focus_stops(self) -> list[Widget]:
        """Where Tab stops in the sidebar: the filter and the list, while it is shown."""
        return [self.query_one(InertInput), self.option_list] if self.display else []

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Selected(event.option.id))
