"""ChatApp: wiring only. Themes, keymap, the engine's load thread and the command palette; the chat lives in
ChatScreen. `make_app` is the one factory used by the CLI, the tests, the snapshot harness and screenshots."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial

from textual.app import App, SystemCommand
from textual.notifications import SeverityLevel
from textual.screen import Screen

from chatglm_tui.config.editing import save_theme_choice
from chatglm_tui.config.keymap import binding_conflicts, unknown_binding_ids
from chatglm_tui.config.settings import Settings, config_path
from chatglm_tui.engine.protocol import Engine
from chatglm_tui.errors import ChatGLMError
from chatglm_tui.session.chat_session import ChatSession
from chatglm_tui.store import SessionStore
from chatglm_tui.terminal.inert import inert, inert_line
from chatglm_tui.terminal.signals import STOP_SIGNALS
from chatglm_tui.tui.commands import OpenConversationProvider, chat_commands
from chatglm_tui.tui.keys import APP_BINDINGS, binding_rows
from chatglm_tui.tui.messages import post_engine_event
from chatglm_tui.tui.screens.chat import ChatScreen
from chatglm_tui.tui.screens.help import HelpScreen
from chatglm_tui.tui.themes import DEFAULT_THEME, load_themes

# After SIGHUP (the terminal window was closed) the app leaves within this, whatever restoring the dead terminal does.
HANGUP_GRACE_SECONDS = 3.0


class ChatApp(App[None]):
    """The `chatglm` terminal chat."""

    CSS_PATH = "chat.tcss"
    TITLE = "chatglm"
    BINDINGS = APP_BINDINGS
    COMMANDS = App.COMMANDS | {OpenConversationProvider}

    def __init__(self, settings: Settings, engine: Engine, store: SessionStore, *,
                 conversation_id: str | None = None, persist_theme: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.settings, self.engine, self.store = settings, engine, store
        self.persist_theme = persist_theme
        quantization = "fp16/fp32" if settings.quantization == "none" else settings.quantization
        # Until the engine says what runs: the local device and format, or the remote server.
        runs_on = ("remote", settings.endpoint) if settings.endpoint else (settings.device, quantization)
        self.chat_screen = ChatScreen(ChatSession(store, settings), engine, (settings.model, *runs_on),
                                      conversation_id, clock)

    def on_mount(self) -> None:
        self.apply_themes()
        self.apply_keymap()
        self.handle_stop_signals(install=True)
        self.push_screen(self.chat_screen)
        # The engine loads on its own thread; progress, readiness and a failure reach the chat screen as messages.
        self.engine.start_loading(partial(post_engine_event, self.chat_screen))

    # ---------------------------------------------------------------- themes and keys

    def apply_themes(self) -> None:
        themes, warnings = load_themes()
        for theme in themes:
            self.register_theme(theme)
        for warning in warnings:
            self.notify(warning, title="Theme not loaded", severity="warning", timeout=8)
        name = self.settings.theme
        if name not in self.available_themes:
            self.notify(f"Unknown theme {name!r}: using {DEFAULT_THEME}. Pick one with ctrl+p → Theme.",
                        severity="warning")
            name = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = name
        self.theme_changed_signal.subscribe(self, self.remember_theme)

    def remember_theme(self, theme: object) -> None:
        name = getattr(theme, "name", None)
        if not self.persist_theme or not isinstance(name, str) or name == self.settings.theme:
            return
        try:
            save_theme_choice(name)
        except ChatGLMError as exc:
            self.notify(f"The theme is not saved: {exc}", severity="warning")
        else:
            self.settings = dataclasses.replace(self.settings, theme=name)

    def apply_keymap(self) -> None:
        """Use the config's [keymap]; say which of its ids name no binding and which keys it gives to two."""
        keymap = self.settings.keymap
        unknown = unknown_binding_ids(keymap)
        if unknown:
            self.notify(f"Unknown binding id(s) in the [keymap] config: {', '.join(unknown)}. "
                        "Press F1 for the list.", severity="warning", timeout=10)
        conflicts = binding_conflicts(keymap)
        if conflicts:
            # Textual would quietly run one of the two (the footer may even show the other): say it, once.
            lines = [f"• {conflict.describe()}." for conflict in conflicts]
            self.notify("\n".join([*lines, f"(config file: {config_path()}; F1 lists every key)"]),
                        title="Key conflict in [keymap]", severity="warning", timeout=20)
        self.set_keymap(keymap)

    # ---------------------------------------------------------------- help, palette, quit

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(binding_rows(self.settings.keymap, self.get_key_display),
                                        self.engine.context_window))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        for title, help_text, callback in chat_commands(self.run_chat_action):
            yield SystemCommand(title, help_text, callback)
        yield SystemCommand("Help", "Keys, and what the context meter means", self.action_help)
        yield from super().get_system_commands(screen)

    async def run_chat_action(self, action: str) -> None:
        await self.chat_screen.run_action(action)

    async def action_quit(self) -> None:
        self.chat_screen.save_partial()
        self.exit()

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every notification is plain text: it may quote a title, a file name or an error (all untrusted)."""
        super().notify(inert(message), title=inert_line(title), severity=severity, timeout=timeout, markup=False)

    # ---------------------------------------------------------------- signals

    def handle_stop_signals(self, install: bool) -> None:
        """Install (or remove, on unmount) the handlers that make a signal quit like ctrl+q."""
        try:
            loop = asyncio.get_running_loop()
            for signum in STOP_SIGNALS:
                if install:
                    loop.add_signal_handler(signum, self.stop_on_signal, signum)
                else:
                    loop.remove_signal_handler(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here (Windows, not the main thread)
            pass

    def on_unmount(self) -> None:
        self.handle_stop_signals(install=False)

    def stop_on_signal(self, signum: int) -> None:
        """A stop signal: save the reply being written (marked stopped) first, then leave with 128 + signum."""
        self.chat_screen.save_partial()
        if signum == getattr(signal, "SIGHUP", None):
            # The terminal is gone: restoring it may fail or block; everything is saved, so never linger.
            watchdog = threading.Timer(HANGUP_GRACE_SECONDS, os._exit, (128 + signum,))
            watchdog.daemon = True
            watchdog.start()
        self.exit(return_code=128 + signum)


def make_app(settings: Settings, engine: Engine, store: SessionStore, *, conversation_id: str | None = None,
             persist_theme: bool = True, clock: Callable[[], float] = time.time) -> ChatApp:
    """The app, built from its three collaborators (the caller owns and closes the engine and the store).

    It opens on a new chat, or on `conversation_id`; `persist_theme` saves a theme change to the config file;
    `clock` dates the sidebar's entries (fixed in snapshots).
    """
    return ChatApp(settings, engine, store, conversation_id=conversation_id, persist_theme=persist_theme,
                   clock=clock)
