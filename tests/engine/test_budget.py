"""The context budget counts exactly what the model reads and drops whole rounds, oldest first."""

from __future__ import annotations

import pytest

from chatglm_tui.engine.budget import plan_budget
from chatglm_tui.model.prompt import build_prompt as prompt_text
from chatglm_tui.model.prompt import encode_prompt

WINDOW = 2048


def _exact(tokenizer, history, query, instruction=None) -> int:
    return len(tokenizer.encode(prompt_text(history, query, instruction), parse_special=False))


@pytest.mark.parametrize("rounds", [0, 1, 7])
@pytest.mark.parametrize("instruction", [None, "你是一个乐于助人的助手。Answer briefly."])
def test_counts_equal_the_tokenizer_count_of_the_real_prompt(tokenizer, rounds, instruction):
    history = [(f"问题 {i}: what is {i} + {i}?", f"答案是 {2 * i}。") for i in range(rounds)]
    query = "And now, 用中文解释一下 recursion."
    budget = plan_budget(tokenizer, WINDOW, history, query, instruction, reserve=256)
    assert budget.fits and budget.dropped_rounds == ()
    assert budget.used == _exact(tokenizer, history, query, instruction)
    assert budget.history_tokens == len(encode_prompt(tokenizer, history, ""))
    assert (budget.instruction_tokens > 0) == bool(instruction)
    assert budget.free == WINDOW - budget.used - 256


def test_instruction_is_prefixed_to_the_first_query_the_model_sees():
    assert prompt_text([], "hi", "Be brief.") == "Be brief.\n\nhi"
    text = prompt_text([("q0", "r0"), ("q1", "r1")], "q2", "Be brief.")
    assert text.startswith("[Round 0]\n问：Be brief.\n\nq0\n答：r0\n[Round 1]\n问：q1")


def test_overflow_drops_exactly_the_oldest_rounds_and_never_splits_one(tokenizer):
    history = [(f"第{i}轮的问题：" + "很长的内容 " * 40, f"第{i}轮的回答 " + "long answer " * 40) for i in range(12)]
    query, reserve = "最后的问题", 512
    budget = plan_budget(tokenizer, WINDOW, history, query, None, reserve)
    dropped = len(budget.dropped_rounds)
    assert budget.fits and 0 < dropped < len(history)
    assert budget.dropped_rounds == tuple(range(dropped))  # oldest first, contiguous
    kept = history[dropped:]
    assert budget.used == _exact(tokenizer, kept, query) and budget.used + reserve <= WINDOW
    assert _exact(tokenizer, history[dropped - 1:], query) + reserve > WINDOW  # one more round would not fit


def test_a_query_that_cannot_fit_alone(tokenizer):
    budget = plan_budget(tokenizer, WINDOW, [("a", "b")], "字" * 6000, None, reserve=256)
    assert not budget.fits and budget.dropped_rounds == (0,)
