"""`chatglm` with no command: build the settings, the store and the engine, and run the Textual app.

This is the only place the TUI gets concrete collaborators: the engine `cli.engines` chooses (the model loaded on
its own thread, downloaded on first use with progress in the status bar; a remote server; or the scripted one of
`--demo`), the store and the settings. The app opens at once; the model loads behind it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chatglm_tui.cli.engines import engine_for, for_display
from chatglm_tui.config.settings import Settings
from chatglm_tui.errors import ChatGLMError

if TYPE_CHECKING:
    from chatglm_tui.store import SessionStore


class NoTerminalError(ChatGLMError):
    """The chat needs a terminal on stdin and stdout."""

    exit_code = 2


@dataclass(frozen=True)
class ChatOptions:
    """What `chatglm` was asked to open, and with which settings."""

    settings: Settings
    continue_last: bool = False
    session: str | None = None
    demo: bool = False


def run_chat(options: ChatOptions) -> int:
    """Open the chat; returns the exit code (1 when the user quits from the load-error screen)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise NoTerminalError("the chat needs a terminal: to answer from a script or a pipe use "
                              "`chatglm ask \"...\"` (e.g. `cat notes.txt | chatglm ask`)")
    from chatglm_tui.store import SessionStore, default_store_path

    if not options.demo:
        return _run(options, SessionStore(default_store_path()))
    from chatglm_tui.tui.clipboard import copies_kept_in
    from chatglm_tui.tui.demo import seed_demo_store

    with tempfile.TemporaryDirectory(prefix="chatglm-demo-") as scratch, copies_kept_in(Path(scratch)):
        # Sample chats in a throw-away store, and copies saved beside it: the user's own conversations and
        # last-copy.txt are never shown or touched.
        path = Path(scratch) / "demo.sqlite3"
        seed_demo_store(path)
        return _run(options, SessionStore(path))


def _run(options: ChatOptions, store: SessionStore) -> int:
    """Run the app on `store` (closed afterwards) with the engine the options ask for."""
    from chatglm_tui.tui.app import make_app

    with store:
        conversation = None
        if options.session:
            conversation = store.resolve(options.session).id
        elif options.continue_last:
            latest = store.latest()
            conversation = latest.id if latest else None
        engine = engine_for(options.settings, options.demo)
        try:
            # The demo is a throw-away: a theme picked there is not saved to the user's config.
            app = make_app(for_display(options.settings, options.demo), engine, store, conversation_id=conversation,
                           persist_theme=not options.demo)
            app.run()
        finally:
            engine.close()
    code = app.return_code or 0
    if isinstance(engine, threading.Thread) and engine.is_alive():
        # Quit while the model was still loading (it cannot be interrupted inside torch). Everything is saved
        # and the store is closed; leave now rather than let interpreter shutdown abort under the loader
        # thread. A quantized cache it was writing is detected as partial and rebuilt on the next load.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
