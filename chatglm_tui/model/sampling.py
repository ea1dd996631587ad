"""Choosing the next token: the original's processors and warpers, from transformers, plus two guards."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from chatglm_tui.errors import GenerationError


@dataclass(frozen=True)
class GenerationParams:
    """How to generate a reply. Defaults are the original `chat()`'s (sampling, top-p 0.7, temperature 0.95,
    transformers' default top-k 50), with the reply limited only by the context window."""

    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    repetition_penalty: float = 1.0
    max_new_tokens: int | None = None  # None: until <eop> or the context window is full
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise GenerationError(f"repetition_penalty must be > 0 (1 turns it off), got {self.repetition_penalty}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    @property
    def is_greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def replace(self, **changes: object) -> GenerationParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> GenerationParams:
        """Params from keyword arguments, rejecting unknown names with a clear message."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise GenerationError(f"unknown generation option(s): {', '.join(unknown)}; "
                                  f"known: {', '.join(sorted(names))}")
        return cls(**kwargs)  # type: ignore[arg-type]


class InvalidScoreLogitsProcessor:
    """The original's NaN/Inf guard: if any score is not finite, force token 5 (`▁`).

    A plain callable, as transformers' LogitsProcessorList accepts, so that importing this module does not
    import transformers (half a second): the model can be loaded before anyone samples from it.
    """

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if not bool(torch.isfinite(scores).all()):
            scores.zero_()
            scores[..., 5] = 5e4
        return scores


class TokenSampler:
    """Turns the last position's logits into the next token id for one sequence."""

    def __init__(self, params: GenerationParams, num_pieces: int) -> None:
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.params = params
        self.num_pieces = num_pieces  # ids from here up have no tokenizer piece: never emit them
        processors = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        processors.append(InvalidScoreLogitsProcessor())
        self.processors = processors
        warpers = LogitsProcessorList()  # transformers' order: temperature, top-k, top-p
        if not params.is_greedy:
            if params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
        self.warpers = warpers
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def __call__(self, input_ids: Tensor, logits: Tensor) -> int:
        """input_ids (1, T) long (prompt + generated so far), logits (1, V) float32 -> next token id."""
        scores = self.processors(input_ids, logits.float().clone())
        scores[:, self.num_pieces:] = -float("inf")
        if self.params.is_greedy:
            return int(scores.argmax(dim=-1))
        scores = self.warpers(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
