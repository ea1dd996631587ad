"""Fixtures for the TUI Pilot tests: a fresh home and store per test, the fake engine, recorded notifications and
copies, and `wait_for` (one `pilot.pause()` is not enough for replies streamed from a thread)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import OptionList

from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.fake import FakeEngine
from chatglm_tui.store import Message, SessionStore
from chatglm_tui.tui.app import ChatApp, make_app


async def wait_for(pilot: Any, predicate: Callable[[], object], timeout: float = 5.0,
                   what: str | None = None) -> None:
    """Poll `predicate` between short pauses until it holds; fail naming what was awaited if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            label = what or getattr(predicate, "__doc__", None) or repr(predicate)
            pytest.fail(f"timed out after {timeout:.1f}s waiting for: {label}")
        await pilot.pause(0.02)


@dataclass
class Recorder:
    """What the app told the user (notifications) and what it handed to the clipboard tool."""

    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (severity, title, message)
    tool_copies: list[str] = field(default_factory=list)

    def messages(self, severity: str | None = None) -> list[str]:
        return [message for kind, _, message in self.notes if severity is None or kind == severity]

    def has(self, fragment: str, severity: str | None = None) -> bool:
        return any(fragment in message for message in self.messages(severity))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CHATGLM_HOME of this test's own (config, data and the last-copy file land here)."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("CHATGLM_HOME", str(folder))
    return folder


@pytest.fixture
def store(home: Path, clock: Callable[[], float]) -> Iterator[SessionStore]:
    """The store the app under test uses; its ticking clock makes the sidebar's order deterministic."""
    with SessionStore(home / "data" / "sessions.sqlite3", clock=clock) as opened:
        yield opened


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Never runs a real clipboard program: copy_with_tool records the text and reports no tool."""
    recorded = Recorder()

    def fake_tool(text: str) -> str | None:
        recorded.tool_copies.append(text)
        return None

    monkeypatch.setattr("chatglm_tui.tui.conversation_actions.copy_with_tool", fake_tool)
    return recorded


@pytest.fixture
def build(store: SessionStore, recorder: Recorder) -> Iterator[Callable[..., ChatApp]]:
    """`build(engine=..., settings=..., persist_theme=False, **make_app options)`: a ChatApp over this test's
    store, its notifications recorded in `recorder`; every engine made is closed afterwards."""
    engines: list[FakeEngine] = []

    def make(engine: FakeEngine | None = None, settings: Settings | None = None, *,
             persist_theme: bool = False, **options: Any) -> ChatApp:
        engine = engine if engine is not None else FakeEngine()
        engines.append(engine)
        app = make_app(settings or Settings(), engine, store, persist_theme=persist_theme, **options)
        original = app.notify

        def notify(message: str, *, title: str = "", severity: str = "information", **kwargs: Any) -> None:
            recorder.notes.append((severity, title, str(message)))
            original(message, title=title, severity=severity, **kwargs)  # type: ignore[arg-type]

        app.notify = notify  # type: ignore[method-assign]
        return app

    yield make
    for engine in engines:
        engine.close()


# ------------------------------------------------------------------------------------------------ helpers


class UI:
    """Helpers for driving and reading the chat screen (the `ui` fixture)."""

    wait_for = staticmethod(wait_for)

    @staticmethod
    def views(app: ChatApp) -> list[Any]:
        """The MessageViews mounted in the transcript, top to bottom."""
        return app.chat_screen.conversation.views

    @staticmethod
    def view_texts(app: ChatApp) -> list[tuple[str, str]]:
        return [(view.role, view.text) for view in UI.views(app)]

    @staticmethod
    def header(view: Any) -> str:
        return str(view.header_text())

    @staticmethod
    async def started(pilot: Any) -> None:
        """Wait until the chat screen has mounted (its last step focuses the prompt)."""
        app = pilot.app
        await wait_for(pilot, lambda: app.focused is not None and app.focused is app.chat_screen.query_one("#prompt"),
                       what="the chat screen to mount")

    @staticmethod
    async def ready(pilot: Any) -> None:
        """Wait until the chat screen is up and the (ungated) fake model reports ready."""
        app = pilot.app
        await UI.started(pilot)
        await wait_for(pilot, lambda: app.chat_screen.load_state == "ready", what="the model to load")

    @staticmethod
    async def send(pilot: Any, text: str, *, finish: bool = True) -> None:
        """Put `text` in the prompt and press Enter; wait for the request, and by default for the reply to be saved."""
        app = pilot.app
        prompt = app.chat_screen.prompt
        prompt.focus()
        prompt.load_text(text)
        count = len(app.engine.requests)
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.engine.requests) > count, what=f"a request for {text!r}")
        if finish:
            await UI.finished(pilot)

    @staticmethod
    async def finished(pilot: Any) -> None:
        """Wait until no reply is pending and no view is still streaming."""
        app = pilot.app
        await wait_for(pilot, lambda: app.chat_screen.pending is None
                       and not any(view.streaming for view in UI.views(app)), what="the reply to finish")

    @staticmethod
    def add_rounds(store: SessionStore, conversation_id: str, rounds: list[tuple[str, str]],
                   parent: int | None = None) -> list[Message]:
        """Write whole rounds directly to the store, each message the child of the previous one."""
        written: list[Message] = []
        for question, answer in rounds:
            user = store.add_message(conversation_id, "user", question, parent_id=parent)
            reply = store.add_message(conversation_id, "assistant", answer, parent_id=user.id)
            written += [user, reply]
            parent = reply.id
        return written

    @staticmethod
    def sidebar_labels(app: ChatApp) -> list[str]:
        """The sidebar options' text (first line: the title)."""
        option_list = app.chat_screen.query_one("#conversation-list", OptionList)
        return [str(option_list.get_option_at_index(i).prompt).split("\n")[0] for i in range(option_list.option_count)]


@pytest.fixture
def ui() -> type[UI]:
    return UI
