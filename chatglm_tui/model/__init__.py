"""The native ChatGLM-6B model: pure PyTorch and SentencePiece, no UI, no remote code.

    from chatglm_tui.model import load_model
    glm = load_model("path/to/chatglm-6b-int4")
    print(glm.chat("你好"))

Names are imported on first use, so `chatglm_tui.model.tokenizer` and `chatglm_tui.model.prompt` can be used
without loading torch (the UI counts tokens on every keystroke).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatglm_tui.model.chat import ChatGLM, load_model
    from chatglm_tui.model.config import ChatGLMConfig
    from chatglm_tui.model.params import GenerationParams
    from chatglm_tui.model.tokenizer import ChatGLMTokenizer

_EXPORTS = {"ChatGLM": "chat", "load_model": "chat", "ChatGLMConfig": "config", "GenerationParams": "params",
            "ChatGLMTokenizer": "tokenizer"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
