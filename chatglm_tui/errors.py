"""The one error hierarchy of chatglm-tui.

Every error a user can cause is a `ChatGLMError` whose message says what went wrong and what to do about it,
in one line. The command line prints that line and exits with `exit_code`; nothing else ever reaches the user
as a traceback.
"""

from __future__ import annotations


class ChatGLMError(Exception):
    """Base class: a problem the user can act on. `str(error)` is the one-line message."""

    exit_code: int = 1


class CheckpointError(ChatGLMError):
    """A model directory or checkpoint file is missing, unreadable, of an unknown kind or damaged."""


class ContextOverflowError(ChatGLMError):
    """A prompt does not fit the model's context window."""


class GenerationError(ChatGLMError):
    """Generation parameters are invalid (for example a negative temperature)."""


class DeviceError(ChatGLMError):
    """The requested device or dtype cannot be used on this machine."""


class EngineNotReadyError(ChatGLMError):
    """The engine was asked for something before its tokenizer or model was loaded: wait for the load events."""
