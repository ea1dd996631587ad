"""Token choice: the original's processors and warpers, the NaN guard, the no-piece guard, the window."""

from __future__ import annotations

import pytest
import torch

from chatglm_tui.errors import ContextOverflowError, GenerationError
from chatglm_tui.model import GenerationParams
from chatglm_tui.model.sampling import TokenSampler

V, PIECES = 130528, 130344


def _logits(**values: float) -> torch.Tensor:
    logits = torch.full((1, V), -100.0)
    for key, value in values.items():
        logits[0, int(key[1:])] = value
    return logits


IDS = torch.tensor([[5, 6, 130001, 130004]])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(repetition_penalty=0), dict(max_new_tokens=0)])
def test_invalid_params_are_rejected(bad):
    with pytest.raises(GenerationError):
        GenerationParams(**bad)


def test_unknown_option_is_named():
    with pytest.raises(GenerationError, match="unknown generation option.*top_q"):
        GenerationParams.from_kwargs(top_q=0.5)


def test_greedy_and_temperature_zero_take_the_argmax():
    logits = _logits(t100=3.0, t200=2.0)
    assert TokenSampler(GenerationParams(do_sample=False), PIECES)(IDS, logits) == 100
    assert TokenSampler(GenerationParams(temperature=0), PIECES)(IDS, logits) == 100


def test_ids_without_a_piece_are_never_chosen():
    logits = _logits(t130400=50.0, t7=1.0)
    assert TokenSampler(GenerationParams(do_sample=False), PIECES)(IDS, logits) == 7
    for seed in range(20):
        assert TokenSampler(GenerationParams(seed=seed, top_k=0, top_p=1.0), PIECES)(IDS, logits) < PIECES


def test_nan_guard_forces_the_space_token():
    logits = _logits(t100=float("nan"))
    logits[0, 0] = float("inf")
    assert TokenSampler(GenerationParams(do_sample=False), PIECES)(IDS, logits) == 5
    assert TokenSampler(GenerationParams(seed=1), PIECES)(IDS, logits) == 5


def test_top_k_and_top_p_cut_the_tail():
    logits = _logits(t100=10.0, t200=9.0, t300=8.5)
    picks = {TokenSampler(GenerationParams(seed=s, top_k=1, top_p=1.0), PIECES)(IDS, logits) for s in range(30)}
    assert picks == {100}
    # p(100) = 0.53 at temperature 1: top-p 0.5 keeps it alone, top-p 0.9 keeps the top two (and not 300 always)
    picks = {TokenSampler(GenerationParams(seed=s, top_p=0.5, temperature=1.0), PIECES)(IDS, logits) for s in range(30)}
    assert picks == {100}
    picks = {TokenSampler(GenerationParams(seed=s, top_p=0.8, temperature=1.0), PIECES)(IDS, logits) for s in range(60)}
    assert picks == {100, 200}


def test_repetition_penalty_discourages_tokens_already_seen():
    logits = _logits(t6=2.0, t100=1.5)  # token 6 is in IDS
    assert TokenSampler(GenerationParams(do_sample=False), PIECES)(IDS, logits) == 6
    assert TokenSampler(GenerationParams(do_sample=False, repetition_penalty=2.0), PIECES)(IDS, logits) == 100


def test_seeded_sampling_is_reproducible(tiny_fp16):
    first = tiny_fp16.chat("你好", seed=42, max_new_tokens=12)
    assert tiny_fp16.chat("你好", seed=42, max_new_tokens=12) == first
    others = {tiny_fp16.chat("你好", seed=s, max_new_tokens=12) for s in range(43, 47)}
    assert others - {first}, "different seeds should give different replies"


def test_window_covers_prompt_and_reply(tiny_fp16):
    window = tiny_fp16.context_window
    prompt = [5] * (window - 4) + [130001, 130004]  # room for two new tokens
    tokens = tiny_fp16.generate_ids(prompt, GenerationParams(do_sample=False, max_new_tokens=50))
    generated = list(tokens)
    assert len(generated) <= 2
    if len(generated) == 2:
        assert tokens.finish_reason == "length"
    full = [5] * (window - 2) + [130001, 130004]
    with pytest.raises(ContextOverflowError, match=f"context window is {window}"):
        list(tiny_fp16.generate_ids(full, GenerationParams()))


# ---------------------------------------------------------------- the same distribution as transformers' warpers


def _transformers_probs(params: GenerationParams, input_ids: torch.Tensor, logits: torch.Tensor,
                        pieces: int) -> torch.Tensor:
    """What the original `chat()` samples from: transformers' processors and warpers over the whole vocabulary."""
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits.clone()
    if params.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(input_ids, scores)
    scores[:, pieces:] = -float("inf")
    if params.temperature != 1.0:
        scores = TemperatureLogitsWarper(params.temperature)(input_ids, scores)
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(input_ids, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(input_ids, scores)
    return torch.softmax(scores, dim=-1)[0]


@pytest.mark.parametrize("options", [
    {}, {"top_k": 0}, {"top_k": 1}, {"top_p": 1.0}, {"top_k": 0, "top_p": 1.0}, {"top_p": 0.05},
    {"temperature": 0.3, "top_p": 0.9, "top_k": 200}, {"repetition_penalty": 1.3}, {"top_k": 5, "top_p": 0.99},
])
def test_the_candidates_carry_exactly_the_original_distribution(options):
    """On 40 random vocab-sized logit rows per setting (flat, peaked, with ties, with -inf), the tokens the
    sampler draws from and their probabilities are transformers' warpers' over all 130,528 scores."""
    params = GenerationParams(seed=0, **options)
    sampler = TokenSampler(params, PIECES)
    generator = torch.Generator().manual_seed(len(str(options)))
    vocab = 130528
    for case in range(40):
        scale = (0.5, 3.0, 8.0, 20.0)[case % 4]
        logits = torch.randn(1, vocab, generator=generator) * scale
        if case % 5 == 0:
            logits[0, :40] = logits[0, 40]  # a tie around the k-th and the nucleus edge
        if case % 5 == 1:
            logits[0, 100:200] = logits.max() + 1  # 100 tied best tokens: ties past top-k's window
        input_ids = torch.randint(0, vocab, (1, 30), generator=generator)
        expected = _transformers_probs(params, input_ids, logits, PIECES)
        ids, probs = sampler.candidates(sampler.scores(input_ids, logits))
        got = torch.zeros(vocab)
        got[ids] = probs
        drawn = set(ids[probs > 0].tolist())  # (with neither top-k nor top-p, all ids come, the pieceless at 0)
        kept = set(torch.nonzero(expected).reshape(-1).tolist())
        if case % 5 == 1:
            # 100 equally likely tokens: which of them top-p cuts depends on the sort order of ties, and where
            # their cumulative mass meets top_p exactly (k x 0.01 = 0.3), float rounding decides one token more
            # or less: the one way the two can differ.
            assert drawn <= kept | set(range(100, 200)) and abs(len(drawn) - len(kept)) <= 1, (options, case)
            continue
        assert drawn == kept, (options, case)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)

