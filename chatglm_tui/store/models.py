"""The store's records: a conversation and its messages, as frozen dataclasses (no SQL here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["user", "assistant"]
ROLES: tuple[Role, ...] = ("user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """One chat: its id, title, timestamps (unix seconds), and the model settings it runs with."""

    id: str
    """Twelve random hex characters."""
    title: str
    created_at: float
    updated_at: float
    """When a message was last added (renames and setting changes leave it alone)."""
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    """Generation parameters as plain JSON values."""
    instruction: str | None = None
    """An optional standing instruction for the whole conversation."""


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; `parent_id` links it into a tree so edits and regenerations branch."""

    id: int
    conversation_id: str
    role: Role
    text: str
    created_at: float
    parent_id: int | None = None
    stopped: bool = False
    """True when the user stopped the reply before it finished."""
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    """Free-form generation statistics (seconds, tokens/s, finish reason...)."""
