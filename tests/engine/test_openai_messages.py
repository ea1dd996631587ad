"""The one mapping between a chat request and OpenAI `messages`, both ways, and the server's stop sequences."""

from __future__ import annotations

import pytest

from chatglm_tui.engine.budget import estimate_budget, estimate_tokens
from chatglm_tui.engine.openai_messages import Conversation, MessagesError, from_messages, to_messages
from chatglm_tui.server.completions import StopScanner


def test_a_request_survives_the_round_trip():
    history = (("q1", "a1"), ("q2", ""))
    messages = to_messages("Be brief.", history, "q3")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert from_messages(messages) == Conversation("Be brief.", history, "q3")
    assert from_messages(to_messages(None, (), "q")) == Conversation(None, (), "q")


def test_a_final_assistant_message_is_the_reply_to_continue():
    messages = to_messages(None, (("q1", "a1"),), "q2", reply_prefix="the start of")
    assert messages[-1] == {"role": "assistant", "content": "the start of"}
    assert from_messages(messages) == Conversation(None, (("q1", "a1"),), "q2", "the start of")


def test_system_messages_join_into_one_instruction_and_text_parts_join():
    messages = [{"role": "system", "content": "A."}, {"role": "system", "content": [{"type": "text", "text": "B."}]},
                {"role": "user", "content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]}]
    assert from_messages(messages) == Conversation("A.\n\nB.", (), "hello")


@pytest.mark.parametrize(("messages", "message"), [
    (None, "non-empty list"),
    ([], "non-empty list"),
    (["hi"], "messages[0] must be an object"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "must alternate"),
    ([{"role": "assistant", "content": "b"}], "must alternate"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
     "must alternate"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "system messages must come first"),
    ([{"role": "function", "content": "a"}], "messages[0].role is 'function'"),
    ([{"role": "user", "content": "a", "tool_calls": []}], "unsupported field(s) 'tool_calls'"),
    ([{"role": "user", "content": 5}], "ChatGLM-6B reads text only"),
])
def test_messages_that_cannot_be_a_chatglm_conversation_are_refused_in_one_line(messages, message):
    with pytest.raises(MessagesError) as raised:
        from_messages(messages)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_stop_sequences_cut_streamed_text_even_across_deltas():
    scanner = StopScanner(("END", "x"))
    released = [scanner.feed(delta) for delta in ("hel", "lo E", "N", "D and more")]
    assert "".join(released) == "hello " and scanner.stopped and scanner.reply == "hello "
    assert scanner.feed("more") == "" and scanner.flush() == ""
    plain = StopScanner(())
    assert plain.feed("ab") == "ab" and plain.flush() == "" and not plain.stopped
    held = StopScanner(("abc",))
    assert held.feed("xab") == "x" and held.flush() == "ab" and held.reply == "xab"


def test_estimates_follow_the_exact_policy(tokenizer):
    assert estimate_tokens("你好世界") == 4 and estimate_tokens("hello world!") == 3
    rounds = [("问题" * 300, "回答" * 300)] * 3
    budget = estimate_budget(2048, rounds, "最后", None, 512)
    assert not budget.exact and budget.fits and budget.dropped_rounds == (0, 1)
    assert not estimate_budget(2048, [], "长" * 2000, None, 512).fits
