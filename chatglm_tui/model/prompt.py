"""The ChatGLM-6B chat prompt and response clean-up, exactly as the original `chat()` does them (one copy only)."""

from __future__ import annotations

import re
from collections.abc import Sequence

# A finished round: (query, response), the response as post-processed (that is what the original keeps).
Round = tuple[str, str]

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


def build_prompt(history: Sequence[Round], query: str) -> str:
    """The prompt text the original `chat()` builds: the bare query without history, else numbered rounds."""
    if not history:
        return query
    rounds = [format_round(i, q, r) for i, (q, r) in enumerate(history)]
    return "".join(rounds) + format_round(len(history), query, None)


def process_response(text: str) -> str:
    """The original post-processing: strip, the training-time placeholder, full-width punctuation next to CJK."""
    text = text.strip().replace(_TRAINING_TIME, "2023年")
    for half, full in _PUNCTUATION:
        text = re.sub(rf"({_CJK}){re.escape(half)}", rf"\g<1>{full}", text)
        text = re.sub(rf"{re.escape(half)}({_CJK})", rf"{full}\g<1>", text)
    return text
