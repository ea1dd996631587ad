"""A chat request as OpenAI-style `messages`, both ways: the one mapping `chatglm serve` reads and the remote
engine writes. Torch-free.

ChatGLM-6B has no system role: a leading system message is the instruction, which the prompt builder prefixes
to the first query the model reads (as the chat app does). Then user and assistant messages alternate, as the
model's `[Round i]` template pairs them, and the last user message is the new question. A final assistant message
after it is the start of the reply, to be continued (a reply cut off at its limit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatglm_tui.errors import ChatGLMError
from chatglm_tui.model.prompt import Round


class MessagesError(ChatGLMError):
    """`messages` cannot be read as a ChatGLM-6B conversation; the message says what to send instead."""

    exit_code = 2


@dataclass(frozen=True)
class Conversation:
    """What `messages` say: an instruction, the finished rounds, and the question to answer now."""

    instruction: str | None
    history: tuple[Round, ...]
    query: str
    reply_prefix: str = ""


def to_messages(instruction: str | None, history: Sequence[Round], query: str,
                reply_prefix: str = "") -> list[dict[str, str]]:
    """The OpenAI `messages` for a question after `history`, with the instruction as a system message (and the
    start of the reply, to continue, as a final assistant message)."""
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for question, reply in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    messages.append({"role": "user", "content": query})
    return messages + ([{"role": "assistant", "content": reply_prefix}] if reply_prefix else [])


def from_messages(messages: object) -> Conversation:
    """Read OpenAI `messages`; a MessagesError names the first message that does not fit the rules."""
    if not isinstance(messages, list) or not messages:
        raise MessagesError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    entries = [_entry(index, message) for index, message in enumerate(messages)]
    system = [text for role, text in entries if role == "system"]
    dialogue = [(role, text) for role, text in entries if role != "system"]
    if [role for role, _ in entries[:len(system)]] != ["system"] * len(system):
        raise MessagesError("system messages must come first: ChatGLM-6B reads them as one instruction")
    prefix = dialogue.pop()[1] if len(dialogue) > 1 and dialogue[-1][0] == "assistant" else ""  # to continue
    expected = ["user", "assistant"] * (len(dialogue) // 2) + ["user"]
    if [role for role, _ in dialogue] != expected[:len(dialogue)] or len(dialogue) % 2 == 0:
        raise MessagesError("after the system messages, 'user' and 'assistant' messages must alternate, starting "
                            "with 'user' and ending with the 'user' message to answer (or with the start of its "
                            "answer, to continue)")
    history = tuple((dialogue[i][1], dialogue[i + 1][1]) for i in range(0, len(dialogue) - 1, 2))
    return Conversation("\n\n".join(system) or None, history, dialogue[-1][1], prefix)


def _entry(index: int, message: object) -> tuple[str, str]:
    """(role, text) of one message; text parts are joined, anything else (images, audio) is refused."""
    if not isinstance(message, Mapping):
        raise MessagesError(f"messages[{index}] must be an object with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role not in ("system", "user", "assistant"):
        raise MessagesError(f"messages[{index}].role is {role!r}: use 'system', 'user' or 'assistant' "
                            "(ChatGLM-6B has no tools)")
    unknown = sorted(set(message) - {"role", "content", "name"})
    if unknown:
        raise MessagesError(f"messages[{index}] has unsupported field(s) {', '.join(map(repr, unknown))}")
    if isinstance(content, str):
        return role, content
    if isinstance(content, list) and all(_is_text_part(part) for part in content):
        return role, "".join(part["text"] for part in content)
    raise MessagesError(f"messages[{index}].content must be text (a string, or a list of {{\"type\": \"text\"}} "
                        "parts): ChatGLM-6B reads text only")


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
