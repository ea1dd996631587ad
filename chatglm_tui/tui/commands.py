"""The command palette's entries: every chat action, and "Open conversation…" over the saved chats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content
from textual.fuzzy import Matcher

from chatglm_tui.store import SessionStore
from chatglm_tui.terminal.inert import inert_line

# (title, help, ChatScreen action) for the palette, in the order shown when the search is empty.
CHAT_COMMANDS = (
    ("New chat", "Start a new conversation", "new_chat"),
    ("Stop reply", "Stop the reply being written (what it wrote is kept and saved)", "stop"),
    ("Regenerate reply", "Answer the last question again, as a new version", "regenerate"),
    ("Edit last question", "Edit your last question and send it as a new version", "edit_last"),
    ("Continue reply", "Go on with the last reply (one cut off at the reply limit, or stopped)", "continue_reply"),
    ("Attach a file", "Put a text file in the prompt (a long one is summarized in parts)", "attach_file"),
    ("Copy last reply", "Copy the last reply to the clipboard", "copy_reply"),
    ("Copy code block", "Copy a code block of the last reply", "copy_code"),
    ("Conversation settings", "Instruction, temperature, top-p, reply limit… for this chat", "conversation_settings"),
    ("Rename conversation", "Give this conversation a new title", "rename"),
    ("Export to Markdown", "Write this conversation to a Markdown file in the current folder", "export"),
    ("Delete conversation", "Delete this conversation (asks first)", "delete"),
    ("Find conversation", "Filter the saved conversations by title or text", "find_chat"),
    ("Toggle sidebar", "Show or hide the list of conversations", "toggle_sidebar"),
    ("Write in $EDITOR", "Compose the prompt in your editor", "open_editor"),
)


def chat_commands(run: Callable[[str], object]) -> Iterator[tuple[str, str, Callable[[], object]]]:
    """(title, help, callback) for each chat action; `run` performs a ChatScreen action by name."""
    for title, help_text, action in CHAT_COMMANDS:
        yield title, help_text, partial(run, action)


PALETTE_TITLE_LENGTH = 80  # fuzzy matching costs grow with the candidate's length: titles are cut first


def highlighted(matcher: Matcher, candidate: str) -> Content:
    """`candidate` as plain content (never parsed as markup) with the matcher's hits highlighted."""
    content = Content(candidate)
    _, offsets = matcher.fuzzy_search.match(matcher.query, candidate)
    for offset in offsets:
        if not candidate[offset].isspace():
            content = content.stylize(matcher.match_style, offset, offset + 1)
    return content


class ConversationOpener(Protocol):
    """The screen that shows a saved conversation (the chat screen)."""

    async def open_conversation(self, conversation_id: str) -> None: ...


class PaletteApp(Protocol):
    """What "Open conversation…" needs of the app that lists it: a Protocol, so this module never imports the app
    (which imports it)."""

    @property
    def store(self) -> SessionStore: ...

    @property
    def chat_screen(self) -> ConversationOpener: ...


class OpenConversationProvider(Provider):
    """"Open conversation: <title>" for each saved conversation, newest first."""

    @property
    def palette_app(self) -> PaletteApp:
        return cast(PaletteApp, self.app)  # only ChatApp lists this provider (in its COMMANDS)

    def _entries(self) -> list[tuple[str, str]]:
        return [(f"Open conversation: {inert_line(c.title)[:PALETTE_TITLE_LENGTH]}", c.id)
                for c in self.palette_app.store.list_conversations(limit=500)]

    async def discover(self) -> Hits:
        for title, conversation_id in self._entries()[:10]:
            yield DiscoveryHit(Content(title), partial(self._open, conversation_id), text=title,
                               help="Recent conversation")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, conversation_id in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, highlighted(matcher, title), partial(self._open, conversation_id), text=title,
                          help="Open this saved conversation")

    async def _open(self, conversation_id: str) -> None:
        await self.palette_app.chat_screen.open_conversation(conversation_id)
