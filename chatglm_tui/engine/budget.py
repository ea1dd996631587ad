"""The context budget: exact token counts of the prompt the model will read, and the overflow policy.

ChatGLM-6B reads at most 2048 tokens, prompt and reply together. The prompt is the original template
(`[Round i]\\n问：…\\n答：…\\n`, then `[gMASK] <sop>`). It has no system role, so an instruction is emulated by
prefixing it to the first query of the prompt (the oldest kept round, or the new query when there is no
history); it is counted like everything else.

Overflow policy: keep the instruction and the new query, drop whole rounds oldest first until the prompt plus
the reserved reply fits, and report exactly which rounds were dropped. A query that cannot fit even alone is
reported (`fits=False`); callers refuse it, or summarize it when it is a document.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatglm_tui.engine.protocol import Budget, Round
from chatglm_tui.model.prompt import build_prompt
from chatglm_tui.model.tokenizer import ChatGLMTokenizer

INSTRUCTION_SEPARATOR = "\n\n"


def apply_instruction(history: Sequence[Round], query: str,
                      instruction: str | None) -> tuple[tuple[Round, ...], str]:
    """History and query with the instruction prefixed to the first query the model will see."""
    history = tuple(history)
    if not instruction:
        return history, query
    if history:
        (first_query, first_reply), rest = history[0], history[1:]
        return ((instruction + INSTRUCTION_SEPARATOR + first_query, first_reply),) + rest, query
    return history, instruction + INSTRUCTION_SEPARATOR + query


def prompt_text(history: Sequence[Round], query: str, instruction: str | None = None) -> str:
    """The prompt text exactly as the model reads it (before the [gMASK] <sop> suffix)."""
    return build_prompt(*apply_instruction(history, query, instruction))


def count_prompt(tokenizer: ChatGLMTokenizer, history: Sequence[Round], query: str,
                 instruction: str | None = None) -> int:
    """Tokens of the prompt, [gMASK] <sop> included."""
    return len(tokenizer.encode(prompt_text(history, query, instruction), parse_special=False))


def _first_kept_round(tokenizer: ChatGLMTokenizer, history: Sequence[Round], query: str,
                      instruction: str | None, limit: int) -> int | None:
    """The smallest `start` such that history[start:] + query fits in `limit` tokens, or None."""
    def fits(start: int) -> bool:
        return count_prompt(tokenizer, history[start:], query, instruction) <= limit

    if fits(0):
        return 0
    if not fits(len(history)):
        return None
    low, high = 0, len(history)  # fits(high) holds, fits(low) does not: binary search (dropping only shrinks)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def plan_budget(tokenizer: ChatGLMTokenizer, window: int, history: Sequence[Round], query: str,
                instruction: str | None = None, reserve: int = 512) -> Budget:
    """Which rounds fit with `query` and room for a `reserve`-token reply, and how the window is used."""
    history = tuple(history)
    start = _first_kept_round(tokenizer, history, query, instruction, window - reserve)
    fits = start is not None
    kept = history[len(history) if start is None else start:]
    bare = count_prompt(tokenizer, kept, "")
    with_instruction = count_prompt(tokenizer, kept, "", instruction)
    full = count_prompt(tokenizer, kept, query, instruction)
    return Budget(window=window, history_tokens=bare, instruction_tokens=with_instruction - bare,
                  query_tokens=full - with_instruction, reserved=reserve,
                  dropped_rounds=tuple(range(len(history) - len(kept))), fits=fits)
