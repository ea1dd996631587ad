"""The native ChatGLM-6B model: pure PyTorch and SentencePiece, no UI, no remote code.

    from chatglm_tui.model import load_model
    glm = load_model("path/to/chatglm-6b-int4")
    print(glm.chat("你好"))
"""

from chatglm_tui.model.chat import ChatGLM, load_model
from chatglm_tui.model.config import ChatGLMConfig
from chatglm_tui.model.sampling import GenerationParams
from chatglm_tui.model.tokenizer import ChatGLMTokenizer

__all__ = ["ChatGLM", "ChatGLMConfig", "ChatGLMTokenizer", "GenerationParams", "load_model"]
