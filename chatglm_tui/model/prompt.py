"""The ChatGLM-6B chat prompt and response clean-up, exactly as the original `chat()` does them (one copy only).

ChatGLM-6B has no system role, so an instruction is emulated by prefixing it to the first query the model reads
(the oldest round given, or the query itself when there is no history): `build_prompt` is the one place that
does it, and `encode_prompt` the one place that turns a prompt into the ids the model reads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatglm_tui.model.tokenizer import ChatGLMTokenizer

# A finished round: (query, response), the response as post-processed (that is what the original keeps).
Round = tuple[str, str]

INSTRUCTION_SEPARATOR = "\n\n"
_TRAINING_TIME = "[[训练时间]]"
_CJK = r"[\u4e00-\u9fff]"
_PUNCTUATION = ((",", "，"), ("!", "！"), (":", "："), (";", "；"), ("?", "？"))
# The characters at the end of a streamed reply that may still change (see IncrementalDecoder).
HALF_WIDTH_PUNCTUATION = "".join(half for half, _ in _PUNCTUATION)
PENDING_PATTERNS = (_TRAINING_TIME,)


def format_round(index: int, query: str, response: str | None) -> str:
    """One round of the template; `response=None` leaves it open for the model to answer."""
    text = f"[Round {index}]\n问：{query}\n答："
    return text if response is None else f"{text}{response}\n"


def build_prompt(history: Sequence[Round], query: str, instruction: str | None = None) -> str:
    """The prompt text the original `chat()` builds (the bare query without history, else numbered rounds), with
    `instruction` prefixed to the first query the model reads."""
    if instruction and history:
        (first_query, first_reply), *rest = history
        history = [(instruction + INSTRUCTION_SEPARATOR + first_query, first_reply), *rest]
    elif instruction:
        query = instruction + INSTRUCTION_SEPARATOR + query
    if not history:
        return query
    rounds = [format_round(i, q, r) for i, (q, r) in enumerate(history)]
    return "".join(rounds) + format_round(len(history), query, None)


def encode_prompt(tokenizer: ChatGLMTokenizer, history: Sequence[Round], query: str,
                  instruction: str | None = None) -> list[int]:
    """The ids the model reads: the prompt, then [gMASK] <sop>.

    Special-token strings inside user text (`<sop>`, `<eop>`, ...) stay plain text, so a pasted document cannot
    end the prompt early or fake a round.
    """
    return tokenizer.encode(build_prompt(history, query, instruction), parse_special=False)


def process_response(text: str) -> str:
    """The original post-processing: strip, the training-time placeholder, full-width punctuation next to CJK."""
    text = text.strip().replace(_TRAINING_TIME, "2023年")
    for half, full in _PUNCTUATION:
        text = re.sub(rf"({_CJK}){re.escape(half)}", rf"\g<1>{full}", text)
        text = re.sub(rf"{re.escape(half)}({_CJK})", rf"{full}\g<1>", text)
    return text
