"""The store's one error type: a session database that cannot be opened, read or written."""

from __future__ import annotations

from chatglm_tui.errors import ChatGLMError


class StoreError(ChatGLMError):
    """The session store is missing, damaged, too new, busy or asked for something that is not there."""
