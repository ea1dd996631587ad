"""Textual messages mirroring the engine's events, so worker-thread callbacks become UI-loop handlers.

The engine calls `on_event` on its own thread; `post_engine_event` wraps the event in the matching message and
posts it (thread-safe). Handlers run on the UI loop, the only place widgets are touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.message_pump import MessagePump

from chatglm_tui.engine.protocol import (
    ChunkProgress,
    Event,
    GenerationFailed,
    GenerationFinished,
    GenerationStarted,
    LoadFailed,
    LoadProgress,
    PrefillProgress,
    TextDelta,
)


@dataclass
class ModelLoadProgressed(Message):
    event: LoadProgress


@dataclass
class ModelLoadFailed(Message):
    event: LoadFailed


@dataclass
class ReplyStarted(Message):
    event: GenerationStarted


@dataclass
class PromptRead(Message):
    """Progress through the prompt before the first token (prefill or a document chunk)."""

    event: PrefillProgress | ChunkProgress


@dataclass
class ReplyDelta(Message):
    event: TextDelta


@dataclass
class ReplyFinished(Message):
    event: GenerationFinished


@dataclass
class ReplyFailed(Message):
    event: GenerationFailed


def message_for(event: Event) -> Message:
    """The UI message carrying `event`."""
    if isinstance(event, LoadProgress):
        return ModelLoadProgressed(event)
    if isinstance(event, LoadFailed):
        return ModelLoadFailed(event)
    if isinstance(event, GenerationStarted):
        return ReplyStarted(event)
    if isinstance(event, (PrefillProgress, ChunkProgress)):
        return PromptRead(event)
    if isinstance(event, TextDelta):
        return ReplyDelta(event)
    if isinstance(event, GenerationFinished):
        return ReplyFinished(event)
    return ReplyFailed(event)


def post_engine_event(target: MessagePump, event: Event) -> None:
    """Hand an engine event to `target` from any thread."""
    target.post_message(message_for(event))
