"""The native model reproduces the original implementation's outputs on the shared tiny checkpoint."""

from __future__ import annotations

import pytest
import torch

from chatglm_tui.model import GenerationParams

LOGIT_TOLERANCE = 1e-4  # float32 on CPU; the independent reference implementation agrees within 1e-5
GREEDY = dict(do_sample=False, max_new_tokens=24)


def _layouts(reference: dict, tiny_fp16, tiny_int4):
    return [("fp16", reference, tiny_fp16), ("int4", reference["int4"], tiny_int4)]


@pytest.fixture(params=["fp16", "int4"])
def case(request, reference, tiny_fp16, tiny_int4):
    return dict((name, (ref, glm)) for name, ref, glm in _layouts(reference, tiny_fp16, tiny_int4))[request.param]


def test_top10_logits_match_the_original(case):
    ref, glm = case
    for item in ref["logits"]:
        assert glm.tokenizer.encode(item["text"]) == item["input_ids"]
        logits = glm.logits(item["input_ids"])
        assert logits.shape == (len(item["input_ids"]), glm.config.vocab_size)
        assert logits.dtype == torch.float32
        values, ids = logits[-1].topk(10)
        assert ids.tolist() == item["top10_ids"], item["text"]
        torch.testing.assert_close(values, torch.tensor(item["top10_values"]), atol=LOGIT_TOLERANCE, rtol=0)
        assert abs(logits[-1].mean().item() - item["mean"]) < LOGIT_TOLERANCE
        assert abs(logits[-1].std().item() - item["std"]) < LOGIT_TOLERANCE


def test_greedy_chats_match_token_for_token(case):
    ref, glm = case
    for conversation in ref["chats"]:
        history: list[tuple[str, str]] = []
        for turn in conversation:
            prompt_ids = glm.prompt_ids(turn["query"], history)
            assert prompt_ids == turn["prompt_ids"]
            assert glm.tokenizer.encode(turn["prompt"]) == turn["prompt_ids"]
            generated = list(glm.generate_ids(prompt_ids, GenerationParams(**GREEDY)))
            assert generated == turn["response_ids"]
            reply = glm.chat(turn["query"], history, **GREEDY)
            assert reply == turn["response"]
            history.append((turn["query"], reply))


def test_streamed_deltas_join_to_the_reply_and_follow_the_original_stream(case):
    ref, glm = case
    conversation = ref["chats"][0]
    history: list[tuple[str, str]] = []
    for turn in conversation:
        deltas = list(glm.stream_chat(turn["query"], history, **GREEDY))
        assert "".join(deltas) == turn["response"]
        assert all(deltas), "no empty deltas"
        # Token by token, what we have released is what the original showed at that point, minus a short tail
        # that could still change (trailing space, a half-width mark before CJK, half a UTF-8 character).
        decoder = glm.response_decoder()
        for token, original_prefix in zip(turn["response_ids"], turn["stream_prefixes"]):
            decoder.add([token])
            assert original_prefix.startswith(decoder.text)
            held_back = original_prefix[len(decoder.text):].replace("\ufffd", "")
            assert len(held_back) <= 3, held_back
        history.append((turn["query"], turn["response"]))


def test_reply_stops_on_length_with_the_last_token_included(tiny_fp16, reference):
    turn = reference["chats"][0][0]
    short = tiny_fp16.chat(turn["query"], [], do_sample=False, max_new_tokens=5)
    streamed = "".join(tiny_fp16.stream_chat(turn["query"], [], do_sample=False, max_new_tokens=5))
    assert short == streamed == tiny_fp16.response_decoder().finalize(tiny_fp16.tokenizer.decode(turn["response_ids"][:5]))
