"""The engine a command runs on: the model in this process, a remote OpenAI-compatible server, or the scripted
one of `--demo`. The one place the commands choose."""

from __future__ import annotations

import dataclasses

from chatglm_tui import paths
from chatglm_tui.cli.output import StatusLine
from chatglm_tui.config.settings import Settings
from chatglm_tui.engine.protocol import Engine, Event, LoadProgress, load_text

# What the status bar names in `--demo`: no model is loaded, so the configured one must not look ready.
DEMO_MODEL = "demo (scripted replies)"
DEMO_BACKEND = "no model loaded"


def for_display(settings: Settings, demo: bool = False) -> Settings:
    """The settings as the app shows them and saves them with conversations: in the demo the model is the scripted
    one; with an endpoint it is the remote one, not the local default."""
    if demo:
        return dataclasses.replace(settings, model=DEMO_MODEL)
    if settings.endpoint is None:
        return settings
    return dataclasses.replace(settings, model=settings.endpoint_model or settings.endpoint)


def engine_for(settings: Settings, demo: bool = False) -> Engine:
    """The engine the settings ask for; nothing connects or loads until it is started."""
    if demo:
        from chatglm_tui.engine.fake import FakeEngine
        from chatglm_tui.tui.demo import DEMO_REPLIES

        return FakeEngine(DEMO_REPLIES, chunk_size=3, delay=0.02, backend=DEMO_BACKEND)
    if settings.endpoint is not None:
        from chatglm_tui.engine.remote import RemoteEngine

        return RemoteEngine(settings.endpoint, settings.endpoint_model, settings.api_key,
                            tokenizer_cache=paths.cache_dir() / "remote-tokenizers")
    from chatglm_tui.engine.worker import worker_for

    return worker_for(settings)


def load_with_progress(engine: Engine, status: StatusLine) -> None:
    """Load (or connect) and wait, showing each step on the stderr status line; a failure raises."""

    def on_load(event: Event) -> None:
        if isinstance(event, LoadProgress):
            status.show(load_text(event))

    try:
        engine.load(on_load)
    finally:
        status.clear()
