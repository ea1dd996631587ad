"""The context budget: exact token counts of the prompt the model will read, and the overflow policy.

ChatGLM-6B reads at most 2048 tokens, prompt and reply together. The prompt is the original template
(`[Round i]\\n问：…\\n答：…\\n`, then `[gMASK] <sop>`) with the instruction prefixed to its first query, as
`model.prompt.build_prompt` makes it; everything is counted.

Overflow policy: keep the instruction and the new query, drop whole rounds oldest first until the prompt plus
the reserved reply fits, and report exactly which rounds were dropped. A query that cannot fit even alone is
reported (`fits=False`); callers refuse it, or summarize it when it is a document.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from chatglm_tui.engine.protocol import Budget
from chatglm_tui.model.params import DEFAULT_MAX_NEW_TOKENS
from chatglm_tui.model.prompt import Round, encode_prompt
from chatglm_tui.model.tokenizer import ChatGLMTokenizer


class _Prompts:
    """The encoded prompt for each first kept round, encoded once each."""

    def __init__(self, tokenizer: ChatGLMTokenizer, history: tuple[Round, ...], query: str,
                 instruction: str | None) -> None:
        self.tokenizer, self.history, self.query, self.instruction = tokenizer, history, query, instruction
        self.ids: dict[int, list[int]] = {}

    def from_round(self, start: int) -> list[int]:
        if start not in self.ids:
            self.ids[start] = encode_prompt(self.tokenizer, self.history[start:], self.query, self.instruction)
        return self.ids[start]

    def first_kept_round(self, limit: int) -> int | None:
        """The smallest `start` such that history[start:] + query fits in `limit` tokens, or None."""
        def fits(start: int) -> bool:
            return len(self.from_round(start)) <= limit

        if fits(0):
            return 0
        if not fits(len(self.history)):
            return None
        low, high = 0, len(self.history)  # fits(high) holds, fits(low) does not: binary search (dropping shrinks)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        return high


def plan_budget(tokenizer: ChatGLMTokenizer, window: int, history: Sequence[Round], query: str,
                instruction: str | None = None, reserve: int = DEFAULT_MAX_NEW_TOKENS) -> Budget:
    """Which rounds fit with `query` and room for a `reserve`-token reply, how the window is used, and the ids of
    the prompt the model will read."""
    prompts = _Prompts(tokenizer, tuple(history), query, instruction)
    start = prompts.first_kept_round(window - reserve)
    kept_from = len(prompts.history) if start is None else start
    kept = prompts.history[kept_from:]
    ids = prompts.from_round(kept_from)
    # The meter shows history, instruction and query apart: two more exact counts, of the prompt without them.
    bare = len(encode_prompt(tokenizer, kept, ""))
    with_instruction = len(encode_prompt(tokenizer, kept, "", instruction)) if instruction else bare
    return Budget(window=window, history_tokens=bare, instruction_tokens=with_instruction - bare,
                  query_tokens=len(ids) - with_instruction, reserved=reserve,
                  dropped_rounds=tuple(range(kept_from)), fits=start is not None, prompt_ids=tuple(ids))


def estimate_tokens(text: str) -> int:
    """A token count without the tokenizer: a CJK character is about one token, other text about four characters
    per token (generous for Chinese, close for English with ChatGLM-6B's and most GLM tokenizers)."""
    cjk = sum(1 for char in text if "\u4e00" <= char <= "\u9fff")
    return cjk + math.ceil((len(text) - cjk) / 4)


def estimate_budget(window: int, history: Sequence[Round], query: str, instruction: str | None = None,
                    reserve: int = DEFAULT_MAX_NEW_TOKENS) -> Budget:
    """The budget by the same policy as `plan_budget`, with counts estimated from characters (`exact=False`)."""
    history = tuple(history)
    rounds = [estimate_tokens(question) + estimate_tokens(reply) + 10 for question, reply in history]  # markers
    fixed = estimate_tokens(query) + 10
    instruction_tokens = estimate_tokens(instruction) if instruction else 0
    kept_from = 0
    while kept_from < len(history) and sum(rounds[kept_from:]) + instruction_tokens + fixed + reserve > window:
        kept_from += 1
    fits = instruction_tokens + fixed + reserve <= window
    return Budget(window=window, history_tokens=sum(rounds[kept_from:]) + 2, instruction_tokens=instruction_tokens,
                  query_tokens=fixed - 2, reserved=reserve, dropped_rounds=tuple(range(kept_from)), fits=fits,
                  exact=False)
