"""`ChatHost`: the chat screen as the parts it is composed of see it (reply flow, question edit, actions).

A Protocol, not the `ChatScreen` class: the parts are imported by the screen, so they must not import it back.
"""

from __future__ import annotations

from typing import Protocol

from textual.app import App
from textual.notifications import SeverityLevel

from chatglm_tui.session.chat_session import ChatSession
from chatglm_tui.store import StoreError
from chatglm_tui.tui.widgets.conversation import Conversation
from chatglm_tui.tui.widgets.prompt_input import PromptInput


class ChatHost(Protocol):
    """The session on screen, the widgets the parts write to, and the redraws they ask for."""

    session: ChatSession
    load_state: str  # "loading", "ready" or "failed": the model's, as the status bar shows it
    load_error: str

    @property
    def app(self) -> App[object]: ...

    @property
    def conversation(self) -> Conversation: ...

    @property
    def prompt(self) -> PromptInput: ...

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None: ...

    def refresh_bindings(self) -> None: ...

    def refresh_budget(self) -> None: ...

    def refresh_sidebar(self, only_if_changed: bool = False) -> None: ...

    def show_title(self) -> None: ...

    async def show_branch(self, focus: int | None = None) -> None: ...

    def show_editing(self, message_id: int | None) -> None: ...

    def show_reply_speed(self, text: str) -> None: ...

    def store_problem(self, exc: StoreError) -> None: ...

    def stop_for_switch(self, discard: bool = False) -> None: ...
