"""Persistence: conversations and messages in one SQLite file. Standard library only; no model, no UI."""

from __future__ import annotations

from chatglm_tui.store.errors import StoreError
from chatglm_tui.store.models import Conversation, Message, Role
from chatglm_tui.store.rounds import rounds_of
from chatglm_tui.store.store import SessionStore, default_store_path

__all__ = ["Conversation", "Message", "Role", "SessionStore", "StoreError", "default_store_path", "rounds_of"]
